"""Tiny LMs that differ only in their tokenizer, trained at equal compute and scored per byte.

The tokenization chapters ask one question again and again: *with tokenizer A instead of B, is a
language model better per byte of text?* This module answers it the same way for all of them:

    arm = train_lm(tokenizer, train_texts, val_texts, model=dict(...), train=dict(...),
                   match="tokens")          # or match="bytes", budget=...
    arm["val_bpb"], arm["val_bpb_per_doc"], arm["bytes_per_token"], arm["flops_per_byte"]

- Any tokenizer with `encode(text) -> list[int]` and `vocab_size` (or `len()`) works: the zoo's
  `Tokenizer`s, HF tokenizers, the byte tokenizer, a chapter's own learner. One extra id, equal to
  the tokenizer's vocabulary size, separates documents and starts every scored text; so no
  tokenizer needs special tokens and all arms are treated alike.
- The model is a Llama (`transformers.LlamaForCausalLM`) built from `model` (LlamaConfig keywords);
  only its embedding rows differ between arms with the same `model` dict.
- Equal compute (`match="tokens"`): every arm runs the same optimizer steps on the same number of
  tokens per step, so (with the same non-embedding parameters) the same training FLOPs; an arm whose
  tokens carry more bytes sees more text. Equal data (`match="bytes"`, with `budget` in bytes): the
  step count is set so that each arm reads `budget` training bytes (at its own bytes/token).
- Validation bits per byte comes from `tokenbook.evaluation.perplexity.score_texts` on whole
  held-out documents (every byte predicted once), with the per-document values kept for paired
  bootstrap comparisons between arms (`tokenbook.stats.bootstrap_fn`).
- `flops_per_byte` = 2 × non-embedding parameters / bytes per token: the forward cost of reading one
  byte of text, the inference-efficiency measure of SuperBPE-style papers.
"""
from __future__ import annotations

import math
import time
from typing import Sequence

import numpy as np
import torch

from . import trainer as _trainer
from .trainer import TrainConfig

MATCHES = ("tokens", "bytes")


def vocab_size_of(tokenizer) -> int:
    """Number of ids: len() where defined (HF tokenizers count added tokens there), else .vocab_size."""
    try:
        v = len(tokenizer)
    except TypeError:
        v = getattr(tokenizer, "vocab_size", None)
    if not v:
        raise ValueError(f"cannot tell the vocabulary size of {tokenizer!r}: give it .vocab_size or len()")
    return int(v)


def _encode(tokenizer, text: str) -> list[int]:
    try:
        return list(tokenizer.encode(text, add_special_tokens=False))
    except TypeError:
        return list(tokenizer.encode(text))


class SeparatedTokenizer:
    """`tokenizer` plus one separator id (= its vocabulary size) that starts every document."""

    def __init__(self, tokenizer):
        self.inner = tokenizer
        self.n_inner = vocab_size_of(tokenizer)
        self.bos_token_id = self.eos_token_id = self.pad_token_id = self.n_inner

    def __len__(self) -> int:
        return self.n_inner + 1

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        ids = _encode(self.inner, text)
        if ids and max(ids) >= self.n_inner:
            raise ValueError(f"tokenizer produced id {max(ids)} >= its vocabulary size {self.n_inner}")
        return [self.bos_token_id] + ids if add_special_tokens else ids

    def decode(self, ids) -> str:
        return self.inner.decode([i for i in ids if i != self.bos_token_id])


def token_stream(tokenizer: SeparatedTokenizer, texts: Sequence[str]) -> tuple[torch.Tensor, int]:
    """(one id stream with the separator before each document, UTF-8 bytes of the texts)."""
    out: list[int] = []
    for t in texts:
        out.append(tokenizer.bos_token_id)
        out.extend(tokenizer.encode(t))
    return torch.tensor(out, dtype=torch.long), sum(len(t.encode("utf-8")) for t in texts)


