"""RoPE frequency bases for context extension (Giraffe, arXiv 2308.10882) and a LongChat-Lines task.

Pal et al., "Giraffe: Adventures in Expanding Context Lengths in LLMs" (chapter ``giraffe-rope``).
Every method here changes only the RoPE frequency vector ``f_i = base^(-2i/d)`` (i = 0 .. d/2-1)
that rotates query/key pair i by ``p * f_i`` at position p:

- ``default``: the stock basis;
- ``linear`` (linear scaling / position interpolation, scale s): ``f_i / s`` — identical to
  rotating by ``(p / s) * f_i``, i.e. transformers' ``rope_type="linear"``;
- ``power`` (power-scaled basis, power k): ``f_i * (1 - i/(d/2))^k`` — slow (low) frequencies are
  stretched more than fast ones (the authors' code multiplies the basis this way; they report k = 0.5);
- ``truncated`` (the paper's new basis, cut-off length T): with ``b = 2π/T``, ``a = b/8``, ``ρ = b/16``
  (the constants of the authors' released code)::

        f'_i = f_i   if f_i >= b          (completes at least one cycle within T positions)
             = ρ     if a <= f_i < b      (a middle band set to one small constant)
             = 0     if f_i < a           (too slow: no rotation at all)

`apply_basis` writes a basis into a Hugging Face Llama's rotary embedding (in place), so a model
can be fine-tuned or evaluated under any of them. `lines_item` builds one LongChat-Lines-style
retrieval item (byte text): key/value lines, then a question about one key; the value is the answer.
"""
from __future__ import annotations

import math
import random
from contextlib import contextmanager

import torch

KINDS = ("default", "linear", "power", "truncated")


def default_inv_freq(head_dim: int, base: float = 10000.0) -> torch.Tensor:
    """The stock RoPE frequencies ``base^(-2i/d)`` (float32), as transformers' Llama computes them."""
    if head_dim % 2:
        raise ValueError(f"head_dim must be even, got {head_dim}")
    return 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))


def truncate_frequencies(f: torch.Tensor, cutoff_len: float) -> torch.Tensor:
    """The truncated basis: keep f >= b = 2π/T, set a = b/8 <= f < b to ρ = b/16, zero f < a."""
    if cutoff_len <= 0:
        raise ValueError(f"truncation length must be > 0, got {cutoff_len}")
    b = 2 * math.pi / cutoff_len
    out = torch.where(f < b, torch.full_like(f, b / 16), f)
    return torch.where(f < b / 8, torch.zeros_like(f), out)


def inv_freq(kind: str, head_dim: int, base: float = 10000.0, *, scale: float = 1.0, power: float = 0.5,
             truncate_len: float | None = None) -> torch.Tensor:
    """The frequency vector [head_dim/2] of one basis (see the module docstring)."""
    f = default_inv_freq(head_dim, base)
    if kind == "default":
        return f
    if kind == "linear":
        if scale <= 0:
            raise ValueError(f"linear scale must be > 0, got {scale}")
        return f / scale
    if kind == "power":
        if power < 0:
            raise ValueError(f"power must be >= 0, got {power}")
        i = torch.arange(len(f), dtype=torch.float32)
        return f * (1.0 - i / len(f)) ** power
    if kind == "truncated":
        if truncate_len is None:
            raise ValueError("the truncated basis needs truncate_len (the length T whose cycles are kept)")
        return truncate_frequencies(f, truncate_len)
    raise ValueError(f"unknown RoPE basis {kind!r}; choose from {KINDS}")


def _rotary(model):
    inner = getattr(model, "model", model)
    if not hasattr(inner, "rotary_emb"):
        raise ValueError("model has no rotary embedding (expected a transformers Llama)")
    return inner.rotary_emb


def get_basis(model) -> torch.Tensor:
    return _rotary(model).inv_freq.detach().clone()


def apply_basis(model, freqs: torch.Tensor) -> None:
    """Write `freqs` into the model's rotary embedding (in place; every layer shares it)."""
    rot = _rotary(model)
    if freqs.shape != rot.inv_freq.shape:
        raise ValueError(f"basis has shape {tuple(freqs.shape)}, the model needs {tuple(rot.inv_freq.shape)}")
    rot.inv_freq.copy_(freqs.to(rot.inv_freq))
    if hasattr(rot, "original_inv_freq"):
        rot.original_inv_freq.copy_(freqs.to(rot.original_inv_freq))


@contextmanager
def basis(model, freqs: torch.Tensor):
    """Evaluate `model` under another basis (e.g. a larger linear scale), then restore it."""
    saved = get_basis(model)
    apply_basis(model, freqs)
    try:
        yield model
    finally:
        apply_basis(model, saved)


# ---- LongChat-Lines-style retrieval (byte text) -----------------------------------------------------

LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def lines_item(length: int, rng: random.Random, *, key_len: int = 3, digits: int = 3, n_queries: int = 1,
               sep: str = ":") -> dict:
    """One retrieval item of exactly `length` bytes (ASCII): ``"{key}{sep}{value}\\n"`` lines with
    unique random keys (`key_len` letters), then the question ``"?{key}{sep}"`` about one of them and
    its value (`digits` digits) as the answer.

    As many lines as fit are used, at most one per distinct key; when the keys run out (short keys,
    long items) the spare bytes become runs of spaces before random lines, so the lines still spread
    over the whole item. With ``n_queries > 1`` (training items, multi-query recall)
    ``n_queries - 1`` answered questions ``"?{key}{sep}{value}\\n"`` come before the final one, so one
    item carries several retrieval targets; the final question always has the evaluation format.
    Returns {"text" (prompt + answer), "prompt", "answer", "key", "n_lines", "position"} where
    position is the index of the line the final question asks about."""
    if n_queries < 1:
        raise ValueError(f"n_queries must be >= 1, got {n_queries}")
    if any(c.isalnum() or c in "?\n" for c in sep):
        raise ValueError(f"separator must not contain letters, digits, '?' or newlines, got {sep!r}")
    line_len = key_len + len(sep) + digits + 1
    q_len = 1 + key_len + len(sep)
    room = length - n_queries * (q_len + digits) - (n_queries - 1)
    n_lines = min(room // line_len, len(LETTERS) ** key_len)
    if n_lines < 1:
        raise ValueError(f"length {length} is too short for one line of {line_len} bytes plus "
                         f"{n_queries} question(s)")
    keys: set[str] = set()
    while len(keys) < n_lines:
        keys.add("".join(rng.choice(LETTERS) for _ in range(key_len)))
    keys_l = sorted(keys)
    rng.shuffle(keys_l)
    values = ["".join(rng.choice("0123456789") for _ in range(digits)) for _ in keys_l]
    asked = [rng.randrange(n_lines) for _ in range(n_queries)]
    pos = asked[-1]
    gaps = [0] * (n_lines + 1)                      # spaces before line i (gaps[n_lines]: before the questions)
    spread = n_lines < room // line_len             # keys ran out: spread the spare bytes over the lines
    for _ in range(room - n_lines * line_len):
        gaps[rng.randrange(n_lines) if spread else 0] += 1
    body = "".join(" " * g + f"{k}{sep}{v}\n" for g, k, v in zip(gaps, keys_l, values))
    body += "".join(f"?{keys_l[i]}{sep}{values[i]}\n" for i in asked[:-1])
    prompt = body + f"?{keys_l[pos]}{sep}"
    return {"text": prompt + values[pos], "prompt": prompt, "answer": values[pos], "key": keys_l[pos],
            "n_lines": n_lines, "position": pos}


def training_queries(length: int, *, key_len: int = 3, digits: int = 3, share: float = 0.5, sep: str = ":") -> int:
    """How many questions a training item of `length` bytes carries: about `share` of its bytes."""
    return max(1, int(share * length) // (key_len + len(sep) + digits + 2))


def lines_answers(prompt: str, key: str, *, key_len: int = 3, sep: str = ":") -> list[str]:
    """Every value the lines of `prompt` (not its questions) give `key` (a well-formed item has one)."""
    out = []
    for line in prompt.split("\n"):
        line = line.strip()
        if len(line) > key_len + len(sep) and line[:key_len] == key and line[key_len:key_len + len(sep)] == sep:
            out.append(line[key_len + len(sep):])
    return out


def encode(text: str) -> torch.Tensor:
    """ByteTokenizer ids of an ASCII text (byte b -> id b + 3)."""
    from ..train.byte_tokenizer import OFFSET
    return torch.tensor([b + OFFSET for b in text.encode("ascii")], dtype=torch.long)


def mixed_stream(corpus_bytes: torch.Tensor, seq_len: int, n_seqs: int, lines_fraction: float, seed: int,
                 *, key_len: int = 3, digits: int = 3, query_share: float = 0.5, sep: str = ":") -> torch.Tensor:
    """A 1-D byte stream of `n_seqs` sequences of `seq_len`: a `lines_fraction` of them multi-query
    Lines items (each exactly one sequence; about `query_share` of its bytes are answered
    questions), the rest consecutive corpus text. Aligned to seq_len, so a sampler
    that cuts the stream every seq_len tokens sees whole items."""
    if not 0.0 <= lines_fraction <= 1.0:
        raise ValueError(f"lines_fraction must lie in [0, 1], got {lines_fraction}")
    rng = random.Random(seed)
    n_q = training_queries(seq_len, key_len=key_len, digits=digits, share=query_share, sep=sep)
    out, cursor = [], 0
    for _ in range(n_seqs):
        if rng.random() < lines_fraction:
            item = lines_item(seq_len, rng, key_len=key_len, digits=digits, n_queries=n_q, sep=sep)
            out.append(encode(item["text"]))
        else:
            if cursor + seq_len > len(corpus_bytes):
                cursor = 0
            out.append(corpus_bytes[cursor:cursor + seq_len].long())
            cursor += seq_len
    return torch.cat(out)


@torch.no_grad()
def lines_correct(model, items: list[dict], *, device: str = "cpu", batch_size: int = 16) -> list[bool]:
    """Exact match per item: every answer byte is the model's argmax given the prompt and the answer
    bytes before it (teacher forcing; equal to greedy decoding being exactly right). Items of one
    call must share a length. Ids are tokenbook's ByteTokenizer ids (byte + 3)."""
    if len({len(it["text"]) for it in items}) > 1:
        raise ValueError("items of one call must have the same length")
    was = model.training
    model.eval()
    out = []
    for s in range(0, len(items), batch_size):
        chunk = items[s:s + batch_size]
        x = torch.stack([encode(it["text"]) for it in chunk]).to(device)
        n_ans = len(chunk[0]["answer"])
        pred = model(input_ids=x).logits[:, -n_ans - 1:-1].argmax(-1)
        out += (pred == x[:, -n_ans:]).all(-1).cpu().tolist()
    model.train(was)
    return out
