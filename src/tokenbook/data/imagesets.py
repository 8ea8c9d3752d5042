"""Image sets as numpy arrays: Fashion-MNIST (IDX files) and sklearn's 8x8 digits (CSV in its wheel).

Prepared into data/cache/corpora/<name>/{train,val,test}.npz (x: uint8 [N, H, W], y: int64 [N])
with a manifest, atomically, like the text corpora. Splits are by a hash of the image's index in its
original file, so they are the same everywhere.
"""
from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import time

import numpy as np

from tokenbook.data.fetch import sha256_file, source_dir


def read_idx(path) -> np.ndarray:
    """An IDX file (the MNIST format): magic 0x0000 08 <ndim>, big-endian uint32 dims, uint8 data."""
    raw = gzip.decompress(path.read_bytes()) if str(path).endswith(".gz") else path.read_bytes()
    if raw[:3] != b"\x00\x00\x08":
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _split_indices(n: int, prefix: str, fractions: dict[str, float]) -> dict[str, np.ndarray]:
    from tokenbook.data.corpus import split_of
    names = np.array([split_of(f"{prefix}:{i}", fractions) for i in range(n)])
    return {s: np.flatnonzero(names == s) for s in fractions}


def _arrays(corpus) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    if corpus.extractor == "fashion_mnist":
        d = source_dir("fashion-mnist") / "usr/share/datasets/fashion-mnist"
        xtr, ytr = read_idx(d / "train-images-idx3-ubyte.gz"), read_idx(d / "train-labels-idx1-ubyte.gz")
        xte, yte = read_idx(d / "t10k-images-idx3-ubyte.gz"), read_idx(d / "t10k-labels-idx1-ubyte.gz")
        idx = _split_indices(len(xtr), "fashion-mnist-train", {"train": 0.95, "val": 0.05, "test": 0.0})
        return {"train": (xtr[idx["train"]], ytr[idx["train"]]), "val": (xtr[idx["val"]], ytr[idx["val"]]),
                "test": (xte, yte)}
    if corpus.extractor == "sklearn_digits":
        f = source_dir("sklearn-digits") / "sklearn/datasets/data/digits.csv.gz"
        table = np.loadtxt(io.StringIO(gzip.decompress(f.read_bytes()).decode()), delimiter=",")
        x = table[:, :-1].astype(np.uint8).reshape(-1, 8, 8)  # values 0..16
        y = table[:, -1].astype(np.int64)
        from tokenbook.data.registry import load
        idx = _split_indices(len(x), "digits", load().split)
        return {s: (x[i], y[i]) for s, i in idx.items()}
    raise ValueError(f"unknown image extractor {corpus.extractor!r}")


def prepare(corpus, progress=lambda s: None) -> dict:
    from tokenbook.data.corpus import corpus_dir, corpus_key
    t0 = time.time()
    progress("fetch " + ", ".join(corpus.sources))
    arrays = _arrays(corpus)
    final = corpus_dir(corpus.name)
    tmp = final.with_name(f".tmp-{corpus.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        m = {"name": corpus.name, "kind": "images", "key": corpus_key(corpus), "docs": {}, "bytes": {}, "sha256": {},
             "shape": list(arrays["train"][0].shape[1:]), "duplicates_dropped": 0, "capped_at_bytes": None}
        for s, (x, y) in arrays.items():
            path = tmp / f"{s}.npz"
            with open(path, "wb") as fh:
                np.savez(fh, x=np.ascontiguousarray(x), y=np.asarray(y, dtype=np.int64))
            m["docs"][s], m["bytes"][s], m["sha256"][path.name] = int(len(x)), int(x.nbytes), sha256_file(path)
        m["seconds"] = round(time.time() - t0, 2)
        (tmp / "manifest.json").write_text(json.dumps(m, indent=1))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return m


def images(name: str, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """(x uint8 [N, H, W], y int64 [N]) for an image corpus ('fashion-mnist', 'digits')."""
    from tokenbook.data.corpus import SPLITS, corpus_dir, is_prepared
    from tokenbook.data.registry import load
    c = load().corpus(name)
    if c.kind != "images":
        raise ValueError(f"corpus {name!r} is {c.kind}, not images; image corpora: "
                         f"{', '.join(n for n, k in load().corpora.items() if k.kind == 'images')}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not is_prepared(name):
        prepare(c)
    from tokenbook.data import usage
    from tokenbook.data.corpus import content_digest
    usage.note("corpus", name, content_digest(json.loads((corpus_dir(name) / "manifest.json").read_text())))
    with np.load(corpus_dir(name) / f"{split}.npz") as z:
        return z["x"], z["y"]
