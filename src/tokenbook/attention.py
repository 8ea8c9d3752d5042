"""Plugging TokenBook attention ops into Hugging Face models (any Llama-family model).

transformers looks attention functions up by name (`config._attn_implementation`). We register
`tokenbook_varlen`, which runs `tokenbook.kernels.varlen_attention` on a packed batch whose
sequence boundaries arrive as `cu_seqlens` in the forward call's keyword arguments:

    with use_attention(model, "tokenbook_varlen"):
        model(input_ids=ids[None], position_ids=pos[None], cu_seqlens=cu, max_seqlen=m)
"""
from __future__ import annotations

from contextlib import contextmanager


VARLEN = "tokenbook_varlen"
_registered = False


def _varlen_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                              cu_seqlens=None, max_seqlen=None, **kwargs):
    """HF attention signature: query [B=1, Hq, T, D], key/value [1, Hkv, T, D] → ([1, T, Hq, D], None)."""
    from tokenbook.kernels.varlen_attention import varlen_attention
    if cu_seqlens is None:
        raise ValueError(f"attention {VARLEN!r} needs cu_seqlens=... in the model's forward call")
    if query.shape[0] != 1:
        raise ValueError(f"attention {VARLEN!r} expects one packed row (batch 1), got batch {query.shape[0]}")
    q = query[0].transpose(0, 1)  # [T, Hq, D]
    k = key[0].transpose(0, 1)
    v = value[0].transpose(0, 1)
    out = varlen_attention(q, k, v, cu_seqlens, max_seqlen, causal=True, scale=scaling)
    return out.unsqueeze(0), None


def register() -> None:
    """Make `tokenbook_varlen` known to transformers (idempotent)."""
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface
    AttentionInterface.register(VARLEN, _varlen_attention_forward)
    # The op builds its own block-diagonal causal structure from cu_seqlens: no mask tensor needed.
    AttentionMaskInterface.register(VARLEN, lambda *args, **kwargs: None)
    _registered = True


@contextmanager
def use_attention(model, name: str):
    """Temporarily switch a loaded HF model to attention implementation `name`."""
    if name == VARLEN:
        register()
    previous = model.config._attn_implementation
    model.set_attn_implementation(name)
    try:
        yield model
    finally:
        model.set_attn_implementation(previous)


# ---- attention patterns (tokenbook.longctx.patterns) -------------------------------------------

PATTERN = "tokenbook_pattern"
_pattern_registered = False


def _pattern_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """HF attention signature; runs the callable that `patterns.apply` hung on the module:
    ``module.tokenbook_pattern(q [B,Hq,Tq,D], k, v [B,Hkv,Tk,D], scale=, layer=) → [B,Hq,Tq,D]``."""
    pattern = getattr(module, "tokenbook_pattern", None)
    if pattern is None:
        raise ValueError(f"attention {PATTERN!r} needs a pattern: use tokenbook.longctx.patterns.apply(model, ...)")
    out = pattern(query, key, value, scale=scaling, layer=module.layer_idx)
    return out.transpose(1, 2).contiguous(), None


def register_pattern_attention() -> None:
    """Make `tokenbook_pattern` known to transformers (idempotent). Patterns build their own causal
    structure (one sequence, no padding), so no mask tensor is made."""
    global _pattern_registered
    if _pattern_registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface
    AttentionInterface.register(PATTERN, _pattern_attention_forward)
    AttentionMaskInterface.register(PATTERN, lambda *args, **kwargs: None)
    _pattern_registered = True
