import json

import jsonschema
import pytest

import tokenbook
from tokenbook import paths, results, stats
from tokenbook.claims import AtLeast, AtMost


@pytest.fixture
def tmp_results(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "RESULTS", tmp_path)
    return tmp_path


def test_run_writes_a_schema_valid_results_file(tmp_results, monkeypatch):
    monkeypatch.setenv("TOKENBOOK_CONTENT_HASH", "abc123")
    run = tokenbook.setup("prepacking", "smoke", ["chapter.n_prompts=3"], seed=7)
    assert run.cfg.chapter.n_prompts == 3 and run.seed == 7 and run.device == "cpu"
    v1 = run.claim("fast", paper="2× faster", measured=stats.bootstrap_ratio([2.0, 2.1, 1.9], [1.0, 1.0, 1.0]),
                   criterion=AtLeast(1.5))
    v2 = run.claim("exact", paper="identical", measured=stats.exact(1e-5), criterion=AtMost(1e-3),
                   testable_at=("cpu", "gpu"))
    v3 = run.claim("memory", paper="less memory", measured=None, criterion=AtLeast(1.0), testable_at=("gpu",),
                   why_not="needs CUDA")
    assert (v1, v2, v3) == ("reproduced", "not testable at this scale", "not testable at this scale")
    run.log(tokens=[1, 2, 3])
    path = run.finish()
    assert path == tmp_results / "smoke" / "prepacking.json"
    doc = json.loads(path.read_text())
    results.validate(doc)
    assert doc["provenance"]["content_hash"] == "abc123"
    assert doc["overrides"] == ["chapter.n_prompts=3"] and doc["seed"] == 7
    assert doc["config"]["chapter"]["n_prompts"] == 3
    assert doc["provenance"]["versions"]["torch"]
    assert "src/tokenbook/run.py" in doc["provenance"]["library"]      # what this run imported
    assert [c["verdict"] for c in doc["claims"]] == [v1, v2, v3]


def test_claims_are_checked_when_recorded(tmp_results):
    run = tokenbook.setup("prepacking", "cpu")
    with pytest.raises(ValueError, match="measured=None"):
        run.claim("m", paper="p", measured=None, criterion=AtLeast(1))
    run.claim("a", paper="p", measured=stats.exact(2), criterion=AtLeast(1))
    with pytest.raises(ValueError, match="twice"):
        run.claim("a", paper="p", measured=stats.exact(2), criterion=AtLeast(1))
    with pytest.raises(ValueError, match="unknown scales"):
        run.claim("b", paper="p", measured=stats.exact(2), criterion=AtLeast(1), testable_at=("tpu",))


def test_finish_refuses_a_run_without_claims(tmp_results):
    with pytest.raises(RuntimeError, match="no claim"):
        tokenbook.setup("prepacking", "smoke").finish()
    assert not (tmp_results / "smoke" / "prepacking.json").exists()


def test_setup_rejects_unknown_chapter_with_suggestion():
    with pytest.raises(KeyError, match="prepacking"):
        tokenbook.setup("prepackin", "smoke")


@pytest.mark.parametrize("breakage", ["verdict", "missing_provenance", "extra_key", "bad_method"])
def test_schema_rejects_broken_documents(tmp_results, breakage):
    run = tokenbook.setup("prepacking", "smoke")
    run.claim("a", paper="p", measured=stats.exact(2), criterion=AtLeast(1))
    doc = json.loads(run.finish().read_text())
    if breakage == "verdict":
        doc["claims"][0]["verdict"] = "mostly reproduced"
    elif breakage == "missing_provenance":
        del doc["provenance"]["git_commit"]
    elif breakage == "extra_key":
        doc["claims"][0]["confidence"] = "high"
    else:
        doc["claims"][0]["measured"]["method"] = "guess"
    with pytest.raises(jsonschema.ValidationError):
        results.validate(doc)
