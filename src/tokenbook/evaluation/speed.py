"""Time to first token and decoding speed of HF `generate`, for any method and its baseline alike.

Two arms are timed in interleaved rounds with `tokenbook.timing.interleaved`: generate with one
new token (prefill + first token = time to first token) and with `new_tokens` new tokens. Decode
speed is (new_tokens - 1) / (t_full - t_first), which removes the prefill; both come with
bootstrap intervals over the paired rounds (`tokenbook.stats.bootstrap_fn`). Greedy decoding
with `min_new_tokens` fixed, so an early end-of-text token cannot shorten a round.

At batch 1 on a GPU decoding is launch-bound (GPU.md: ~19 tokens/s for a 39M or 162M model):
compare methods only on this one harness, never against numbers measured elsewhere.
"""
from __future__ import annotations

import numpy as np
import torch

from .. import stats, timing


def generation_speed(model, input_ids: torch.Tensor, *, new_tokens: int = 32, repeats: int = 5, warmup: int = 1,
                     device: str = "cpu", attention_mask: torch.Tensor | None = None, **generate_kwargs) -> dict:
    """{"ttft_s": Estimate, "decode_tok_per_s": Estimate, "total_s": Estimate, "raw": {arm: [s]}}."""
    if new_tokens < 2:
        raise ValueError("new_tokens must be at least 2 (one for the first token, more for decoding speed)")
    if input_ids.ndim == 1:
        input_ids = input_ids[None]
    input_ids = input_ids.to(device)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    attention_mask = attention_mask.to(device)
    pad = getattr(model.generation_config, "pad_token_id", None)
    if pad is None:
        pad = getattr(model.generation_config, "eos_token_id", None)
    kwargs = {"do_sample": False, "pad_token_id": pad, **generate_kwargs}

    def gen(n):
        def call():
            with torch.inference_mode():
                return model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=n,
                                      min_new_tokens=n, **kwargs)
        return call

    raw = timing.interleaved({"first": gen(1), "full": gen(new_tokens)}, repeats=repeats, warmup=warmup,
                             device=device)

    def decode_speed(d) -> float:
        return (new_tokens - 1) / max(float((np.asarray(d["full"]) - np.asarray(d["first"])).mean()), 1e-9)

    if repeats >= 2:
        ttft, total = stats.bootstrap(raw["first"], unit="s"), stats.bootstrap(raw["full"], unit="s")
        speed = stats.bootstrap_fn(raw, decode_speed, unit="tok/s")
    else:
        ttft, total = stats.exact(raw["first"][0], "s"), stats.exact(raw["full"][0], "s")
        speed = stats.exact(decode_speed(raw), "tok/s")
    return {"ttft_s": ttft, "total_s": total, "decode_tok_per_s": speed, "new_tokens": new_tokens,
            "prompt_tokens": int(input_ids.shape[1]), "raw": raw}
