"""SuperBPE (Liu et al., 2025, arXiv:2503.13423): byte-level BPE with a pretokenization curriculum.

BPE learns merges inside *chunks* of text: a pretokenizer cuts the text first and no merge may cross
a cut. Ordinary BPE cuts at whitespace (GPT-2 style: a word with its leading space is one chunk), so
every token is a subword. SuperBPE learns the vocabulary in two stages:

    stage 1   ordinary BPE with whitespace pretokenization until the vocabulary has t tokens
              (the *transition point*);
    stage 2   keep those merges, drop the whitespace cuts, and go on learning merges until the
              vocabulary has V tokens. Chunks are now long (a line, a sentence and more), so new
              merges can join words: *superword* tokens such as " of the" or ", and the".

Stage 2 still keeps a few cuts, as the authors' released recipe does (its regex, below): digits in
groups of at most three, runs of two or more punctuation characters, and runs of spaces that end
in whitespace. Single punctuation marks and newlines are not cuts, so ", I am" is a possible token.
With t = V the curriculum is plain BPE: the baseline at the same vocabulary.

Everything here is byte-level: ids 0-255 are the bytes, each merge (a, b) makes the token
bytes(a) + bytes(b). Learning (`learn`) keeps the training chunks as one array of positions with
doubly linked neighbours and, per adjacent pair, its weighted count and the set of positions where
it starts; a merge touches only the positions of its pair and their neighbours, so the cost grows
with the number of merges *applied*, not with corpus size × vocabulary. The most frequent pair is
taken from a heap (ties: the pair whose byte strings sort first). Stage 2 *replays* the stage-1
merges on the stage-2 chunks with the same routine before it learns new ones, so its starting
segmentation is the one the final tokenizer's encoder produces.

Encoding uses HF `tokenizers` (Rust): the same regex as a `Split` pre-tokenizer, then a BPE model
holding our vocabulary and merges, which applies merges by rank inside each chunk, and GPT-2's
byte-level decoder, so every UTF-8 string round-trips. `encode_reference` is a plain-Python twin of
that encoder for the tests. Learned tokenizers are cached (atomically) under
`data/cache/tokenizers/superbpe/<label>-<hash>/`, the hash covering settings and the texts' sha256.
"""
from __future__ import annotations

import hashlib
import heapq
import json
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Iterable, Sequence

import numpy as np

from .. import paths

# Stage 1: GPT-2's pattern (a letter run with its leading space, punctuation runs, whitespace runs),
# with digits in groups of at most three as in the stage-2 pattern; no contraction rules.
STAGE1_PATTERN = r"\p{N}{1,3}| ?\p{L}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
# Stage 2: the released SuperBPE recipe's pattern (scripts/extend_tokenizer.sh in PythonNut/superbpe).
# Matches are isolated as their own chunks; the text between matches forms the other chunks.
STAGE2_PATTERN = r"\p{N}{1,3}| ?[^\s\p{L}\p{N}]{2,}[\r\n/]*| +(?!\S)"
FORMAT = 1      # bump when learning or the saved format changes (invalidates the cache)
_K = 1 << 21    # pair key = left * _K + right (ids stay below 2**21)


# ---- pretokenization --------------------------------------------------------------------------------
@lru_cache(maxsize=8)
def _splitter(pattern: str):
    from tokenizers import Regex, pre_tokenizers
    return pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False)


def chunks(text: str, pattern: str) -> list[str]:
    """The pieces `pattern` cuts `text` into (matches isolated; the gaps between them are pieces too)."""
    return [piece for piece, _ in _splitter(pattern).pre_tokenize_str(text)]


_MEMO: dict = {}


def chunk_counts(texts: Iterable[str], pattern: str) -> Counter:
    """UTF-8 bytes of every chunk of `texts` -> how many times it occurs (the last few results are
    kept in memory: a transition-point sweep cuts the same texts again and again)."""
    texts = list(texts)
    key = (_texts_sha(texts), pattern)
    if key not in _MEMO:
        counts: Counter = Counter()
        for t in texts:
            if t:
                counts.update(p.encode("utf-8") for p in chunks(t, pattern))
        while len(_MEMO) >= 4:
            _MEMO.pop(next(iter(_MEMO)))
        _MEMO[key] = counts
    return Counter(_MEMO[key])


