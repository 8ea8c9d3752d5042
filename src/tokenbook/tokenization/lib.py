"""Less-is-Better (LiB): a vocabulary learned by reading, keeping units that save tokens *and* types.

Used by the chapter `lib-tokenizer` (Yang, arXiv:2403.00417, after Yang, Frank & van den Bosch,
"Less is Better", CogALex 2020). LiB follows the *principle of least effort*: a reader wants few
units per text (fewer tokens: less working-memory work) and few units to store (fewer types: less
long-term memory). Its lexicon is an ordered list — rank 0 is the most valuable unit — and is shaped
by reading text in "articles":

    read      segment the article greedily, longest unit first (single characters always fit);
    memorise  with chance α (`memory_in`) the concatenation of two adjacent chunks is proposed; a
              proposal seen twice in one article joins the lexicon at its tail (lowest rank). Chunks
              are not bounded by spaces, so words and multi-word expressions form alike;
    evaluate  wherever the longest unit u has a shorter competitor v (the next-longest unit at the same
              place, or one character), both readings are continued greedily until their boundaries
              meet again. If u's reading needs fewer tokens — or as many, with a smaller rank sum — u is
              rewarded; otherwise u is punished and v rewarded;
    move      after each article, a reward moves a unit at rank r up by ⌊u·r⌋+1 places (u =
              `update_rate`), a punishment moves it down as far; a unit pushed past the tail is forgotten;
    forget    the tail units are put on probation; one that is not rewarded within `life` articles is
              forgotten.

Equal vocabulary. LiB's lexicon size is emergent; to compare with BPE at the same vocabulary size
we cap it: when more than `capacity` units survive an article, the lowest-ranked ones are forgotten
(a long-term memory of fixed size). Ids 0–255 are the UTF-8 bytes (so every string has an encoding
and round-trips exactly); ids 256… are the learned units in rank order; `n_reserved` ids at the end
are never produced (they stand for a BPE's special tokens, so both embedding tables have the same rows).

Encoding is the reference code's reading: greedy longest match left to right, falling back to the
character's UTF-8 bytes (`mode="greedy"`). `mode="shortest"` is the fewest-token segmentation
(dynamic programming) with the same lexicon, for comparison.

Our changes to the reference implementation (github.com/ray306/LiB): bytes instead of a learned
character inventory as the fallback; moves computed on ranks frozen at the start of each article and
applied by one sort at its end; the capacity cap; probation is reset by rewards only (every multi-
character unit has a competitor here, so every use is evaluated).
"""
from __future__ import annotations

import hashlib
import json
import math
import random
import re
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .. import paths

N_BYTES = 256
MODES = ("greedy", "shortest")
FORMAT = 1  # bump when learning changes, so cached lexicons are rebuilt
_END = None  # trie key that holds the unit id of the string ending at that node


@dataclass(frozen=True)
class LibConfig:
    """Every knob of the learner. Defaults follow the reference code (life 10, max_len 12, α 0.25, u 0.2)."""

    vocab_size: int = 1024       # total ids: 256 bytes + learned units + n_reserved
    n_reserved: int = 0          # ids kept unused at the end (a BPE's special tokens)
    max_len: int = 12            # longest unit, in characters
    memory_in: float = 0.25      # α: chance that two adjacent chunks are proposed as a unit
    update_rate: float = 0.2     # u: a reward/punishment moves a unit by ⌊u·rank⌋+1 places
    life: int = 10               # articles a unit on probation survives without a reward
    memory_out: float = 0.0001   # fraction of the lexicon's tail put on probation after each article (≥ 1 unit)
    article_chars: int = 4000    # characters per article (a contiguous window of the training text)
    n_articles: int = 200        # articles read
    seed: int = 0

    def __post_init__(self):
        if self.capacity < 1:
            raise ValueError(f"vocab_size={self.vocab_size} leaves no room for learned units "
                             f"(256 byte ids + {self.n_reserved} reserved)")
        if self.max_len < 2:
            raise ValueError(f"max_len must be >= 2, got {self.max_len}")
        if not 0 < self.memory_in <= 1:
            raise ValueError(f"memory_in must be in (0, 1], got {self.memory_in}")
        if not 0 <= self.update_rate < 1:
            raise ValueError(f"update_rate must be in [0, 1), got {self.update_rate}")
        if self.life < 1 or self.article_chars < 2 or self.n_articles < 1:
            raise ValueError("life, article_chars and n_articles must be positive")

    @property
    def capacity(self) -> int:
        """Learned units that fit: vocab_size − 256 − n_reserved."""
        return self.vocab_size - N_BYTES - self.n_reserved


