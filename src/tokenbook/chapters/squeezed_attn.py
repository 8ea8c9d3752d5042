"""Experiment for the `squeezed-attn` chapter: wires tokenbook.longctx.squeezed to SmolLM2 and a
fixed "manual" (a real FAQ) shared by many questions.

- `make_contexts`: fixed contexts built from real FAQ pages (`tokenbook.data.faq_pairs`): the FAQ's
  question/answer pairs in the system message; each of its questions is asked in turn as the user
  input, the answer's first words given, and the model continues it;
- `prepare_context`: the offline step (dense prefill of the fixed context once, k-means of every
  layer's keys, threshold calibration on the context's own last queries);
- `evaluate`: every question answered by every arm in one batch (one row per arm: dense, no
  context, and Squeezed / threshold / hierarchical / window / random / oracle at each kept
  fraction), the fixed context read through `squeezed.FixedContextAttention`; greedy continuations
  scored with token F1 and `contains_answer` against the FAQ's own answer, plus the teacher-forced
  NLL of that answer;
- `decode_speed`: one decode step's attention over a long fixed context, dense SDPA vs centroid
  lookup + gather of the kept keys (the GPU claim);
- `check_claims`, `plot`.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch
from tqdm import tqdm

from .. import stats, timing
from ..claims import AtLeast
from ..data import faq_pairs
from ..evaluation import contains_answer, normalize_answer, paired_difference, token_f1
from ..longctx import patterns as pt
from ..longctx import selection as sel
from ..longctx import squeezed as sq

LABEL = {"dense": "dense (all keys)", "none": "no fixed context", "squeezed": "Squeezed (top clusters)",
         "threshold": "Squeezed (global threshold)", "hierarchical": "Squeezed, hierarchical",
         "window": "sinks + recent window", "random": "random keys", "oracle": "oracle top-k (true attention)"}
COLOR = {"squeezed": "C0", "threshold": "C9", "hierarchical": "C2", "window": "C1", "random": "C7", "oracle": "C4"}
MARK = "@@QUESTION@@"


def _check(cfg) -> None:
    kinds = [str(k) for k in cfg.kinds]
    bad = [k for k in kinds if k not in sq.KINDS or k in ("dense", "none")]
    if bad:
        raise ValueError(f"chapter.kinds: unknown or fixed arm kinds {bad}; choose from "
                         f"{[k for k in sq.KINDS if k not in ('dense', 'none')]}")
    if cfg.headline not in kinds:
        raise ValueError(f"chapter.headline={cfg.headline!r} must be one of chapter.kinds {kinds}")
    fr = [float(f) for f in cfg.fractions]
    if not all(0 < f < 1 for f in fr):
        raise ValueError(f"chapter.fractions must lie in (0, 1), got {fr}")
    for k in ("claim_fraction", "claim_fraction_small"):
        if float(cfg[k]) not in fr:
            raise ValueError(f"chapter.{k}={cfg[k]} must be one of chapter.fractions {fr}")
    if not 0 < float(cfg.cluster_frac) <= 1:
        raise ValueError(f"chapter.cluster_frac must be in (0, 1], got {cfg.cluster_frac}")


# ---- items: FAQ pages as fixed contexts ---------------------------------------------------------


def _words(text: str) -> list[str]:
    return " ".join(text.split()).split(" ")


def _entries(name: str, min_words: int, answer_chars: int) -> list[tuple[str, str]]:
    """(question, answer) of one FAQ: whitespace collapsed, answers cut to `answer_chars` at a word,
    questions asked twice dropped (their answer would be ambiguous), short answers dropped."""
    seen, out = set(), []
    for q, a in faq_pairs(name):
        q, a = " ".join(q.split()), " ".join(a.split())
        if len(a) > answer_chars:
            a = a[:answer_chars].rsplit(" ", 1)[0]
        key = normalize_answer(q)
        if key in seen or len(_words(a)) < min_words:
            seen.add(key)
            continue
        seen.add(key)
        out.append((q, a))
    return out


def make_contexts(cfg, tok, seed: int) -> list[dict]:
    """Fixed contexts: {faq, prefix_ids [1, N], questions: [{suffix_ids [1, t], question, head, reference, depth}]}.

    Context c is a page of the FAQ `cfg.faqs[c % len]` (pairs in a seeded random order; pages of one
    FAQ never share a pair): the instruction and "Q: …\nA: …" pairs up to `context_tokens`, as the
    system message. The user input is one of its questions; the answer's first `head_words` words
    are given, and the next `answer_words` are the reference the model's continuation is scored on."""
    _check(cfg)
    rng = np.random.default_rng(seed)
    need = int(cfg.head_words) + int(cfg.answer_words)
    pools = {}
    out = []
    for c in range(int(cfg.n_contexts)):
        name = str(cfg.faqs[c % len(cfg.faqs)])
        if name not in pools:
            ent = _entries(name, need + 2, int(cfg.answer_chars))
            pools[name] = [ent[i] for i in rng.permutation(len(ent))]
        text, used = "", []
        while pools[name]:
            q, a = pools[name][0]
            blk = f"Q: {q}\nA: {a}\n\n"
            if len(tok(cfg.instruction + "\n\n" + text + blk, add_special_tokens=False)["input_ids"]) > int(cfg.context_tokens):
                break
            text += blk
            used.append(pools[name].pop(0))
        if len(used) < 2:
            raise ValueError(f"FAQ {name!r}: fewer than 2 unused pairs fit in {cfg.context_tokens} tokens "
                             f"(context {c}); lower n_contexts or raise context_tokens")
        template = tok.apply_chat_template([{"role": "system", "content": cfg.instruction + "\n\n" + text.strip()},
                                            {"role": "user", "content": MARK}], tokenize=False, add_generation_prompt=True)
        cut = template.index(MARK)
        prefix_ids = torch.tensor([tok(template[:cut], add_special_tokens=False)["input_ids"]])
        pick = np.unique(np.linspace(0, len(used) - 1, min(len(used), int(cfg.questions_per_context))).round().astype(int))
        qs = []
        for i in pick:
            q, a = used[i]
            w = _words(a)
            head, ref = " ".join(w[: int(cfg.head_words)]), " ".join(w[int(cfg.head_words): need])
            suffix = template[cut:].replace(MARK, q) + head
            qs.append({"suffix_ids": torch.tensor([tok(suffix, add_special_tokens=False)["input_ids"]]),
                       "question": q, "head": head, "reference": ref, "depth": float(i / max(1, len(used) - 1))})
        out.append({"faq": name, "prefix_ids": prefix_ids, "pairs": len(used), "questions": qs})
    return out


