"""Experiment for the `gemfilter` chapter: wires tokenbook.longctx.gemfilter to SmolLM2 and needle tasks.

- `make_items`: needle-in-a-haystack prompts from real text (a distinct needle per item, at depths
  spread over the haystack), wrapped in the model's chat template;
- `evaluate`: per item, one full prefill that scores every layer (GemFilter's last-query logits,
  SnapKV's window attention, H2O's cumulative attention), then every arm answers from the same
  prompt: full context, SnapKV and H2O (pruned caches), GemFilter at several filter layers and a
  random selection (both re-run as short prompts);
- `speed`: time to first token per arm, in interleaved rounds; `memory`: CUDA peak per arm.
"""
from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from .. import stats, timing
from ..claims import AtLeast, AtMost
from ..data import load_corpus
from ..evaluation import contains_answer, paired_difference
from ..evaluation import retrieval as R
from ..longctx import gemfilter as gf
from ..longctx import selection as sel

CITIES = ["Lisbon", "Nairobi", "Oslo", "Quito", "Hanoi", "Adelaide", "Krakow", "Montreal", "Dakar",
          "Tbilisi", "Valparaiso", "Reykjavik", "Osaka", "Lima", "Tallinn", "Marrakesh"]
ACTIVITIES = ["ride the green tram", "eat grilled fish", "climb the clock tower", "swim in the lake",
              "play chess outdoors", "buy honey cakes", "watch the puppet theatre", "walk the city wall",
              "drink mint tea", "follow the canal by bicycle", "hear the brass band", "visit the lighthouse museum",
              "feed the pigeons", "paint the old bridge", "taste the goat cheese", "sail to the island"]
ARM_LABEL = {"full": "full context", "snapkv": "SnapKV (evict after full prefill)",
             "h2o": "H2O (heavy hitters + recent)", "random": "random k tokens (re-run)"}


def arm_label(arm: str) -> str:
    return ARM_LABEL.get(arm, f"GemFilter, layer {arm.split('@')[-1]}" if arm.startswith("gemfilter@") else arm)


def chat_prompt(tok, user: str, assistant_prefix: str = "") -> str:
    return tok.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                   add_generation_prompt=True) + assistant_prefix


def make_items(cfg, tok, seed: int, n: int, split: str = "test") -> list[dict]:
    """Needle items: {ids [1, T], answer, needle token span, depth, city}; a distinct needle each.

    Haystacks come from the corpus split `split` ("val" for the calibration items that choose r)."""
    texts = load_corpus(cfg.haystack, split)
    rng = np.random.default_rng([seed, 0 if split == "test" else 1])
    depths = np.linspace(0.05, 0.95, n)
    rng.shuffle(texts)
    items = []
    for i, depth in enumerate(depths):
        city, act = CITIES[rng.integers(len(CITIES))], ACTIVITIES[rng.integers(len(ACTIVITIES))]
        hay = texts[(i * 7) % len(texts):] + texts[:(i * 7) % len(texts)]   # a different haystack per item
        p = R.needle(tok, hay, cfg.context_tokens, float(depth), needle_text=f"The best thing to do in {city} is to {act}.",
                     question=f"What is the best thing to do in {city}?", answer=act)
        text = chat_prompt(tok, p.prompt, f"The best thing to do in {city} is to")
        off = text.index(p.prompt)
        span = (R.char_to_token(tok, text, off + p.char_start), R.char_to_token(tok, text, off + p.char_end))
        ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
        items.append({"ids": ids, "answer": act, "span": span, "depth": float(p.actual_depth), "city": city})
    return items


def recall(keep: torch.Tensor, span: tuple[int, int]) -> float:
    """Fraction of the needle's tokens among the kept positions (keep: [k] or [H, k], averaged over H)."""
    keep = keep if keep.dim() == 2 else keep[None]
    inside = ((keep >= span[0]) & (keep < span[1])).sum(-1).float() / (span[1] - span[0])
    return float(inside.mean())


@torch.inference_mode()
def layer_scores(model, ids: torch.Tensor, pool: int) -> list[torch.Tensor]:
    """GemFilter's token scores at every layer, from one forward pass (no cache)."""
    scores = {}

    def on_capture(i, attn, inp):
        scores[i] = gf.filter_scores(attn, inp, pool)
        return False

    with sel.capture_attention_inputs(model, on_capture=on_capture):
        model.model(input_ids=ids, use_cache=False)
    return [scores[i] for i in sorted(scores)]


