"""Experiment for the `lazyllm` chapter: wires tokenbook.longctx.lazyllm to SmolLM2 and multi-document QA.

- `make_items`: multi-document QA from real FAQ pages (Python, Perl, Django): each prompt holds
  several question/answer documents; the question is one of them (the gold document at depths spread
  over the prompt); the answer is started with its first words and the model must continue it from
  the right document (several answer tokens, so pruned tokens may have to come back);
- `evaluate`: per item, every arm answers the same prompt: full prefill, LazyLLM at several keep
  schedules (with revival from the auxiliary cache, and the main schedule also without it), static
  pruning by first-layer attention and at random with the same number of computed prompt tokens;
  the cost of each arm is the fraction of (prompt token × layer) computations it did;
- `speed`: time to first token per arm, in interleaved rounds.
"""
from __future__ import annotations

import re

import numpy as np
import torch
from tqdm import tqdm

from .. import stats, timing
from ..claims import AtLeast, AtMost
from ..data import faq_pairs
from ..evaluation import paired_difference, token_f1
from ..longctx import lazyllm as lz
from ..longctx import selection as sel

ARM_LABEL = {"full": "full prefill", "full_loop": "full prefill (per-layer loop)", "static": "static pruning (layer-0 attention)",
             "static_random": "static pruning (random)", "lazy_norevive": "LazyLLM without revival"}


def arm_label(arm: str) -> str:
    return ARM_LABEL.get(arm, f"LazyLLM {arm.split('@')[-1]}" if arm.startswith("lazy@") else arm)


def words(text: str) -> list[str]:
    return " ".join(text.split()).split(" ")


def first_sentences(text: str, n: int) -> str:
    return " ".join(re.split(r"(?<=[.!?])\s+", " ".join(text.split()))[:n])


def chat_prompt(tok, user: str, assistant_prefix: str = "") -> str:
    return tok.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                   add_generation_prompt=True) + assistant_prefix


def documents(cfg) -> list[tuple[str, str]]:
    """(question, answer) documents from the FAQs, answers cut to their first sentences and words."""
    docs = []
    for name in cfg.faqs:
        for q, a in faq_pairs(name):
            a = " ".join(words(first_sentences(a, cfg.doc_sentences))[: cfg.doc_words])
            if len(words(a)) >= cfg.prefix_words + cfg.answer_words:
                docs.append((" ".join(q.split()), a))
    return docs


def multidoc_prompt(tok, docs: list[tuple[str, str]], gold: int, cfg) -> tuple[str, str]:
    """(chat prompt ending with the gold answer's first words, the gold continuation)."""
    body = "\n\n".join(f"Document [{i + 1}]\nQuestion: {q}\nAnswer: {a}" for i, (q, a) in enumerate(docs))
    user = (f"Answer the question with the answer given in the documents below.\n\n{body}\n\n"
            f"Question: {docs[gold][0]}")
    w = words(docs[gold][1])
    return chat_prompt(tok, user, " ".join(w[: cfg.prefix_words])), " ".join(w[cfg.prefix_words: cfg.prefix_words + cfg.answer_words])


def make_items(cfg, tok, seed: int, n: int) -> list[dict]:
    """Multi-document QA items {ids [1, T], answer, depth, gold}; each item its own documents and gold."""
    pool = documents(cfg)
    rng = np.random.default_rng([seed, 40])
    items = []
    for depth in np.linspace(0.0, 1.0, n):
        docs = [pool[j] for j in rng.choice(len(pool), int(cfg.n_docs), replace=False)]
        gold = int(round(depth * (len(docs) - 1)))
        text, answer = multidoc_prompt(tok, docs, gold, cfg)
        ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
        items.append({"ids": ids, "answer": answer, "depth": float(depth), "gold": gold})
    return items


def keep_schedules(cfg, n_layers: int) -> dict[str, dict[int, float]]:
    """{name: {layer: fraction of the prompt still active from that layer on}}; names are the fractions."""
    return {"/".join(f"{f:g}" for f in fr): lz.schedule(n_layers, list(fr)) for fr in cfg.schedules}


def work_fraction(computed: list[int], T: int) -> float:
    return float(sum(computed)) / (len(computed) * T)


