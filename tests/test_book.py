"""The book builds offline from executed notebooks and results, has no broken local links, and renders.

The book is built from fixtures in a temporary folder (an executed prepacking notebook, a fresh cpu
result, a stale smoke result and a kernel benchmark), so the test does not depend on which chapters
have been run, and never touches book/ or build/.
"""
from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import tempfile
import zlib
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from tokenbook import book, paths, registry, results, runner

CHROMIUM = Path("/usr/bin/chromium")
SLUG = "prepacking"


# ---- fixtures ------------------------------------------------------------------------------------
def fixture_notebook(path: Path) -> None:
    import nbformat
    v4 = nbformat.v4
    nb = v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                                   "language_info": {"name": "python"}})
    params = v4.new_code_cell('scale = "smoke"\noverrides = []\nseed = 0')
    params.metadata["tags"] = ["parameters"]
    injected = v4.new_code_cell('# Parameters\nscale = "cpu"\n')
    injected.metadata["tags"] = ["injected-parameters"]
    run = v4.new_code_cell("print(f'padded {1.84:.2f} s, packed {0.91:.2f} s')", execution_count=3)
    run.outputs = [v4.new_output("stream", name="stdout", text="padded 1.84 s, packed 0.91 s\n")]
    table = v4.new_code_cell("run.claims_table()", execution_count=4)
    table.outputs = [v4.new_output("execute_result", execution_count=4, data={
        "text/plain": "<HTMLTable>",
        "text/html": '<table class="tokenbook-claims"><tr><td>speedup</td><td>2.02 [1.9, 2.1]</td></tr></table>'})]
    nb.cells = [
        v4.new_markdown_cell("# Prepacking (fixture)\n\nThe paper packs prompts of different lengths into one "
                             "batch instead of padding them, so prefill costs $O(\\sum_i n_i)$ rather than "
                             "$O(B \\max_i n_i)$ tokens:\n\n$$\n\\text{speedup} = "
                             "\\frac{t_{\\text{padded}}}{t_{\\text{packed}}}\n$$"),
        params, injected, v4.new_markdown_cell("## Experiment"), run,
        v4.new_markdown_cell("## Claim check"), table,
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)


def fixture_result(scale: str, content_hash: str | None) -> dict:
    ch = registry.get(SLUG)
    doc = {
        "schema_version": 1,
        "chapter": {"n": ch.n, "slug": ch.slug, "part": ch.part, "title": ch.title, "arxiv": ch.arxiv},
        "scale": scale, "seed": 0, "overrides": [], "config": {}, "status": "complete",
        "claims": [
            {"id": "prefill_speedup", "paper": "Prepacking speeds up prefilling by up to 6x over padding.",
             "criterion": "measured ≥ 1.5",
             "measured": {"value": 2.02, "lo": 1.9, "hi": 2.1, "n": 200, "method": "bootstrap", "level": 0.95,
                          "unit": "x"},
             "verdict": "reproduced", "reason": "whole interval [1.9, 2.1] ≥ 1.5"},
            {"id": "memory_saving", "paper": "Peak memory drops with prepacking | even at batch size 1 ($).",
             "criterion": "measured ≥ 1.2",
             "measured": {"value": 1.1, "lo": 0.95, "hi": 1.3, "n": 5, "method": "seeds", "level": 0.95, "unit": ""},
             "verdict": "inconclusive", "reason": "interval [0.95, 1.3] contains 1.2"},
            {"id": "throughput_gpu", "paper": "Throughput rises on a GPU.", "criterion": "measured ≥ 1",
             "measured": {"value": 1.0, "lo": 1.0, "hi": 1.0, "n": 1, "method": "exact", "level": 0.95, "unit": ""},
             "verdict": "not testable at this scale", "reason": "judged only at scale gpu"},
        ],
        "metrics": {}, "figures": [],
        "provenance": {"git_commit": "0123456789abcdef", "git_dirty": True,
                       "versions": {"python": "3.11", "torch": "2.11"},
                       "hardware": {"cpu": "Test CPU", "gpu": None, "torch_threads": 2},
                       "device": "cpu", "dtype": "float32", "started_utc": "2025-01-01T00:00:00+00:00",
                       "wall_time_s": 42.5, "content_hash": content_hash,
                       # the library files "this run" used, as they are now: fresh on that count
                       "library": runner.library_hashes([paths.ROOT / "src" / "tokenbook" / "longctx" / "prepacking.py"])},
    }
    results.validate(doc)
    return doc


