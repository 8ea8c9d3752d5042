"""Every built chapter's notebook runs at smoke scale through the runner and writes valid results."""
import json

import pytest

from tokenbook import claims, paths, registry, results, runner

BUILT = [c.slug for c in registry.built()]


@pytest.mark.slow
@pytest.mark.parametrize("slug", BUILT)
def test_notebook_runs_at_smoke_scale(slug):
    ch = registry.get(slug)
    out = runner.run_chapter(ch, "smoke", progress=False)
    assert out.status in ("ok", "cached"), out.message
    doc = json.loads(paths.results_file("smoke", slug).read_text())
    results.validate(doc)
    assert doc["provenance"]["content_hash"] == runner.content_hash(ch, "smoke")
    assert all(c["verdict"] in claims.VERDICTS for c in doc["claims"])
    for fig in doc["figures"]:
        assert (paths.ROOT / fig).exists(), fig
    executed = json.loads((paths.EXECUTED / "smoke" / f"{slug}.ipynb").read_text())
    errors = [o for c in executed["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    print(f"{slug}: {out.status} in {out.seconds:.1f} s (smoke budget: 30 s once shared caches exist)")
    # unchanged inputs: the second run is skipped
    assert runner.run_chapter(ch, "smoke", progress=False).status == "cached"
