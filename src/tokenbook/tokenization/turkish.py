"""Linguistic integrity of tokenizers on Turkish: %TR, %Pure and the TR/EN token premium.

Bayram et al. (arXiv 2502.07057) score a tokenizer by two linguistic rates over its tokens:

    %TR   = tokens that are valid Turkish units / tokens            (paper: "valid words or morphemes")
    %Pure = tokens that are one meaningful unit (a root or a single morpheme) / tokens

The paper asks a web service (ITU's IsTurkish and morphological analyser) for each unique token.
Offline, we answer the same questions with two public resources (data/registry.yaml):

- **validity** (`Lexicon`): a token, stripped of its word-boundary space and a leading apostrophe, is a
  valid *word* if Turkish hunspell accepts it (a dictionary stem, or a stem plus a suffix chain its
  flags allow: tr_TR has 371k stems and ~1M such forms), and a valid *morpheme* if it is an allomorph
  of a textbook Turkish suffix (`SUFFIX_TEMPLATES`, expanded with vowel harmony and consonant
  alternation: -lAr → lar/ler, -DA → da/de/ta/te, ...). %TR counts words or morphemes, as the paper does;
  `tr_words` counts words only. Tokens with no letter (spaces, digits, punctuation) are left out of
  both numerator and denominator; a token that is not valid UTF-8 on its own (a byte-level piece of
  a letter) is never valid.
- **purity** (`gold_sentence`, `purity_counts`): on the Turkish Web Treebank, where every word comes with
  its lemma and its derivational pieces (inflectional groups, IGs), we know two kinds of morpheme
  boundary inside each word: where the lemma (stem) ends, and where each derivational suffix starts.
  A token occurrence is **pure** when no such boundary, and no word edge, lies strictly inside it;
  i.e. it stays inside one gold segment (the stem, or one suffix chain between known boundaries).
  The boundaries *between* inflectional suffixes (kuş|lar|a) are not annotated, so a token `lara` is
  counted pure: this %Pure is an upper bound on the paper's "single morpheme" rate inside suffix
  chains, and exact at the stem|suffix boundary, where tokenizers differ most. Because a tokenizer
  that cuts every character is trivially pure, `purity_counts` also returns **boundary recall**: the
  share of gold stem|suffix boundaries at which a token boundary falls.

Both rates are reported per token occurrence (bootstrap over sentences) and, as in the paper, per
unique token type (`type_rate`, with half-samples of sentences: see there).

The **token premium** is tokens(TR) / tokens(EN) over aligned paragraph pairs (`token_premium`).
"""
from __future__ import annotations

import bisect
import itertools
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable, Sequence

import numpy as np

from .. import stats

VOWELS = "aeıioöuü"
_BACK = set("aıou")
_ROUNDED = set("oöuü")
# letters written without their diacritics in informal text (the treebank's web section has many)
_FOLD = str.maketrans("çğıöşüâîûÇĞİÖŞÜÂÎÛ", "cgiosuaiuCGIOSUAIU")

# Textbook Turkish suffixes as archiphoneme templates: A = a/e, I = ı/i/u/ü (vowel harmony with the
# preceding vowel), D = d/t, C = c/ç, K = k/ğ, G = g/ğ/k; a letter in parentheses is a buffer that
# appears after vowels only (we keep both forms, since the stem is not known).
SUFFIX_TEMPLATES = (
    # nominal inflection: number, possession, case, the ki relativiser
    "lAr", "(I)m", "(I)n", "(s)I", "(I)mIz", "(I)nIz", "lArI",
    "(y)I", "(y)A", "DA", "DAn", "(n)In", "(y)lA", "nI", "nA", "nDA", "nDAn", "ki", "kü",
    # copula and person markers, question particle
    "(y)Im", "sIn", "(y)Iz", "sInIz", "DIr", "(y)DI", "(y)mIş", "(y)sA", "(y)ken", "mI",
    # verbal: negation, ability, tense/aspect/mood, person
    "mA", "mAz", "(y)AmA", "(y)Abil", "(I)yor", "(y)AcAK", "DI", "mIş", "(A)r", "(I)r", "mAlI", "sA",
    "(y)AlIm", "(y)In", "(y)InIz", "sInlAr", "m", "n", "k", "nIz",
    # voice (the causative -DIr is spelled like the copula's, above)
    "(I)l", "(I)ş", "(I)t",
    # non-finite forms
    "mAK", "(y)Iş", "(y)An", "DIK", "(y)Ip", "(y)ArAk", "(y)IncA", "mAdAn", "mAksIzIn", "DIkçA", "(y)AlI",
    # derivation
    "lIK", "lI", "sIz", "CI", "CIK", "CA", "lA", "lAş", "lAn", "sAl", "DAş", "(I)msI", "(y)IcI", "GI",
    "GIn", "(I)K", "sI",
)
_CONSONANT_SETS = {"D": "dt", "C": "cç", "K": "kğ", "G": "gğk"}


