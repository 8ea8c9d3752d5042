"""Length-extrapolation experiments with tiny byte-level models (Part B): the corpus as byte
streams, and the loss of the same held-out text at several window lengths.

Used by the softplus-attn, giraffe-rope and landmark-attention chapters: a model trained at a
context C is scored on windows of C, 2C, ... of the same blocks, so lengths and arms are paired.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def byte_streams(corpus: str) -> dict:
    """A registered corpus as UTF-8 byte streams: {"tokenizer", "train": LongTensor, "val": LongTensor}."""
    from ..data import load_corpus
    from ..train.byte_tokenizer import ByteTokenizer
    from ..train.zoo import tokenize_docs
    tok = ByteTokenizer()
    return {"tokenizer": tok, "train": tokenize_docs(tok, load_corpus(corpus, "train")),
            "val": tokenize_docs(tok, load_corpus(corpus, "val"))}


@torch.no_grad()
def nll_by_window_length(model, tokens: torch.Tensor, lengths: list[int], block: int, *,
                         device: str = "cpu", batch_tokens: int = 8192) -> dict[int, np.ndarray]:
    """Per-block mean next-token loss (nats) of the same text, cut into windows of each length.

    `tokens` (1-D) is cut into blocks of `block` tokens (block a multiple of every length); each
    block is scored once per window length L as block/L independent windows of L tokens, every
    window's first token unscored (it has no context). So every L scores the same targets, minus
    the first token of each window, and differs only in how much context the model may use.
    Returns {L: array [n_blocks]} — paired across lengths and arms, for a block bootstrap."""
    if any(block % L for L in lengths):
        raise ValueError(f"block {block} must be a multiple of every window length {lengths}")
    n_blocks = len(tokens) // block
    if n_blocks < 2:
        raise ValueError(f"{len(tokens)} tokens give {n_blocks} blocks of {block}; need >= 2")
    was = model.training
    model.eval()
    out = {}
    for L in lengths:
        windows = tokens[: n_blocks * block].view(n_blocks * block // L, L)
        per = max(1, batch_tokens // L)
        losses = []
        for s in range(0, len(windows), per):
            x = windows[s:s + per].to(device)
            logits = model(input_ids=x).logits.float()
            nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1),
                                  reduction="none").view(len(x), L - 1)
            losses.append(nll.sum(1).cpu())
        per_window = torch.cat(losses).view(n_blocks, block // L)          # summed nll per window
        out[L] = (per_window.sum(1) / ((L - 1) * (block // L))).numpy()    # mean nll per block
    model.train(was)
    return out
