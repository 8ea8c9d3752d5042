"""Plain text out of HTML doc pages with the standard library's parser (no new dependency).

`page_text` keeps the visible body text with one line per block element and drops navigation
chrome (scripts, styles, nav/header/footer, Sphinx sidebars). `sections` cuts a page at its
headings, which is what FAQ pages are made of. `id_paragraphs` returns the text of every element
that carries an `id` (LibreOffice help pages give each translatable paragraph a stable id).
"""
from __future__ import annotations

import re
from html.parser import HTMLParser

BLOCK = {"p", "div", "section", "article", "br", "li", "ul", "ol", "dl", "dt", "dd", "tr", "table", "pre",
         "blockquote", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "title", "td", "th", "caption", "figure"}
HEADINGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}
SKIP_TAGS = {"script", "style", "nav", "header", "footer", "noscript", "template", "svg"}
SKIP_CLASSES = ("sphinxsidebar", "related", "footer", "navigation", "headerlink", "printfooter",
                "catlinks", "t-navbar", "mw-jump", "editsection")
SKIP_IDS = {"Contents", "Index", "Bookmarks", "modules-nav", "TopLeftHeader", "SearchFrame"}  # LibreOffice help chrome
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
_WS = re.compile(r"[ \t\r\f\v\u00a0]+")


def clean_lines(text: str) -> str:
    lines = [_WS.sub(" ", ln).strip() for ln in text.split("\n")]
    out, blank = [], False
    for ln in lines:
        if ln:
            out.append(ln)
            blank = False
        elif not blank and out:
            out.append("")
            blank = True
    return "\n".join(out).strip()


class _Text(HTMLParser):
    """Collects visible text; subclasses hook into headings and id'ed elements."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title_parts: list[str] = []
        self._skip: list[str] = []  # stack of tags whose content is dropped
        self._in_title = False
        self._pre = 0

    def _skipped(self, tag, attrs) -> bool:
        if tag in SKIP_TAGS:
            return True
        a = dict(attrs)
        cls = a.get("class") or ""
        return a.get("id") in SKIP_IDS or any(c in cls for c in SKIP_CLASSES)

    def handle_starttag(self, tag, attrs):
        if tag == "title":
            self._in_title = True
        if self._skip:
            if tag == self._skip[-1] and tag not in VOID:
                self._skip.append(tag)
            return
        if tag not in VOID and self._skipped(tag, attrs):
            self._skip.append(tag)
            return
        if tag == "pre":
            self._pre += 1
        if tag in BLOCK:
            self.parts.append("\n")
        self.start(tag, attrs)

    def handle_startendtag(self, tag, attrs):
        if not self._skip and tag in BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag == "title":
            self._in_title = False
        if self._skip:
            if tag == self._skip[-1]:
                self._skip.pop()
            return
        if tag == "pre":
            self._pre = max(0, self._pre - 1)
        if tag in BLOCK:
            self.parts.append("\n")
        self.end(tag)

    def handle_data(self, data):
        if self._in_title:
            self.title_parts.append(data)
            return
        if self._skip:
            return
        self.parts.append(data)
        self.data(data)

    # hooks
    def start(self, tag, attrs):
        pass

    def end(self, tag):
        pass

    def data(self, data):
        pass


def page_text(html: str) -> tuple[str, str]:
    """(title, visible text) of an HTML page."""
    p = _Text()
    p.feed(html)
    p.close()
    return _WS.sub(" ", "".join(p.title_parts)).strip(), clean_lines("".join(p.parts))


class _Sections(_Text):
    def __init__(self):
        super().__init__()
        self.sections: list[list] = [[0, "", []]]  # level, heading, body parts
        self._heading: list[str] | None = None

    def start(self, tag, attrs):
        if tag in HEADINGS:
            self._heading = []
            self.sections.append([HEADINGS[tag], "", []])

    def end(self, tag):
        if tag in HEADINGS and self._heading is not None:
            self.sections[-1][1] = _WS.sub(" ", "".join(self._heading)).strip().rstrip("¶").strip()
            self._heading = None

    def data(self, data):
        if self._heading is not None:
            self._heading.append(data)
        else:
            self.sections[-1][2].append(data)

    def handle_endtag(self, tag):
        super().handle_endtag(tag)
        if not self._skip and tag in BLOCK and self._heading is None:
            self.sections[-1][2].append("\n")

    def handle_starttag(self, tag, attrs):
        super().handle_starttag(tag, attrs)
        if not self._skip and tag in BLOCK and tag not in HEADINGS and self._heading is None:
            self.sections[-1][2].append("\n")


def sections(html: str) -> list[tuple[int, str, str]]:
    """(heading level, heading text, body text up to the next heading) for each heading of a page."""
    p = _Sections()
    p.feed(html)
    p.close()
    return [(lvl, head, clean_lines("".join(body))) for lvl, head, body in p.sections[1:]]


class _IdParagraphs(_Text):
    TAGS = {"p", "h1", "h2", "h3", "h4", "h5", "h6", "td", "th", "li", "dt", "dd", "span", "div", "a"}

    def __init__(self):
        super().__init__()
        self.found: dict[str, list[str]] = {}
        self._open: list[tuple[str, str]] = []  # (tag, id) of id'ed elements being read

    def start(self, tag, attrs):
        a = dict(attrs)
        if a.get("id") and tag in ("p", "h1", "h2", "h3", "h4", "h5", "h6") and tag not in VOID:
            self._open.append((tag, a["id"]))
            self.found.setdefault(a["id"], [])

    def end(self, tag):
        if self._open and self._open[-1][0] == tag:
            self._open.pop()

    def data(self, data):
        if self._open:
            self.found[self._open[-1][1]].append(data)


def id_paragraphs(html: str) -> dict[str, str]:
    """Text of each <p>/<hN> that has an id attribute, keyed by the id."""
    p = _IdParagraphs()
    p.feed(html)
    p.close()
    return {k: _WS.sub(" ", "".join(v).replace("\n", " ")).strip() for k, v in p.found.items()}