def tr_lower(s: str) -> str:
    """Turkish lower-casing: I → ı and İ → i (Python's str.lower maps I → i and İ → i̇)."""
    return s.replace("I", "ı").replace("İ", "i").lower()


def tr_upper(s: str) -> str:
    """Turkish upper-casing: i → İ and ı → I."""
    return s.replace("i", "İ").replace("ı", "I").upper()


def fold(s: str) -> str:
    """Turkish letters without diacritics (ç→c, ğ→g, ı→i, ...): one character for one."""
    return s.translate(_FOLD)


def _harmony(prev: str, arch: str) -> str:
    back = prev in _BACK
    if arch == "A":
        return "a" if back else "e"
    return ("u" if prev in _ROUNDED else "ı") if back else ("ü" if prev in _ROUNDED else "i")


def expand_template(template: str) -> set[str]:
    """Every surface form of one suffix template, for every stem vowel and consonant choice."""
    # optional buffers "(x)": both with and without
    parts, i = [], 0
    while i < len(template):
        if template[i] == "(":
            j = template.index(")", i)
            parts.append(("opt", template[i + 1:j]))
            i = j + 1
        else:
            parts.append(("fix", template[i]))
            i += 1
    opts = [k for k, (kind, _) in enumerate(parts) if kind == "opt"]
    out = set()
    for keep in itertools.product((True, False), repeat=len(opts)):
        keepset = {k for k, on in zip(opts, keep) if on}
        letters = "".join(txt for k, (kind, txt) in enumerate(parts) if kind == "fix" or k in keepset)
        for stem_vowel in VOWELS:
            cons_choices = [_CONSONANT_SETS.get(c, c) for c in letters]
            for combo in itertools.product(*cons_choices):
                prev, word = stem_vowel, []
                for ch in combo:
                    if ch in "AI":
                        ch = _harmony(prev, ch)
                    if ch in VOWELS:
                        prev = ch
                    word.append(ch)
                if word:
                    out.add("".join(word))
    return out


@lru_cache(maxsize=4)
def suffix_allomorphs(templates: tuple[str, ...] = SUFFIX_TEMPLATES) -> frozenset[str]:
    """The morpheme inventory: the union of all template expansions."""
    return frozenset(s for t in templates for s in expand_template(t))


@dataclass(frozen=True)
class Lexicon:
    """Turkish validity: hunspell word forms (stem + allowed suffix chain) and a suffix inventory."""
    stems: dict  # stem -> its allowed suffix chains, space-separated (split only when the stem matches)
    morphemes: frozenset

    def is_word(self, s: str) -> bool:
        # as written, lower-cased, and capitalised (tr_TR spells proper nouns such as İnternet capitalised)
        low = tr_lower(s)
        for c in dict.fromkeys((s, low, tr_upper(low[:1]) + low[1:])):
            if c in self.stems:
                return True
            for i in range(1, len(c)):
                allowed = self.stems.get(c[:i])
                if allowed and c[i:] in allowed.split(" "):
                    return True
        return False

    def is_morpheme(self, s: str) -> bool:
        return tr_lower(s) in self.morphemes

    def classify(self, s: str) -> str:
        """'word', 'morpheme', 'invalid', or 'skip' (no letter) for a token's text."""
        s = s.strip()
        if s[:1] in "'’":
            s = s[1:]
        if not any(ch.isalpha() for ch in s):
            return "skip"
        if not s.isalpha():
            return "invalid"
        if self.is_word(s):
            return "word"
        if self.is_morpheme(s):
            return "morpheme"
        return "invalid"


