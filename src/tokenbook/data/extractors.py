"""Extractors: turn a source's unpacked files into documents.

Each extractor takes the list of input files (source name, unpacked root, relative path), sorted,
and yields dicts with at least `id` (stable across machines: source + relative path + position)
and `text`. Optional keys: `group` (documents with the same group land in the same split; the
default group is the id), `title`, `path`, and for pairs `question`/`answer` or `en`/`tr`.
Bump EXTRACT_VERSION when an extractor's output changes, so prepared corpora are rebuilt.
"""
from __future__ import annotations

import gzip
import re
import struct
import zlib
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

from tokenbook.data import htmltext

EXTRACT_VERSION = 1
PACK_BYTES = 8000  # dictionary-like sources: consecutive records packed into documents of about this size


class Input(NamedTuple):
    source: str
    root: Path
    rel: str

    @property
    def path(self) -> Path:
        return self.root / self.rel

    @property
    def id(self) -> str:
        return f"{self.source}:{self.rel}"


def _read(inp: Input) -> str:
    raw = inp.path.read_bytes()
    if inp.rel.endswith(".gz"):  # Debian gzips documentation files
        raw = gzip.decompress(raw)
    return raw.decode("utf-8", errors="replace")


def _pack(records: Iterable[tuple[str, str]], prefix: str) -> Iterator[dict]:
    """Concatenate consecutive (key, text) records into ~PACK_BYTES documents named after their first key."""
    buf, first, size = [], None, 0
    for key, text in records:
        if first is None:
            first = key
        buf.append(text)
        size += len(text) + 1
        if size >= PACK_BYTES:
            yield {"id": f"{prefix}:{first}", "text": "\n".join(buf)}
            buf, first, size = [], None, 0
    if buf:
        yield {"id": f"{prefix}:{first}", "text": "\n".join(buf)}


def plain_files(inputs: list[Input], corpus) -> Iterator[dict]:
    for inp in inputs:
        text = _read(inp).strip()
        if text:
            yield {"id": inp.id, "text": text, "path": inp.rel}


_TEST_DIR = re.compile(r"(^|/)(test|tests|idle_test|unittest/test|lib2to3/tests)/")


def python_files(inputs: list[Input], corpus) -> Iterator[dict]:
    # the relative path inside the stdlib is the id, so the two Debian packages cannot collide
    for inp in inputs:
        rel = inp.rel.split("python3.11/", 1)[-1]
        if _TEST_DIR.search(rel) or rel.startswith("_sysconfigdata"):
            continue
        text = _read(inp)
        if text.strip():
            yield {"id": f"stdlib:{rel}", "text": text, "path": inp.rel}


def fortunes(inputs: list[Input], corpus) -> Iterator[dict]:
    for inp in inputs:
        if "." in Path(inp.rel).name or not inp.path.is_file():
            continue  # .dat (strfile index) and .u8 (links)
        for i, cookie in enumerate(re.split(r"^%\s*$", _read(inp), flags=re.M)):
            cookie = cookie.strip("\n")
            if cookie.strip():
                yield {"id": f"fortunes:{Path(inp.rel).name}#{i}", "text": cookie}


_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _b64int(s: str) -> int:
    n = 0
    for ch in s:
        n = n * 64 + _B64.index(ch)
    return n


def gcide(inputs: list[Input], corpus) -> Iterator[dict]:
    """dictd format: the .index lists `headword<TAB>offset<TAB>length` (base64 numbers) into the
    gzip'ed .dict; several headwords can share an entry, which is read once, in file order."""
    for inp in inputs:
        data = gzip.decompress(inp.path.read_bytes())
        spans = {}
        index = inp.path.with_name(inp.path.name.replace(".dict.dz", ".index"))
        for line in index.read_text(encoding="utf-8", errors="replace").splitlines():
            parts = line.split("\t")
            if len(parts) < 3 or parts[0].startswith("00-database") or parts[0].startswith("00database"):
                continue
            spans.setdefault(_b64int(parts[1]), _b64int(parts[2]))
        records = ((f"{off:09d}", data[off:off + n].decode("utf-8", errors="replace").strip())
                   for off, n in sorted(spans.items()))
        yield from _pack(((k, t) for k, t in records if t), "gcide")


_POS = {"noun": "n.", "verb": "v.", "adj": "adj.", "adv": "adv."}


def wordnet(inputs: list[Input], corpus) -> Iterator[dict]:
    for inp in inputs:
        pos = inp.rel.rsplit(".", 1)[-1]
        if pos not in _POS:
            continue
        records = []
        for line in _read(inp).splitlines():
            if line.startswith("  ") or " | " not in line:
                continue
            head, gloss = line.split(" | ", 1)
            f = head.split()
            n = int(f[3], 16)
            words = [re.sub(r"\(\w+\)$", "", f[4 + 2 * i]).replace("_", " ") for i in range(n)]
            records.append((f"{pos}.{f[0]}", f"{', '.join(words)} ({_POS[pos]}): {gloss.strip()}"))
        yield from _pack(records, "wordnet")