def _cost(ch: str) -> int:
    """Tokens a character costs when no unit covers it: its UTF-8 bytes."""
    return 1 if ch < "\x80" else len(ch.encode("utf-8"))


class _Trie:
    """Units in a character trie; `matches(s, i)` lists the units starting at s[i], shortest first."""

    def __init__(self, max_len: int):
        self.root: dict = {}
        self.max_len = max_len

    def add(self, unit: str, value) -> None:
        node = self.root
        for ch in unit:
            node = node.setdefault(ch, {})
        node[_END] = value

    def remove(self, unit: str) -> None:
        node = self.root
        for ch in unit:
            node = node[ch]
        del node[_END]

    def matches(self, s: str, i: int) -> list:
        out = []
        node = self.root
        stop = min(len(s), i + self.max_len)
        j = i
        while j < stop:
            node = node.get(s[j])
            if node is None:
                break
            j += 1
            if _END in node:
                out.append(j)
        return out

    def longest(self, s: str, i: int) -> int:
        """End of the longest unit at s[i] (i when none)."""
        node = self.root
        stop = min(len(s), i + self.max_len)
        best = i
        j = i
        while j < stop:
            node = node.get(s[j])
            if node is None:
                break
            j += 1
            if _END in node:
                best = j
        return best


# ------------------------------------------------------------------------------------------ learner
class LibLearner:
    """The LiB memorise / evaluate / forget loop over a training text (see the module docstring)."""

    def __init__(self, cfg: LibConfig):
        self.cfg = cfg
        self.units: list[str] = []          # rank order
        self.trie = _Trie(cfg.max_len)
        self.probation: dict[str, int] = {}  # unit -> articles left
        self.rng = random.Random(cfg.seed)
        self.log: list[dict] = []

    # -- reading --------------------------------------------------------------------------------
    def _next_end(self, s: str, i: int) -> tuple[int, int]:
        """Greedy step at i: (end, token cost)."""
        j = self.trie.longest(s, i)
        if j > i:
            return j, 1
        return i + 1, _cost(s[i])

    def _compare(self, s: str, i: int, long_end: int, short_end: int, short_cost: int, rank: dict) -> bool:
        """Does reading s from i with the unit s[i:long_end] cost less than starting with s[i:short_end]?

        Both readings continue greedily until their boundaries meet (or the text ends); fewer tokens
        wins, a tie goes to the smaller sum of ranks (a character outside the lexicon ranks 0)."""
        n = len(s)
        a, b = long_end, short_end
        ta, tb = 1, short_cost
        ra, rb = rank.get(s[i:a], 0), rank.get(s[i:b], 0)
        while a != b and (a < n or b < n):
            if a < b:
                j, c = self._next_end(s, a)
                ra += rank.get(s[a:j], 0)
                a, ta = j, ta + c
            else:
                j, c = self._next_end(s, b)
                rb += rank.get(s[b:j], 0)
                b, tb = j, tb + c
        if ta != tb:
            return ta < tb
        return ra <= rb

    def read(self, s: str) -> dict:
        """Read one article: memorise proposals, evaluate competitions, then move and forget."""
        cfg = self.cfg
        rank = {u: r for r, u in enumerate(self.units)}
        n_start = len(self.units)
        events: list[tuple[str, int]] = []      # (unit, +1 reward / -1 punishment)
        seen_once: set[str] = set()
        added: list[str] = []
        rng = self.rng
        prev = ""
        i, n, tokens = 0, len(s), 0
        while i < n:
            ends = self.trie.matches(s, i)
            if ends:
                j = ends[-1]
                chunk = s[i:j]
                tokens += 1
                # the longest unit competes with the next-longest one, or with its first character
                if len(ends) > 1:
                    short, short_cost = ends[-2], 1
                else:
                    short, short_cost = i + 1, _cost(s[i])
                if self._compare(s, i, j, short, short_cost, rank):
                    events.append((chunk, +1))
                else:
                    events.append((chunk, -1))
                    if len(ends) > 1:
                        events.append((s[i:short], +1))
            else:
                j = i + 1
                chunk = s[i]
                tokens += _cost(chunk)
            if prev and len(prev) + len(chunk) <= cfg.max_len and rng.random() < cfg.memory_in:
                cand = prev + chunk
                if cand not in rank:
                    if cand in seen_once:
                        seen_once.discard(cand)
                        rank[cand] = len(rank)
                        self.units.append(cand)
                        self.trie.add(cand, True)
                        added.append(cand)
                    else:
                        seen_once.add(cand)
            prev = chunk
            i = j
        self._update(events, rank)
        return {"chars": n, "tokens": tokens, "added": len(added), "lexicon": len(self.units),
                "lexicon_before": n_start}

    def _update(self, events, rank: dict) -> None:
        """Apply the article's rewards and punishments to ranks (as floats), re-sort once, then forget."""
        cfg = self.cfg
        n = len(self.units)
        pos: dict[str, float] = {}
        gone = set()
        for u, e in events:
            if u in gone:
                continue
            p = pos.get(u)
            if p is None:
                p = float(rank[u])
            step = math.floor(max(p, 0.0) * cfg.update_rate) + 1
            # a moved unit lands just before (reward) or after (punishment) the unit at its target rank,
            # as an insertion into the list would place it
            if e > 0:
                pos[u] = max(p - step, 0.0) - 0.5
                self.probation.pop(u, None)
            else:
                pos[u] = p + step + 0.5
                if p + step >= n:  # pushed past the tail: forgotten
                    gone.add(u)
        for u in list(self.probation):  # probation: count down, forget the expired
            self.probation[u] -= 1
            if self.probation[u] <= 0:
                del self.probation[u]
                gone.add(u)
        keyed = [(pos.get(u, r), r, u) for r, u in enumerate(self.units) if u not in gone]
        keyed.sort()
        order = [u for _, _, u in keyed]
        if len(order) > cfg.capacity:  # a long-term memory of fixed size: the tail is forgotten
            gone.update(order[cfg.capacity:])
            del order[cfg.capacity:]
        for u in gone:
            self.trie.remove(u)
            self.probation.pop(u, None)
        self.units = order
        k = max(1, int(round(cfg.memory_out * len(order))))
        for u in order[-k:]:
            self.probation.setdefault(u, cfg.life)

    def fit(self, text: str, progress: bool = False) -> "LibLearner":
        """Read `n_articles` windows of `article_chars` characters at seeded random offsets of `text`."""
        cfg = self.cfg
        if len(text) < 2:
            raise ValueError("LiB needs a training text of at least 2 characters")
        span = max(1, len(text) - cfg.article_chars)
        it = range(cfg.n_articles)
        if progress:
            from tqdm.auto import tqdm
            it = tqdm(it, desc=f"LiB V={cfg.vocab_size}", mininterval=2.0, leave=False)
        total_chars = total_tokens = 0
        for a in it:
            off = self.rng.randrange(span)
            row = self.read(text[off: off + cfg.article_chars])
            total_chars += row["chars"]
            total_tokens += row["tokens"]
            self.log.append({"article": a + 1, "chars_read": total_chars, "lexicon": row["lexicon"],
                             "chars_per_token": row["chars"] / max(1, row["tokens"]), "added": row["added"]})
        return self