def calibrate(model, items: list[dict], cfg, device) -> dict:
    """Choose the filter layer r as the paper does, on a needle test: the layer whose top-k holds
    the most needle tokens, on calibration items (haystacks from another corpus split)."""
    rec = np.array([[recall(sel.topk_tokens(s, cfg.k), it["span"]) for s in layer_scores(model, it["ids"].to(device), cfg.pool)]
                    for it in tqdm(items, desc="calibrating the filter layer")])
    mean = rec.mean(0)
    r = int(np.argmax(mean)) if str(cfg.filter_layer) == "auto" else int(cfg.filter_layer)
    return {"filter_layer": r, "chosen_by": "calibration" if str(cfg.filter_layer) == "auto" else "config",
            "recall_by_layer": mean.tolist(), "items": len(items)}


@torch.inference_mode()
def evaluate_item(model, tok, item: dict, cfg, layers: list[int], rng: np.random.Generator, device, stop) -> dict:
    ids = item["ids"].to(device)
    T, n_kv, k = ids.shape[1], model.config.num_key_value_heads, int(cfg.k)
    dec = lambda toks: tok.decode(toks, skip_special_tokens=True)  # noqa: E731
    scorers = {"gem": lambda a, inp: gf.filter_scores(a, inp, cfg.pool),
               "snapkv": sel.snapkv_scorer(cfg.window)}
    if "h2o" in cfg.arms:
        scorers["h2o"] = sel.h2o_scorer()
    out, sc = sel.prefill_with_scores(model, ids, scorers)
    answers, keeps = {}, {}
    if "snapkv" in cfg.arms:
        keeps["snapkv"] = [sel.snapkv_keep(a, n_kv, k, kernel=cfg.snapkv_kernel) for a in sc["snapkv"]]
    if "h2o" in cfg.arms:
        keeps["h2o"] = [sel.h2o_keep(c, n_kv, k, recent=cfg.window) for c in sc["h2o"]]
    first = out.logits[0, -1].float()
    for arm in ("snapkv", "h2o"):
        if arm in keeps:
            cache = sel.subset_cache(out.past_key_values, keeps[arm])
            answers[arm] = dec(sel.greedy_decode(model, cache, first, T, cfg.new_tokens, stop))
    for r in layers:
        keep = sel.topk_tokens(sc["gem"][r], k)
        keeps[f"gemfilter@{r}"] = keep
        answers[f"gemfilter@{r}"] = dec(gf.generate_from_selection(model, ids, keep, cfg.new_tokens, stop))
    if "random" in cfg.arms:
        w = min(cfg.window, k)
        rest = torch.from_numpy(rng.choice(T - w, k - w, replace=False))
        keep = torch.cat([rest, torch.arange(T - w, T)]).sort().values.to(device)
        keeps["random"] = keep
        answers["random"] = dec(gf.generate_from_selection(model, ids, keep, cfg.new_tokens, stop))
    answers["full"] = dec(sel.greedy_decode(model, out.past_key_values, first, T, cfg.new_tokens, stop))
    layer_recall = [recall(sel.topk_tokens(s, k), item["span"]) for s in sc["gem"]]
    arm_recall = {a: float(np.mean([recall(x, item["span"]) for x in v])) if isinstance(v, list)
                  else recall(v, item["span"]) for a, v in keeps.items()}
    return {"tokens": T, "depth": item["depth"], "answer": item["answer"], "predictions": answers,
            "correct": {a: contains_answer(p, item["answer"]) for a, p in answers.items()},
            "gem_recall_by_layer": layer_recall, "needle_recall": arm_recall}


def evaluate(model, tok, items: list[dict], cfg, r: int, seed: int, device) -> dict:
    """Every arm on every item (paired), GemFilter at layer r and at cfg.filter_layers; plus a check
    that the one-pass selection equals the real truncated run's (`gemfilter.select` stops at r)."""
    rng = np.random.default_rng(seed)
    layers = sorted({r, *[int(x) for x in cfg.filter_layers]})
    stop = sel.stop_tokens(tok)
    per_item = [evaluate_item(model, tok, it, cfg, layers, rng, device, stop) for it in tqdm(items, desc="needle items")]
    same = []
    for it in items[: cfg.selection_checks]:
        ids = it["ids"].to(device)
        same.append(int(torch.equal(gf.select(model, ids, r, cfg.k, pool=cfg.pool),
                                    sel.topk_tokens(layer_scores(model, ids, cfg.pool)[r], cfg.k))))
    arms = list(per_item[0]["correct"])
    return {"filter_layer": r, "items": per_item, "arms": arms,
            "accuracy": {a: float(np.mean([p["correct"][a] for p in per_item])) for a in arms},
            "selection_matches_truncated_run": {"checked": len(same), "identical": int(sum(same))}}