def parse_hunspell_lines(texts: Iterable[str]) -> dict:
    """{stem: "suffix suffix ..."} from the `turkish-hunspell` corpus documents (lines `stem<TAB>suffixes`)."""
    stems: dict[str, str] = {}
    for text in texts:
        for line in text.split("\n"):
            stem, _, sufs = line.partition("\t")
            if stem:
                stems[stem] = f"{stems[stem]} {sufs}".strip() if stem in stems else sufs
    return stems


@lru_cache(maxsize=1)
def load_lexicon() -> Lexicon:
    """The hunspell lexicon (all splits of the `turkish-hunspell` corpus) and the suffix inventory."""
    from ..data import load_corpus
    texts = [t for split in ("train", "val", "test") for t in load_corpus("turkish-hunspell", split)]
    return Lexicon(parse_hunspell_lines(texts), suffix_allomorphs())


# ---------------------------------------------------------------- aligning tokens with the text
class CharTokenizer:
    """One token per Unicode character (id = code point): the reference that is pure by construction."""
    name, vocab_size = "char", 0x110000

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def token_bytes(self, ids: Iterable[int]) -> list[bytes]:
        return [chr(i).encode("utf-8") for i in ids]


class AlignmentError(ValueError):
    """A tokenizer's pieces do not spell the text (other than one prefix space)."""


def token_spans(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]], list[bytes]]:
    """(ids, [(start, end)] UTF-8 byte offsets into `text`, each token's bytes).

    SentencePiece-style tokenizers that prepend a space (Phi-3's ▁) are handled: that byte maps
    to offset -1 and is clipped. Any other mismatch raises AlignmentError.
    """
    ids = tokenizer.encode(text)
    pieces = tokenizer.token_bytes(ids)
    joined, tb = b"".join(pieces), text.encode("utf-8")
    if joined == tb:
        shift = 0
    elif joined == b" " + tb:
        shift = -1
    else:
        raise AlignmentError(f"{getattr(tokenizer, 'name', tokenizer)}: tokens spell {joined[:60]!r}, "
                             f"text is {tb[:60]!r}")
    spans, pos = [], shift
    for p in pieces:
        spans.append((max(0, pos), max(0, pos + len(p))))
        pos += len(p)
    return ids, spans, pieces


def _trim(tb: bytes, s: int, e: int) -> tuple[int, int]:
    while s < e and tb[s:s + 1].isspace():
        s += 1
    while e > s and tb[e - 1:e].isspace():
        e -= 1
    return s, e


# ---------------------------------------------------------------- gold morpheme boundaries
def stem_end(form: str, lemma: str) -> int | None:
    """Where the lemma ends inside `form` (in characters), or None when it cannot be told.

    Exact prefix (kuş|lara); the same ignoring diacritics (gorev|leri for görev); a changed last
    consonant (kemiğ|imde for kemik, gid|er for git); a dropped last vowel (şekl|inde for şekil).
    """
    f, l = tr_lower(form), tr_lower(lemma)
    if not l or l == "_":
        return None
    if f.startswith(l) or fold(f).startswith(fold(l)):
        return len(l)
    if len(l) >= 2 and f[:len(l) - 1] == l[:-1]:
        return min(len(l), len(f))
    if len(l) >= 3 and l[-2] in VOWELS and l[-1] not in VOWELS and f.startswith(l[:-2] + l[-1]):
        return len(l) - 1
    return None


@dataclass(frozen=True)
class GoldSentence:
    text: str
    boundaries: frozenset   # byte offsets: word edges and the morpheme boundaries inside words
    stem_cuts: tuple        # byte offsets of stem|suffix boundaries strictly inside evaluated words
    words: tuple            # (start, end, status) per word; status: eval | unknown | skip