def tiny_png(path: Path, w: int = 8, h: int = 4) -> None:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = b"".join(b"\x00" + b"\x30\x80\xc0" * w for _ in range(h))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def make_fixtures(root: Path) -> dict:
    executed, res = root / "executed", root / "results"
    fixture_notebook(executed / "cpu" / f"{SLUG}.ipynb")
    ch = registry.get(SLUG)
    fresh = fixture_result("cpu", runner.content_hash(ch, "cpu"))
    stale = fixture_result("smoke", "0" * 64)
    for doc in (fresh, stale):
        (res / doc["scale"]).mkdir(parents=True, exist_ok=True)
        (res / doc["scale"] / f"{SLUG}.json").write_text(json.dumps(doc))
    (res / "bench").mkdir(parents=True)
    (res / "bench" / "varlen_attention.json").write_text(json.dumps({
        "op": "varlen_attention", "gpu": "fixture", "tests_pass": True,
        "rows": [{"T": 1024, "triton_ms": 0.5, "sdpa_ms": 0.7, "speedup": 1.4},
                 {"T": 4096, "triton_ms": 3.1, "sdpa_ms": 4.0, "speedup": 1.29}]}))
    tiny_png(res / "bench" / "varlen_attention.png")
    return {"executed_dir": executed, "results_dir": res}


def test_generated_sources(tmp_path):
    """Source generation alone (no Sphinx): every chapter listed, broken files shown, nothing invented."""
    dirs = make_fixtures(tmp_path)
    shutil.rmtree(dirs["results_dir"] / "bench")
    (dirs["results_dir"] / "gpu").mkdir()
    (dirs["results_dir"] / "gpu" / f"{SLUG}.json").write_text('{"schema_version": 1}')
    src = tmp_path / "src"
    states = book.generate(src, dirs["executed_dir"], dirs["results_dir"])
    assert len(states) == 66 and [s.chapter.slug for s in states if s.has_page] == [SLUG]
    board = (src / "scoreboard.md").read_text()
    rows = [line for line in board.splitlines() if re.match(r"\| (\{ref\}`)?\d+", line)]
    assert len(rows) == 66
    row = next(r for r in rows if "Prepacking" in r)
    assert "tb-stale" in row and "tb-invalid" in row and "](chapters/prepacking.ipynb)" in row
    assert "No GPU benchmark has been run yet" in (src / "appendix" / "bench.md").read_text()
    toc = (src / "_toc.yml").read_text()
    assert "chapters/prepacking" in toc and toc.count("file: parts/") == 10
    import nbformat
    nb = nbformat.read(src / "chapters" / f"{SLUG}.ipynb", as_version=4)
    assert "About this page" in nb.cells[1].source, "the banner follows the notebook's title"
    assert any("remove-cell" in c.metadata.get("tags", []) for c in nb.cells)


