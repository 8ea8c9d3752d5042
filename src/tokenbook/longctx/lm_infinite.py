"""LM-Infinite (Han et al., NAACL 2024, arXiv:2308.16137): on-the-fly length generalization.

A RoPE model trained on L tokens fails past L for three reasons the paper names: unseen
relative distances, more tokens than it ever attended (attention entropy grows), and the starting
tokens, whose features are special, drop out of view if one just slides a window. LM-Infinite
changes attention only, with no training:

    Λ mask:        query i attends the first n_global tokens and the last L_local ones
                   (i − L_local < j ≤ i);
    distance cap:  every relative distance is clipped to L (the sinks are seen at ≤ L).

So each query sees at most n_global + L_local keys (O(n) attention) at distances the model knows.
`arms()` builds the four attention modes the chapter compares from the shared toolkit
(`tokenbook.longctx.patterns`); `arm_logits` runs them on one sequence, sharing the prefix
they agree on; `target_nll` and `passkey_hits` turn logits into the measurements.

Shapes: T tokens, V vocabulary.
"""
from __future__ import annotations

import numpy as np
import torch

from . import patterns as pt

ARMS = ("vanilla", "window_only", "lambda_nocap", "lm_infinite")
ARM_LABEL = {"vanilla": "vanilla (full attention)", "window_only": "window only (no sinks)",
             "lambda_nocap": "Λ mask, no distance cap", "lm_infinite": "LM-Infinite (Λ + distance cap)"}


def arms(model, *, train_len: int, n_global: int, window: int | None = None, chunk: int = 512,
         names=ARMS) -> dict[str, object]:
    """The attention modes: {name: pattern for `patterns.apply`}. `window` defaults to L = train_len."""
    W = window or train_len
    f = pt.rope_inv_freq(model)
    every = {"vanilla": pt.Dense(),
             "window_only": pt.Lambda(sinks=0, window=W, chunk=chunk),
             "lambda_nocap": pt.Lambda(sinks=n_global, window=W, chunk=chunk),
             "lm_infinite": pt.Lambda(sinks=n_global, window=W, cap=train_len, inv_freq=f, chunk=chunk)}
    return {n: every[n] for n in names}


def arm_logits(model, ids: torch.Tensor, modes: dict, first: int, *, shared: int) -> dict[str, torch.Tensor]:
    """Logits ``[T − first, V]`` (fp32) at positions first..T−1 of ``ids [T]`` under every mode.

    The first `shared` positions are computed once with dense attention and their KV cache reused:
    exact whenever every mode equals causal attention there (Λ modes with window ≥ shared and a cap
    ≥ shared do). Each mode then continues from the cache; the cache is cut back between modes.
    """
    ids = ids.view(1, -1)
    T = ids.shape[1]
    shared = max(0, min(shared, first, T - 1))
    out = {}
    with torch.inference_mode():
        cache = None
        if shared > 0:
            with pt.apply(model, pt.Dense()):
                cache = model(input_ids=ids[:, :shared], use_cache=True).past_key_values
        for name, pattern in modes.items():
            with pt.apply(model, pattern):
                logits = model(input_ids=ids[:, shared:], past_key_values=cache, use_cache=cache is not None).logits
            out[name] = logits[0, first - shared:].float()
            if cache is not None:
                pt.truncate_cache(cache, shared)
    return out


def target_nll(logits: torch.Tensor, ids: torch.Tensor, n_target: int) -> np.ndarray:
    """NLL (nats) of the last `n_target` tokens of ids, from logits that end at position T−1 (the last
    ``n_target + 1`` rows are used: row t predicts token t + 1)."""
    ids = ids.view(-1)
    lp = torch.log_softmax(logits[-n_target - 1:-1], -1)
    return (-lp.gather(-1, ids[-n_target:, None].to(lp.device))[:, 0]).cpu().numpy()


def passkey_hits(logits: torch.Tensor, answer_ids: list[int]) -> bool:
    """Teacher-forced greedy check: every answer token is the argmax given the ones before it
    (equivalent to greedy decoding producing the answer). `logits` end at the last answer token."""
    n = len(answer_ids)
    pred = logits[-n - 1:-1].argmax(-1).tolist()
    return pred == list(answer_ids)
