"""Small HTML renderers for notebooks (no pandas needed): the claim-check table."""
from __future__ import annotations

import html

from . import claims as _claims

VERDICT_STYLE = {
    # plain symbols, not emoji: they render without a colour-emoji font
    _claims.REPRODUCED: ("✔", "#1a7f37"),
    _claims.NOT_REPRODUCED: ("✘", "#cf222e"),
    _claims.INCONCLUSIVE: ("?", "#9a6700"),
    _claims.NOT_TESTABLE: ("–", "#57606a"),
}


def verdict_badge(verdict: str) -> str:
    icon, color = VERDICT_STYLE.get(verdict, ("", "#000"))
    return f'<span style="color:{color};font-weight:600">{icon} {html.escape(verdict)}</span>'


def _fmt_measured(m: dict | None) -> str:
    if m is None:
        return "not measured"
    u = f" {m['unit']}" if m.get("unit") else ""
    if m["method"] == "exact":
        return f"{m['value']:.4g}{u}"
    return f"{m['value']:.4g}{u} [{m['lo']:.4g}, {m['hi']:.4g}]<br><small>{m['level']:.0%} {m['method']}, n={m['n']}</small>"


class HTMLTable:
    def __init__(self, html_text: str):
        self.html = html_text

    def _repr_html_(self) -> str:
        return self.html


def claims_table(claims: list[dict]) -> HTMLTable:
    rows = []
    for c in claims:
        rows.append("<tr>" + "".join(f"<td>{x}</td>" for x in (
            f"<code>{html.escape(c['id'])}</code>", html.escape(c["paper"]), _fmt_measured(c["measured"]),
            html.escape(c["criterion"]), verdict_badge(c["verdict"]) + f"<br><small>{html.escape(c['reason'])}</small>",
        )) + "</tr>")
    head = "".join(f"<th>{h}</th>" for h in ("claim", "the paper says", "we measured", "criterion", "verdict"))
    return HTMLTable(f'<table class="tokenbook-claims"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>')


def source(obj) -> HTMLTable:
    """The library source of a function or class, with its file and line, for a chapter's Method section."""
    import inspect
    from pathlib import Path

    from . import paths
    lines, start = inspect.getsourcelines(obj)
    f = Path(inspect.getsourcefile(obj)).resolve()
    try:
        where = f.relative_to(paths.ROOT)
    except ValueError:
        where = f.name
    code = html.escape("".join(lines))
    return HTMLTable(f'<p><code>{where}:{start}</code> — <code>{obj.__module__}.{obj.__qualname__}</code></p>'
                     f'<pre style="font-size:85%;line-height:1.3">{code}</pre>')


def provenance(doc: dict) -> HTMLTable:
    """Key facts of a finished run (from its results file) as a small table."""
    p = doc["provenance"]
    v, hw = p["versions"], p["hardware"]
    rows = [("results file", f"results/{doc['scale']}/{doc['chapter']['slug']}.json"),
            ("scale · seed · overrides", f"{doc['scale']} · {doc['seed']} · {' '.join(doc['overrides']) or '—'}"),
            ("git commit", f"{(p['git_commit'] or 'unknown')[:12]}{' (dirty)' if p['git_dirty'] else ''}"),
            ("hardware", f"{hw.get('gpu') or hw.get('cpu')} · {hw.get('cpu_count')} cores · torch threads {hw.get('torch_threads')}"),
            ("device · dtype", f"{p['device']} · {p['dtype']}"),
            ("versions", " · ".join(f"{k} {v[k]}" for k in ("python", "torch", "triton", "transformers") if v.get(k))),
            ("started (UTC) · wall time", f"{p['started_utc']} · {p['wall_time_s']:.1f} s"),
            ("content hash", (p.get("content_hash") or "not run by the runner")[:16])]
    body = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th><td>{html.escape(str(val))}</td></tr>" for k, val in rows)
    return HTMLTable(f"<table>{body}</table>")