@torch.inference_mode()
def lazy_generate(model, ids: torch.Tensor, keep: dict[int, float], n_new: int, stop: set[int], revive: bool = True):
    """Greedy LazyLLM generation that also counts the work: (tokens, {prefill / total fraction, revived}).

    Work is counted in (prompt token × layer) units: the prefill's active tokens per layer, plus each
    revived token's layers l..L−1. revive=False drops the auxiliary cache (pruned tokens never return).
    """
    T, L = ids.shape[1], len(sel.decoder_layers(model))
    logits, state = lz.prefill(model, ids, keep)
    prefill_work = sum(state.computed)
    if not revive:
        state.aux = {}
    tokens, revived, revived_work = [int(logits.argmax())], 0, 0
    for i in range(n_new - 1):
        if tokens[-1] in stop:
            break
        before = {l: len(p) for l, (p, _) in state.aux.items()}
        logits, r = lz.decode_step(model, tokens[-1], T + i, state, keep)
        revived += r
        revived_work += sum((n - len(state.aux[l][0])) * (L - l) for l, n in before.items())
        tokens.append(int(logits.argmax()))
    tokens = tokens[:-1] if tokens[-1] in stop else tokens
    return tokens, {"prefill_fraction": prefill_work / (L * T), "total_fraction": (prefill_work + revived_work) / (L * T),
                    "revived": revived}


@torch.inference_mode()
def static_selection(model, ids: torch.Tensor, n_keep: int, window: int, rng: np.random.Generator | None = None):
    """Static pruning's kept positions: the last `window` tokens plus the top of the last token's
    layer-0 attention (rng=None) or a random draw, n_keep in all, sorted."""
    T = ids.shape[1]
    w = min(window, n_keep)
    if rng is None:
        base = getattr(model, "model", model)
        s = lz.last_token_importance(model, 0, base.embed_tokens(ids), torch.arange(T, device=ids.device)[None])
        rest = torch.topk(s[: T - w], n_keep - w).indices.cpu()
    else:
        rest = torch.from_numpy(rng.choice(T - w, n_keep - w, replace=False))
    return torch.cat([rest, torch.arange(T - w, T)]).sort().values.to(ids.device)


@torch.inference_mode()
def evaluate_item(model, tok, item: dict, cfg, schedules: dict, rng: np.random.Generator, device, stop) -> dict:
    ids = item["ids"].to(device)
    T, n = ids.shape[1], int(cfg.new_tokens)
    dec = lambda toks: tok.decode(toks, skip_special_tokens=True).strip()  # noqa: E731
    answers, frac = {}, {}
    out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    answers["full"] = dec(sel.greedy_decode(model, out.past_key_values, out.logits[0, -1].float(), T, n, stop))
    frac["full"] = {"prefill_fraction": 1.0, "total_fraction": 1.0, "revived": 0}
    for name, keep in schedules.items():
        toks, frac[f"lazy@{name}"] = lazy_generate(model, ids, keep, n, stop)
        answers[f"lazy@{name}"] = dec(toks)
    main = f"lazy@{cfg.main_schedule}"
    toks, frac["lazy_norevive"] = lazy_generate(model, ids, schedules[cfg.main_schedule], n, stop, revive=False)
    answers["lazy_norevive"] = dec(toks)
    n_keep = max(int(cfg.window) + 1, round(frac[main]["prefill_fraction"] * T))   # the same work as LazyLLM's prefill
    for arm, r in (("static", None), ("static_random", rng)):
        kept = static_selection(model, ids, n_keep, int(cfg.window), r)
        logits, cache = lz.static_prefill(model, ids, kept)
        answers[arm] = dec(sel.greedy_decode(model, cache, logits, T, n, stop))
        frac[arm] = {"prefill_fraction": n_keep / T, "total_fraction": n_keep / T, "revived": 0}
    return {"tokens": T, "depth": item["depth"], "answer": item["answer"], "predictions": answers, "cost": frac,
            "f1": {a: token_f1(p, item["answer"]) for a, p in answers.items()},
            "agreement_with_full": {a: token_f1(p, answers["full"]) for a, p in answers.items()}}