# ---- the offline step ---------------------------------------------------------------------------


def arms(cfg, taus: dict[float, float] | None = None) -> list[sq.Arm]:
    """dense, none, then every kind at every fraction (the batch rows of `evaluate`)."""
    out = [sq.Arm("dense"), sq.Arm("none")]
    for f in cfg.fractions:
        for k in cfg.kinds:
            tau = None if k != "threshold" else (taus or {}).get(float(f))
            out.append(sq.Arm(str(k), float(f), tau))
    return out


def prepare_context(model, ctx: dict, cfg, seed: int, device) -> dict:
    """The offline work for one fixed context: prefill, clustering, threshold calibration (timed)."""
    t0 = time.perf_counter()
    fc, qobs, _ = sq.prepare(model, ctx["prefix_ids"].to(device), cluster_frac=float(cfg.cluster_frac),
                             coarse_frac=float(cfg.coarse_frac), iters=int(cfg.kmeans_iters), seed=seed,
                             obs_window=int(cfg.obs_window))
    scale = sel.decoder_layers(model)[0].self_attn.scaling
    taus = sq.calibrate_thresholds(fc.index, qobs, scale, [float(f) for f in cfg.fractions])
    return {"fc": fc, "taus": taus, "offline_s": time.perf_counter() - t0,
            "clusters": fc.index[0].n_clusters, "coarse": int(fc.index[0].coarse.shape[1]) if fc.index[0].coarse is not None else 0}


# ---- answering: one batch row per arm ----------------------------------------------------------


