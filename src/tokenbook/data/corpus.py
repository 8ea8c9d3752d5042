"""Prepare corpora: extract documents, deduplicate, split, write atomically; and load them back.

data/cache/corpora/<name>/
    train.jsonl, val.jsonl, test.jsonl   one JSON object per line: {"id", "text", ...}
    manifest.json                        written last: counts, bytes, sha256 of each file, and the
                                         key (registry pins + corpus entry + extractor version)
                                         that made them; a different key means stale -> rebuilt
The folder is built as a temporary sibling and renamed into place, so a prepare that dies half
way leaves no folder that loads.

Split: u = first 8 bytes of sha256("tokenbook-split:" + group) as a fraction of 2**64; train below
0.90, val below 0.95, test above. It depends only on the document's stable id (or group), so it is
the same on every machine, for every document order, and a document keeps its split when others
are added or removed.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import unicodedata
from pathlib import Path
from typing import Callable, Iterable

from tokenbook.data import extractors, usage
from tokenbook.data.fetch import cache_dir, sha256_file, source_dir
from tokenbook.data.registry import Corpus, load, matches_any

SPLITS = ("train", "val", "test")
_WS = re.compile(r"\s+")


class CorpusError(RuntimeError):
    pass


def split_of(key: str, fractions: dict[str, float] | None = None) -> str:
    fr = fractions or load().split
    u = int.from_bytes(hashlib.sha256(f"tokenbook-split:{key}".encode()).digest()[:8], "big") / 2.0 ** 64
    edge = 0.0
    for name in SPLITS:
        edge += fr[name]
        if u < edge:
            return name
    return SPLITS[-1]


def content_key(text: str) -> str:
    """Hash of the normalized text: Unicode NFKC, case-folded, whitespace collapsed."""
    norm = _WS.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()
    return hashlib.sha256(norm.encode("utf-8")).hexdigest()


def dedupe(docs: Iterable[dict]) -> tuple[list[dict], int]:
    """Drop documents whose normalized content was seen before. Documents are taken in id order,
    so which copy survives does not depend on the order they came in."""
    seen, kept, dropped = set(), [], 0
    for d in sorted(docs, key=lambda d: d["id"]):
        k = content_key(d.get("text", ""))
        if k in seen:
            dropped += 1
            continue
        seen.add(k)
        kept.append(d)
    return kept, dropped


def _cap(docs: list[dict], max_bytes: int | None) -> tuple[list[dict], bool]:
    """Keep documents in hash-of-id order until max_bytes of text: a fixed pseudo-random sample."""
    if not max_bytes or sum(len(d["text"].encode()) for d in docs) <= max_bytes:
        return docs, False
    order = sorted(docs, key=lambda d: hashlib.sha256(d["id"].encode()).digest())
    out, size = [], 0
    for d in order:
        n = len(d["text"].encode())
        if size + n > max_bytes:
            continue
        out.append(d)
        size += n
    return sorted(out, key=lambda d: d["id"]), True


def corpus_dir(name: str) -> Path:
    return cache_dir("corpora", name)


def _code_sources(fn, seen: set) -> list[str]:
    """Source of `fn` and of every function or module of extractors.py it reaches by name."""
    import inspect
    import types
    if id(fn) in seen:
        return []
    seen.add(id(fn))
    if isinstance(fn, types.ModuleType):   # our own helper modules (htmltext); not zlib, re, ...
        ours = fn.__name__.startswith("tokenbook.") and getattr(fn, "__file__", None)
        return [Path(fn.__file__).read_text()] if ours else []
    out = [inspect.getsource(fn)]
    for name in fn.__code__.co_names:
        obj = vars(extractors).get(name)
        if isinstance(obj, (types.FunctionType, types.ModuleType)):
            out += _code_sources(obj, seen)
    return out


def _code_hash(c: Corpus) -> str:
    """Hash of the code that shapes this corpus's documents: its extractor and what that calls, and
    the splitting/deduplication here. Editing one extractor makes only its corpora stale; adding
    another extractor makes none stale."""
    import inspect
    h = hashlib.sha256()
    if c.kind == "images":
        from tokenbook.data import imagesets
        h.update(Path(imagesets.__file__).read_bytes())
    else:
        for src in _code_sources(extractors.EXTRACTORS[c.extractor], set()):
            h.update(src.encode())
    for fn in (split_of, content_key, dedupe, _cap):
        h.update(inspect.getsource(fn).encode())
    return h.hexdigest()[:16]


def corpus_key(c: Corpus) -> str:
    reg = load()
    blob = json.dumps({"corpus": repr(c), "sources": {s: reg.source(s).sha256 for s in c.sources},
                       "split": reg.split, "extract": extractors.EXTRACT_VERSION, "code": _code_hash(c)},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def content_digest(m: dict) -> str:
    """What a prepared corpus holds: a digest of its split files' sha256 (from the manifest)."""
    return hashlib.sha256(json.dumps(m.get("sha256", {}), sort_keys=True).encode()).hexdigest()[:16]


