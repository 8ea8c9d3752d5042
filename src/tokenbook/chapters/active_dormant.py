"""Experiment for the `active-dormant` chapter: extreme tokens on the Bigram-Backcopy task and in SmolLM2.

- `train_arms`: one tiny transformer per arm (softmax+Adam, ReLU attention+Adam, softmax+SGD), the
  same size, data stream, batch and steps; the extreme-token statistics of a fixed batch are
  probed during training (the curves);
- `evaluate_arm`: on held-out BB sequences, pick the most active-dormant (layer, head) and the
  residual-peak layer on selection sequences, then measure on other sequences, per sequence:
  BOS share of non-trigger and trigger queries, ‖v_BOS‖/mean‖v‖, ‖h_BOS‖/mean‖h‖, copy accuracy
  after triggers and bigram loss above its floor;
- `real_model`: SmolLM2-135M's per-head BOS share on English prose vs Python code windows;
- `check_claims`: every BB claim is judged only for arms that learned the task (FloorCheck on
  copy accuracy); a "removes X" claim only when the softmax+Adam baseline shows X.
"""
from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from .. import stats
from ..claims import AtLeast, AtMost
from ..data import load_corpus
from ..learnability import FloorCheck
from ..longctx import active_dormant as ad

ARM_LABEL = {"softmax-adam": "softmax + Adam (baseline)", "relu-adam": "ReLU attention + Adam",
             "softmax-sgd": "softmax + SGD"}
BASE = "softmax-adam"


def task_and_batches(cfg, seed: int):
    t = cfg.task
    task = ad.make_task(int(t.vocab), int(t.triggers), float(t.alpha), seed)
    T = int(t.seq_len)
    batches = {name: ad.sample(task, int(n), T, np.random.default_rng([seed, 100 + i])) for i, (name, n) in
               enumerate((("probe", cfg.probe_sequences), ("select", cfg.select_sequences), ("eval", cfg.eval_sequences)))}
    return task, batches


def train_arms(cfg, task, batches, seed: int, device: str) -> dict:
    names = [a.name for a in cfg.arms]
    if BASE not in names:
        raise ValueError(f"the arms must include the baseline {BASE!r}; got {names}")
    out = {}
    for a in cfg.arms:
        out[a.name] = ad.train_arm(task, normaliser=a.normaliser, optimiser=a.optimiser, lr=float(a.lr),
                                   steps=int(cfg.steps), batch=int(cfg.batch), T=int(cfg.task.seq_len),
                                   d=int(cfg.model.d), n_layers=int(cfg.model.n_layers), n_heads=int(cfg.model.n_heads),
                                   seed=seed, probe_x=batches["probe"].to(device), probe_every=int(cfg.probe_every),
                                   momentum=float(cfg.momentum), grad_clip=float(cfg.grad_clip), device=device)
    return out


def evaluate_arm(model, task, batches) -> dict:
    """Per-sequence statistics on the eval batch at the head/layer chosen on the selection batch."""
    sel = ad.probe(model, task, batches["select"])
    layer, head = ad.select_head(sel)
    peak_layer = int(np.argmax(np.nanmean(sel["residual_ratio"], axis=1)))
    ev = ad.probe(model, task, batches["eval"])
    per = {"bos_non_trigger": ev["bos_non_trigger"][layer, :, head], "bos_trigger": ev["bos_trigger"][layer, :, head],
           "value_ratio": ev["value_ratio"][layer, :, head], "residual_ratio": ev["residual_ratio"][peak_layer],
           "copy_correct": ev["copy_correct"], "copy_positions": ev["copy_positions"],
           "bigram_loss": ev["bigram_loss"], "bigram_floor": ev["bigram_floor"]}
    return {"layer": layer, "head": head, "peak_layer": peak_layer,
            "per_sequence": {k: np.asarray(v, float).tolist() for k, v in per.items()},
            "all_heads": {k: np.nanmean(ev[k], axis=1).tolist() for k in ("bos_non_trigger", "bos_trigger", "value_ratio")},
            "residual_by_layer": np.nanmean(ev["residual_ratio"], axis=1).tolist()}


