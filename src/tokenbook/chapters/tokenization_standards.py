"""Experiment for the `tokenization-standards` chapter: %TR, %Pure and the token premium on Turkish.

Arms: the real tokenizers of the zoo (GPT-2, cl100k, o200k, Llama-3, Qwen2, Phi-3, SmolLM2), BPE and
Unigram tokenizers we train on Turkish LibreOffice help at several vocabulary sizes, and a character
tokenizer as a reference. Every arm is measured on the same Turkish Web Treebank sentences (%TR,
%Pure against gold morpheme boundaries, tokens per byte) and the same aligned EN/TR LibreOffice
paragraphs (token premium). For the trained tokenizers, a tiny Llama per tokenizer is trained at
equal compute (`tokenbook.train.compare.train_lm`, match="tokens") and scored in bits per byte on
held-out Turkish, so that the metrics can be related to language-model quality, as the paper relates
them to TR-MMLU scores.
"""
from __future__ import annotations

import hashlib

import numpy as np

from .. import stats
from ..claims import AtLeast, Between
from ..tokenization import turkish as tk

# The paper's results table (as in the LaTeX sources of the authors' repository malibayram/tokenizer_benchmark,
# paper/results_and_analysis.tex): TR-MMLU text, rates over unique token types.
PAPER = {
    # name in the paper: (our zoo name, MMLU %, token count, %TR, %Pure)
    "gemma-2": (None, 72.10, 497015, 48.63, 37.05),
    "llama-3.1": ("llama3", 70.42, 488535, 45.80, 30.91),
    "EuroLLM": (None, 51.29, 497173, 47.01, 35.17),
    "Qwen2.5": ("qwen2", 61.68, 561866, 40.33, 30.15),
    "aya-expanse": (None, 70.66, 434526, 50.67, 32.96),
    "Mistral-Nemo": (None, 46.89, 534930, 45.27, 36.08),
    "Phi-3.5": ("phi3", 29.37, 803971, 43.93, 34.42),
    "gpt-4o": ("o200k_base", 84.84, 491137, 42.14, 28.68),
}


def paper_correlations() -> dict:
    """Pearson r of %TR and of %Pure with MMLU over the paper's eight tokenizers (from its table)."""
    rows = np.array([v[1:] for v in PAPER.values()], float)
    mmlu, tr, pure = rows[:, 0], rows[:, 2], rows[:, 3]
    return {"r_tr_mmlu": float(np.corrcoef(tr, mmlu)[0, 1]), "r_pure_mmlu": float(np.corrcoef(pure, mmlu)[0, 1]),
            "rho_tr_mmlu": tk.rank_correlation(tr, mmlu), "rho_pure_mmlu": tk.rank_correlation(pure, mmlu)}


# ---------------------------------------------------------------- data
def treebank(n: int | None) -> tuple[list[dict], list[tk.GoldSentence]]:
    """All treebank sentences (every split: nothing is trained on them), or a fixed sample of n."""
    from ..data import load_records
    recs = [r for s in ("train", "val", "test") for r in load_records("turkish-treebank", s)]
    recs.sort(key=lambda r: hashlib.sha256(r["id"].encode()).digest())
    if n is not None and n < len(recs):
        recs = recs[:n]
    return recs, [tk.gold_sentence(r) for r in recs]


def premium_pairs(splits, n: int | None) -> list[tuple[str, str]]:
    from ..data import parallel_en_tr
    pairs = [p for s in splits for p in parallel_en_tr(s)]
    return pairs[:n] if n else pairs


# ---------------------------------------------------------------- tokenizers
def tokenizers(cfg) -> dict:
    """{label: (tokenizer, group)}; group: real | trained | reference."""
    from .. import tokenizers as zoo
    out = {}
    for name in cfg.real_tokenizers:
        out[name] = (zoo.load(name), "real")
    tr = cfg.trained
    for kind in tr.kinds:
        for v in tr.vocab_sizes:
            tok = zoo.train(kind, tr.corpus, int(v), max_bytes=int(tr.max_bytes))
            out[f"{kind}-{v}"] = (tok, "trained")
    for kind in cfg.reference_kinds:
        if kind == "char":
            out["char"] = (tk.CharTokenizer(), "reference")
        elif kind == "byte":
            out["byte"] = (zoo.train("byte", tr.corpus, 256, max_bytes=int(tr.max_bytes)), "reference")
        else:
            raise ValueError(f"unknown reference tokenizer {kind!r}; valid: char, byte")
    return out


