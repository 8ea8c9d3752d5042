"""The runner isolates failures, enforces time limits and never takes a half-run as a result."""

import nbformat
import pytest

from tokenbook import paths, registry, runner


def fake_chapter(tmp_path, slug, body):
    nb = nbformat.v4.new_notebook()
    p = nbformat.v4.new_code_cell('scale = "smoke"\noverrides = []\nseed = 0')
    p.metadata["tags"] = ["parameters"]
    nb.cells = [p, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    part = tmp_path / "notebooks" / "A-long-context"
    part.mkdir(parents=True, exist_ok=True)
    path = part / f"99-{slug}.ipynb"
    nbformat.write(nb, path)
    ch = registry.Chapter(99, slug, "A-long-context", "A", "0000.00000", f"fake {slug}")
    return ch, path


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(paths, "EXECUTED", tmp_path / "executed")
    chapters = {}

    def add(slug, body):
        ch, nb = fake_chapter(tmp_path, slug, body)
        chapters[slug] = (ch, nb)
        return ch

    monkeypatch.setattr(registry.Chapter, "notebook", property(lambda self: chapters[self.slug][1]))
    monkeypatch.setattr(registry.Chapter, "built", property(lambda self: True))
    monkeypatch.setattr(registry, "get", lambda slug: chapters[slug][0])
    return add


@pytest.mark.slow
def test_failures_are_isolated_and_reported(sandbox, capsys):
    sandbox("crashes", "raise RuntimeError('boom')")
    sandbox("never-finishes", "x = 1")
    sandbox("sleeps", "import time\ntime.sleep(60)")
    outcomes = runner.run_many(["crashes", "never-finishes", "sleeps"], "smoke", time_limit=12)
    status = {o.slug: o.status for o in outcomes}
    assert status == {"crashes": "failed", "never-finishes": "failed", "sleeps": "timeout"}
    assert "never called run.finish()" in next(o.message for o in outcomes if o.slug == "never-finishes")
    out = capsys.readouterr().out
    assert "Summary (scale smoke)" in out and "0 of 3 chapters ok" in out
    # nothing half-written is taken as a result; the failed copy is kept for debugging
    assert not (paths.EXECUTED / "smoke" / "crashes.ipynb").exists()
    assert (paths.EXECUTED / "smoke" / "crashes.failed.ipynb").exists()
    assert not (paths.EXECUTED / "smoke" / "crashes.partial.ipynb").exists()
    assert not list((paths.RESULTS).rglob("*.json"))


def test_content_hash_tracks_the_chapter_inputs():
    ch = registry.get("prepacking")
    base = runner.content_hash(ch, "smoke")
    assert runner.content_hash(ch, "smoke") == base
    assert runner.content_hash(ch, "cpu") != base
    assert runner.content_hash(ch, "smoke", ["chapter.n_prompts=3"]) != base
    assert runner.content_hash(ch, "smoke", seed=1) != base


def test_freshness_follows_the_library_files_a_run_imported(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "ROOT", tmp_path)
    lib = tmp_path / "src" / "tokenbook"
    lib.mkdir(parents=True)
    used, unused = lib / "used.py", lib / "unused.py"
    used.write_text("x = 1\n")
    unused.write_text("y = 1\n")
    outside = tmp_path / "elsewhere.py"
    outside.write_text("z = 1\n")
    record = runner.library_hashes([used, outside])
    assert list(record) == ["src/tokenbook/used.py"]          # only library files are recorded
    doc = {"provenance": {"library": record}}
    assert runner.library_changes(doc) == []
    unused.write_text("y = 2\n")                              # a module the run never imported
    assert runner.library_changes(doc) == []
    used.write_text("x = 2\n")                                # a module it did import
    assert runner.library_changes(doc) == ["src/tokenbook/used.py"]
    used.unlink()
    assert runner.library_changes(doc) == ["src/tokenbook/used.py"]
    assert runner.library_changes({"provenance": {}}) == ["<no library record>"]


def test_freshness_follows_the_data_a_run_read(monkeypatch):
    """A result records the corpora/sources it read by content; only a change to those makes it stale."""
    from tokenbook.data import corpus as corpus_mod, load_corpus, usage
    from tokenbook.data.registry import load
    monkeypatch.setattr(usage, "_USED", {})
    load_corpus("fortunes", "val")
    rec = usage.snapshot()
    # (a first use also prepares the corpus, which reads, and records, its sources)
    assert "corpus:fortunes" in rec and set(rec) <= {"corpus:fortunes", "source:fortunes", "source:fortunes-min"}
    assert usage.changes(rec) == []
    assert usage.changes({"corpus:fortunes": "0" * 16}) == ["corpus:fortunes"]
    assert "gone" in usage.changes({"corpus:no-such-corpus": "0" * 16})[0]
    src = load().source("fortunes")
    assert usage.changes({"source:fortunes": usage.source_digest(src)}) == []
    # the extractor's code is part of what makes a corpus: editing one extractor changes only its corpora
    c_f, c_w = load().corpus("fortunes"), load().corpus("wordnet")
    k_f, k_w = corpus_mod.corpus_key(c_f), corpus_mod.corpus_key(c_w)
    monkeypatch.setitem(corpus_mod.extractors.EXTRACTORS, "fortunes", lambda inputs, corpus: iter(()))
    assert corpus_mod.corpus_key(c_f) != k_f and corpus_mod.corpus_key(c_w) == k_w


def test_content_hash_ignores_the_data_registry(monkeypatch, tmp_path):
    ch = registry.get("prepacking")
    base = runner.content_hash(ch, "smoke")
    monkeypatch.setattr(paths, "DATA", tmp_path)          # a different (here: missing) registry file
    assert runner.content_hash(ch, "smoke") == base