# --------------------------------------------------------------------------------------- tokenizer
class LibTokenizer:
    """encode(text) -> ids, decode(ids) -> text over a LiB lexicon; ids 0–255 are bytes, then units."""

    def __init__(self, units: Sequence[str], *, vocab_size: int | None = None, n_reserved: int = 0,
                 max_len: int | None = None, mode: str = "greedy", name: str = "lib", info: dict | None = None):
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
        units = list(units)
        if len(set(units)) != len(units):
            raise ValueError("duplicate units in the lexicon")
        bad = [u for u in units if len(u.encode("utf-8")) < 2]
        if bad:
            raise ValueError(f"units must be at least 2 UTF-8 bytes (single bytes are ids 0-255): {bad[:5]}")
        self.units, self.mode, self.name = units, mode, name
        self.n_reserved = int(n_reserved)
        self.vocab_size = int(vocab_size) if vocab_size is not None else N_BYTES + len(units) + self.n_reserved
        if self.vocab_size < N_BYTES + len(units) + self.n_reserved:
            raise ValueError(f"vocab_size {self.vocab_size} < 256 + {len(units)} units + {self.n_reserved} reserved")
        self.max_len = max_len or max((len(u) for u in units), default=1)
        self.trie = _Trie(self.max_len)
        for k, u in enumerate(units):
            self.trie.add(u, N_BYTES + k)
        self._bytes = [bytes([b]) for b in range(N_BYTES)] + [u.encode("utf-8") for u in units]
        self.info = dict(info or {})

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"LibTokenizer({self.name!r}, units={len(self.units)}, vocab_size={self.vocab_size}, mode={self.mode!r})"

    def with_mode(self, mode: str) -> "LibTokenizer":
        return LibTokenizer(self.units, vocab_size=self.vocab_size, n_reserved=self.n_reserved,
                            max_len=self.max_len, mode=mode, name=f"{self.name}-{mode}", info=self.info)

    def _spans(self, text: str) -> list[tuple[int, int]]:
        """(start, end) character spans of the segmentation; an end-start of 1 may be a byte fallback."""
        if self.mode == "shortest":
            return self._shortest(text)
        out, i, n, longest = [], 0, len(text), self.trie.longest
        while i < n:
            j = longest(text, i)
            if j == i:
                j = i + 1
            out.append((i, j))
            i = j
        return out

    def _shortest(self, text: str) -> list[tuple[int, int]]:
        n = len(text)
        best = [0] + [1 << 60] * n
        back = [0] * (n + 1)
        for i in range(n):
            b = best[i]
            c = b + _cost(text[i])
            if c < best[i + 1]:
                best[i + 1], back[i + 1] = c, i
            for j in self.trie.matches(text, i):
                if b + 1 < best[j]:
                    best[j], back[j] = b + 1, i
        out, j = [], n
        while j > 0:
            i = back[j]
            out.append((i, j))
            j = i
        return out[::-1]

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        node_id = self._unit_id
        for i, j in self._spans(text):
            piece = text[i:j]
            uid = node_id(piece) if (j - i > 1 or piece >= "\x80") else None
            if uid is None:
                ids.extend(piece.encode("utf-8"))
            else:
                ids.append(uid)
        return ids

    def _unit_id(self, piece: str):
        node = self.trie.root
        for ch in piece:
            node = node.get(ch)
            if node is None:
                return None
        return node.get(_END)

    def decode(self, ids: Iterable[int]) -> str:
        out = bytearray()
        limit = len(self._bytes)
        for i in ids:
            if not 0 <= i < limit:
                raise ValueError(f"id {i} is not a byte or a learned unit (0..{limit - 1}; "
                                 f"{limit}..{self.vocab_size - 1} are reserved)")
            out += self._bytes[i]
        return out.decode("utf-8", errors="replace")

    def token_bytes(self, ids: Iterable[int]) -> list[bytes]:
        return [self._bytes[i] for i in ids]

    def pieces(self, text: str) -> list[str]:
        """The segmentation as strings (a character split into byte tokens is one piece here)."""
        return [text[i:j] for i, j in self._spans(text)]

    # -- persistence ----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"units": self.units, "vocab_size": self.vocab_size, "n_reserved": self.n_reserved,
                "max_len": self.max_len, "mode": self.mode, "name": self.name}

    @classmethod
    def from_dict(cls, d: dict, info: dict | None = None) -> "LibTokenizer":
        return cls(d["units"], vocab_size=d["vocab_size"], n_reserved=d["n_reserved"], max_len=d["max_len"],
                   mode=d.get("mode", "greedy"), name=d.get("name", "lib"), info=info)