def estimates(e: dict) -> dict[str, stats.Estimate]:
    p = {k: np.asarray(v, float) for k, v in e["per_sequence"].items()}
    ok = lambda x: x[np.isfinite(x)]  # noqa: E731  (a sequence without a trigger has no trigger query)
    copy = stats.bootstrap_fn({"c": p["copy_correct"], "n": p["copy_positions"]},
                              lambda d: float(d["c"].sum() / max(d["n"].sum(), 1)), unit="copy accuracy")
    return {"bos_non_trigger": stats.bootstrap(ok(p["bos_non_trigger"]), unit="BOS share"),
            "bos_trigger": stats.bootstrap(ok(p["bos_trigger"]), unit="BOS share"),
            "value_ratio": stats.bootstrap(ok(p["value_ratio"]), unit="‖v_BOS‖/mean‖v‖"),
            "residual_ratio": stats.bootstrap(ok(p["residual_ratio"]), unit="‖h_BOS‖/mean‖h‖"),
            "copy_accuracy": copy,
            "bigram_excess": stats.bootstrap(p["bigram_loss"] - p["bigram_floor"], unit="nats above the floor")}


def evaluate(trained: dict, task, batches) -> dict:
    return {name: evaluate_arm(r["model"], task, batches) for name, r in trained.items()}


# ---- the real model -------------------------------------------------------------------------------

def windows(tok, corpus: str, n: int, tokens: int, seed: int) -> list[list[int]]:
    """n windows of `tokens` tokens from the corpus's test split (several per document if needed)."""
    pool = []
    for doc in load_corpus(corpus, "test"):
        ids = tok(doc, add_special_tokens=False)["input_ids"]
        pool += [ids[i:i + tokens] for i in range(0, len(ids) - tokens + 1, tokens)]
    if len(pool) < n:
        raise ValueError(f"corpus {corpus!r} (test split) has only {len(pool)} windows of {tokens} tokens; "
                         f"lower chapter.real.texts or chapter.real.tokens")
    idx = np.random.default_rng(seed).choice(len(pool), n, replace=False)
    return [pool[i] for i in sorted(idx)]


def real_model(model, tok, cfg, seed: int, device: str) -> dict:
    """Per text window: SmolLM2's BOS share per (layer, head) [n, L, H], for prose and for code."""
    r = cfg.real
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    out = {}
    for dom in ("prose", "code"):
        ws = windows(tok, r[dom], int(r.texts), int(r.tokens), seed)
        out[dom] = np.stack([ad.bos_mass_per_head(model, torch.tensor([[bos] + w], device=device), int(r.skip))
                             for w in tqdm(ws, desc=f"SmolLM2 on {r[dom]}")])
    return {"prose": out["prose"], "code": out["code"], "bos_token": tok.convert_ids_to_tokens(bos)}


def switching_heads(prose: np.ndarray, code: np.ndarray, dormant_min: float, active_max: float) -> dict:
    """Heads dormant on one domain and active on the other (means over texts) [L, H] masks."""
    p, c = prose.mean(0), code.mean(0)
    return {"dormant_on_prose_active_on_code": (p >= dormant_min) & (c <= active_max),
            "dormant_on_code_active_on_prose": (c >= dormant_min) & (p <= active_max),
            "dormant_on_both": (p >= dormant_min) & (c >= dormant_min)}


def real_summary(rm: dict, cfg) -> dict:
    r = cfg.real
    sw = switching_heads(rm["prose"], rm["code"], float(r.dormant_min), float(r.active_max))
    fn = lambda d: float(sum(m.sum() for k, m in switching_heads(d["p"], d["c"], float(r.dormant_min),  # noqa: E731
                                                                 float(r.active_max)).items() if k != "dormant_on_both"))
    count = stats.bootstrap_fn({"p": rm["prose"], "c": rm["code"]}, fn, unit="heads") if len(rm["prose"]) > 1 \
        else stats.exact(fn({"p": rm["prose"], "c": rm["code"]}), unit="heads")
    L, H = rm["prose"].shape[1:]
    gap = np.abs(rm["prose"].mean(0) - rm["code"].mean(0))
    return {"heads": L * H, "switching": count, "gap_at_least": {str(g): int((gap >= g).sum()) for g in (0.2, 0.3, 0.5)}, "masks": {k: np.argwhere(m).tolist() for k, m in sw.items()},
            "prose_mean": rm["prose"].mean(0).tolist(), "code_mean": rm["code"].mean(0).tolist(),
            "bos_token": rm["bos_token"]}


