"""Where things live. Every path in the project is derived from ROOT (override: TOKENBOOK_ROOT)."""
from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(os.environ.get("TOKENBOOK_ROOT", Path(__file__).resolve().parents[2])).resolve()
CONF = ROOT / "conf"
NOTEBOOKS = ROOT / "notebooks"
RESULTS = ROOT / "results"
BUILD = ROOT / "build"
EXECUTED = BUILD / "executed"
BOOK = ROOT / "book"
DATA = ROOT / "data"
CACHE = Path(os.environ.get("TOKENBOOK_CACHE", DATA / "cache")).resolve()
SCALES = ("smoke", "cpu", "gpu")


def results_file(scale: str, slug: str) -> Path:
    return RESULTS / scale / f"{slug}.json"


def figures_dir(scale: str) -> Path:
    return RESULTS / scale / "figures"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary sibling, flush it to disk, then rename: readers see old or new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