def _cache_path(texts, cfg: LibConfig, label: str, max_bytes) -> tuple[Path, dict, list[str]]:
    from ..data.pieces import take_bytes
    from ..tokenizers.trained import _texts_sha
    texts = take_bytes(texts, max_bytes)
    settings = {**asdict(cfg), "label": label, "max_bytes": max_bytes, "texts_sha256": _texts_sha(texts),
                "format": FORMAT}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    return cache_dir() / f"{label}-V{cfg.vocab_size}-{key}" / "lexicon.json", settings, texts


def learn(texts: Sequence[str], cfg: LibConfig, *, label: str = "texts", max_bytes: int | None = None,
          progress: bool = True, use_cache: bool = True) -> LibTokenizer:
    """Learn (or load from the cache) a LiB lexicon on `texts` (joined by newlines).

    Cached under data/cache/tokenizers/lib/<label>-V<vocab>-<hash>/lexicon.json, the hash covering the
    settings, the texts' sha256 and FORMAT; written atomically, so a stale or half file never loads.
    """
    if use_cache:
        tok = _cached(texts, cfg, label, max_bytes)
        if tok is not None:
            return tok
    path, settings, texts = _cache_path(texts, cfg, label, max_bytes)
    learner = LibLearner(cfg).fit("\n".join(texts), progress=progress)
    tok = LibTokenizer(learner.units, vocab_size=cfg.vocab_size, n_reserved=cfg.n_reserved,
                       max_len=cfg.max_len, name=f"lib-{cfg.vocab_size}")
    doc = {"settings": settings, "tokenizer": tok.to_dict(), "log": learner.log}
    if use_cache:
        paths.atomic_write_text(path, json.dumps(doc, ensure_ascii=False))
    tok.info = {**settings, "log": learner.log, "dir": str(path.parent), "cached": False}
    return tok