# ---------------------------------------------------------------- metrics
def measure(toks: dict, recs, golds, pairs, *, n_boot: int, progress: bool = True) -> dict:
    """Per tokenizer: count arrays over the treebank sentences and EN/TR pair token counts."""
    lex = tk.load_lexicon()
    texts = [r["text"] for r in recs]
    out = {}
    for name, (tok, group) in toks.items():
        counts = tk.corpus_counts(tok, texts, lex, golds, progress=progress)
        en, trc = tk.pair_token_counts(tok, pairs)
        out[name] = {"group": group, "vocab_size": tok.vocab_size, "counts": counts, "pair_en": en, "pair_tr": trc}
    return out


def summary(m: dict, *, n_boot: int, seed: int = 0) -> dict:
    """Estimates for one tokenizer: %TR (occurrences and types), %TR words only, %Pure, stem-boundary
    recall, bytes per token, and the TR/EN token premium."""
    c = m["counts"]
    prem = tk.premium(m["pair_en"], m["pair_tr"], n_boot=n_boot, seed=seed)
    return {"tr": tk.rate(c, "tr_valid", "tr_total", n_boot=n_boot, seed=seed),
            "tr_words": tk.rate(c, "tr_words", "tr_total", n_boot=n_boot, seed=seed),
            "tr_types": tk.type_rate(c, n_boot=max(100, n_boot // 2), seed=seed),
            "pure": tk.rate(c, "pure", "pure_total", n_boot=n_boot, seed=seed),
            "cut_recall": tk.rate(c, "cuts_hit", "cuts", n_boot=n_boot, seed=seed),
            "bytes_per_token": tk.rate(c, "bytes", "tokens", n_boot=n_boot, seed=seed, unit="bytes/token"),
            "premium": prem, "group": m["group"], "vocab_size": m["vocab_size"],
            "tokens": int(c["tokens"].sum()), "types": len([k for k in c["classes"].values() if k != "skip"])}


# ---------------------------------------------------------------- language models
def train_lms(toks: dict, cfg, device: str, seed: int, progress: bool = True) -> dict:
    """One tiny Llama per trained tokenizer and seed, equal steps × tokens per step; bpb on held-out Turkish."""
    from ..data import load_corpus
    from ..train.compare import train_lm
    lm = cfg.lm
    from ..data.pieces import take_bytes
    train_texts = take_bytes(load_corpus(cfg.trained.corpus, "train"), lm.train_max_bytes)
    val_texts = load_corpus(cfg.trained.corpus, "val")[: int(lm.val_docs)]
    out = {}
    for name, (tok, group) in toks.items():
        if group != "trained":
            continue
        for s in lm.seeds:
            arm = train_lm(tok, train_texts, val_texts, model=dict(lm.model), train=dict(lm.train), match="tokens",
                           seed=seed + int(s), device=device, progress=progress, name=name)
            arm.pop("loss_log", None)
            out.setdefault(name, []).append(arm)
    return out


def lm_points(sums: dict, lms: dict) -> dict:
    """Arrays over the trained tokenizers: names, %TR, %TR types, %Pure, bpb (mean over seeds)."""
    names = sorted(lms)
    return {"names": names,
            "tr": np.array([sums[n]["tr"].value for n in names]),
            "tr_types": np.array([sums[n]["tr_types"].value for n in names]),
            "pure": np.array([sums[n]["pure"].value for n in names]),
            "vocab": np.array([sums[n]["vocab_size"] for n in names]),
            "bpb": np.array([np.mean([a["val_bpb"] for a in lms[n]]) for n in names])}


# ---------------------------------------------------------------- claims
def check_claims(run, meas: dict, sums: dict, lms: dict) -> None:
    cfg = run.cfg.chapter
    nb = int(cfg.n_boot)
    n_sent = len(next(iter(meas.values()))["counts"]["tokens"])
    pc = paper_correlations()

    # 1. %TR ranking of two real tokenizers the paper also scores (its largest %TR gap among them)
    if {"llama3", "qwen2"} <= set(meas):
        d = tk.type_rate(meas["llama3"]["counts"], other=meas["qwen2"]["counts"], n_boot=max(100, nb // 2))
        run.claim("tr.llama3_above_qwen2",
                  paper="%TR of Llama-3.1's tokenizer is above Qwen2.5's on Turkish (45.80% vs 40.33% of unique "
                        "tokens on TR-MMLU)",
                  measured=d, criterion=AtLeast(0.0),
                  note=f"unique-type %TR on {n_sent} treebank sentences: Llama-3 {sums['llama3']['tr_types'].value:.1%}, "
                       f"Qwen2 {sums['qwen2']['tr_types'].value:.1%}; per occurrence {sums['llama3']['tr'].value:.1%} vs "
                       f"{sums['qwen2']['tr'].value:.1%}. Validity: hunspell tr_TR + suffix inventory (paper: ITU web service)")
    # 2. %Pure ranking (largest %Pure gap among the shared tokenizers)
    if {"phi3", "o200k_base"} <= set(meas):
        d = tk.rate_difference(meas["phi3"]["counts"], meas["o200k_base"]["counts"], "pure", "pure_total", n_boot=nb)
        run.claim("pure.phi3_above_o200k",
                  paper="%Pure of Phi-3.5's tokenizer is above GPT-4o's o200k on Turkish (34.42% vs 28.68%)",
                  measured=d, criterion=AtLeast(0.0),
                  note=f"gold-boundary %Pure per token: Phi-3 {sums['phi3']['pure'].value:.1%}, o200k "
                       f"{sums['o200k_base']['pure'].value:.1%}; stem-boundary recall {sums['phi3']['cut_recall'].value:.1%} vs "
                       f"{sums['o200k_base']['cut_recall'].value:.1%}")
    # 3. token counts: Phi-3.5 needs many more tokens than Llama-3.1 for the same Turkish text
    if {"phi3", "llama3"} <= set(meas):
        a, b = meas["phi3"]["counts"]["tokens"], meas["llama3"]["counts"]["tokens"]
        ratio = stats.bootstrap_fn({"a": a, "b": b}, lambda d: float(d["a"].sum() / d["b"].sum()), n_boot=nb,
                                   unit="× tokens")
        paper_ratio = PAPER["Phi-3.5"][2] / PAPER["llama-3.1"][2]
        run.claim("tokens.phi3_vs_llama3",
                  paper=f"Phi-3.5's tokenizer produces {PAPER['Phi-3.5'][2]:,} tokens on TR-MMLU, Llama-3.1's "
                        f"{PAPER['llama-3.1'][2]:,} (ratio {paper_ratio:.2f}); we accept ±20% of that ratio",
                  measured=ratio, criterion=Between(paper_ratio / 1.2, paper_ratio * 1.2),
                  note=f"treebank sentences: {int(a.sum()):,} vs {int(b.sum()):,} tokens")
    # 4. the central claim: %TR tracks downstream quality more closely than %Pure
    if len(lms) >= 3:
        p = lm_points(sums, lms)
        gap = tk.correlation_gap(p["tr"], p["pure"], -p["bpb"], n_boot=nb)
        rho_tr, rho_pure = tk.rank_correlation(p["tr"], -p["bpb"]), tk.rank_correlation(p["pure"], -p["bpb"])
        rho_v = tk.rank_correlation(np.log(p["vocab"]), -p["bpb"])
        rho_types = tk.rank_correlation(p["tr_types"], -p["bpb"])
        why = "smoke-scale language models train for seconds; the pipeline runs, the ranking is not judged"
        run.claim("tr_predicts_better_than_pure",
                  paper="%TR correlates more strongly with downstream performance than %Pure (TR-MMLU over 8 LLMs; "
                        f"from the paper's table: Pearson r(%TR, MMLU) = {pc['r_tr_mmlu']:+.2f}, "
                        f"r(%Pure, MMLU) = {pc['r_pure_mmlu']:+.2f})",
                  measured=gap, criterion=AtLeast(0.0), testable_at=("cpu", "gpu"), why_not=why,
                  note=f"ρ(%TR, −bpb) − ρ(%Pure, −bpb), Spearman over {len(p['names'])} trained tokenizers, tiny "
                       f"Llamas at equal compute: ρ(%TR) {rho_tr:+.2f}, ρ(%Pure) {rho_pure:+.2f}, ρ(%TR per type) "
                       f"{rho_types:+.2f}; ρ(log vocabulary) {rho_v:+.2f}: vocabulary size moves the metrics and bpb alike")
        # 5. ... and %TR on its own predicts a better model (the reason the paper promotes it)
        wins, pairs_ = within_vocab_agreement(p)
        run.claim("tr_predicts_quality",
                  paper="%TR is a critical metric with a positive link to downstream accuracy ('emphasizing its role in "
                        "improving model accuracy')",
                  measured=tk.correlation_estimate(p["tr"], -p["bpb"], n_boot=nb), criterion=AtLeast(0.0),
                  testable_at=("cpu", "gpu"), why_not=why,
                  note=f"Spearman ρ(%TR per token, −bpb) over {len(p['names'])} trained tokenizers (per type: "
                       f"{rho_types:+.2f}). At equal vocabulary size, the tokenizer with the higher %TR had the lower "
                       f"bpb in {wins} of {pairs_} BPE/Unigram pairs")


def within_vocab_agreement(p: dict) -> tuple[int, int]:
    """Among tokenizers of equal vocabulary size (BPE vs Unigram), how often the higher %TR has the lower bpb."""
    by_v: dict = {}
    for i, v in enumerate(p["vocab"]):
        by_v.setdefault(int(v), []).append(i)
    wins = total = 0
    for idx in by_v.values():
        for a in idx:
            for b in idx:
                if a < b and p["tr"][a] != p["tr"][b]:
                    total += 1
                    hi, lo = (a, b) if p["tr"][a] > p["tr"][b] else (b, a)
                    wins += p["bpb"][hi] < p["bpb"][lo]
    return wins, total


# ---------------------------------------------------------------- figures
_GROUP_COLOR = {"real": "tab:blue", "trained": "tab:orange", "reference": "tab:gray"}


def _bars(ax, names, ests, colors, title, ylabel, paper=None):
    x = np.arange(len(names))
    v = np.array([e.value for e in ests])
    err = np.array([[e.value - e.lo for e in ests], [e.hi - e.value for e in ests]])
    ax.bar(x, v, yerr=err, color=colors, capsize=2)
    if paper:
        for i, n in enumerate(names):
            if n in paper:
                ax.plot(i, paper[n], "k_", markersize=14, markeredgewidth=2)
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
    ax.set_title(title, fontsize=9)
    ax.set_ylabel(ylabel)


def plot_metrics(sums: dict, title: str = ""):
    """%TR (per token and per type), %Pure and stem-boundary recall per tokenizer, 95% bootstrap bars;
    black ticks: the paper's %TR for the same tokenizer family (TR-MMLU, unique types). The paper's %Pure
    (a type is one morpheme) is not the same quantity as ours (an occurrence crosses no gold boundary),
    so it is not drawn."""
    import matplotlib.pyplot as plt
    names = list(sums)
    colors = [_GROUP_COLOR[sums[n]["group"]] for n in names]
    paper_tr = {z: v[3] / 100 for v in PAPER.values() for z in [v[0]] if z}
    fig, axes = plt.subplots(1, 4, figsize=(17, 4))
    _bars(axes[0], names, [sums[n]["tr"] for n in names], colors, "%TR per token occurrence", "fraction")
    _bars(axes[1], names, [sums[n]["tr_types"] for n in names], colors, "%TR per unique type (paper's denominator)",
          "fraction", paper_tr)
    _bars(axes[2], names, [sums[n]["pure"] for n in names], colors, "%Pure: no gold boundary inside the token",
          "fraction")
    _bars(axes[3], names, [sums[n]["cut_recall"] for n in names], colors, "stem|suffix boundaries cut by a token edge",
          "fraction")
    from matplotlib.patches import Patch
    fig.legend(handles=[Patch(color=c, label=g) for g, c in _GROUP_COLOR.items()], fontsize=8, loc="upper right",
               ncol=3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_premium(sums: dict, title: str = ""):
    """TR/EN token premium and bytes per Turkish token per tokenizer."""
    import matplotlib.pyplot as plt
    names = list(sums)
    colors = [_GROUP_COLOR[sums[n]["group"]] for n in names]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    _bars(axes[0], names, [sums[n]["premium"] for n in names], colors, "token premium: tokens(TR) / tokens(EN)",
          "ratio")
    axes[0].axhline(1.0, color="k", lw=0.8)
    _bars(axes[1], names, [sums[n]["bytes_per_token"] for n in names], colors, "UTF-8 bytes per token (treebank Turkish)",
          "bytes/token")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_bpb(sums: dict, lms: dict, title: str = ""):
    """bpb of the tiny LMs against %TR, %Pure and vocabulary size, one point per trained tokenizer."""
    import matplotlib.pyplot as plt
    p = lm_points(sums, lms)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, key, label in ((axes[0], "tr", "%TR (per token)"), (axes[1], "pure", "%Pure (per token)"),
                           (axes[2], "vocab", "vocabulary size")):
        for i, n in enumerate(p["names"]):
            xs = [sums[n][key].value] if key != "vocab" else [p["vocab"][i]]
            bpbs = [a["val_bpb"] for a in lms[n]]
            ax.scatter(xs * len(bpbs), bpbs, color="tab:orange" if n.startswith("bpe") else "tab:green", s=18)
            ax.annotate(n, (xs[0], np.mean(bpbs)), fontsize=7)
            if key != "vocab":
                e = sums[n][key]
                ax.errorbar(e.value, np.mean(bpbs), xerr=[[e.value - e.lo], [e.hi - e.value]], color="gray", lw=0.8)
        if key == "vocab":
            ax.set_xscale("log", base=2)
        rho = tk.rank_correlation(p[key] if key != "vocab" else np.log(p["vocab"]), -p["bpb"])
        ax.set_xlabel(label)
        ax.set_ylabel("validation bits per byte (lower is better)")
        ax.set_title(f"Spearman ρ(metric, −bpb) = {rho:+.2f}", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- display helpers
def example_index(recs, golds, lo: int = 50, hi: int = 90) -> int:
    """A clean example: the first Wikipedia sentence of lo..hi characters whose stem boundaries are all known."""
    for i, (r, g) in enumerate(zip(recs, golds)):
        if r.get("section") == "wiki" and lo <= len(r["text"]) <= hi and all(w[2] != "unknown" for w in g.words):
            return i
    return 0


def show_gold(gold: tk.GoldSentence) -> str:
    """The sentence with `|` at the gold morpheme boundaries inside words."""
    tb = gold.text.encode("utf-8")
    inner = sorted(b for b in gold.boundaries if any(ws < b < we for ws, we, _ in gold.words))
    out, prev = [], 0
    for b in inner:
        out.append(tb[prev:b])
        prev = b
    out.append(tb[prev:])
    return b"|".join(out).decode("utf-8")


def show_tokens(tok, gold: tk.GoldSentence, lexicon: tk.Lexicon) -> str:
    """Tokens separated by spaces; `*` after an impure token, `?` after one that is not valid Turkish."""
    ids, spans, pieces = tk.token_spans(tok, gold.text)
    tb = gold.text.encode("utf-8")
    classify = tk.TokenClassCache(lexicon)
    bnd = sorted(gold.boundaries)
    out = []
    for (s, e), piece in zip(spans, pieces):
        s2, e2 = tk._trim(tb, s, e)
        if s2 >= e2:
            continue
        text = tb[s2:e2].decode("utf-8", errors="replace")
        impure = any(s2 < b < e2 for b in bnd)
        bad = classify(piece) == "invalid"
        out.append(text + ("*" if impure else "") + ("?" if bad else ""))
    return " ".join(out)


def _fmt(e: stats.Estimate, pct: bool = True) -> str:
    if pct:
        return f"{e.value:6.1%} [{e.lo:.1%}, {e.hi:.1%}]"
    return f"{e.value:5.2f} [{e.lo:.2f}, {e.hi:.2f}]"


def table(sums: dict) -> str:
    """A plain-text table of every tokenizer's estimates."""
    head = (f"{'tokenizer':>13} {'vocab':>7} {'%TR tokens':>22} {'%TR types':>22} {'%TR words only':>22} "
            f"{'%Pure':>22} {'stem-cut recall':>22} {'bytes/token':>18} {'TR/EN premium':>18}")
    lines = [head]
    for n, s in sums.items():
        lines.append(f"{n:>13} {s['vocab_size']:>7} {_fmt(s['tr']):>22} {_fmt(s['tr_types']):>22} "
                     f"{_fmt(s['tr_words']):>22} {_fmt(s['pure']):>22} {_fmt(s['cut_recall']):>22} "
                     f"{_fmt(s['bytes_per_token'], False):>18} {_fmt(s['premium'], False):>18}")
    return "\n".join(lines)


def jsonable_summary(s: dict) -> dict:
    return {k: (v.to_dict() if isinstance(v, stats.Estimate) else v) for k, v in s.items()}


def paper_comparison(sums: dict) -> str:
    """Our unique-type %TR next to the paper's for the tokenizers both score, with both rankings."""
    rows = [(paper, z, v[3], sums[z]["tr_types"]) for paper, v in PAPER.items() for z in [v[0]] if z and z in sums]
    if len(rows) < 2:
        return "(none of the paper's tokenizers is in this run)"
    lines = [f"{'paper name':>12} {'ours':>11} {'paper %TR':>10} {'our %TR per type':>24}"]
    for paper, z, ptr, est in rows:
        lines.append(f"{paper:>12} {z:>11} {ptr:>9.2f}% {_fmt(est):>24}")
    rho = tk.rank_correlation([r[2] for r in rows], [r[3].value for r in rows])
    lines.append(f"Spearman ρ between the paper's and our %TR over these {len(rows)} tokenizers: {rho:+.2f}")
    return "\n".join(lines)