def inputs(c: Corpus) -> list[extractors.Input]:
    out = []
    for src, pattern in c.include:
        root = source_dir(src)
        for p in sorted(root.rglob("*")):
            rel = p.relative_to(root).as_posix()
            if p.is_file() and matches_any(rel, [pattern]) and not matches_any("/" + rel, c.skip):
                out.append(extractors.Input(src, root, rel))
    if not out:
        raise CorpusError(f"corpus {c.name!r}: no input files match {c.include}")
    return out


def _write_jsonl(path: Path, docs: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for d in docs:
            fh.write(json.dumps(d, ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def is_prepared(name: str) -> bool:
    c = load().corpus(name)
    m = corpus_dir(name) / "manifest.json"
    if not m.exists():
        return False
    try:
        return json.loads(m.read_text())["key"] == corpus_key(c)
    except (OSError, ValueError, KeyError):
        return False


def prepare(name: str, force: bool = False, progress: Callable[[str], None] | None = None,
            _after_write: Callable[[str], None] | None = None) -> dict:
    """Build corpus `name` (fetching its sources) unless an up-to-date copy exists; returns its manifest."""
    reg = load()
    c = reg.corpus(name)
    final = corpus_dir(name)
    if not force and is_prepared(name):
        return json.loads((final / "manifest.json").read_text())
    say = progress or (lambda s: None)
    t0 = time.time()
    key = corpus_key(c)  # taken before extracting: code edited mid-run must not be stamped as used
    if c.kind == "images":
        from tokenbook.data import imagesets
        return imagesets.prepare(c, progress=say)
    say("fetch " + ", ".join(c.sources))
    files = inputs(c)
    say(f"extract {len(files)} files")
    extract = extractors.EXTRACTORS[c.extractor]
    docs = list(extract(files, c))
    docs, dropped = dedupe(docs)
    docs, capped = _cap(docs, c.max_bytes)
    by_split = {s: [] for s in SPLITS}
    for d in docs:
        by_split[split_of(d.get("group", d["id"]), reg.split)].append(d)
    tmp = final.with_name(f".tmp-{name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        manifest = {"name": name, "kind": c.kind, "key": key, "docs": {}, "bytes": {}, "sha256": {},
                    "duplicates_dropped": dropped, "capped_at_bytes": c.max_bytes if capped else None,
                    "sources": {s: f"{reg.source(s).package} {reg.source(s).version}" for s in c.sources}}
        for s in SPLITS:
            path = tmp / f"{s}.jsonl"
            _write_jsonl(path, by_split[s])
            manifest["docs"][s] = len(by_split[s])
            manifest["bytes"][s] = sum(len(d["text"].encode()) for d in by_split[s])
            manifest["sha256"][path.name] = sha256_file(path)
            if _after_write:
                _after_write(s)  # a seam for the interruption test
        manifest["seconds"] = round(time.time() - t0, 2)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        if final.exists():
            old = final.with_name(f".old-{name}-{os.getpid()}")
            os.replace(final, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    say(f"{sum(manifest['docs'].values())} docs")
    return manifest


def manifest(name: str) -> dict:
    if not is_prepared(name):
        prepare(name)
    return json.loads((corpus_dir(name) / "manifest.json").read_text())


def load_records(name: str, split: str = "train", max_docs: int | None = None) -> list[dict]:
    """The documents of one split as dicts (id, text, and per-kind fields), preparing the corpus on first use."""
    c = load().corpus(name)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if c.kind == "images":
        raise CorpusError(f"corpus {name!r} holds images: use tokenbook.data.images({name!r}, {split!r})")
    m = manifest(name)
    usage.note("corpus", name, content_digest(m))
    path = corpus_dir(name) / f"{split}.jsonl"
    if not path.exists() or path.stat().st_size == 0 and m["docs"][split]:
        raise CorpusError(f"corpus {name!r}: {path} is missing or empty; rerun `python -m tokenbook.data prepare {name} --force`")
    out = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            out.append(json.loads(line))
            if max_docs is not None and len(out) >= max_docs:
                break
    return out


def load_corpus(name: str, split: str = "train", max_docs: int | None = None) -> list[str]:
    """Texts of one split of a corpus (prepared on first use); see corpora() for names."""
    return [d["text"] for d in load_records(name, split, max_docs)]


def verify_corpus(name: str) -> None:
    """Recompute the sha256 of each split file and compare with the manifest."""
    m = manifest(name)
    for fname, want in m["sha256"].items():
        got = sha256_file(corpus_dir(name) / fname)
        if got != want:
            raise CorpusError(f"corpus {name!r}: {fname} has sha256 {got}, manifest says {want}; "
                              f"rerun `python -m tokenbook.data prepare {name} --force`")