# ----------------------------------------------------------------------------- word-level baseline
PRETOKEN = re.compile(r"""'(?:[sdmt]|ll|ve|re)| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+""")


class WordTokenizer:
    """Word-level baseline: the most frequent pre-tokens (GPT-2-style words with their leading space,
    the split BPE starts from) get one id each; any other pre-token is spelled out in bytes."""

    def __init__(self, words: Sequence[str], *, vocab_size: int | None = None, n_reserved: int = 0,
                 name: str = "word"):
        self.words = list(words)
        self.n_reserved = n_reserved
        self.vocab_size = vocab_size or N_BYTES + len(self.words) + n_reserved
        if self.vocab_size < N_BYTES + len(self.words) + n_reserved:
            raise ValueError("vocab_size too small for the word list")
        self.ids = {w: N_BYTES + k for k, w in enumerate(self.words)}
        self._bytes = [bytes([b]) for b in range(N_BYTES)] + [w.encode("utf-8") for w in self.words]
        self.name = name

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, n_reserved: int = 0, name: str | None = None):
        counts = Counter(w for t in texts for w in PRETOKEN.findall(t) if len(w.encode("utf-8")) > 1)
        k = vocab_size - N_BYTES - n_reserved
        if k < 1:
            raise ValueError(f"vocab_size={vocab_size} leaves no room for words")
        words = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:k]]
        return cls(words, vocab_size=vocab_size, n_reserved=n_reserved, name=name or f"word-{vocab_size}")

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str) -> list[int]:
        out: list[int] = []
        pos = 0
        for m in PRETOKEN.finditer(text):
            if m.start() > pos:  # the pattern covers every character; this is only a safeguard
                out.extend(text[pos:m.start()].encode("utf-8"))
            w = m.group()
            i = self.ids.get(w)
            if i is None:
                out.extend(w.encode("utf-8"))
            else:
                out.append(i)
            pos = m.end()
        if pos < len(text):
            out.extend(text[pos:].encode("utf-8"))
        return out

    def decode(self, ids: Iterable[int]) -> str:
        return b"".join(self._bytes[i] for i in ids).decode("utf-8", errors="replace")

    def token_bytes(self, ids: Iterable[int]) -> list[bytes]:
        return [self._bytes[i] for i in ids]


# ------------------------------------------------------------------------------------- measurement
_WORD = re.compile(r"\w+(?:['’]\w+)*")
KINDS = ("subword", "word", "multi-word", "other")


def _word_spans(text: str) -> list[tuple[int, int]]:
    """Byte spans of the words of `text`: runs of letters/digits, with inner apostrophes."""
    spans, pos_c, pos_b = [], 0, 0
    for m in _WORD.finditer(text):
        pos_b += len(text[pos_c:m.start()].encode("utf-8"))
        end_b = pos_b + len(m.group().encode("utf-8"))
        spans.append((pos_b, end_b))
        pos_c, pos_b = m.end(), end_b
    return spans


