"""Tokenizers we train ourselves on a registered corpus, with the HF `tokenizers` library.

kinds
  bpe      byte-level BPE: GPT-2's pre-tokenizer regex over GPT-2's byte alphabet, so every string
           round-trips exactly and no token is unknown.
  unigram  Unigram LM over the same byte-level pre-tokenization: only the model differs from `bpe`,
           which keeps BPE-vs-Unigram comparisons about the segmentation algorithm.
  byte     ids 0..255 are the bytes themselves, then the special tokens (vocab_size is ignored).
  char     the most frequent characters of the training text (ties by code point), plus <unk>.

Training is deterministic given the texts and settings; the result is cached (atomically) under
data/cache/tokenizers/trained/<kind>-<corpus>-<vocab>-<hash>/ where the hash covers the settings,
the training texts' sha256 and the tokenizers version, so a stale file never stands in for a new one.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Sequence

from .. import paths
from ..data.pieces import take_bytes

KINDS = ("bpe", "unigram", "byte", "char")
DEFAULT_SPECIALS = ("<|endoftext|>", "<pad>")
UNK = "<unk>"
FORMAT = 1  # bump when the way a kind is built changes


def _texts_sha(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        data = t.encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def _byte_level_parts():
    from tokenizers import decoders, pre_tokenizers
    return (pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            decoders.ByteLevel())


def _canonical_unigram(tok, n_fixed: int):
    """Order Unigram pieces by (score desc, piece), scores rounded to 1e-9: the trainer leaves equal-score
    pieces in hash-map order and its parallel sums differ in the last bits, changing ids between runs."""
    from tokenizers import Tokenizer
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    fixed, rest = vocab[:n_fixed], vocab[n_fixed:]
    if spec["model"].get("unk_id") != 0:
        raise RuntimeError("Unigram trainer did not put <unk> first")
    # scores are rounded: the trainer's float sums differ in the last bits between runs
    rest = sorted([[piece, round(score, 9)] for piece, score in rest], key=lambda p: (-p[1], p[0]))
    # characters the trainer must keep but never scored get a ladder of scores (step 1e-4) below the
    # rest (the last ones tied), in hash-map order: give the same ladder to those characters in code-point order instead
    start = len(rest) - 1
    while start > 0 and len(rest[start - 1][0]) == 1 and -1e-9 <= rest[start - 1][1] - rest[start][1] < 1e-4 + 1e-7:
        start -= 1
    ladder = rest[start:]
    if len(ladder) > 1 and all(len(p) == 1 for p, _ in ladder):
        rest[start:] = [[p, score] for (p, _), (_, score) in zip(sorted(ladder), ladder)]
    spec["model"]["vocab"] = fixed + rest
    return Tokenizer.from_str(json.dumps(spec))


def _build(kind: str, texts: list[str], vocab_size: int, specials: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if kind == "bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer, tok.decoder = _byte_level_parts()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(texts, trainer=trainer)
    elif kind == "unigram":
        tok = Tokenizer(models.Unigram())
        tok.pre_tokenizer, tok.decoder = _byte_level_parts()
        trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=[UNK] + specials, unk_token=UNK,
                                          show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(texts, trainer=trainer)
        tok = _canonical_unigram(tok, 1 + len(specials))
    elif kind == "byte":
        alphabet = {}
        # the byte-level stand-in character of byte b gets id b
        from .base import _byte_level_decoder
        for ch, b in _byte_level_decoder().items():
            alphabet[ch] = b
        tok = Tokenizer(models.BPE(vocab=alphabet, merges=[]))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens(specials)
    elif kind == "char":
        counts = Counter()
        for t in texts:
            counts.update(t)
        n_chars = max(1, vocab_size - 1 - len(specials))
        chars = sorted(counts, key=lambda c: (-counts[c], ord(c)))[:n_chars]
        vocab = {UNK: 0}
        for c in sorted(chars, key=ord):
            vocab[c] = len(vocab)
        tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
        tok.decoder = decoders.Fuse()
        tok.add_special_tokens(specials)
    else:
        raise ValueError(f"unknown tokenizer kind {kind!r}; valid: {', '.join(KINDS)}")
    return tok


def train(kind: str, corpus: str | Sequence[str] = "fortunes", vocab_size: int = 4096, *, split: str = "train",
          max_bytes: int | None = 1_000_000, specials: Sequence[str] = DEFAULT_SPECIALS, name: str | None = None):
    """Train (or load from the cache) a `kind` tokenizer on a registered corpus name or a list of texts.

    Only the first `max_bytes` UTF-8 bytes of the split's documents (in the corpus's fixed order) are used.
    Returns a zoo Tokenizer whose `info` records the settings, the cache folder and the texts' sha256.
    """
    from tokenizers import Tokenizer as HFTokenizer

    from .base import Tokenizer

    if kind not in KINDS:
        raise ValueError(f"unknown tokenizer kind {kind!r}; valid: {', '.join(KINDS)}")
    if isinstance(corpus, str):
        from tokenbook.data import load_corpus
        corpus_name, texts = corpus, load_corpus(corpus, split=split)
    else:
        corpus_name, texts = "texts", list(corpus)
    texts = take_bytes(texts, max_bytes)
    if kind == "byte":
        vocab_size = 256 + len(specials)
    import tokenizers
    settings = {"kind": kind, "corpus": corpus_name, "split": split, "max_bytes": max_bytes,
                "vocab_size": int(vocab_size), "specials": list(specials), "texts_sha256": _texts_sha(texts),
                "tokenizers": tokenizers.__version__, "format": FORMAT}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    label = name or f"{kind}-{corpus_name}-{vocab_size}"
    folder = paths.CACHE / "tokenizers" / "trained" / f"{label}-{key}"
    if not (folder / "meta.json").exists():
        # the trainers' parallel reductions can order equal-score candidates differently run to run
        old = os.environ.get("TOKENIZERS_PARALLELISM")
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        try:
            hf = _build(kind, texts, int(vocab_size), list(specials))
        finally:
            if old is None:
                os.environ.pop("TOKENIZERS_PARALLELISM", None)
            else:
                os.environ["TOKENIZERS_PARALLELISM"] = old
        tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        hf.save(str(tmp / "tokenizer.json"))
        (tmp / "meta.json").write_text(json.dumps({"name": label, **settings}, indent=1))
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    info = json.loads((folder / "meta.json").read_text())
    info["dir"] = str(folder)
    return Tokenizer(label, f"trained-{kind}", HFTokenizer.from_file(str(folder / "tokenizer.json")), info)


def load_dir(folder: str | Path):
    """A trained tokenizer from its cache folder."""
    from tokenizers import Tokenizer as HFTokenizer

    from .base import Tokenizer
    folder = Path(folder)
    info = json.loads((folder / "meta.json").read_text())
    info["dir"] = str(folder)
    return Tokenizer(info["name"], f"trained-{info['kind']}", HFTokenizer.from_file(str(folder / "tokenizer.json")),
                     info)