def gold_sentence(record: dict) -> GoldSentence:
    """Gold boundaries of one `turkish-treebank` record (see the module doc)."""
    text = record["text"]
    bounds, cuts, words = set(), [], []
    pos = 0  # character offset
    to_b = lambda i: len(text[:i].encode("utf-8"))
    for form, lemma, _upos, igs, space in record["words"]:
        if text[pos:pos + len(form)] != form:
            raise ValueError(f"word {form!r} not at offset {pos} of {text!r}")
        start, end = pos, pos + len(form)
        bounds.update((to_b(start), to_b(end)))
        if not any(ch.isalpha() for ch in form):
            status = "skip"
        else:
            stem = stem_end(igs[0], lemma)
            status = "unknown" if stem is None else "eval"
            inner = set(itertools.accumulate(len(g) for g in igs[:-1]))
            if stem is not None and 0 < stem < len(form):
                inner.add(stem)
                cuts.append(to_b(start + stem))
            bounds.update(to_b(start + k) for k in inner if 0 < k < len(form))
        words.append((to_b(start), to_b(end), status))
        pos = end + (1 if space else 0)
    return GoldSentence(text, frozenset(bounds), tuple(sorted(set(cuts))), tuple(words))


# ---------------------------------------------------------------- per-sentence counts
_FIELDS = ("tokens", "bytes", "tr_total", "tr_valid", "tr_words", "pure_total", "pure", "cuts", "cuts_hit")


class TokenClassCache:
    """Validity of a token's bytes (context-free), computed once per distinct token."""

    def __init__(self, lexicon: Lexicon):
        self.lexicon, self._memo = lexicon, {}

    def __call__(self, piece: bytes) -> str:
        c = self._memo.get(piece)
        if c is None:
            try:
                c = self.lexicon.classify(piece.decode("utf-8"))
            except UnicodeDecodeError:  # a byte-level fragment of a (non-ASCII) character
                c = "invalid"
            self._memo[piece] = c
        return c


def sentence_counts(tokenizer, text: str, classify: TokenClassCache, gold: GoldSentence | None = None) -> dict:
    """Counts for one sentence: tokens, bytes, %TR numerator/denominator (all tokens), and with `gold`
    the purity numerator/denominator and stem-boundary hits. Also `types`: the token ids seen."""
    ids, spans, pieces = token_spans(tokenizer, text)
    tb = text.encode("utf-8")
    out = dict.fromkeys(_FIELDS, 0)
    out["tokens"], out["bytes"] = len(ids), len(tb)
    for piece in pieces:
        c = classify(piece)
        if c != "skip":
            out["tr_total"] += 1
            out["tr_valid"] += c in ("word", "morpheme")
            out["tr_words"] += c == "word"
    if gold is not None:
        if gold.text != text:
            raise ValueError("gold sentence and text differ")
        out.update(purity_counts(spans, tb, gold))
    out["types"] = ids
    return out


def purity_counts(spans: Sequence[tuple[int, int]], tb: bytes, gold: GoldSentence) -> dict:
    """Pure token occurrences among the evaluated ones, and stem|suffix boundaries hit by a token edge.

    A token (its span trimmed of white space) is evaluated when it overlaps a word with letters and
    none of the words it overlaps has an unknown stem boundary; it is pure when no gold boundary
    (word edge, stem|suffix or derivational boundary) lies strictly inside it.
    """
    bnd = sorted(gold.boundaries)
    starts = [w[0] for w in gold.words]
    pure = total = 0
    for s, e in spans:
        s, e = _trim(tb, s, e)
        if s >= e:
            continue
        first = max(0, bisect.bisect_right(starts, s) - 1)
        over = []
        for ws, we, st in gold.words[first:]:
            if ws >= e:
                break
            if s < we:
                over.append(st)
        if not over or "unknown" in over or all(st == "skip" for st in over):
            continue
        total += 1
        k = bisect.bisect_right(bnd, s)
        pure += not (k < len(bnd) and bnd[k] < e)
    edges = {s for s, _ in spans} | {e for _, e in spans}
    hit = sum(1 for c in gold.stem_cuts if c in edges)
    return {"pure_total": total, "pure": pure, "cuts": len(gold.stem_cuts), "cuts_hit": hit}