# ---- claims ---------------------------------------------------------------------------------------

def floor_checks(ev: dict, floor: float) -> dict[str, FloorCheck]:
    out = {}
    for name, e in ev.items():
        p = e["per_sequence"]
        n = int(np.sum(p["copy_positions"]))
        acc = float(np.sum(p["copy_correct"]) / max(n, 1))
        out[name] = FloorCheck(f"{ARM_LABEL.get(name, name)}: next-token argmax after a trigger", acc, n, floor,
                               "copy accuracy")
    return out


def check_claims(run, ev: dict, real: dict) -> dict:
    cfg = run.cfg.chapter
    est = {k: estimates(e) for k, e in ev.items()}
    floors = floor_checks(ev, float(cfg.copy_floor))
    run.log(floor_checks={k: f.to_dict() for k, f in floors.items()},
            estimates={a: {k: v.to_dict() for k, v in e.items()} for a, e in est.items()})
    small = "a smoke run trains too few steps for the extreme tokens to form"
    scales = ("cpu", "gpu")

    def where(arm, also_needs=None):
        f = floors[arm]
        ok = f.testable_at(scales)
        why = f.why_not(small if run.scale == "smoke" else "")
        if also_needs is not None and not also_needs[0]:
            ok = ()
            why = "; ".join(x for x in (why, also_needs[1]) if x)
        return dict(testable_at=ok, why_not=why)

    b, fb = est[BASE], floors[BASE]
    L = int(cfg.model.n_layers)
    where_b = f"{L}-layer model, layer {ev[BASE]['layer']} head {ev[BASE]['head']} (the most active-dormant head, " \
              f"chosen on separate sequences); {fb.describe()}"
    sink = run.claim("bb.dormant_on_non_trigger", paper="on BB, a softmax+Adam head becomes an attention sink on "
                     "inputs where it has nothing to do: 'attention heads become sinks for specific input domains "
                     "while remaining non-sinks for others' (non-trigger queries put nearly all attention on BOS)",
                     measured=b["bos_non_trigger"], criterion=AtLeast(float(cfg.dormant_min)), note=where_b, **where(BASE))
    run.claim("bb.active_on_trigger", paper="the same head is active after a trigger (it attends to the token to "
              "copy, not to BOS)", measured=b["bos_trigger"], criterion=AtMost(float(cfg.active_max)), note=where_b,
              **where(BASE))
    drain = run.claim("bb.value_drain", paper="value-state drain: BOS's value state is much smaller than the others'",
                      measured=b["value_ratio"], criterion=AtMost(float(cfg.drain_max)), note=where_b, **where(BASE))
    peak = run.claim("bb.residual_peak", paper="residual-state peak: BOS's residual state has a much larger norm "
                     "than the others'", measured=b["residual_ratio"], criterion=AtLeast(float(cfg.peak_min)),
                     note=f"{L}-layer model, residual stream after block {ev[BASE]['peak_layer']} (the largest ratio "
                     f"on separate sequences); by layer: " + ", ".join(f"{x:.2f}" for x in ev[BASE]["residual_by_layer"]),
                     **where(BASE))
    need = lambda verdict, what: (verdict == "reproduced", f"nothing to remove: the softmax+Adam baseline did not "  # noqa: E731
                                  f"show the {what} at this scale (verdict: {verdict})")
    if "relu-adam" in est:
        r = est["relu-adam"]
        note = (f"ReLU attention ReLU(s)/n; head {ev['relu-adam']['layer']}.{ev['relu-adam']['head']}; baseline "
                f"{b['bos_non_trigger'].value:.2f}; {floors['relu-adam'].describe()}")
        run.claim("relu.no_sink", paper="replacing softmax with ReLU attention mitigates the attention sink",
                  measured=r["bos_non_trigger"], criterion=AtMost(float(cfg.no_sink_max)), note=note,
                  **where("relu-adam", need(sink, "attention sink")))
        run.claim("relu.no_drain", paper="replacing softmax with ReLU attention mitigates the value-state drain",
                  measured=r["value_ratio"], criterion=AtLeast(float(cfg.no_drain_min)),
                  note=f"baseline {b['value_ratio'].value:.2f}; {floors['relu-adam'].describe()}",
                  **where("relu-adam", need(drain, "value-state drain")))
    if "softmax-sgd" in est:
        s = est["softmax-sgd"]
        run.claim("sgd.no_peak", paper="replacing Adam with SGD mitigates the residual-state peak",
                  measured=s["residual_ratio"], criterion=AtMost(float(cfg.no_peak_max)),
                  note=f"baseline {b['residual_ratio'].value:.2f}; {floors['softmax-sgd'].describe()}",
                  **where("softmax-sgd", need(peak, "residual-state peak")))
    if real is not None:
        rs = real
        run.claim("llm.domain_dependent_heads", paper="in pretrained LLMs many heads are active-dormant by domain "
                  "(e.g. a Llama-2 'coding head' dormant on Wikipedia text): some heads sink to BOS on one domain "
                  "and not on the other", measured=rs["switching"], criterion=AtLeast(1.0),
                  testable_at=scales, why_not="a smoke run reads too few, too short texts",
                  note=f"SmolLM2-135M, {rs['heads']} heads; dormant: mean BOS share ≥ {cfg.real.dormant_min} on one "
                  f"domain ({cfg.real.prose} vs {cfg.real.code}), active: ≤ {cfg.real.active_max} on the other; "
                  f"first token {rs['bos_token']!r} prepended; interval: bootstrap over text windows; heads whose "
                  f"mean BOS share differs by ≥ 0.2 / 0.3 / 0.5 between the domains: "
                  + " / ".join(str(v) for v in rs["gap_at_least"].values()))
    return floors


