"""One small interface over every tokenizer in the zoo, and the bytes-per-token measurement.

A `Tokenizer` wraps either a tiktoken `Encoding` or a HF `tokenizers.Tokenizer` (GGUF vocabularies,
SmolLM2's, and the ones we train). `encode` never adds BOS/EOS and treats special-token text in the
input as ordinary text where the backend allows it, so token counts measure the text alone.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Iterable, Sequence


@lru_cache(maxsize=1)
def _byte_level_decoder() -> dict[str, int]:
    """GPT-2's printable stand-in character for each byte (tokenizers' ByteLevel alphabet), inverted."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return {c: b for b, c in chars.items()}


class Tokenizer:
    """name, kind, vocab_size, encode(text) -> ids, decode(ids) -> text, token_strings(ids), token_bytes(ids).

    `raw` is the backend object (tiktoken.Encoding or tokenizers.Tokenizer) for anything not covered here.
    `info` holds where it came from (files, checksums, training settings).
    """

    def __init__(self, name: str, kind: str, raw, info: dict | None = None):
        self.name, self.kind, self.raw = name, kind, raw
        self.info = dict(info or {})
        self._is_tiktoken = kind == "tiktoken"
        self._vocab_size = None
        if not self._is_tiktoken:
            raw.encode_special_tokens = True  # special-token text in the input is text, as in tiktoken's encode_ordinary
            self._byte_level = "ByteLevel" in repr(raw.decoder) or "ByteLevel" in repr(raw.pre_tokenizer)
            self._special_ids = {i for i, t in raw.get_added_tokens_decoder().items() if t.special}
        else:
            self._byte_level = True
            self._special_ids = set(raw._special_tokens.values())

    def __repr__(self) -> str:
        return f"Tokenizer({self.name!r}, kind={self.kind!r}, vocab_size={self.vocab_size})"

    @property
    def vocab_size(self) -> int:
        """Number of token ids, special tokens included."""
        if self._vocab_size is None:  # tokenizers builds the whole vocabulary map to count it: once
            self._vocab_size = self.raw.n_vocab if self._is_tiktoken else self.raw.get_vocab_size(with_added_tokens=True)
        return self._vocab_size

    @property
    def special_ids(self) -> set[int]:
        return set(self._special_ids)

    def encode(self, text: str) -> list[int]:
        if self._is_tiktoken:
            return self.raw.encode_ordinary(text)
        return self.raw.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        if self._is_tiktoken:
            return self.raw.encode_ordinary_batch(list(texts))
        return [e.ids for e in self.raw.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        ids = list(ids)
        if self._is_tiktoken:
            return self.raw.decode(ids)
        return self.raw.decode(ids, skip_special_tokens=False)

    def token_strings(self, ids: Iterable[int]) -> list[str]:
        """The vocabulary entry of each id as the backend spells it (GPT-2 byte stand-ins, '▁', '<0x0A>' …)."""
        if self._is_tiktoken:
            return [self.raw.decode_single_token_bytes(i).decode("utf-8", errors="backslashreplace") for i in ids]
        return [self.raw.id_to_token(i) for i in ids]

    def token_bytes(self, ids: Iterable[int]) -> list[bytes]:
        """The UTF-8 bytes each token stands for (special tokens: their text). Concatenated, they give the
        encoded text's bytes for byte-level tokenizers; for SentencePiece-style ones '▁' becomes a space."""
        ids = list(ids)
        if self._is_tiktoken:
            return [self.raw.decode_single_token_bytes(i) for i in ids]
        out = []
        table = _byte_level_decoder()
        for i in ids:
            piece = self.raw.id_to_token(i)
            if piece is None:
                raise ValueError(f"{self.name}: id {i} is outside the vocabulary ({self.vocab_size})")
            if i in self._special_ids:
                out.append(piece.encode("utf-8"))
            elif self._byte_level and all(c in table for c in piece):
                out.append(bytes(table[c] for c in piece))
            elif len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
                out.append(bytes([int(piece[3:5], 16)]))
            else:
                out.append(piece.replace("\u2581", " ").encode("utf-8"))
        return out


def bytes_per_token(tok: Tokenizer, texts: Iterable[str]) -> float:
    """UTF-8 bytes of `texts` divided by the number of tokens `tok` splits them into (higher = shorter)."""
    texts = [t for t in texts if t]
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    n_tokens = sum(len(ids) for ids in tok.encode_batch(texts))
    if n_tokens == 0:
        raise ValueError("bytes_per_token: no tokens (empty texts)")
    return n_bytes / n_tokens