def corpus_counts(tokenizer, texts: Sequence[str], lexicon: Lexicon, golds: Sequence[GoldSentence] | None = None,
                  progress: bool = False) -> dict:
    """Per-sentence count arrays {field: np.ndarray} plus `types` (list of id arrays) and `classes`
    ({token id: class}) for a tokenizer over `texts` (and their gold segmentations, if given)."""
    classify = TokenClassCache(lexicon)
    rows = []
    it = range(len(texts))
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(it, desc=getattr(tokenizer, "name", "tokenizer"), leave=False)
    id_class: dict[int, str] = {}
    for i in it:
        r = sentence_counts(tokenizer, texts[i], classify, golds[i] if golds is not None else None)
        rows.append(r)
        for t in set(r["types"]):
            if t not in id_class:
                id_class[t] = classify(tokenizer.token_bytes([t])[0])
    out = {f: np.array([r[f] for r in rows], dtype=np.int64) for f in _FIELDS}
    out["types"] = [np.unique(np.asarray(r["types"], dtype=np.int64)) for r in rows]
    out["classes"] = id_class
    return out


# ---------------------------------------------------------------- estimates
def rate(counts: dict, num: str, den: str, *, n_boot: int = 2000, seed: int = 0, unit: str = "fraction") -> stats.Estimate:
    """Σ num / Σ den over sentences, with a percentile bootstrap over sentences."""
    return stats.bootstrap_fn({"a": counts[num], "b": counts[den]}, lambda d: float(d["a"].sum() / max(1, d["b"].sum())),
                              n_boot=n_boot, seed=seed, unit=unit)


def rate_difference(a: dict, b: dict, num: str, den: str, *, n_boot: int = 2000, seed: int = 0) -> stats.Estimate:
    """rate(a) − rate(b) on the same sentences, resampled jointly (paired bootstrap)."""
    cols = {"an": a[num], "ad": a[den], "bn": b[num], "bd": b[den]}
    return stats.bootstrap_fn(cols, lambda d: float(d["an"].sum() / max(1, d["ad"].sum())
                                                    - d["bn"].sum() / max(1, d["bd"].sum())),
                              n_boot=n_boot, seed=seed, unit="fraction")


def _incidence(types: Sequence[np.ndarray], keep: np.ndarray):
    """Sentence × type 0/1 matrix (scipy CSR) over the type ids listed in `keep`."""
    from scipy import sparse
    index = {int(t): j for j, t in enumerate(keep)}
    rows, cols = [], []
    for i, ts in enumerate(types):
        for t in ts:
            j = index.get(int(t))
            if j is not None:
                rows.append(i)
                cols.append(j)
    return sparse.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(types), len(keep)))