# ---- figures --------------------------------------------------------------------------------------

def plot(trained: dict, ev: dict, real: dict | None, rm: dict | None, title: str = "", *,
         dormant_min: float = 0.8, active_max: float = 0.5):
    """(a) BOS share over training per arm (non-trigger solid, trigger dashed), (b) value and residual
    ratios over training, (c) SmolLM2 per-head BOS share, prose vs code (dashed: the dormant
    threshold, dotted: the active one; a switching head lies in an off-diagonal corner)."""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.3))
    for i, (name, r) in enumerate(trained.items()):
        l, h, pl = ev[name]["layer"], ev[name]["head"], ev[name]["peak_layer"]
        steps = [c["step"] for c in r["curve"]]
        col = f"C{i}"
        axes[0].plot(steps, [c["bos_non_trigger"][l][h] for c in r["curve"]], "-", color=col,
                     label=f"{ARM_LABEL.get(name, name)}: non-trigger")
        axes[0].plot(steps, [c["bos_trigger"][l][h] for c in r["curve"]], "--", color=col, label="… trigger")
        axes[1].plot(steps, [c["value_ratio"][l][h] for c in r["curve"]], "-", color=col, label=f"{name}: value")
        axes[1].plot(steps, [c["residual_ratio"][pl] for c in r["curve"]], ":", color=col, label=f"{name}: residual")
    axes[0].set(xlabel="training step", ylabel="attention share on BOS", ylim=(-0.02, 1.02),
                title="active (trigger) vs dormant (non-trigger) queries")
    axes[0].legend(fontsize=7)
    axes[1].axhline(1.0, color="grey", lw=0.6)
    axes[1].set(xlabel="training step", ylabel="BOS norm / mean norm", yscale="log",
                title="value drain (solid) and residual peak (dotted)")
    axes[1].legend(fontsize=7)
    if rm is not None:
        p, c = np.asarray(real["prose_mean"]).ravel(), np.asarray(real["code_mean"]).ravel()
        axes[2].scatter(p, c, s=10, alpha=0.7)
        axes[2].plot([0, 1], [0, 1], color="grey", lw=0.6)
        for th, ls in ((dormant_min, "--"), (active_max, ":")):
            axes[2].axvline(th, color="k", lw=0.6, ls=ls)
            axes[2].axhline(th, color="k", lw=0.6, ls=ls)
        axes[2].set(xlabel="BOS share on English prose", ylabel="BOS share on Python code", xlim=(-0.02, 1.02),
                    ylim=(-0.02, 1.02), title=f"SmolLM2-135M: {real['heads']} heads")
    else:
        axes[2].axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    return fig