def timing_prompt(tok, cfg, n_tokens: int) -> torch.Tensor:
    """A real-text prompt of n_tokens (accuracy is not scored here: only time and memory)."""
    p = R.needle(tok, load_corpus(cfg.haystack, "test"), n_tokens, 0.5)
    return torch.tensor([tok(chat_prompt(tok, p.prompt), add_special_tokens=False)["input_ids"]])


def ttft_fns(model, ids: torch.Tensor, cfg, r: int) -> dict:
    """Time-to-first-token paths: each ends with the logits of the first generated token."""
    k = int(cfg.k)
    return {"full": lambda: model(input_ids=ids, use_cache=True, logits_to_keep=1),
            "snapkv": lambda: sel.snapkv_prefill(model, ids, k, window=cfg.window, kernel=cfg.snapkv_kernel),
            f"gemfilter@{r}": lambda: gf.prefill(model, ids, r, k, pool=cfg.pool)}


def speed(model, tok, cfg, r: int, device) -> dict:
    out = {}
    for n in tqdm(list(cfg.timing_tokens), desc="timing lengths"):
        ids = timing_prompt(tok, cfg, int(n)).to(device)
        fns = ttft_fns(model, ids, cfg, r)
        times = timing.interleaved(fns, repeats=cfg.repeats, warmup=cfg.warmup, device=device)
        mem = {a: timing.peak_memory(f, device) for a, f in fns.items()}
        out[str(n)] = {"tokens": int(ids.shape[1]), "times_s": times, "peak_memory_bytes": mem}
    return out


def check_claims(run, ev: dict, sp: dict) -> None:
    cfg = run.cfg.chapter
    r = int(ev["filter_layer"])
    gem = f"gemfilter@{r}"
    items = ev["items"]
    col = lambda a: [p["correct"][a] for p in items]  # noqa: E731
    L = len(items[0]["gem_recall_by_layer"])
    k, T = int(cfg.k), int(np.mean([p["tokens"] for p in items]))
    note = (f"{len(items)} needle items, ~{T} tokens, k={k} ({T / k:.0f}× fewer), filter layer "
            f"{r} of {L}; accuracy " + ", ".join(f"{a} {v:.0%}" for a, v in ev["accuracy"].items()))
    acc = dict(testable_at=("cpu", "gpu"), why_not="a smoke run has too few items to decide an accuracy claim")
    run.claim("needle.vs_snapkv", paper="GemFilter beats SnapKV on needle-in-a-haystack (same budget k)",
              measured=paired_difference(col(gem), col("snapkv"), unit="accuracy difference"),
              criterion=AtLeast(-float(cfg.margin)), note=note + f"; non-inferiority margin {cfg.margin}", **acc)
    run.claim("needle.vs_h2o", paper="GemFilter beats H2O on needle-in-a-haystack (same budget k)",
              measured=paired_difference(col(gem), col("h2o"), unit="accuracy difference"),
              criterion=AtLeast(-float(cfg.margin)), note=f"non-inferiority margin {cfg.margin}", **acc)
    run.claim("needle.vs_full", paper="GemFilter keeps needle accuracy close to the full-context model",
              measured=paired_difference(col(gem), col("full"), unit="accuracy difference"),
              criterion=AtLeast(-float(cfg.margin)), note=f"non-inferiority margin {cfg.margin}", **acc)
    run.claim("needle.selection_matters", paper="the early-layer attention, not the shortening, finds the needle",
              measured=paired_difference(col(gem), col("random"), unit="accuracy difference"),
              criterion=AtLeast(0.0), note=f"GemFilter minus a random selection of the same k tokens (+ the last "
              f"{cfg.window})", **acc)
    rec = [p["gem_recall_by_layer"][r] for p in items]
    run.claim("gems.layer_recall", paper="an early-middle layer's last-query attention already locates the "
              "needle (the 'gems'): its top-k holds the needle", measured=stats.bootstrap(rec, unit="needle recall"),
              criterion=AtLeast(float(cfg.recall_threshold)), note=f"fraction of needle tokens in the top-{k} at "
              f"layer {r} ({r / (L - 1):.0%} of the depth; chosen on separate calibration items)", **acc)
    first = [p["gem_recall_by_layer"][0] for p in items]
    run.claim("gems.better_than_first_layer", paper="selection quality rises from the first layers to the middle "
              "(the paper picks layer 13-19 of 32)", measured=paired_difference(rec, first, unit="recall difference"),
              criterion=AtLeast(0.0), note=f"needle recall at layer {r} minus at layer 0", **acc)
    chk = ev["selection_matches_truncated_run"]
    run.claim("method.first_layers_suffice", paper="the selection needs only the first r+1 layers (the rest never "
              "run on the full prompt)", measured=stats.exact(chk["identical"] / chk["checked"], unit="fraction identical"),
              criterion=AtLeast(1.0), note=f"{chk['checked']} items: top-{k} of a run stopped after layer {r} vs of a full pass")
    big = max(sp, key=lambda n: sp[n]["tokens"])
    t = sp[big]["times_s"]
    why = "latency claims count on the GPU only (this run's CPU times are in the metrics and figure)"
    run.claim("speed.vs_snapkv", paper="2.4× faster time to first token than SnapKV/H2O",
              measured=stats.bootstrap_ratio(t["snapkv"], t[gem]), criterion=AtLeast(float(cfg.speedup_threshold)),
              testable_at=("gpu",), why_not=why, note=f"{sp[big]['tokens']} tokens, k={k}, "
              f"filter layer {r}: SnapKV time / GemFilter time")
    m = sp[big]["peak_memory_bytes"]
    mem = None if m[gem] is None else stats.exact(m[gem] / m["snapkv"], unit="× SnapKV peak memory")
    run.claim("memory.vs_snapkv", paper="30% less GPU memory than SnapKV/H2O",
              measured=mem, criterion=AtMost(0.7), testable_at=("gpu",),
              why_not="peak memory is measured with the CUDA allocator; this run had no GPU" if mem is None else why)