def token_kinds(text: str, token_bytes: Sequence[bytes]) -> list[str]:
    """Classify each token of an encoding of `text` by the words (runs of letters/digits, with inner
    apostrophes) it touches: 'multi-word' ≥ 2 words; 'word' exactly one, whole; 'subword' part of one;
    'other' none (spaces, punctuation). Byte tokens that split a letter are subwords."""
    n = len(text.encode("utf-8"))
    if sum(len(b) for b in token_bytes) != n:
        raise ValueError("the tokens do not spell the text")
    spans = _word_spans(text)
    word_of = np.full(n + 1, -1, dtype=np.int64)
    for k, (a, b) in enumerate(spans):
        word_of[a:b] = k
    out, pos = [], 0
    for tb in token_bytes:
        a, b = pos, pos + len(tb)
        pos = b
        ws = np.unique(word_of[a:b])
        ws = ws[ws >= 0]
        if len(ws) >= 2:
            out.append("multi-word")
        elif len(ws) == 1:
            w = int(ws[0])
            out.append("word" if a <= spans[w][0] and spans[w][1] <= b else "subword")
        else:
            out.append("other")
    return out


def word_breaks(text: str, token_bytes: Sequence[bytes]) -> tuple[int, int]:
    """(breaks between consecutive words that hold a token edge, breaks). A break is the stretch between
    two words (usually a space, which may go with either word); a word-aligned tokenizer such as BPE after
    its pre-tokenizer keeps every break, a multi-word unit or a unit like 'e the' bridges one."""
    import bisect
    edges = np.cumsum([0] + [len(b) for b in token_bytes]).tolist()
    spans = _word_spans(text)
    kept = 0
    for (_, end), (start, _) in zip(spans, spans[1:]):
        k = bisect.bisect_left(edges, end)
        kept += k < len(edges) and edges[k] <= start
    return kept, max(0, len(spans) - 1)


def encode_docs(tok, texts: Sequence[str]) -> list[list[int]]:
    return [list(tok.encode(t)) for t in texts]


def doc_token_counts(ids: Sequence[Sequence[int]]) -> np.ndarray:
    return np.array([len(x) for x in ids], dtype=float)


def types_used(ids: Sequence[Sequence[int]], idx: Iterable[int] | None = None) -> int:
    """Distinct token ids over the documents `idx` (all when None)."""
    sel = range(len(ids)) if idx is None else idx
    seen: set[int] = set()
    for k in sel:
        seen.update(ids[int(k)])
    return len(seen)


def multiword_units(units: Sequence[str]) -> list[str]:
    """Units that span at least two words (contain a space or apostrophe-free break between word runs)."""
    return [u for u in units if len(_WORD.findall(u)) >= 2]


def cache_dir() -> Path:
    return paths.CACHE / "tokenizers" / "lib"



def learn_many(texts: Sequence[str], cfgs: Sequence[LibConfig], *, label: str = "texts",
               max_bytes: int | None = None, workers: int = 1, progress: bool = True) -> list[LibTokenizer]:
    """`learn` for several settings (e.g. vocabulary sizes), in up to `workers` processes.

    Each lexicon is cached on its own; those already cached are loaded here without starting a process."""
    cfgs = list(cfgs)
    out: list[LibTokenizer | None] = [None] * len(cfgs)
    todo = []
    for k, c in enumerate(cfgs):
        tok = _cached(texts, c, label, max_bytes)
        if tok is None:
            todo.append(k)
        else:
            out[k] = tok
    if todo and (workers <= 1 or len(todo) == 1):
        for k in todo:
            out[k] = learn(texts, cfgs[k], label=label, max_bytes=max_bytes, progress=progress)
    elif todo:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed
        ctx = multiprocessing.get_context("spawn")  # no fork of a process that may hold torch threads
        with ProcessPoolExecutor(min(workers, len(todo)), mp_context=ctx) as ex:
            futs = {ex.submit(learn, list(texts), cfgs[k], label=label, max_bytes=max_bytes, progress=False): k
                    for k in todo}
            done = as_completed(futs)
            if progress:
                from tqdm.auto import tqdm
                done = tqdm(done, total=len(futs), desc="LiB lexicons", leave=False)
            for f in done:
                out[futs[f]] = f.result()
    return out  # type: ignore[return-value]


def _cached(texts, cfg: LibConfig, label: str, max_bytes):
    path = _cache_path(texts, cfg, label, max_bytes)[0]
    if not path.exists():
        return None
    doc = json.loads(path.read_text())
    return LibTokenizer.from_dict(doc["tokenizer"], info={**doc["settings"], "log": doc["log"],
                                                          "dir": str(path.parent), "cached": True})