@pytest.fixture(scope="module")
def html(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("book")
    dirs = make_fixtures(root)
    out = book.build(out=root / "out", book_src=root / "src", **dirs)
    assert out == (root / "out").resolve()
    warnings = [line for line in (out / "sphinx.log").read_text().splitlines() if "WARNING" in line]
    assert not warnings, "the generated sources make Sphinx warn:\n" + "\n".join(warnings)
    return out / "html"


# ---- link and content checks -----------------------------------------------------------------------
class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs: list[tuple[str, str, str]] = []   # (tag, attribute, value)

    def handle_starttag(self, tag, attrs):
        for k, v in attrs:
            if k in ("href", "src") and v is not None:
                self.refs.append((tag, k, v))


def refs_of(page: Path) -> list[tuple[str, str, str]]:
    p = _Refs()
    p.feed(page.read_text(encoding="utf-8"))
    return p.refs


def scoreboard_rows(page: Path) -> list[str]:
    text = page.read_text(encoding="utf-8")
    table = re.search(r'<table[^>]*class="[^"]*tokenbook-scoreboard[^"]*".*?</table>', text, re.S)
    assert table, "the scoreboard page has no table with class tokenbook-scoreboard"
    body = re.search(r"<tbody>(.*?)</tbody>", table.group(0), re.S)
    return re.findall(r"<tr[ >].*?</tr>", body.group(1), re.S)


@pytest.mark.slow
def test_scoreboard_has_every_chapter(html):
    rows = scoreboard_rows(html / "scoreboard.html")
    assert len(rows) == len(registry.chapters()) == 66
    row = next(r for r in rows if "Prepacking" in r)
    assert 'href="chapters/prepacking.html' in row, "a chapter with an executed notebook links to its page"
    assert "tb-stale" in row, "the smoke fixture's hash differs from the current one: it must be flagged stale"
    assert row.count("tb-stale") == 1, "the cpu fixture carries the current hash: it is fresh"
    assert "not run" in row, "no gpu result: the gpu cell says so"
    assert sum("not run" in r for r in rows) >= 65
    text = (html / "scoreboard.html").read_text(encoding="utf-8")
    assert "Prepacking speeds up prefilling by up to 6x" in text, "claims are listed under the table"
    assert "42.5 s" in text and "Test CPU" in text, "runtime and hardware come from provenance"
    assert "even at batch size 1 ($)" in text, "markdown and math characters in a claim are shown literally"
    part = (html / "parts" / "A-long-context.html").read_text(encoding="utf-8")
    assert "arxiv.org/abs/2404.09529" in part, "a part page links each of its papers"
    unbuilt = next(c for c in registry.chapters() if not c.built)
    other = (html / "parts" / f"{unbuilt.part}.html").read_text(encoding="utf-8")
    assert "not yet built" in other and unbuilt.arxiv in other, "an unbuilt chapter is listed as such"
    bench = (html / "appendix" / "bench.html").read_text(encoding="utf-8")
    assert "varlen_attention" in bench and "<img" in bench


@pytest.mark.slow
def test_no_broken_local_links(html):
    # _static/ holds the themes' Jinja macro files (*.html templates, not pages): not checked
    pages = sorted(p for p in html.rglob("*.html") if p.relative_to(html).parts[0] != "_static")
    assert len(pages) >= 14   # intro, 10 parts, scoreboard, bench, one chapter (+ search, genindex)
    broken, checked = [], 0
    for page in pages:
        for tag, attr, ref in refs_of(page):
            parts = urlsplit(ref)
            if parts.scheme in ("http", "https", "mailto", "data", "javascript") or not parts.path:
                continue
            checked += 1
            target = (page.parent / unquote(parts.path)).resolve()
            if not target.exists():
                broken.append(f"{page.relative_to(html)}: <{tag} {attr}={ref!r}>")
    assert not broken, "broken local links:\n" + "\n".join(broken[:40])
    assert checked > 500, f"only {checked} local links found: is the link parser still seeing the pages?"


@pytest.mark.slow
def test_nothing_is_fetched_from_the_network(html):
    remote = []
    for page in html.rglob("*.html"):
        if page.relative_to(html).parts[0] == "_static":
            continue
        for tag, attr, ref in refs_of(page):
            if tag in ("script", "img", "iframe") or (tag == "link" and attr == "href" and ref.endswith((".css", ".js"))):
                if urlsplit(ref).scheme in ("http", "https") or ref.startswith("//"):
                    remote.append(f"{page.relative_to(html)}: <{tag} {attr}={ref!r}>")
    assert not remote, "pages load resources from the network:\n" + "\n".join(remote[:20])
    assert (html / "_static" / "mathjax" / "tex-chtml.js").exists(), "MathJax is served locally"


# ---- in a real browser ---------------------------------------------------------------------------
def chromium(*args: str, timeout: float = 90) -> str:
    with tempfile.TemporaryDirectory() as profile:
        cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               # every host name fails to resolve: the pages must render from local files alone
               "--host-resolver-rules=MAP * ~NOTFOUND", "--allow-file-access-from-files",
               f"--user-data-dir={profile}", *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"chromium failed ({proc.returncode}): {proc.stderr[-2000:]}"
    return proc.stdout


def rendered_dom(page: Path) -> str:
    return chromium("--virtual-time-budget=8000", "--dump-dom", page.as_uri())


def screenshot(page: Path, png: Path) -> None:
    chromium("--virtual-time-budget=8000", "--hide-scrollbars", "--window-size=1280,1600",
             f"--screenshot={png}", page.as_uri())
    assert png.exists() and png.stat().st_size > 10_000, f"no screenshot of {page.name}"


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is not installed: the browser check is skipped "
                                                   "(the build and link checks still run)")
def test_pages_render_in_a_browser(html, tmp_path):
    intro = rendered_dom(html / "intro.html")
    assert "<mjx-container" in intro, "MathJax did not typeset the intro's formulas"
    assert "$$" not in re.sub(r"<script.*?</script>", "", intro, flags=re.S), "raw TeX left on the intro page"

    board = rendered_dom(html / "scoreboard.html")
    assert re.search(r'<table[^>]*tokenbook-scoreboard', board), "the scoreboard table is not in the rendered page"

    chapter = rendered_dom(html / "chapters" / f"{SLUG}.html")
    assert "<mjx-container" in chapter, "math in the chapter notebook was not typeset"
    assert "padded 1.84 s, packed 0.91 s" in chapter, "the stored cell output is shown"
    assert "About this page" in chapter, "the banner saying which run the page shows"
    assert "# Parameters" not in chapter, "papermill's injected-parameters cell is hidden"

    shots = tmp_path / "screenshots"
    shots.mkdir()
    for name, page in (("intro", "intro.html"), ("scoreboard", "scoreboard.html"), ("chapter", f"chapters/{SLUG}.html")):
        screenshot(html / page, shots / f"{name}.png")
    print(f"screenshots in {shots}")