def plot(ev: dict, sp: dict, cfg, cal: dict | None = None, title: str = ""):
    """(a) needle recall of each layer's top-k, (b) accuracy per arm, (c) time to first token."""
    import matplotlib.pyplot as plt
    items = ev["items"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    R_ = np.array([p["gem_recall_by_layer"] for p in items])
    est = [stats.bootstrap(R_[:, j]) if len(items) > 1 else stats.exact(R_[0, j]) for j in range(R_.shape[1])]
    x = np.arange(R_.shape[1])
    axes[0].plot(x, [e.value for e in est], "o-", ms=3, label="GemFilter top-k at layer r")
    axes[0].fill_between(x, [e.lo for e in est], [e.hi for e in est], alpha=0.25)
    for a, c in (("snapkv", "C1"), ("h2o", "C2"), ("random", "C7")):
        if a in ev["arms"]:
            axes[0].axhline(np.mean([p["needle_recall"][a] for p in items]), color=c, ls="--", label=arm_label(a))
    if cal is not None:
        axes[0].plot(x, cal["recall_by_layer"], ":", color="grey", label=f"calibration items ({cal['items']})")
    axes[0].axvline(int(ev["filter_layer"]), color="k", lw=0.8, ls=":")
    axes[0].set(xlabel="layer r (0-based)", ylabel=f"needle tokens kept (top-{cfg.k})", ylim=(-0.02, 1.02),
                title="where the needle is found")
    axes[0].legend(fontsize=7)
    arms = ev["arms"]
    accs = [stats.bootstrap([p["correct"][a] for p in items]) if len(items) > 1 else
            stats.exact(items[0]["correct"][a]) for a in arms]
    axes[1].barh(range(len(arms)), [e.value for e in accs], xerr=[[e.value - e.lo for e in accs],
                 [e.hi - e.value for e in accs]], color=["C0" if a.startswith("gem") else "C7" for a in arms], capsize=3)
    axes[1].set_yticks(range(len(arms)), [arm_label(a) for a in arms], fontsize=8)
    axes[1].set(xlabel="needle accuracy (95% bootstrap CI)", xlim=(0, 1.05), title=f"answers, k={cfg.k}")
    lens = list(sp)
    tarms = list(sp[lens[0]]["times_s"])
    w = 0.8 / len(tarms)
    for j, a in enumerate(tarms):
        med = [np.median(sp[n]["times_s"][a]) for n in lens]
        axes[2].bar(np.arange(len(lens)) + j * w, med, w, label=arm_label(a))
    axes[2].set_xticks(np.arange(len(lens)) + w * (len(tarms) - 1) / 2, [f"{sp[n]['tokens']} tokens" for n in lens])
    axes[2].set(ylabel="time to first token (s, median)", title="prefill cost")
    axes[2].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
