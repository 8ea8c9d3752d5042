"""Python standard library sources of the running interpreter: no download needed.

Used where the content matters less than its shape (e.g. prompt lengths for prefill benchmarks).
The registry corpus `python-stdlib` is the pinned, machine-independent counterpart.
"""
from __future__ import annotations

import sysconfig
from pathlib import Path


def python_stdlib_text(max_files: int = 200, min_chars: int = 2000) -> list[str]:
    """Source text of the Python standard library's top-level modules, in sorted file order.

    Deterministic for a given Python version (file list sorted by name); tests excluded.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.glob("*.py") if not p.name.startswith(("test_", "_")))
    texts = []
    for p in files:
        try:
            t = p.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if len(t) >= min_chars:
            texts.append(t)
        if len(texts) >= max_files:
            break
    if not texts:
        raise FileNotFoundError(f"no Python stdlib sources found under {root}")
    return texts