@torch.inference_mode()
def answer(model, fc: sq.FixedContext, arm_list: list[sq.Arm], suffix_ids: torch.Tensor, answer_ids: list[int],
           n_new: int, stop: set[int], cfg) -> tuple[list[list[int]], list[float], dict]:
    """Every arm answers one question: greedy tokens per row, the reference answer's mean NLL per row
    (teacher-forced), and the pattern's per-arm statistics (kept fraction, recall, centroids compared)."""
    device = suffix_ids.device
    B, N, T = len(arm_list), fc.n, suffix_ids.shape[1]
    pat = sq.FixedContextAttention(fc, arm_list, sinks=int(cfg.sinks), expand=float(cfg.expand))
    a = torch.tensor([answer_ids], device=device)
    full = torch.cat([suffix_ids, a], 1).expand(B, -1)
    with pt.apply(model, pat):
        # the question with the reference answer teacher-forced: its NLL, and the first greedy token
        out = model(input_ids=full, position_ids=torch.arange(N, N + full.shape[1], device=device)[None].expand(B, -1),
                    use_cache=True, logits_to_keep=a.shape[1] + 1)
        lp = out.logits[:, :-1].float().log_softmax(-1)
        nll = (-lp.gather(-1, a.expand(B, -1)[..., None])[..., 0]).mean(-1).tolist()
        cache = out.past_key_values
        pt.truncate_cache(cache, T)                                    # back to the question alone
        toks = [out.logits[:, 0].argmax(-1)]
        for i in range(n_new - 1):
            o = model(input_ids=toks[-1][:, None], position_ids=torch.full((B, 1), N + T + i, device=device),
                      past_key_values=cache, use_cache=True)
            toks.append(o.logits[:, -1].argmax(-1))
        gen = torch.stack(toks, 1).tolist()
    cut = []
    for row in gen:
        k = next((i for i, t in enumerate(row) if t in stop), len(row))
        cut.append(row[:k])
    return cut, nll, pat.summary()


def evaluate(model, tok, contexts: list[dict], cfg, seed: int, device) -> dict:
    """Every arm on every question (paired): answer F1, hit (the reference's first words appear),
    reference NLL, kept fraction, attention recall, centroids compared."""
    stop = sel.stop_tokens(tok, "\n")
    per_q, offline = [], []
    for ci, ctx in enumerate(contexts):
        st = prepare_context(model, ctx, cfg, seed + ci, device)
        offline.append({k: v for k, v in st.items() if k != "fc"} | {"faq": ctx["faq"], "pairs": ctx["pairs"],
                                                                     "tokens": int(ctx["prefix_ids"].shape[1])})
        arm_list = arms(cfg, st["taus"])
        for q in tqdm(ctx["questions"], desc=f"context {ci + 1}/{len(contexts)} ({ctx['faq']} FAQ)"):
            ref_ids = tok(" " + q["reference"], add_special_tokens=False)["input_ids"]
            gen, nll, summ = answer(model, st["fc"], arm_list, q["suffix_ids"].to(device), ref_ids,
                                    int(cfg.new_tokens), stop, cfg)
            preds = {a.name: tok.decode(g, skip_special_tokens=True) for a, g in zip(arm_list, gen)}
            hit_ref = " ".join(_words(q["reference"])[: int(cfg.hit_words)])
            per_q.append({"context": ci, "question": q["question"], "depth": q["depth"], "head": q["head"],
                          "reference": q["reference"], "tokens": int(ctx["prefix_ids"].shape[1]), "predictions": preds,
                          "f1": {k: token_f1(p, q["reference"]) for k, p in preds.items()},
                          "hit": {k: contains_answer(p, hit_ref) for k, p in preds.items()},
                          "nll": {a.name: v for a, v in zip(arm_list, nll)},
                          "kept": {k: v["kept"] for k, v in summ.items()},
                          "recall": {k: v["recall"] for k, v in summ.items()},
                          "compared": {k: v["compared"] for k, v in summ.items()}})
    names = [a.name for a in arms(cfg, {float(f): 0.0 for f in cfg.fractions})]
    mean = lambda key, a: float(np.mean([p[key][a] for p in per_q]))  # noqa: E731
    return {"arms": names, "items": per_q, "offline": offline,
            **{key: {a: mean(key, a) for a in names} for key in ("f1", "hit", "nll", "kept", "recall", "compared")}}


# ---- decode-step latency over a long fixed context ----------------------------------------------


