"""Which data a process actually read, so a result goes stale only when *its* data changed.

The loaders note every registered corpus and source they hand out (`note`); `tokenbook.run.Run.finish`
stores the record in the result's provenance (`provenance.data`), and `tokenbook.runner.freshness`
compares it with what the registry and the prepared corpora hold now (`changes`). A corpus is
identified by the content of its prepared split files, a source by its pinned registry entry, so
adding a source to data/registry.yaml, or a new extractor, leaves every existing result fresh.
"""
from __future__ import annotations

import hashlib
import json

_USED: dict[str, str] = {}


def note(kind: str, name: str, digest: str) -> None:
    _USED[f"{kind}:{name}"] = digest


def snapshot() -> dict[str, str]:
    return dict(sorted(_USED.items()))


def source_digest(src) -> str:
    """A source as pinned: package, version, archive sha256 and the files taken from it."""
    blob = json.dumps({"package": src.package, "version": src.version, "sha256": src.sha256,
                       "files": list(src.files)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def current(key: str) -> str | None:
    """The digest `key` ("corpus:<name>" or "source:<name>") would get now; None if it is gone or
    cannot be known without re-preparing (its sources or extractor changed)."""
    from tokenbook.data.registry import load
    kind, _, name = key.partition(":")
    reg = load()
    try:
        if kind == "source":
            return source_digest(reg.source(name))
        if kind == "corpus":
            from tokenbook.data.corpus import content_digest, corpus_dir, is_prepared
            reg.corpus(name)
            if not is_prepared(name):
                return None
            return content_digest(json.loads((corpus_dir(name) / "manifest.json").read_text()))
    except (KeyError, ValueError, OSError):
        return None
    return None


def changes(recorded: dict[str, str]) -> list[str]:
    """Recorded data that differ now (or can no longer be checked without `make data`)."""
    out = []
    for key, digest in recorded.items():
        now = current(key)
        if now is None:
            out.append(f"{key} (gone, or its sources/extractor changed: run `make data`)")
        elif now != digest:
            out.append(key)
    return out