def evaluate(model, tok, items: list[dict], cfg, seed: int, device) -> dict:
    """Every arm on every item (paired)."""
    rng = np.random.default_rng(seed)
    schedules = keep_schedules(cfg, len(sel.decoder_layers(model)))
    stop = sel.stop_tokens(tok)
    per_item = [evaluate_item(model, tok, it, cfg, schedules, rng, device, stop) for it in tqdm(items, desc="QA items")]
    arms = list(per_item[0]["f1"])
    mean = lambda key, a: float(np.mean([p[key][a] for p in per_item]))  # noqa: E731
    return {"items": per_item, "arms": arms, "schedules": {k: {str(l): f for l, f in v.items()} for k, v in schedules.items()},
            "f1": {a: mean("f1", a) for a in arms},
            "prefill_fraction": {a: float(np.mean([p["cost"][a]["prefill_fraction"] for p in per_item])) for a in arms},
            "total_fraction": {a: float(np.mean([p["cost"][a]["total_fraction"] for p in per_item])) for a in arms},
            "revived": {a: float(np.mean([p["cost"][a]["revived"] for p in per_item])) for a in arms}}


def timing_prompt(tok, cfg, n_tokens: int) -> torch.Tensor:
    """A multi-document prompt of about n_tokens (more documents until it is long enough)."""
    pool = documents(cfg)
    docs, text = [], ""
    for d in pool * (1 + n_tokens // 20):
        docs.append(d)
        text, _ = multidoc_prompt(tok, docs, len(docs) // 2, cfg)
        if len(tok(text, add_special_tokens=False)["input_ids"]) >= n_tokens:
            break
    return torch.tensor([tok(text, add_special_tokens=False)["input_ids"][-n_tokens:]])


def speed(model, tok, cfg, device) -> dict:
    """Time to first token: full prefill, LazyLLM (main schedule) and static pruning of the same work."""
    keep = keep_schedules(cfg, len(sel.decoder_layers(model)))[cfg.main_schedule]
    out = {}
    for n in tqdm(list(cfg.timing_tokens), desc="timing lengths"):
        ids = timing_prompt(tok, cfg, int(n)).to(device)
        T = ids.shape[1]
        _, st = lz.prefill(model, ids, keep)
        kept = static_selection(model, ids, round(work_fraction(st.computed, T) * T), int(cfg.window))
        fns = {"full": lambda: model(input_ids=ids, use_cache=True, logits_to_keep=1),
               "full_loop": lambda: lz.prefill(model, ids, {}),
               f"lazy@{cfg.main_schedule}": lambda: lz.prefill(model, ids, keep),
               "static": lambda: lz.static_prefill(model, ids, kept)}
        times = timing.interleaved(fns, repeats=cfg.repeats, warmup=cfg.warmup, device=device)
        out[str(n)] = {"tokens": T, "times_s": times, "prefill_fraction": work_fraction(st.computed, T)}
    return out


def check_claims(run, ev: dict, sp: dict) -> None:
    cfg = run.cfg.chapter
    main = f"lazy@{cfg.main_schedule}"
    items = ev["items"]
    col = lambda a: [p["f1"][a] for p in items]  # noqa: E731
    T = int(np.mean([p["tokens"] for p in items]))
    frac = [p["cost"][main]["prefill_fraction"] for p in items]
    note = (f"{len(items)} multi-document QA items (~{T} tokens, {cfg.n_docs} FAQ documents), keep schedule "
            f"{cfg.main_schedule} (prefill computes {np.mean(frac):.0%} of prompt-token-layers); mean F1 "
            + ", ".join(f"{a} {v:.2f}" for a, v in ev["f1"].items()))
    acc = dict(testable_at=("cpu", "gpu"), why_not="a smoke run has too few items to decide an accuracy claim")
    run.claim("accuracy.vs_full", paper="LazyLLM keeps multi-document QA accuracy of the full model (Llama-2-7B: "
              "~equal accuracy at 2.34× faster TTFT)", measured=paired_difference(col(main), col("full"), unit="F1 difference"),
              criterion=AtLeast(-float(cfg.margin)), note=note + f"; non-inferiority margin {cfg.margin}", **acc)
    run.claim("cost.prefill_work", paper="LazyLLM's prefill computes far fewer prompt tokens (2.34× TTFT speedup "
              "on multi-document QA)", measured=stats.bootstrap([1 / f for f in frac], unit="× fewer token-layers")
              if len(frac) > 1 else stats.exact(1 / frac[0], unit="× fewer token-layers"),
              criterion=AtLeast(float(cfg.speedup_threshold)), note="hardware-independent cost: (prompt tokens × layers) "
              "of a full prefill / those LazyLLM's prefill computed, at the schedule whose accuracy accuracy.vs_full checks")
    tot = [p["cost"][main]["total_fraction"] for p in items]
    run.claim("cost.total_below_full", paper="revival never recomputes a token: by the end of generation LazyLLM has "
              "computed fewer prompt tokens than the full model", measured=stats.bootstrap(tot, unit="fraction of "
              "prompt token-layers") if len(tot) > 1 else stats.exact(tot[0], unit="fraction of prompt token-layers"),
              criterion=AtMost(float(cfg.total_fraction_max)), note=f"prefill plus revived tokens' layers, after "
              f"{cfg.new_tokens} generated tokens at most; mean revived tokens {ev['revived'][main]:.1f}")
    run.claim("accuracy.vs_static", paper="progressive, dynamic pruning beats static pruning at the same speed",
              measured=paired_difference(col(main), col("static"), unit="F1 difference"), criterion=AtLeast(0.0),
              note="static pruning keeps the same number of prompt-token-layers (top of the last token's layer-0 "
              f"attention + the last {cfg.window} tokens) in every layer", **acc)
    run.claim("revival.helps", paper="the auxiliary cache lets pruned tokens come back when they matter again",
              measured=paired_difference(col(main), col("lazy_norevive"), unit="F1 difference"), criterion=AtLeast(0.0),
              note=f"same prefill, decoding with vs without revival; mean revived tokens {ev['revived'][main]:.1f}", **acc)
    big = max(sp, key=lambda n: sp[n]["tokens"])
    t = sp[big]["times_s"]
    # the baseline is the faster of the two full prefills (transformers' forward, or the same per-layer
    # loop LazyLLM runs with nothing pruned), so neither an implementation overhead nor its absence flatters LazyLLM
    base = min((a for a in ("full", "full_loop") if a in t), key=lambda a: np.median(t[a]))
    run.claim("speed.ttft", paper="2.34× faster time to first token than the full prefill (Llama-2-7B, multi-document QA)",
              measured=stats.bootstrap_ratio(t[base], t[main]), criterion=AtLeast(float(cfg.speedup_threshold)),
              testable_at=("gpu",), why_not="latency claims count on the GPU only (this run's CPU times are in the "
              "metrics and figure)", note=f"{sp[big]['tokens']} tokens, schedule {cfg.main_schedule}: {arm_label(base)} "
              "time / LazyLLM time")


def plot(ev: dict, sp: dict, cfg, title: str = ""):
    """(a) F1 against the fraction of prompt-token-layers computed, per arm; (b) time to first token."""
    import matplotlib.pyplot as plt
    items = ev["items"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    est = lambda xs: stats.bootstrap(xs) if len(xs) > 1 else stats.exact(xs[0])  # noqa: E731
    lazy = [a for a in ev["arms"] if a.startswith("lazy@")]
    groups = [("LazyLLM (prefill work)", lazy, "prefill_fraction", "C0", "o-"),
              ("LazyLLM (incl. revival)", lazy, "total_fraction", "C0", "x:")]
    groups += [(arm_label(a), [a], "prefill_fraction", c, m) for a, c, m in
               (("full", "k", "s"), ("lazy_norevive", "C3", "v"), ("static", "C1", "D"), ("static_random", "C7", "^"))]
    for label, arms, key, c, m in groups:
        x = [ev[key][a] for a in arms]
        e = [est([p["f1"][a] for p in items]) for a in arms]
        axes[0].errorbar(x, [v.value for v in e], yerr=[[v.value - v.lo for v in e], [v.hi - v.value for v in e]],
                         fmt=m, color=c, capsize=3, label=label)
    axes[0].set(xlabel="fraction of prompt token × layer computed", ylabel="answer F1 (95% bootstrap CI)",
                title=f"multi-document QA, {len(items)} items")
    axes[0].legend(fontsize=7)
    lens = list(sp)
    tarms = list(sp[lens[0]]["times_s"])
    w = 0.8 / len(tarms)
    for j, a in enumerate(tarms):
        axes[1].bar(np.arange(len(lens)) + j * w, [np.median(sp[n]["times_s"][a]) for n in lens], w, label=arm_label(a))
    axes[1].set_xticks(np.arange(len(lens)) + w * (len(tarms) - 1) / 2, [f"{sp[n]['tokens']} tokens" for n in lens])
    axes[1].set(ylabel="time to first token (s, median)", title="prefill cost")
    axes[1].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
