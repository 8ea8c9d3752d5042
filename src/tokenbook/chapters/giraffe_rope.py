"""Experiment for the `giraffe-rope` chapter: extending a RoPE model's context by changing its basis.

- `data`: a registered English corpus as one byte stream, plus synthetic LongChat-Lines items
  (`tokenbook.longctx.rope_variants.lines_item`);
- `train_arms`: ONE tiny byte-level RoPE Llama pretrained at context C on the corpus mixed with
  Lines items; then, from the same weights, a short fine-tune at 4C (same steps, data and seed)
  per basis: linear scaling (scale 4), power-scaled basis, truncated basis. The zero-shot arm is
  the pretrained model itself, evaluated beyond C with its stock basis;
- `evaluate`: held-out bits per byte (windows of C·{1, 2, 4, 8}, block bootstrap) and Lines exact
  match at C·{1, 2, 4, 8} (the same items for every arm), plus the linear arm evaluated at larger
  scales than it was fine-tuned with;
- `plot`, `check_claims`.
"""
from __future__ import annotations

import copy
import math
import random
import time

import numpy as np

from .. import stats
from ..claims import AtLeast, AtMost
from ..config import to_dict
from ..evaluation import paired_difference
from ..learnability import FloorCheck
from ..longctx import rope_variants as rv
from ..longctx.lengths import byte_streams, nll_by_window_length
from ..train import TrainConfig, train

LN2 = math.log(2.0)
FT_ARMS = ("linear", "power", "truncated")


def arm_label(arm: str) -> str:
    if arm.startswith("linear@"):
        return f"linear, train 4 / eval {arm.split('@')[1]}"
    return {"zero-shot": "zero-shot (no FT)", "linear": "linear scale 4", "power": "power basis",
            "truncated": "truncated basis"}[arm]


def data(cfg) -> dict:
    """Byte streams of the corpus: {"train": LongTensor, "val": LongTensor, "tokenizer"}."""
    return byte_streams(cfg.corpus)


def _check(cfg) -> None:
    if sorted(cfg.eval_factors)[0] != 1:
        raise ValueError(f"eval_factors must start at 1 (the training length), got {list(cfg.eval_factors)}")
    if int(cfg.ft_factor) not in cfg.eval_factors:
        raise ValueError(f"ft_factor {cfg.ft_factor} must be one of eval_factors {list(cfg.eval_factors)}")
    if any(s <= cfg.ft_factor for s in cfg.eval_scales):
        raise ValueError(f"eval_scales {list(cfg.eval_scales)} must exceed the fine-tuning scale {cfg.ft_factor}")
    if not 0 < float(cfg.lines_fraction) <= 1:
        raise ValueError(f"lines_fraction must lie in (0, 1], got {cfg.lines_fraction}")


def head_dim(cfg) -> int:
    return int(cfg.model.hidden_size) // int(cfg.model.num_attention_heads)


def bases(cfg) -> dict:
    """The frequency vector of every fine-tuning arm (and the stock one for zero-shot)."""
    d, base, C = head_dim(cfg), float(cfg.model.rope_theta), int(cfg.train_len)
    return {"zero-shot": rv.inv_freq("default", d, base),
            "linear": rv.inv_freq("linear", d, base, scale=float(cfg.ft_factor)),
            "power": rv.inv_freq("power", d, base, power=float(cfg.power)),
            "truncated": rv.inv_freq("truncated", d, base, truncate_len=float(cfg.truncate_factor) * C)}