def build_model(model: dict, n_vocab: int, sep_id: int, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    conf = LlamaConfig(**model, vocab_size=n_vocab, bos_token_id=sep_id, eos_token_id=sep_id, pad_token_id=sep_id)
    return LlamaForCausalLM(conf)


def non_embedding_parameters(net) -> int:
    emb = {id(p) for m in (net.get_input_embeddings(), net.get_output_embeddings()) if m is not None
           for p in m.parameters()}
    return sum(p.numel() for p in net.parameters() if id(p) not in emb)


def steps_for(match: str, train_cfg: dict, bytes_per_token: float, budget: float | None) -> int:
    if match not in MATCHES:
        raise ValueError(f"unknown match {match!r}; valid: {', '.join(MATCHES)}")
    if match == "tokens":
        return int(train_cfg["steps"])
    if not budget or budget <= 0:
        raise ValueError("match='bytes' needs budget = training bytes per arm (> 0)")
    tps = int(train_cfg.get("batch_size", 8)) * int(train_cfg.get("seq_len", 128)) * int(train_cfg.get("grad_accum", 1))
    return max(1, math.ceil(budget / (bytes_per_token * tps)))


def train_lm(tokenizer, train_texts: Sequence[str], val_texts: Sequence[str], *, model: dict, train: dict,
             match: str = "tokens", budget: float | None = None, seed: int = 0, device: str = "cpu",
             eval_max_length: int | None = None, progress: bool = True, keep_model: bool = False,
             name: str | None = None) -> dict:
    """Train a fresh tiny Llama on `train_texts` tokenized by `tokenizer`; score `val_texts` per byte.

    `model`: LlamaConfig keywords (vocab size and special ids are set here). `train`: TrainConfig
    keywords (`steps` is replaced when match="bytes"). Returns a plain dict (see the module doc);
    with `keep_model` it also holds the trained model under "model".
    """
    sep = SeparatedTokenizer(tokenizer)
    train_ids, train_bytes = token_stream(sep, train_texts)
    bpt_train = train_bytes / max(1, len(train_ids) - len(train_texts))
    cfg_d = {**dict(train), "seed": seed, "progress": progress}
    cfg_d["steps"] = steps_for(match, cfg_d, bpt_train, budget)
    cfg = TrainConfig.from_dict(cfg_d)
    if len(train_ids) < cfg.seq_len + 1:
        raise ValueError(f"{len(train_ids)} training tokens are fewer than one sequence of {cfg.seq_len}")
    net = build_model(dict(model), len(sep), sep.bos_token_id, seed)
    n_params, n_core = sum(p.numel() for p in net.parameters()), non_embedding_parameters(net)
    t0 = time.perf_counter()
    res = _trainer.train(net, train_ids, cfg, device=device, resume=False)
    wall = time.perf_counter() - t0
    from ..evaluation.perplexity import score_texts
    scores = score_texts(net, sep, list(val_texts), max_length=eval_max_length or cfg.seq_len, device=device)
    bpt_val = scores.n_bytes / max(1, scores.n_tokens)
    out = {
        "name": name or getattr(tokenizer, "name", type(tokenizer).__name__),
        "vocab_size": sep.n_inner, "parameters": n_params, "non_embedding_parameters": n_core,
        "match": match, "steps": res.steps, "tokens_per_step": cfg.tokens_per_step,
        "train_tokens_seen": res.tokens_seen, "train_bytes_seen": res.tokens_seen * bpt_train,
        "train_bytes_per_token": bpt_train, "epochs": res.tokens_seen / max(1, len(train_ids)),
        "final_train_loss": res.final_loss, "train_wall_s": wall,
        "val_bpb": scores.bits_per_byte, "val_bpb_per_doc": scores.per_text_bits_per_byte().tolist(),
        "val_doc_bytes": scores.text_bytes.tolist(), "val_nll_bits_per_doc": _bits_per_doc(scores),
        "bytes_per_token": bpt_val, "val_tokens": scores.n_tokens, "val_bytes": scores.n_bytes,
        "flops_per_byte": 2.0 * n_core / bpt_val,
        "loss_log": [{"step": r["step"], "loss": r["loss"], "tokens": r["tokens"]} for r in res.log],
    }
    if keep_model:
        out["model"], out["tokenizer"] = net, sep
    return out


def _bits_per_doc(scores) -> list[float]:
    bits = np.zeros(len(scores.text_bytes))
    np.add.at(bits, scores.text_index, scores.nll / math.log(2.0))
    return bits.tolist()


def pooled_bpb(arm: dict, idx: np.ndarray | None = None) -> float:
    """Σ bits / Σ bytes over the documents `idx` (all when None): the corpus-level bits per byte."""
    bits, nbytes = np.asarray(arm["val_nll_bits_per_doc"]), np.asarray(arm["val_doc_bytes"])
    if idx is not None:
        bits, nbytes = bits[idx], nbytes[idx]
    return float(bits.sum() / nbytes.sum())


def bpb_difference(a: dict, b: dict, *, level: float = 0.95, n_boot: int = 2000, seed: int = 0):
    """Estimate of pooled bpb(a) - bpb(b), documents resampled jointly (the arms saw the same texts)."""
    from ..stats import bootstrap_fn
    n = len(a["val_doc_bytes"])
    if len(b["val_doc_bytes"]) != n:
        raise ValueError("the two arms were scored on different validation sets")
    cols = {"ba": a["val_nll_bits_per_doc"], "bb": b["val_nll_bits_per_doc"], "n": a["val_doc_bytes"]}
    return bootstrap_fn(cols, lambda d: float(d["ba"].sum() / d["n"].sum() - d["bb"].sum() / d["n"].sum()),
                        level=level, n_boot=n_boot, seed=seed, unit="bits/byte")