def type_rate(counts: dict, valid: Iterable[str] = ("word", "morpheme"), *, n_boot: int = 1000, seed: int = 0,
              other: dict | None = None) -> stats.Estimate:
    """The paper's denominator: valid unique token types / unique token types (types with letters only).
    With `other` (same sentences), the paired difference type_rate(counts) − type_rate(other).

    A rate over *unique* types depends on how much text it is measured on (more text, more rare types),
    so resampling sentences with replacement, which keeps only ~63% of them, shifts it. The interval
    therefore comes from half-samples drawn without replacement (whose spread matches the full-sample
    spread for a mean, by the finite-population correction) and is re-centred on the full-text value:
    [v − (median − q2.5), v + (q97.5 − median)].
    """
    def prep(c):
        keep = np.array(sorted(t for t, k in c["classes"].items() if k != "skip"), dtype=np.int64)
        good = np.array([c["classes"][int(t)] in valid for t in keep], dtype=np.float32)
        return _incidence(c["types"], keep).T.tocsr(), good  # types × sentences

    def value(m, good, w):
        present = (m @ w) > 0
        n = present.sum()
        return float((good * present).sum() / n) if n else 0.0

    sides = [prep(counts)] + ([prep(other)] if other is not None else [])
    n = len(counts["types"])
    if other is not None and len(other["types"]) != n:
        raise ValueError("paired type rates need the same sentences")
    stat = lambda w: value(*sides[0], w) - (value(*sides[1], w) if other is not None else 0.0)
    full = stat(np.ones(n, dtype=np.float32))
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        w = np.zeros(n, dtype=np.float32)
        w[rng.permutation(n)[: max(1, n // 2)]] = 1.0
        boots.append(stat(w))
    q_lo, med, q_hi = np.quantile(boots, [0.025, 0.5, 0.975])
    lo, hi = full - (med - q_lo), full + (q_hi - med)
    return stats.Estimate(full, float(min(lo, full)), float(max(hi, full)), n, "bootstrap", 0.95, "fraction")


def pair_token_counts(tokenizer, pairs: Sequence[tuple[str, str]]) -> tuple[np.ndarray, np.ndarray]:
    """(English token counts, Turkish token counts) per aligned pair."""
    en = tokenizer.encode_batch([e for e, _ in pairs]) if hasattr(tokenizer, "encode_batch") else \
        [tokenizer.encode(e) for e, _ in pairs]
    tr = tokenizer.encode_batch([t for _, t in pairs]) if hasattr(tokenizer, "encode_batch") else \
        [tokenizer.encode(t) for _, t in pairs]
    return np.array([len(x) for x in en]), np.array([len(x) for x in tr])


def premium(en: np.ndarray, tr: np.ndarray, *, n_boot: int = 2000, seed: int = 0) -> stats.Estimate:
    """Σ tokens(TR) / Σ tokens(EN) from per-pair counts, bootstrapped over pairs."""
    return stats.bootstrap_fn({"en": en, "tr": tr}, lambda d: float(d["tr"].sum() / max(1, d["en"].sum())),
                              n_boot=n_boot, seed=seed, unit="× (TR/EN tokens)")


def token_premium(tokenizer, pairs: Sequence[tuple[str, str]], *, n_boot: int = 2000, seed: int = 0) -> stats.Estimate:
    """The TR/EN token premium of `tokenizer` over aligned (English, Turkish) pairs."""
    return premium(*pair_token_counts(tokenizer, pairs), n_boot=n_boot, seed=seed)


def rank_correlation(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's ρ (average ranks for ties); nan when either side is constant."""
    from scipy.stats import spearmanr
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def correlation_estimate(x: Sequence[float], y: Sequence[float], *, n_boot: int = 2000, seed: int = 0) -> stats.Estimate:
    """Spearman ρ(x, y) over the points, bootstrapped over points (undefined resamples dropped)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    full = rank_correlation(x, y)
    if not np.isfinite(full):
        raise ValueError("correlation undefined on the full set (a constant side)")
    rng = np.random.default_rng(seed)
    boots = [v for v in (rank_correlation(x[i], y[i]) for i in (rng.integers(0, len(y), len(y)) for _ in range(n_boot)))
             if np.isfinite(v)]
    if len(boots) < 10:
        return stats.Estimate(full, -1.0, 1.0, len(y), "bootstrap", 0.95, "ρ")
    lo, hi = np.quantile(boots, [0.025, 0.975])
    return stats.Estimate(full, float(min(lo, full)), float(max(hi, full)), len(y), "bootstrap", 0.95, "ρ")


def correlation_gap(a: Sequence[float], b: Sequence[float], y: Sequence[float], *, n_boot: int = 2000,
                    seed: int = 0, method: str = "spearman") -> stats.Estimate:
    """ρ(a, y) − ρ(b, y) over the points (tokenizers), bootstrapped over points; resamples in which a
    correlation is undefined (a constant side) are dropped. With a handful of points the interval
    is wide by construction: that is the honest uncertainty of a correlation over few tokenizers."""
    a, b, y = (np.asarray(v, float) for v in (a, b, y))
    corr = rank_correlation if method == "spearman" else (
        lambda u, v: float(np.corrcoef(u, v)[0, 1]) if np.ptp(u) and np.ptp(v) else float("nan"))
    full = corr(a, y) - corr(b, y)
    if not np.isfinite(full):
        raise ValueError("correlation undefined on the full set (a constant metric)")
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        i = rng.integers(0, len(y), len(y))
        v = corr(a[i], y[i]) - corr(b[i], y[i])
        if np.isfinite(v):
            boots.append(v)
    if len(boots) < 10:
        return stats.Estimate(full, -2.0, 2.0, len(y), "bootstrap", 0.95, "Δρ")
    lo, hi = np.quantile(boots, [0.025, 0.975])
    return stats.Estimate(full, float(min(lo, full)), float(max(hi, full)), len(y), "bootstrap", 0.95, "Δρ")