# ---- learning -------------------------------------------------------------------------------------
@dataclass
class Merges:
    """A learned byte-level BPE: `tokens[i]` are the bytes of id i (0-255 = the bytes themselves);
    `merges[r] = (a, b, c)`: the r-th merge joins ids a and b into id c. `stage1` counts the merges
    learned before the transition (all of them for plain BPE)."""
    tokens: list[bytes]
    merges: list[tuple[int, int, int]]
    stage1: int
    log: list[dict] = field(default_factory=list)   # per merge: count of the pair when it was chosen

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def prefix(self, vocab_size: int) -> "Merges":
        """The first merges, up to the point where the vocabulary first reaches `vocab_size`."""
        if vocab_size < 256 or vocab_size > self.vocab_size:
            raise ValueError(f"prefix vocabulary {vocab_size} outside [256, {self.vocab_size}]")
        # learning stops as soon as the vocabulary is full: end at the merge that made id vocab_size - 1
        n = 0 if vocab_size == 256 else 1 + next(r for r, (_, _, c) in enumerate(self.merges) if c == vocab_size - 1)
        return Merges(self.tokens[:vocab_size], self.merges[:n], min(self.stage1, n), self.log[:n])


class _Corpus:
    """Chunks laid out as one array of positions with linked neighbours, and pair statistics."""

    def __init__(self, seqs: Sequence[Sequence[int]], weights: Sequence[int], tokens: list[bytes]):
        tok, nxt, prv, w = [], [], [], []
        for seq, f in zip(seqs, weights):
            n, base = len(seq), len(tok)
            if n == 0:
                continue
            tok.extend(seq)
            prv.extend(range(base - 1, base + n - 1))
            prv[base] = -1
            nxt.extend(range(base + 1, base + n + 1))
            nxt[-1] = -1
            w.extend([f] * n)
        self.tok, self.nxt, self.prv, self.w, self.tokens = tok, nxt, prv, w, tokens
        # initial pair statistics, vectorized: sort the pair starts by key, then one slice per key
        t = np.asarray(tok, dtype=np.int64)
        start = np.flatnonzero(np.asarray(nxt, dtype=np.int64) >= 0)
        keys = t[start] * _K + t[start + 1]
        order = np.argsort(keys, kind="stable")
        keys, start = keys[order], start[order]
        weights = np.asarray(w, dtype=np.int64)[start]
        uniq, first = np.unique(keys, return_index=True)
        sums = np.add.reduceat(weights, first) if len(first) else np.zeros(0, np.int64)
        bounds = np.append(first, len(keys)).tolist()
        start = start.tolist()
        self.count = dict(zip(uniq.tolist(), sums.tolist()))
        self.where = {k: set(start[bounds[j]:bounds[j + 1]]) for j, k in enumerate(uniq.tolist())}
        count = self.count
        self.heap = [(-c, tokens[k // _K], tokens[k % _K], k) for k, c in count.items()]
        heapq.heapify(self.heap)

    def best(self) -> tuple[int, int]:
        """(pair key, count) of the most frequent pair; (-1, 0) when no pair is left."""
        heap, count = self.heap, self.count
        while heap:
            negc, _, _, k = heap[0]
            cur = count.get(k, 0)
            if cur == -negc and cur > 0:
                return k, cur
            heapq.heappop(heap)
            if 0 < cur < -negc:  # lowered since pushed: re-file it (raised ones were pushed again)
                a, b = divmod(k, _K)
                heapq.heappush(heap, (-cur, self.tokens[a], self.tokens[b], k))
        return -1, 0

    def merge(self, a: int, b: int, c: int) -> int:
        """Join every occurrence of (a, b), left to right, into c; returns how many were joined."""
        key = a * _K + b
        pos = self.where.pop(key, None)
        self.count.pop(key, None)
        if not pos:
            return 0
        tok, nxt, prv, w, count, where = self.tok, self.nxt, self.prv, self.w, self.count, self.where
        raised = set()
        done = 0
        for i in sorted(pos):
            if tok[i] != a:
                continue
            j = nxt[i]
            if j < 0 or tok[j] != b:
                continue
            f, p, n = w[i], prv[i], nxt[j]
            if p >= 0:  # the pair ending at i disappears
                k = tok[p] * _K + a
                if k != key:
                    count[k] -= f
                    where[k].discard(p)
            if n >= 0:  # the pair starting at j disappears
                k = b * _K + tok[n]
                if k != key:
                    count[k] -= f
                    where[k].discard(j)
            tok[i], tok[j] = c, -1
            nxt[i] = n
            if n >= 0:
                prv[n] = i
            if p >= 0:
                k = tok[p] * _K + c
                count[k] = count.get(k, 0) + f
                where.setdefault(k, set()).add(p)
                raised.add(k)
            if n >= 0:
                k = c * _K + tok[n]
                count[k] = count.get(k, 0) + f
                where.setdefault(k, set()).add(i)
                raised.add(k)
            done += 1
        for k in raised:
            cnt = count[k]
            if cnt > 0:
                x, y = divmod(k, _K)
                heapq.heappush(self.heap, (-cnt, self.tokens[x], self.tokens[y], k))
        return done

    def sequences(self) -> list[list[int]]:
        """The current segmentation of every chunk (in input order)."""
        out, tok, nxt, prv = [], self.tok, self.nxt, self.prv
        for i in range(len(tok)):
            if tok[i] >= 0 and prv[i] < 0:
                seq, j = [], i
                while j >= 0:
                    seq.append(tok[j])
                    j = nxt[j]
                out.append(seq)
        return out


def learn(counts: dict[bytes, int], vocab_size: int, *, start: Merges | None = None, min_count: int = 2,
          progress: bool = False, desc: str = "BPE merges", replay: bool = False, _keep_corpus: bool = False):
    """Learn merges on chunks `counts` (bytes -> frequency) until the vocabulary has `vocab_size` tokens.

    With `start`, each chunk starts from its segmentation under the merges of `start` (stage 2 of
    SuperBPE: stage-1 merges applied to the stage-2 chunks), computed by the rank-order encoder
    (`segment`), or with `replay=True` by re-applying the merges in order here (slower; the tests
    check that both agree); learning then continues from the vocabulary of `start`. Stops early when no
    pair occurs `min_count` times. The merged bytes of a pair may equal an existing token (two merge
    paths to one string): the merge is kept and reuses that id, as in HF tokenizers' trainer.
    """
    if vocab_size < 256:
        raise ValueError(f"vocab_size must be >= 256 (the bytes), got {vocab_size}")
    fresh = start is None
    start = start or Merges([bytes([i]) for i in range(256)], [], 0)
    if vocab_size < start.vocab_size:
        raise ValueError(f"vocab_size {vocab_size} is below the starting vocabulary {start.vocab_size}")
    tokens = list(start.tokens)
    index = {t: i for i, t in enumerate(tokens)}
    items = sorted(counts.items())  # deterministic layout
    if start.merges and not replay:  # the encoder's segmentation of each chunk under the start merges
        seqs = segment([b for b, _ in items], start)
    else:
        seqs = [list(b) for b, _ in items]
    corpus = _Corpus(seqs, [f for _, f in items], tokens)
    if replay:
        for a, b, c in start.merges:
            corpus.merge(a, b, c)
    merges, log = list(start.merges), list(start.log)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=vocab_size - len(tokens), desc=desc, leave=False, mininterval=2.0)
    while len(tokens) < vocab_size:
        k, cnt = corpus.best()
        if k < 0 or cnt < min_count:
            break
        a, b = divmod(k, _K)
        joined = tokens[a] + tokens[b]
        c = index.get(joined)
        if c is None:
            c = index[joined] = len(tokens)
            tokens.append(joined)
            if bar is not None:
                bar.update(1)
        corpus.merge(a, b, c)
        merges.append((a, b, c))
        log.append({"count": cnt, "new": c == len(tokens) - 1})
    if bar is not None:
        bar.close()
    out = Merges(tokens, merges, len(merges) if fresh else start.stage1, log)
    return (out, corpus) if _keep_corpus else out


def learn_bpe(texts: Iterable[str], vocab_size: int, *, pattern: str = STAGE1_PATTERN, min_count: int = 2,
              progress: bool = False) -> Merges:
    """Plain byte-level BPE with whitespace pretokenization (SuperBPE's stage 1 run to the end)."""
    return learn(chunk_counts(texts, pattern), vocab_size, min_count=min_count, progress=progress,
                 desc=f"BPE to {vocab_size}")


def learn_superbpe(texts: Sequence[str], vocab_size: int, transition: int, *, stage1: Merges | None = None,
                   stage1_pattern: str = STAGE1_PATTERN, stage2_pattern: str = STAGE2_PATTERN,
                   min_count: int = 2, progress: bool = False) -> Merges:
    """SuperBPE: BPE with `stage1_pattern` up to `transition` tokens, then with `stage2_pattern` up to
    `vocab_size`. `stage1` (BPE learned on the same texts to at least `transition`) saves stage 1:
    BPE is greedy, so its merges up to vocabulary t are exactly stage 1 at transition t."""
    if not 256 <= transition <= vocab_size:
        raise ValueError(f"transition point {transition} must lie in [256, vocab_size={vocab_size}]")
    if stage1 is None or stage1.vocab_size < transition:
        stage1 = learn_bpe(texts, transition, pattern=stage1_pattern, min_count=min_count, progress=progress)
    start = stage1.prefix(min(transition, stage1.vocab_size))
    start.stage1 = len(start.merges)
    if transition == vocab_size:
        return start
    return learn(chunk_counts(texts, stage2_pattern), vocab_size, start=start, min_count=min_count,
                 progress=progress, desc=f"SuperBPE t={transition} stage 2")


# ---- encoding -------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _byte_chars() -> list[str]:
    """GPT-2's printable stand-in character for each byte (what HF's ByteLevel maps bytes to)."""
    from ..tokenizers.base import _byte_level_decoder
    inv = {b: c for c, b in _byte_level_decoder().items()}
    return [inv[b] for b in range(256)]


def _spell(token: bytes) -> str:
    table = _byte_chars()
    return "".join(table[b] for b in token)


def hf_tokenizer(m: Merges, pattern: str):
    """A HF `tokenizers.Tokenizer` that encodes with `pattern` chunks and the merges `m` (by rank)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    vocab = {_spell(t): i for i, t in enumerate(m.tokens)}
    merges = [(_spell(m.tokens[a]), _spell(m.tokens[b])) for a, b, _ in m.merges]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence([_splitter(pattern),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    return tok


def segment(pieces: Sequence[bytes], m: Merges) -> list[list[int]]:
    """Each piece (one chunk, no further cuts) encoded with the merges `m`, by rank (HF BPE, in Rust)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    vocab = {_spell(t): i for i, t in enumerate(m.tokens)}
    merges = [(_spell(m.tokens[a]), _spell(m.tokens[b])) for a, b, _ in m.merges]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    out = []
    step = 4096
    for s in range(0, len(pieces), step):
        batch = [p.decode("utf-8") for p in pieces[s:s + step]]
        out.extend(e.ids for e in tok.encode_batch(batch, add_special_tokens=False))
    return out


def encode_reference(text: str, m: Merges, pattern: str) -> list[int]:
    """Plain-Python twin of the HF encoder: Python `regex` chunks, then, inside each chunk, the
    lowest-rank adjacent pair is joined until none is left (leftmost first among equal ranks)."""
    import regex
    rank = {(a, b): (r, c) for r, (a, b, c) in reversed(list(enumerate(m.merges)))}
    out: list[int] = []
    pos = 0
    pieces = []
    for mt in regex.finditer(pattern, text):
        if mt.start() > pos:
            pieces.append(text[pos:mt.start()])
        pieces.append(mt.group())
        pos = mt.end()
    if pos < len(text):
        pieces.append(text[pos:])
    for piece in pieces:
        ids = list(piece.encode("utf-8"))
        while len(ids) > 1:
            best = min(((rank[p][0], i) for i, p in enumerate(zip(ids, ids[1:])) if p in rank), default=None)
            if best is None:
                break
            i = best[1]
            ids[i:i + 2] = [rank[(ids[i], ids[i + 1])][1]]
        out.extend(ids)
    return out


def is_superword(token: bytes) -> bool:
    """A token that bridges whitespace: some non-space byte is followed by a whitespace byte
    (" of the", ", and", but also ".\n"; compare `is_multiword`)."""
    return any(not chr(x).isspace() and chr(y).isspace() for x, y in zip(token, token[1:]))


def is_multiword(token: bytes) -> bool:
    """A superword with text on both sides of its whitespace (" of the", ", I"; not ".\n")."""
    s = token.decode("utf-8", errors="replace")
    return any(not a.isspace() and b.isspace() for a, b in zip(s, s[1:])) and not s[-1].isspace()


# ---- a tokenizer-neutral judge of difficulty ----------------------------------------------------------
class ByteNgram:
    """A byte-level n-gram model with interpolated absolute discounting (Ney et al.): each order-k
    estimate keeps max(count − D, 0) of every seen continuation and passes the mass it frees to the
    order-(k−1) estimate; order 1 is add-one over the 256 bytes. Texts are scored independently
    (each starts with an empty history). It judges how surprising each byte is without any tokenizer,
    so per-token difficulty = the surprisal of a token's bytes can compare two segmentations."""

    def __init__(self, texts: Iterable[str], order: int = 5, discount: float = 0.75):
        if order < 1 or not 0 < discount < 1:
            raise ValueError(f"need order >= 1 and 0 < discount < 1, got {order}, {discount}")
        self.order, self.discount = int(order), float(discount)
        data = [np.frombuffer(t.encode("utf-8"), np.uint8) for t in texts if t]
        flat = np.concatenate(data).astype(np.int64) if data else np.zeros(0, np.int64)
        self.unigram = (np.bincount(flat, minlength=256) + 1.0) / (len(flat) + 256.0)
        self.tables = []
        for k in range(2, self.order + 1):
            keys = np.concatenate([self._keys(x, k) for x in data]) if data else np.zeros(0, np.int64)
            pair, cnt = np.unique(keys, return_counts=True)
            ctx, first = np.unique(pair >> 8, return_index=True)
            total = np.add.reduceat(cnt, first) if len(first) else np.zeros(0, np.int64)
            kinds = np.diff(np.append(first, len(pair)))
            self.tables.append((pair, cnt, ctx, total, kinds))

    @staticmethod
    def _keys(x: np.ndarray, k: int) -> np.ndarray:
        """(context of k − 1 bytes, byte) packed into one int per position (history padded with 0s)."""
        x = x.astype(np.int64)
        pad = np.concatenate([np.zeros(k - 1, np.int64), x])
        key = np.zeros(len(x), np.int64)
        for j in range(k):
            key = (key << 8) | pad[j:j + len(x)]
        return key

    def surprisal(self, text: str | bytes) -> np.ndarray:
        """−log2 p(byte | up to order − 1 previous bytes of `text`), one value per UTF-8 byte."""
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        x = np.frombuffer(data, np.uint8).astype(np.int64)
        p = self.unigram[x]
        for k, (pair, cnt, ctx, total, kinds) in zip(range(2, self.order + 1), self.tables):
            if not len(x) or not len(pair):
                break
            q = self._keys(x, k)
            i = np.clip(np.searchsorted(pair, q), 0, len(pair) - 1)
            c = np.where(pair[i] == q, cnt[i], 0)
            j = np.clip(np.searchsorted(ctx, q >> 8), 0, len(ctx) - 1)
            seen = ctx[j] == (q >> 8)
            n, m = np.where(seen, total[j], 1), np.where(seen, kinds[j], 0)
            mixed = np.maximum(c - self.discount, 0) / n + self.discount * m / n * p
            p = np.where(seen, mixed, p)
        return -np.log2(p)


def token_difficulties(surprisal: np.ndarray, token_lengths: Sequence[int]) -> np.ndarray:
    """Per-token difficulty: the summed per-byte surprisal of each token's bytes."""
    edges = np.concatenate([[0], np.cumsum(token_lengths)]).astype(int)
    if edges[-1] != len(surprisal):
        raise ValueError(f"token lengths cover {edges[-1]} bytes, the text has {len(surprisal)}")
    return np.diff(np.concatenate([[0.0], np.cumsum(surprisal)])[edges])


# ---- cached training --------------------------------------------------------------------------------
def _texts_sha(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        data = t.encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def _save(folder, m: Merges, pattern: str, meta: dict) -> None:
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    hf_tokenizer(m, pattern).save(str(tmp / "tokenizer.json"))
    (tmp / "merges.json").write_text(json.dumps({"tokens": [t.hex() for t in m.tokens], "merges": m.merges,
                                                 "stage1": m.stage1, "log": m.log}))
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    try:
        os.replace(tmp, folder)
    except OSError:  # another process won the race: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)


def _load_merges(folder) -> Merges:
    d = json.loads((folder / "merges.json").read_text())
    return Merges([bytes.fromhex(t) for t in d["tokens"]], [tuple(x) for x in d["merges"]], d["stage1"], d["log"])


def train(texts: Sequence[str], vocab_size: int, transition: int | None = None, *, label: str = "texts",
          stage1_pattern: str = STAGE1_PATTERN, stage2_pattern: str = STAGE2_PATTERN, min_count: int = 2,
          progress: bool = False):
    """A tokenizer learned on `texts` (cached): SuperBPE with transition point `transition`, or plain
    BPE when `transition` is None or equals `vocab_size`. Returns a zoo `Tokenizer` (encode, decode,
    token_bytes, vocab_size) with `.merges` (the `Merges`) and `.info` (settings, cache folder)."""
    from tokenizers import Tokenizer as HFTokenizer

    from ..tokenizers.base import Tokenizer
    texts = list(texts)
    t = vocab_size if transition is None else int(transition)
    if not 256 <= t <= vocab_size:
        raise ValueError(f"transition point {t} must lie in [256, vocab_size={vocab_size}]")
    kind = "bpe" if t == vocab_size else "superbpe"
    settings = {"kind": kind, "vocab_size": int(vocab_size), "transition": t, "label": label,
                "stage1_pattern": stage1_pattern, "stage2_pattern": stage2_pattern if kind == "superbpe" else None,
                "min_count": min_count, "texts_sha256": _texts_sha(texts), "format": FORMAT}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    name = f"{kind}-{label}-{vocab_size}" + (f"-t{t}" if kind == "superbpe" else "")
    folder = paths.CACHE / "tokenizers" / "superbpe" / f"{name}-{key}"
    if not (folder / "meta.json").exists():
        if kind == "bpe":
            m = learn_bpe(texts, vocab_size, pattern=stage1_pattern, min_count=min_count, progress=progress)
        else:
            base = train(texts, vocab_size, None, label=label, stage1_pattern=stage1_pattern,
                         min_count=min_count, progress=progress)
            m = learn_superbpe(texts, vocab_size, t, stage1=base.merges, stage1_pattern=stage1_pattern,
                               stage2_pattern=stage2_pattern, min_count=min_count, progress=progress)
        n_super = sum(is_superword(tok) for tok in m.tokens)
        folder.parent.mkdir(parents=True, exist_ok=True)
        _save(folder, m, stage2_pattern if kind == "superbpe" else stage1_pattern,
              {"name": name, **settings, "learned_vocab_size": m.vocab_size, "n_merges": len(m.merges),
               "n_stage1_merges": m.stage1, "n_superwords": n_super,
               "n_training_bytes": sum(len(x.encode("utf-8")) for x in texts)})
    info = json.loads((folder / "meta.json").read_text())
    info["dir"] = str(folder)
    tok = Tokenizer(name, kind, HFTokenizer.from_file(str(folder / "tokenizer.json")), info)
    tok.merges = _load_merges(folder)
    return tok