def build_lm(cfg, vocab_size: int, seed: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    conf = LlamaConfig(**to_dict(cfg.model), vocab_size=vocab_size, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = LlamaForCausalLM(conf)
    model.set_attn_implementation("sdpa")
    return model


def _stream(cfg, d, seq_len: int, tc: TrainConfig, seed: int):
    n = tc.steps * tc.batch_size * tc.grad_accum
    return rv.mixed_stream(d["train"], seq_len, n, float(cfg.lines_fraction), seed,
                           key_len=int(cfg.key_len), digits=int(cfg.digits),
                           query_share=float(cfg.query_share), sep=str(cfg.sep))


def train_arms(cfg, d: dict, device: str, seed: int) -> dict:
    """Pretrain once at C, then fine-tune a copy per basis at ft_factor·C (equal steps and data).
    Returns {arm: {"model", "result", "tokens"}} ("zero-shot" is the pretrained model)."""
    _check(cfg)
    C, k = int(cfg.train_len), int(cfg.ft_factor)
    pre = TrainConfig.from_dict({**to_dict(cfg.pretrain), "seq_len": C, "seed": seed})
    model = build_lm(cfg, len(d["tokenizer"]), int(cfg.seed_model) + seed)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"pretraining: {n_params:,} parameters, {pre.steps} steps × {pre.batch_size} × {C} bytes "
          f"({float(cfg.lines_fraction):.0%} Lines items)")
    res = train(model, _stream(cfg, d, C, pre, seed), pre, val_tokens=d["val"], bytes_per_token=1.0, device=device)
    out = {"zero-shot": {"model": model, "result": res.to_dict(), "params": n_params}}
    ft = TrainConfig.from_dict({**to_dict(cfg.finetune), "seq_len": k * C, "seed": seed})
    ft_stream = _stream(cfg, d, k * C, ft, seed + 1)
    b = bases(cfg)
    for arm in FT_ARMS:
        m = copy.deepcopy(model)
        rv.apply_basis(m, b[arm])
        print(f"fine-tuning {arm_label(arm)}: {ft.steps} steps × {ft.batch_size} × {k * C} bytes")
        r = train(m, ft_stream, ft, val_tokens=d["val"], bytes_per_token=1.0, device=device)
        out[arm] = {"model": m, "result": r.to_dict(), "params": n_params}
    return out


def lines_items(cfg, lengths: list[int], seed: int) -> dict:
    """The same held-out Lines questions for every arm: {L: [item, ...]} (seeded apart from training)."""
    rng = random.Random(10_000 + seed)
    return {L: [rv.lines_item(L, rng, key_len=int(cfg.key_len), digits=int(cfg.digits), sep=str(cfg.sep))
                for _ in range(int(cfg.n_items))] for L in lengths}


def evaluate(cfg, models: dict, d: dict, device: str, seed: int = 0) -> dict:
    """Bits/byte per held-out block and Lines exact match per item, per arm and length."""
    C = int(cfg.train_len)
    lengths = [C * int(f) for f in sorted(cfg.eval_factors)]
    block = lengths[-1]
    need = int(cfg.n_blocks) * block
    if len(d["val"]) < need:
        raise ValueError(f"held-out split has {len(d['val'])} bytes, n_blocks × {block} needs {need}")
    tokens = d["val"][:need]
    items = lines_items(cfg, lengths, seed)
    d_head, base = head_dim(cfg), float(cfg.model.rope_theta)
    arms = {a: (models[a]["model"], None) for a in ("zero-shot", *FT_ARMS)}
    arms.update({f"linear@{s:g}": (models["linear"]["model"], rv.inv_freq("linear", d_head, base, scale=float(s)))
                 for s in cfg.eval_scales})
    bits, lines, wall = {}, {}, {}
    for arm, (model, freqs) in arms.items():
        t0 = time.perf_counter()
        saved = rv.get_basis(model)
        if freqs is not None:
            rv.apply_basis(model, freqs)
        try:
            nll = nll_by_window_length(model, tokens, lengths, block, device=device,
                                       batch_tokens=int(cfg.eval_batch_tokens))
            lines[arm] = {L: [float(c) for c in rv.lines_correct(model, items[L], device=device,
                                                                 batch_size=max(1, int(cfg.eval_batch_tokens) // L))]
                          for L in lengths}
        finally:
            rv.apply_basis(model, saved)
        wall[arm] = time.perf_counter() - t0
        bits[arm] = {L: (v / LN2).tolist() for L, v in nll.items()}
        print(f"{arm_label(arm):>28}: bits/byte " + " ".join(f"{np.mean(bits[arm][L]):.3f}" for L in lengths)
              + " | Lines " + " ".join(f"{np.mean(lines[arm][L]):.2f}" for L in lengths) + f"  ({wall[arm]:.1f} s)")
    return {"train_len": C, "ft_factor": int(cfg.ft_factor), "lengths": lengths, "block": block,
            "n_blocks": int(cfg.n_blocks), "n_items": int(cfg.n_items), "bits": bits, "lines": lines,
            "eval_wall_s": wall, "example": items[lengths[0]][0]["text"]}


def plot(ev: dict, title: str = ""):
    import matplotlib.pyplot as plt
    C, Ls = ev["train_len"], ev["lengths"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for arm in ev["bits"]:
        style = "--s" if "@" in arm else "-o"
        for ax, data, unit in ((axes[0], ev["lines"][arm], "accuracy"), (axes[1], ev["bits"][arm], "bits/byte")):
            est = [stats.bootstrap(data[L], unit=unit) for L in Ls]
            ax.plot(Ls, [e.value for e in est], style, label=arm_label(arm))
            ax.fill_between(Ls, [e.lo for e in est], [e.hi for e in est], alpha=0.15)
    for ax, ylab in zip(axes, ("Lines exact match", "held-out bits per byte")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(Ls, [f"{L}\n({L // C}C)" for L in Ls])
        ax.axvline(C, color="grey", lw=0.8, ls=":")
        ax.axvline(C * ev["ft_factor"], color="grey", lw=0.8, ls="--")
        ax.set_xlabel("context length (bytes)")
        ax.set_ylabel(ylab)
    axes[0].legend(fontsize=8)
    fig.suptitle(title or f"pretrained at C = {C}, fine-tuned at {ev['ft_factor']}C; 95% bootstrap bands")
    fig.tight_layout()
    return fig


def check_claims(run, ev: dict) -> None:
    cfg = run.cfg.chapter
    C, k = ev["train_len"], ev["ft_factor"]
    L4, top = k * C, ev["lengths"][-1]
    acc, bits = ev["lines"], ev["bits"]
    margin = float(cfg.beat_margin)
    floor = FloorCheck.of(acc["zero-shot"][C], floor=float(cfg.floor),
                          what=f"the pretrained model on Lines items of its own length C = {C}")
    scales = ("cpu", "gpu")
    smoke = "a smoke run trains for a few dozen steps: the model has not learned the Lines task"
    lines_testable = dict(testable_at=floor.testable_at(scales), why_not=floor.why_not(smoke))

    def m(arm, L):
        return f"{np.mean(acc[arm][L]):.2f}"
    n = ev["n_items"]
    note = (f"Lines exact match on {n} questions per length (the same for every arm), 95% paired bootstrap "
            f"over questions; {floor.describe()}; accuracy at C/2C/4C/8C: " +
            "; ".join(f"{arm_label(a)} " + "/".join(m(a, L) for L in ev["lengths"]) for a in acc))
    run.claim("linear.beats_zeroshot", paper="'linear scaling is the best method for extending context length' "
              "(abstract); the base model 'performed well up to 2048 context length but deteriorated very rapidly "
              "afterwards' (abacusai/Long-Context README)",
              measured=paired_difference(acc["linear"][L4], acc["zero-shot"][L4], unit="accuracy"),
              criterion=AtLeast(margin), note=f"linear (FT at {k}C, scale {k}) minus zero-shot at {k}C; " + note,
              **lines_testable)
    run.claim("linear.beats_zeroshot_ppl", paper="Fine-tuning with linear scaling extends the usable context: the base "
              "model deteriorates beyond its training length (perplexity view of claim 1)",
              measured=paired_difference(bits["zero-shot"][L4], bits["linear"][L4], unit="bits/byte"),
              criterion=AtLeast(float(cfg.ppl_margin)),
              note=f"zero-shot minus linear held-out bits/byte at {k}C ({ev['n_blocks']} blocks, paired block "
              f"bootstrap); means at C/{k}C: zero-shot {np.mean(bits['zero-shot'][C]):.3f}/"
              f"{np.mean(bits['zero-shot'][L4]):.3f}, linear {np.mean(bits['linear'][C]):.3f}/"
              f"{np.mean(bits['linear'][L4]):.3f}", testable_at=scales, why_not=smoke)
    run.claim("truncated.ppl_competitive", paper="'Truncation and randomisation both seem to have great perplexity "
              "scores' (abacusai/Long-Context README)",
              measured=paired_difference(bits["truncated"][L4], bits["linear"][L4], unit="bits/byte"),
              criterion=AtMost(float(cfg.ppl_tolerance)),
              note=f"truncated minus linear held-out bits/byte at {k}C ({ev['n_blocks']} blocks, paired block "
              f"bootstrap); 'competitive' read as at most {cfg.ppl_tolerance} bits/byte worse; means: " +
              ", ".join(f"{arm_label(a)} {np.mean(bits[a][L4]):.3f}" for a in bits),
              testable_at=scales, why_not=smoke)
    run.claim("truncated.below_linear_lines", paper="...'but perform less well on the retrieval task' "
              "(perplexity is the less fine-grained metric); e.g. AltQA at 7500 tokens: linear scale 4 0.62 vs "
              "truncated 0.46 (paper Table 2)",
              measured=paired_difference(acc["linear"][L4], acc["truncated"][L4], unit="accuracy"),
              criterion=AtLeast(margin), note=f"linear minus truncated Lines accuracy at {k}C; " + note,
              **lines_testable)
    s = max(cfg.eval_scales)
    run.claim("eval_scale.extends", paper="'once a model has been trained with a scale > 0 [sic], ... the model can "
              "then zero-shot to a larger scale at evaluation time', e.g. Train=4, Eval=8 non-zero at 16k vs 0 above "
              "8k with Eval=4 (README, LongChat-Lines)",
              measured=paired_difference(acc[f"linear@{s:g}"][top], acc["linear"][top], unit="accuracy"),
              criterion=AtLeast(margin),
              note=f"Lines accuracy at {top // C}C of the scale-{k} fine-tune evaluated with scale {s:g} minus "
              f"with scale {k}; " + note, **lines_testable)