_NOTE = re.compile(r"<note\b.*?</note>", re.S)
_BREAK = re.compile(r"<(?:div|l|lg|p|title)\b[^>]*>|</(?:l|lg|title|p)>")
_TAG = re.compile(r"<[^>]+>")
_CHAPTER = re.compile(r'<chapter\b[^>]*\bsID="([^"]+)"[^>]*/>')


def _osis_text(xml: str) -> str:
    text = _TAG.sub("", _BREAK.sub("\n", _NOTE.sub("", xml)))
    text = text.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"').replace("&amp;", "&")
    return htmltext.clean_lines(re.sub(r"\n\s*\n+", "\n", text))


def sword_ztext(inputs: list[Input], corpus) -> Iterator[dict]:
    """SWORD zText module: .bzs holds (offset, size, uncompressed size) per zlib block of .bzz;
    with BlockType=BOOK each block is one book in OSIS XML, cut here at its chapter milestones."""
    for inp in inputs:
        bzs = inp.path.read_bytes()
        bzz = inp.path.with_suffix(".bzz").read_bytes()
        for b in range(len(bzs) // 12):
            off, size, _ = struct.unpack_from("<III", bzs, 12 * b)
            xml = zlib.decompress(bzz[off:off + size]).decode("utf-8", errors="replace")
            cuts = list(_CHAPTER.finditer(xml))
            for i, m in enumerate(cuts):
                end = cuts[i + 1].start() if i + 1 < len(cuts) else len(xml)
                text = _osis_text(xml[m.end():end])
                if text:
                    yield {"id": f"bible:{m.group(1)}", "text": text}


def html_pages(inputs: list[Input], corpus) -> Iterator[dict]:
    for inp in inputs:
        title, text = htmltext.page_text(_read(inp))
        if len(text) >= 200:  # redirects and empty index stubs
            yield {"id": inp.id, "text": text, "title": title, "path": inp.rel, "source": inp.source}


# ---------------------------------------------------------------- LibreOffice help, EN and TR
def _libreoffice_pages(inputs: list[Input]) -> Iterator[tuple[str, dict, dict]]:
    """(page key, EN paragraphs by id, TR paragraphs by id) for every page present in both languages."""
    en = {i.rel.split("/help/en-US/", 1)[1]: i for i in inputs if "/help/en-US/" in i.rel}
    tr = {i.rel.split("/help/tr/", 1)[1]: i for i in inputs if "/help/tr/" in i.rel}
    for key in sorted(en.keys() & tr.keys()):
        yield key, htmltext.id_paragraphs(_read(en[key])), htmltext.id_paragraphs(_read(tr[key]))


def _translated(e: str, t: str) -> bool:
    return bool(e) and bool(t) and e != t and len(t) >= 2


def libreoffice_parallel(inputs: list[Input], corpus) -> Iterator[dict]:
    for key, en, tr in _libreoffice_pages(inputs):
        for pid, e in en.items():
            t = tr.get(pid, "")
            if _translated(e, t):
                yield {"id": f"libreoffice:{key}#{pid}", "group": f"libreoffice:{key}", "en": e, "tr": t,
                       "text": f"{e}\n{t}"}


def libreoffice_tr(inputs: list[Input], corpus) -> Iterator[dict]:
    # grouped by page like libreoffice_parallel, so a page is in the same split in both corpora
    for key, en, tr in _libreoffice_pages(inputs):
        paras = [t for pid, t in tr.items() if _translated(en.get(pid, ""), t)]
        if paras:
            yield {"id": f"libreoffice:{key}", "group": f"libreoffice:{key}", "text": "\n".join(paras)}


# ---------------------------------------------------------------- FAQ question/answer pairs
_QWORDS = re.compile(r"^(how|why|what|where|when|which|who|is|are|can|could|do|does|did|should|will|would|"
                     r"isn't|aren't|i\b|my\b)", re.I)


def _question(h: str) -> bool:
    return h.endswith("?") or bool(_QWORDS.match(h))


def faq_sphinx(inputs: list[Input], corpus) -> Iterator[dict]:
    """Sphinx FAQ pages: every heading that asks something is a question, its section the answer."""
    for inp in inputs:
        if Path(inp.rel).name in ("index.html", "genindex.html", "search.html"):
            continue
        for i, (level, head, body) in enumerate(htmltext.sections(_read(inp))):
            head = re.sub(r"^[\d.]+\s+", "", head)
            if level >= 2 and body and _question(head):
                yield {"id": f"{inp.id}#{i}", "question": head, "answer": body,
                       "text": f"{head}\n{body}"}


_POD_CODE = re.compile(r"[A-Z]<<+\s+(.*?)\s+>>+|[A-Z]<([^<>]*)>", re.S)


def pod_plain(text: str) -> str:
    """Pod formatting codes (C<...>, L<...>, C<< ... >>) reduced to their text."""
    prev = None
    while prev != text:
        prev = text
        text = _POD_CODE.sub(lambda m: (m.group(1) if m.group(1) is not None else m.group(2)).split("|")[0], text)
    return text


def faq_pod(inputs: list[Input], corpus) -> Iterator[dict]:
    """perlfaq: `=head2 <question>` followed by its answer up to the next =head."""
    for inp in inputs:
        chunks = re.split(r"^=head(\d)\s+(.*)$", _read(inp), flags=re.M)
        # chunks = [preamble, level, heading, body, level, heading, body, ...]
        for i in range(1, len(chunks) - 2, 3):
            level, head, body = int(chunks[i]), pod_plain(chunks[i + 1]).strip(), chunks[i + 2]
            body = re.sub(r"^=(?:over|back|item|cut|pod|begin|end|for)\b.*$", "", body, flags=re.M)
            body = pod_plain(body).strip()
            if level == 2 and body and _question(head):
                yield {"id": f"{inp.id}#{i // 3}", "question": head, "answer": body,
                       "text": f"{head}\n{body}"}


EXTRACTORS = {f.__name__: f for f in (plain_files, python_files, fortunes, gcide, wordnet, sword_ztext,
                                      html_pages, libreoffice_parallel, libreoffice_tr, faq_sphinx, faq_pod)}


# ---------------------------------------------------------------- Turkish morphology (tokenization-standards)
def _conllu_sentences(text: str) -> Iterator[tuple[dict, list[list[str]]]]:
    """(comment fields, token rows) per sentence of a CoNLL-U file."""
    meta, rows = {}, []
    for line in text.splitlines() + [""]:
        if not line.strip():
            if rows:
                yield meta, rows
            meta, rows = {}, []
        elif line.startswith("#"):
            key, sep, val = line[1:].partition("=")
            if sep:
                meta[key.strip()] = val.strip()
        else:
            rows.append(line.split("\t"))


def conllu_treebank(inputs: list[Input], corpus) -> Iterator[dict]:
    """Turkish Web Treebank: one document per sentence, grouped by source page.

    A word is a row with a lemma plus the rows after it whose lemma is `_`: the treebank writes the
    derivational boundaries of a word as separate rows (inflectional groups, IGs) glued with
    SpaceAfter=No, e.g. `Açık|la|nma|yan` (lemma açık). Each word is [form, lemma, upos, [IG surfaces],
    space_after]; the words joined with their spaces give `text` exactly (checked here).
    """
    for inp in inputs:
        for meta, rows in _conllu_sentences(_read(inp)):
            sid, text = meta.get("sent_id"), meta.get("text")
            if not sid or not text:
                continue
            words: list[list] = []
            for r in rows:
                if "-" in r[0] or "." in r[0]:
                    continue  # multiword ranges / empty nodes (none in this treebank)
                form, lemma, upos, space = r[1], r[2], r[3], "SpaceAfter=No" not in r[9]
                if lemma == "_" and words and not words[-1][4]:
                    w = words[-1]
                    w[0] += form
                    w[3].append(form)
                    w[4] = space
                else:
                    words.append([form, lemma, upos, [form], space])
            rebuilt = "".join(w[0] + (" " if w[4] else "") for w in words).strip()
            if rebuilt != text:
                continue  # never happens in v1.0.0; a changed file must not yield misaligned words
            yield {"id": f"twt:{sid}", "group": f"twt:{sid.rsplit(':', 1)[0]}", "text": text,
                   "section": Path(inp.rel).stem, "words": words}


def hunspell_stems(inputs: list[Input], corpus) -> Iterator[dict]:
    """A hunspell .dic with its .aff (suffix-only, `FLAG num`, every rule `SFX f 0 suffix .`, as in tr_TR):
    lines `stem<TAB>suffix suffix ...` (the suffixes its flags allow), packed into ~8 kB documents."""
    for inp in inputs:
        aff = inp.path.with_suffix(".aff").read_text(encoding="utf-8").splitlines()
        suffix: dict[str, list[str]] = {}
        for line in aff:
            p = line.split()
            if len(p) >= 5 and p[0] == "SFX":
                if p[2] != "0" or p[4] != ".":
                    raise ValueError(f"{inp.rel}: rule {line!r} strips or conditions; only plain appends are supported")
                suffix.setdefault(p[1], []).append(p[3])
            elif len(p) >= 2 and p[0] == "PFX":
                raise ValueError(f"{inp.rel}: prefix rules are not supported")
        lines = _read(inp).splitlines()[1:]  # the first line is the entry count

        def records():
            for e in lines:
                stem, _, flags = e.strip().partition("/")
                if not stem:
                    continue
                sufs = sorted({s for f in flags.split(",") if f for s in suffix.get(f, ())})
                yield stem, f"{stem}\t{' '.join(sufs)}"
        yield from _pack(records(), "hunspell-tr")


EXTRACTORS.update({f.__name__: f for f in (conllu_treebank, hunspell_stems)})
