"""Length-scaled Softplus attention (LSSA) and its re-weighting (LSSAR) inside a Hugging Face Llama.

Gao & Spratling, "Softplus Attention with Re-weighting Boosts Length Extrapolation in Large
Language Models" (arXiv 2501.13428; chapter ``softplus-attn``). Softmax attention is read as two
steps: a positive map (``exp``) and an l1 normalisation of each row. LSSA keeps the l1
normalisation, replaces ``exp`` with Softplus and multiplies the logits of query row ``i`` by a
length factor that grows with the number of keys the row sees; LSSAR raises the normalised
weights to a power ``p`` and renormalises, at inference, without retraining::

    s_ij  = q_i . k_j / sqrt(D)
    lam_i = log(N_i) / log(D)            N_i = i + 1 keys (causal); D = head dim
    w_ij  = softplus(lam_i * s_ij)
    a_ij  = w_ij^p / sum_{j' <= i} w_ij'^p     p = 1: LSSA;  p > 1: LSSAR

This is exactly the formula of the shared op `tokenbook.kernels.softplus_attention` (Triton on
CUDA, its PyTorch twin on CPU), which the model calls; `lssa_weights` spells the weights out for
the tests. The log base D and the plain power form of the re-weighting are our reading of the
paper (its equations could not be retrieved offline; see the chapter notebook).

Usage::

    model = build_lm(model_cfg, vocab_size=259, attention="lssa")   # or "softmax"
    with reweighting(model, p=2.0):                                 # LSSAR at evaluation
        logits = model(input_ids=ids).logits
"""
from __future__ import annotations

import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F

SOFTPLUS = "tokenbook_softplus"
ATTENTIONS = ("softmax", "lssa")
_registered = False


def lssa_weights(q: torch.Tensor, k: torch.Tensor, *, p: float = 1.0, log_base: float | None = None,
                 scale: float | None = None) -> torch.Tensor:
    """Causal LSSA(R) attention weights ``[B, H, T, T]`` (rows sum to 1, zero above the diagonal)."""
    T, D = q.shape[-2], q.shape[-1]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    log_base = float(D) if log_base is None else float(log_base)
    n_keys = torch.arange(1, T + 1, device=q.device, dtype=torch.float32)
    lam = (torch.log(n_keys) / math.log(log_base))[:, None]                    # [T, 1]
    w = F.softplus(lam * ((q.float() @ k.float().transpose(-1, -2)) * scale))
    w = w.pow(p).masked_fill(~torch.ones(T, T, dtype=torch.bool, device=q.device).tril(), 0.0)
    return w / w.sum(-1, keepdim=True)


def _softplus_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """HF attention signature: query [B, Hq, T, D], key/value [B, Hkv, T, D] → ([B, T, Hq, D], None).

    Causal over the whole row (no padding); p and the log base come from the model config."""
    from tokenbook.kernels.softplus_attention import softplus_attention
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    cfg = module.config
    out = softplus_attention(query, key, value, p=float(getattr(cfg, "softplus_p", 1.0)), causal=True,
                             scale=scaling, log_base=getattr(cfg, "softplus_log_base", None))
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    """Make `tokenbook_softplus` known to transformers (idempotent). The op builds its own causal
    structure, so no mask tensor is made."""
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface
    AttentionInterface.register(SOFTPLUS, _softplus_forward)
    AttentionMaskInterface.register(SOFTPLUS, lambda *args, **kwargs: None)
    _registered = True


def build_lm(model_cfg: dict, vocab_size: int, attention: str, *, seed: int = 0, log_base: float | None = None):
    """A LlamaForCausalLM (RoPE) from `model_cfg` with softmax ("sdpa") or LSSA attention.

    The two arms share every weight shape and the initialisation (same seed); only the attention
    nonlinearity differs."""
    if attention not in ATTENTIONS:
        raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
    from transformers import LlamaConfig, LlamaForCausalLM
    register()
    torch.manual_seed(seed)
    conf = LlamaConfig(**model_cfg, vocab_size=vocab_size, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    conf.softplus_p, conf.softplus_log_base = 1.0, log_base
    model = LlamaForCausalLM(conf)
    model.set_attn_implementation("sdpa" if attention == "softmax" else SOFTPLUS)
    return model


@contextmanager
def reweighting(model, p: float):
    """Evaluate an LSSA model as LSSAR with power `p` (training-free); restores p afterwards."""
    if p < 1:
        raise ValueError(f"re-weighting power must be >= 1, got {p}")
    if model.config._attn_implementation != SOFTPLUS:
        raise ValueError("re-weighting applies to an LSSA model (attention 'lssa')")
    previous = model.config.softplus_p
    model.config.softplus_p = float(p)
    try:
        yield model
    finally:
        model.config.softplus_p = previous