def decode_speed(cfg, device, dtype: str, seed: int = 0) -> dict:
    """Per context length: times of one decode step's attention over the fixed context — dense SDPA
    vs Squeezed (centroid lookup + CSR gather of ⌈f·N⌉ keys + SDPA) — in interleaved rounds.

    Keys are random (latency does not depend on the values; the index is a real k-means of them)."""
    sp = cfg.speed
    H, Hq, D = int(sp.kv_heads), int(sp.heads), int(sp.head_dim)
    dt = getattr(torch, dtype)
    g = torch.Generator().manual_seed(seed)
    out = {}
    for N in sp.lengths:
        N = int(N)
        K = torch.randn(H, N, D, generator=g).to(device, dt)
        V = torch.randn(H, N, D, generator=g).to(device, dt)
        q = torch.randn(Hq, D, generator=g).to(device, dt)
        C = max(1, round(float(cfg.cluster_frac) * N))
        idx = sq.build_index(K.float(), C, iters=int(sp.kmeans_iters), seed=seed, init="random")
        scale = 1 / math.sqrt(D)
        fns = {"dense": lambda: sq.dense_decode_attention(q, K, V, scale)}
        for f in sp.fractions:
            b = math.ceil(float(f) * N)
            fns[f"squeezed@{float(f):.3g}"] = (lambda b=b: sq.gathered_decode_attention(q, K, V, idx, b, scale))
        with torch.inference_mode():
            times = timing.interleaved(fns, repeats=int(sp.repeats), warmup=2, device=device)
        out[str(N)] = {"tokens": N, "clusters": C, "times_s": times}
    return out


# ---- claims and figures -------------------------------------------------------------------------


def _col(ev, key, arm):
    return [p[key][arm] for p in ev["items"]]


def _arm(kind: str, f: float) -> str:
    return sq.arm_name(kind, f)


def check_claims(run, ev: dict, sp: dict | None) -> None:
    cfg = run.cfg.chapter
    n = len(ev["items"])
    N = int(np.mean([p["tokens"] for p in ev["items"]]))
    real = N >= int(cfg.min_judged_tokens) and n >= 10
    at = ("cpu", "gpu") if real else ()
    why = (f"this run has {n} questions on ~{N}-token contexts: it exercises the pipeline; accuracy is judged "
           f"with ≥ 10 questions on ≥ {cfg.min_judged_tokens}-token contexts (cpu, gpu)")
    f1 = ev["f1"]
    f3, f8 = float(cfg.claim_fraction), float(cfg.claim_fraction_small)
    margin = float(cfg.margin)
    diff = lambda a, b: paired_difference(_col(ev, "f1", a), _col(ev, "f1", b), unit="answer F1 difference")  # noqa: E731
    off = ev["offline"][0]
    base = (f"{n} FAQ questions on {len(ev['offline'])} fixed contexts of ~{N} tokens ({off['clusters']} clusters "
            f"per KV head); answer F1: dense {f1['dense']:.3f}, no context {f1['none']:.3f}")
    head = str(cfg.headline)
    s3, s8 = _arm(head, f3), _arm(head, f8)
    run.claim("budget.third_no_loss",
              paper="LongBench: a 3.1× smaller KV budget with no noticeable accuracy loss (LLaMA-2-7B-32K, "
                    "LWM-Text-Chat-1M, Longchat-7B-v1.5-32K)",
              measured=diff(s3, "dense"), criterion=AtLeast(-margin), testable_at=at, why_not=why,
              note=f"{LABEL[head]} keeping {f3:.3g} of the fixed keys (measured {ev['kept'][s3]:.3f}) minus dense, "
                   f"paired over questions; non-inferiority margin {margin} F1. {base}")
    run.claim("budget.eighth_small_loss",
              paper="up to an 8× smaller KV budget with only a 0.5-point accuracy gap on LongBench",
              measured=diff(s8, "dense"), criterion=AtLeast(-margin), testable_at=at, why_not=why,
              note=f"{LABEL[head]} at {f8:.3g} of the keys (measured {ev['kept'][s8]:.3f}) minus dense; margin "
                   f"{margin} F1 (a few dozen questions cannot resolve 0.5 point)")
    for kind, cid in (("window", "beats_window"), ("random", "beats_random")):
        if kind in cfg.kinds:
            run.claim(f"selection.{cid}",
                      paper="the centroid lookup finds the keys that matter: better than a fixed (recent-window) or "
                            "random choice of keys at the same budget",
                      measured=diff(s8, _arm(kind, f8)), criterion=AtLeast(0.0), testable_at=at, why_not=why,
                      note=f"{LABEL[head]} minus {LABEL[kind]}, both keeping {f8:.3g} of the fixed keys per KV head "
                           f"and query; {LABEL[kind]} F1 {f1[_arm(kind, f8)]:.3f}; attention recall "
                           f"{ev['recall'][s8]:.3f} vs {ev['recall'][_arm(kind, f8)]:.3f}")
    if "hierarchical" in cfg.kinds:
        h8 = _arm("hierarchical", f8)
        run.claim("hierarchical.matches_flat",
                  paper="the hierarchical (two-level) centroid lookup keeps the flat lookup's accuracy while comparing "
                        "far fewer centroids (logarithmic instead of linear in the context length)",
                  measured=diff(h8, s8), criterion=AtLeast(-margin), testable_at=at, why_not=why,
                  note=f"hierarchical minus flat at {f8:.3g}, margin {margin} F1; centroids compared per KV-head "
                       f"query: {ev['compared'][h8]:.1f} vs {ev['compared'][s8]:.0f} "
                       f"({ev['compared'][h8] / max(ev['compared'][s8], 1):.2f}×); {off['coarse']} coarse clusters")
    why_gpu = ("latency claims count on the GPU only (this run's CPU times are in the metrics and the figure); "
               "SmolLM2's 3 KV heads × 64 dims are too small to be bandwidth-bound, so the timing uses the paper's "
               "head shapes")
    mes, note = None, "not timed in this run"
    if sp:
        big = max(sp, key=lambda k: sp[k]["tokens"])
        t = sp[big]["times_s"]
        fsp = float(cfg.speed.claim_fraction)
        mes = stats.bootstrap_ratio(t["dense"], t[f"squeezed@{fsp:.3g}"])
        note = (f"one decode step over {sp[big]['tokens']} fixed keys, {cfg.speed.heads} query / "
                f"{cfg.speed.kv_heads} KV heads × {cfg.speed.head_dim}: dense SDPA time / (centroid lookup + gather "
                f"of {fsp:.3g} of the keys + SDPA) time; PyTorch ops, not the paper's Triton kernels; prefill not timed")
    run.claim("speed.decode", paper="more than 4× faster attention than FlashAttention in generation (and prefill), "
              "with its Triton kernels, at long fixed contexts", measured=mes,
              criterion=AtLeast(float(cfg.speed.threshold)), testable_at=("gpu",), why_not=why_gpu, note=note)


def plot(ev: dict, sp: dict | None, cfg, title: str = ""):
    """(a) answer F1 vs kept fraction per method, (b) attention recall, (c) reference-answer NLL,
    (d) decode-step attention time per context length."""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.2))
    fr = sorted(float(f) for f in cfg.fractions)
    n = len(ev["items"])

    def band(ax, key, kind):
        names = [_arm(kind, f) for f in fr]
        xs = [ev["kept"][a] for a in names]
        if n > 1:
            est = [stats.bootstrap(_col(ev, key, a)) for a in names]
            ys = [e.value for e in est]
            ax.fill_between(xs, [e.lo for e in est], [e.hi for e in est], color=COLOR[kind], alpha=0.12)
        else:
            ys = [_col(ev, key, a)[0] for a in names]
        ax.plot(xs, ys, "o-", color=COLOR[kind], label=LABEL[kind], ms=4)

    for ax, key, ylab in ((axes[0], "f1", "answer F1 vs the FAQ's answer"),
                          (axes[1], "recall", "dense attention mass on kept keys"),
                          (axes[2], "nll", "reference-answer NLL (nats/token)")):
        for kind in cfg.kinds:
            band(ax, key, str(kind))
        ax.axhline(np.mean(_col(ev, key, "dense")), color="k", lw=1, label=LABEL["dense"])
        if key != "recall":
            ax.axhline(np.mean(_col(ev, key, "none")), color="k", lw=1, ls=":", label=LABEL["none"])
        ax.set(xscale="log", xlabel="fraction of fixed-context keys kept (measured)", ylabel=ylab)
        ax.set_xticks(fr, [f"1/{round(1 / f)}" for f in fr])
        ax.minorticks_off()
    axes[0].set_title(f"{n} questions, 95% bootstrap bands")
    axes[0].legend(fontsize=7)
    axes[1].set_title("attention recall")
    axes[2].set_title("answer likelihood (lower is better)")
    if sp:
        lens = sorted(sp, key=lambda k: sp[k]["tokens"])
        arms_ = list(sp[lens[0]]["times_s"])
        w = 0.8 / len(arms_)
        for j, a in enumerate(arms_):
            axes[3].bar(np.arange(len(lens)) + j * w, [1e3 * np.median(sp[k]["times_s"][a]) for k in lens], w, label=a)
        axes[3].set_xticks(np.arange(len(lens)) + w * (len(arms_) - 1) / 2, [f"{sp[k]['tokens']} keys" for k in lens])
        axes[3].set(ylabel="decode-step attention (ms, median)", title="attention over the fixed context")
        axes[3].legend(fontsize=7)
    else:
        axes[3].axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    return fig
