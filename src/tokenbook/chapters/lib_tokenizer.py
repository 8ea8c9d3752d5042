"""Experiment for the `lib-tokenizer` chapter: a Less-is-Better vocabulary against BPE at equal size.

Arms, all with exactly V ids and all learned from the same training texts:
- `lib`:  the LiB learner (`tokenbook.tokenization.lib`), greedy longest-match reading with byte fallback;
- `bpe`:  byte-level BPE from the zoo (`tokenbook.tokenizers.trained.train("bpe", ...)`);
- `word`: the V−258 most frequent GPT-2-style words, other words spelled in bytes.
Measured on the corpus's held-out test documents: tokens (bytes per token), token types used, what
the tokens are (subwords, words, multi-word units), and — for the main size — the bits per byte of a
tiny Llama trained per tokenizer at equal compute (`tokenbook.train.compare.train_lm`).
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from .. import stats
from ..claims import AtLeast, AtMost
from ..tokenization import lib

ARMS = ("lib", "bpe", "word")
LABEL = {"lib": "LiB", "bpe": "BPE", "word": "word-level", "lib-shortest": "LiB (fewest-token reading)"}
COLOR = {"lib": "C0", "bpe": "C1", "word": "C2", "lib-shortest": "C0"}
SMOKE_WHY = ("at smoke scale LiB reads 0.24 M characters (5% of one pass over the training text): "
             "the pipeline runs, the comparison is not judged")


# ------------------------------------------------------------------------------------------- data
def texts(cfg) -> dict[str, list[str]]:
    """Training texts (shared by every tokenizer), held-out test documents, and the LM's training texts."""
    from ..data import load_corpus
    from ..data.pieces import take_bytes
    train = take_bytes(load_corpus(cfg.corpus, "train"), cfg.train_bytes)
    test = load_corpus(cfg.corpus, "test")
    if cfg.test_docs:
        test = test[: int(cfg.test_docs)]
    return {"train": train, "test": test, "lm_train": take_bytes(train, cfg.lm.train_bytes)}


def lib_config(cfg, vocab_size: int, n_reserved: int, seed: int) -> lib.LibConfig:
    return lib.LibConfig(vocab_size=int(vocab_size), n_reserved=n_reserved, seed=int(seed), **dict(cfg.lib))


def build(cfg, train: list[str], seed: int, progress: bool = True) -> dict[int, dict]:
    """{V: {"bpe": zoo Tokenizer, "lib": LibTokenizer, "word": WordTokenizer}} for every V of the sweep."""
    from ..tokenizers import trained
    sizes = [int(v) for v in cfg.vocab_sizes]
    if int(cfg.main_vocab) not in sizes:
        raise ValueError(f"main_vocab={cfg.main_vocab} must be one of vocab_sizes={sizes}")
    out = {V: {"bpe": trained.train("bpe", train, V, max_bytes=None, name=f"bpe-{cfg.corpus}-{V}")} for V in sizes}
    n_res = {V: len(out[V]["bpe"].special_ids) for V in sizes}
    libs = lib.learn_many(train, [lib_config(cfg, V, n_res[V], seed) for V in sizes], label=cfg.corpus,
                          workers=int(cfg.workers), progress=progress)
    for V, tok in zip(sizes, libs):
        out[V]["lib"] = tok
        out[V]["lib-shortest"] = tok.with_mode("shortest")
        out[V]["word"] = lib.WordTokenizer.train(train, V, n_reserved=n_res[V])
        for name, t in out[V].items():
            if lib_vocab(t) != V:
                raise RuntimeError(f"{name} at V={V} has {lib_vocab(t)} ids")
    return out


def lib_vocab(tok) -> int:
    from ..train.compare import vocab_size_of
    return vocab_size_of(tok)


# ------------------------------------------------------------------------------------ measurement
def measure(tok, docs: list[str], kinds: bool = False) -> dict:
    """Per held-out document: tokens, bytes, which ids occur (a docs × V presence matrix) and, with
    `kinds`, how many tokens are subwords / words / multi-word units / other."""
    V = lib_vocab(tok)
    ids = [list(tok.encode(d)) for d in docs]
    presence = np.zeros((len(docs), V), dtype=bool)
    for k, x in enumerate(ids):
        presence[k, x] = True
    out = {"tokens": np.array([len(x) for x in ids], float),
           "bytes": np.array([len(d.encode("utf-8")) for d in docs], float), "presence": presence}
    if kinds:
        counts = np.zeros((len(docs), len(lib.KINDS)))
        aligned = np.zeros((len(docs), 2))
        pieces: Counter = Counter()
        for k, (d, x) in enumerate(zip(docs, ids)):
            tb = tok.token_bytes(x)
            aligned[k] = lib.word_breaks(d, tb)
            ks = lib.token_kinds(d, tb)
            for kind, b in zip(ks, tb):
                counts[k, lib.KINDS.index(kind)] += 1
                if kind == "multi-word":
                    pieces[b.decode("utf-8", errors="replace")] += 1
        out["kinds"], out["multiword_pieces"], out["word_breaks"] = counts, pieces, aligned
    return out


def measure_all(toks: dict[int, dict], docs: list[str], main_vocab: int) -> dict[int, dict]:
    return {V: {arm: measure(t, docs, kinds=(V == main_vocab and arm in ARMS)) for arm, t in arms.items()}
            for V, arms in toks.items()}


def summary(m: dict) -> dict:
    """Pooled numbers for one tokenizer on the held-out documents."""
    s = {"tokens": int(m["tokens"].sum()), "bytes": int(m["bytes"].sum()),
         "bytes_per_token": float(m["bytes"].sum() / m["tokens"].sum()),
         "tokens_per_kb": float(1000 * m["tokens"].sum() / m["bytes"].sum()),
         "types_used": int(m["presence"].any(0).sum())}
    if "kinds" in m:
        tot = m["kinds"].sum()
        s["kind_shares"] = {k: float(m["kinds"][:, j].sum() / tot) for j, k in enumerate(lib.KINDS)}
        s["word_breaks_kept"] = float(m["word_breaks"][:, 0].sum() / m["word_breaks"][:, 1].sum())
    return s


def token_ratio(a: dict, b: dict, n_boot: int = 2000) -> stats.Estimate:
    """tokens(a) / tokens(b) on the same documents, documents resampled together."""
    return stats.bootstrap_fn({"a": a["tokens"], "b": b["tokens"]}, lambda d: float(d["a"].sum() / d["b"].sum()),
                              n_boot=n_boot, unit="×")


def types_ratio(a: dict, b: dict, n_boot: int = 2000, seed: int = 0) -> stats.Estimate:
    """(distinct ids a uses) / (distinct ids b uses) on the same documents, with a half-sampling interval.

    A distinct count is not a mean: a with-replacement bootstrap sample repeats documents, which add no
    types, so its ratios are biased towards small texts. Instead, random halves of the documents (drawn
    without replacement, the same half for both tokenizers) give the spread — a statistic on n/2 of n
    documents has about the variance of the full-sample one (finite-population correction) — and the
    interval is the full-sample ratio ± 1.96 of their standard deviation."""
    pa, pb = a["presence"], b["presence"]
    n = len(pa)
    value = float(pa.any(0).sum() / pb.any(0).sum())
    rng = np.random.default_rng(seed)
    half = max(1, n // 2)
    r = np.empty(n_boot)
    for k in range(n_boot):
        i = rng.choice(n, half, replace=False)
        r[k] = pa[i].any(0).sum() / pb[i].any(0).sum()
    sd = float(r.std(ddof=1))
    return stats.Estimate(value, value - 1.96 * sd, value + 1.96 * sd, n, "bootstrap", 0.95, "×")


def integration(m: dict, n_boot: int = 2000) -> stats.Estimate:
    """The smallest of the shares of subword, word and multi-word tokens (pooled over documents)."""
    k = m["kinds"]
    cols = {name: k[:, j] for j, name in enumerate(lib.KINDS)}

    def fn(d):
        tot = sum(d[name].sum() for name in lib.KINDS)
        return float(min(d[name].sum() for name in ("subword", "word", "multi-word")) / tot)
    return stats.bootstrap_fn(cols, fn, n_boot=n_boot, unit="share of tokens")


def sweep_table(meas: dict[int, dict], n_boot: int = 2000) -> list[dict]:
    """One row per V: bytes/token and types used per arm, and the LiB/BPE ratios with intervals."""
    rows = []
    for V, arms in sorted(meas.items()):
        row = {"V": V}
        for arm, m in arms.items():
            s = summary(m)
            row[arm] = {"bytes_per_token": s["bytes_per_token"], "types_used": s["types_used"]}
        row["tokens_lib_over_bpe"] = token_ratio(arms["lib"], arms["bpe"], n_boot).to_dict()
        row["types_lib_over_bpe"] = types_ratio(arms["lib"], arms["bpe"], n_boot).to_dict()
        rows.append(row)
    return rows


def lexicon_report(tok: lib.LibTokenizer, train: list[str], test: list[str]) -> dict:
    """What LiB stored: how many units are multi-word, how long they are, and how full the lexicon got."""
    mw = lib.multiword_units(tok.units)
    cap = tok.vocab_size - lib.N_BYTES - tok.n_reserved
    words_train = {w for t in train for w in lib.PRETOKEN.findall(t)}
    words_test = {w for t in test for w in lib.PRETOKEN.findall(t)}
    return {"units": len(tok.units), "capacity": cap, "filled": len(tok.units) / cap,
            "multiword_units": len(mw), "multiword_unit_share": len(mw) / max(1, len(tok.units)),
            "mean_unit_chars": float(np.mean([len(u) for u in tok.units])) if tok.units else 0.0,
            "top_units": tok.units[:40], "top_multiword_units": mw[:40],
            # an uncapped word tokenizer's vocabulary (the paper's "word" types): one type per distinct word
            "distinct_words_train": len(words_train), "distinct_words_test": len(words_test)}


# ------------------------------------------------------------------------------------------- LMs
def run_lm(cfg, toks: dict, lm_train: list[str], test: list[str], seed: int, device: str,
           progress: bool = True) -> dict[str, dict]:
    """One tiny Llama per arm at equal compute (`compare.train_lm`), scored per byte on the test documents."""
    from ..train import compare
    out = {}
    for arm in cfg.lm.arms:
        if arm not in toks:
            raise ValueError(f"unknown LM arm {arm!r}; valid: {', '.join(toks)}")
        res = compare.train_lm(toks[arm], lm_train, test, model=dict(cfg.lm.model), train=dict(cfg.lm.train),
                               match=str(cfg.lm.match), seed=seed, device=device, progress=progress, name=arm)
        out[arm] = res
    return out


def bpb_estimate(arm: dict, n_boot: int = 2000) -> stats.Estimate:
    """Pooled bits per byte with a bootstrap interval over test documents."""
    return stats.bootstrap_fn({"bits": arm["val_nll_bits_per_doc"], "n": arm["val_doc_bytes"]},
                              lambda d: float(d["bits"].sum() / d["n"].sum()), n_boot=n_boot, unit="bits/byte")


def lm_summary(lm: dict[str, dict], n_boot: int = 2000) -> dict:
    keep = ("vocab_size", "parameters", "non_embedding_parameters", "steps", "tokens_per_step",
            "train_tokens_seen", "train_bytes_seen", "epochs", "final_train_loss", "train_wall_s", "val_bpb",
            "bytes_per_token", "flops_per_byte")
    return {a: {**{k: r[k] for k in keep}, "val_bpb_ci": bpb_estimate(r, n_boot).to_dict()} for a, r in lm.items()}


# ------------------------------------------------------------------------------------------ claims
def check_claims(run, meas: dict[int, dict], lm: dict[str, dict]) -> None:
    cfg = run.cfg.chapter
    nb = int(cfg.n_boot)
    judged = ("cpu", "gpu")
    for V, arms in sorted(meas.items()):
        sl, sb = summary(arms["lib"]), summary(arms["bpe"])
        run.claim(f"fewer_tokens_than_bpe.v{V}",
                  paper="LiB's vocabulary 'effectively reduces both the numbers of tokens and types' and the LiB "
                        "tokenizer 'outperforms existing word and BPE tokenizers' (stated without a number we could "
                        f"find to quote). Measured: LiB tokens / BPE tokens on held-out text at equal vocabulary V={V}",
                  measured=token_ratio(arms["lib"], arms["bpe"], nb), criterion=AtMost(1.0), testable_at=judged,
                  why_not=SMOKE_WHY,
                  note=f"bytes/token LiB {sl['bytes_per_token']:.3f}, BPE {sb['bytes_per_token']:.3f}; "
                       f"{len(arms['lib']['tokens'])} test documents")
        run.claim(f"fewer_types_than_bpe.v{V}",
                  paper="'reduces both the numbers of tokens and types', outperforming BPE (no number to quote). "
                        f"Measured: distinct token types the held-out text needs, LiB / BPE, at equal vocabulary V={V}",
                  measured=types_ratio(arms["lib"], arms["bpe"], nb), criterion=AtMost(1.0), testable_at=judged,
                  why_not=SMOKE_WHY, note=f"types used LiB {sl['types_used']}, BPE {sb['types_used']}")
    V = int(cfg.main_vocab)
    arms = meas[V]
    sl, sw = summary(arms["lib"]), summary(arms["word"])
    run.claim("fewer_tokens_than_word",
              paper="the LiB tokenizer 'outperforms existing word … tokenizers' (tokens). Measured: LiB / word-level "
                    f"tokens on held-out text at V={V} (words outside the word list are spelled in bytes)",
              measured=token_ratio(arms["lib"], arms["word"], nb), criterion=AtMost(1.0), testable_at=judged,
              why_not=SMOKE_WHY, note=f"bytes/token LiB {sl['bytes_per_token']:.3f}, word {sw['bytes_per_token']:.3f}")
    run.claim("fewer_types_than_word",
              paper="the LiB tokenizer 'outperforms existing word … tokenizers' (types). Measured: distinct types "
                    f"the held-out text needs, LiB / word-level at V={V}",
              measured=types_ratio(arms["lib"], arms["word"], nb), criterion=AtMost(1.0), testable_at=judged,
              why_not=SMOKE_WHY, note=f"types used LiB {sl['types_used']}, word {sw['types_used']}")
    shares = sl["kind_shares"]
    thr = float(cfg.kind_threshold)
    run.claim("integrated_vocabulary",
              paper="LiB 'can autonomously learn an integrated vocabulary consisting of subwords, words, and MWEs'. "
                    f"Measured: the smallest of the three shares of LiB's held-out tokens (≥ {thr:.0%} each)",
              measured=integration(arms["lib"], nb), criterion=AtLeast(thr), testable_at=judged, why_not=SMOKE_WHY,
              note=", ".join(f"{k} {v:.1%}" for k, v in shares.items()) + "; BPE multi-word share "
                   f"{summary(arms['bpe'])['kind_shares']['multi-word']:.1%}")
    if "lib" in lm and "bpe" in lm:
        from ..train.compare import bpb_difference
        d = bpb_difference(lm["lib"], lm["bpe"], n_boot=nb)
        run.claim("lm_bpb_not_worse_than_bpe",
                  paper="implied: a better tokenizer for LLMs (we found no LM trained in the paper). Measured: bits per byte of a "
                        f"tiny Llama with LiB minus one with BPE at V={V}, equal compute (same steps × tokens)",
                  measured=d, criterion=AtMost(0.0), testable_at=judged,
                  why_not="smoke-scale LMs train for seconds: the pipeline runs, bits per byte are not judged",
                  note=f"bpb LiB {lm['lib']['val_bpb']:.3f}, BPE {lm['bpe']['val_bpb']:.3f}; bytes/token "
                       f"{lm['lib']['bytes_per_token']:.2f} vs {lm['bpe']['bytes_per_token']:.2f}; breaks between "
                       f"words that are token breaks: LiB {sl['word_breaks_kept']:.1%}, BPE "
                       f"{summary(arms['bpe'])['word_breaks_kept']:.1%}")


# ------------------------------------------------------------------------------------------- plots
def plot_frontier(meas: dict[int, dict], n_boot: int = 2000):
    """Left: tokens per kB against token types used on held-out text (lower-left is better), one point
    per V. Right: LiB/BPE ratios of tokens and of types with 95% intervals against V."""
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(1, 2, figsize=(12.5, 4.3))
    sizes = sorted(meas)
    for arm in ("lib", "lib-shortest", "bpe", "word"):
        if arm not in meas[sizes[0]]:
            continue
        s = [summary(meas[V][arm]) for V in sizes]
        ax[0].plot([x["types_used"] for x in s], [x["tokens_per_kb"] for x in s], "o--" if arm == "lib-shortest"
                   else "o-", color=COLOR[arm], label=LABEL[arm], alpha=0.5 if arm == "lib-shortest" else 1.0)
        if arm in ("lib", "bpe"):
            for V, x in zip(sizes, s):
                ax[0].annotate(f"V={V}", (x["types_used"], x["tokens_per_kb"]), fontsize=7,
                               xytext=(4, 4 if arm == "lib" else -10), textcoords="offset points")
    ax[0].set_xscale("log")
    from matplotlib.ticker import NullFormatter, ScalarFormatter
    ax[0].xaxis.set_major_formatter(ScalarFormatter())
    ax[0].xaxis.set_minor_formatter(NullFormatter())
    used = [summary(meas[V][a])["types_used"] for V in sizes for a in meas[V]]
    nice = [t for t in (250, 500, 1000, 2000, 4000, 8000) if min(used) * 1.15 <= t <= max(used) / 1.15]
    ax[0].set_xticks(sorted({min(used), max(used), *nice}))
    ax[0].set_xlabel("token types used on the held-out text")
    ax[0].set_ylabel("tokens per 1000 bytes of held-out text")
    ax[0].set_title("tokens vs types (lower left = less effort)")
    ax[0].legend(fontsize=8)
    for what, fn, mk in (("tokens", token_ratio, "o"), ("types used", types_ratio, "s")):
        e = [fn(meas[V]["lib"], meas[V]["bpe"], n_boot) for V in sizes]
        ax[1].errorbar(sizes, [x.value for x in e], yerr=[[x.value - x.lo for x in e], [x.hi - x.value for x in e]],
                       fmt=mk + "-", capsize=3, label=f"{what}: LiB / BPE")
    ax[1].axhline(1.0, color="k", lw=0.8)
    ax[1].set_xscale("log", base=2)
    ax[1].set_xticks(sizes)
    ax[1].set_xticklabels([str(v) for v in sizes])
    ax[1].set_xlabel("vocabulary size V (ids)")
    ax[1].set_ylabel("ratio (below 1: LiB needs fewer)")
    ax[1].set_title("LiB / BPE at equal V (95% intervals over test documents)")
    ax[1].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_lexicon(meas_main: dict, top: int = 25):
    """What the held-out tokens are per tokenizer, how often a break between words is a token break, and
    LiB's most used multi-word units."""
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(1, 3, figsize=(15, 4.8), gridspec_kw={"width_ratios": [1, 0.7, 1.4]})
    arms = [a for a in ARMS if a in meas_main]
    names = [LABEL[a] for a in arms]
    bottom = np.zeros(len(arms))
    for k in lib.KINDS:
        v = np.array([summary(meas_main[a])["kind_shares"][k] for a in arms])
        ax[0].bar(names, v, bottom=bottom, label=k)
        bottom += v
    ax[0].set_ylabel("share of held-out tokens")
    ax[0].set_title("what a token covers")
    ax[0].legend(fontsize=8, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.07))
    ax[1].bar(names, [summary(meas_main[a])["word_breaks_kept"] for a in arms], color=[COLOR[a] for a in arms])
    ax[1].set_ylim(0, 1.05)
    ax[1].set_ylabel("share of breaks between held-out words")
    ax[1].set_title("word breaks that are token breaks")
    ax[1].tick_params(axis="x", labelsize=8)
    pieces = meas_main["lib"]["multiword_pieces"].most_common(top)
    if pieces:
        shown = [p.replace(" ", "␣").replace("\n", "⏎") for p, _ in pieces]
        ax[2].barh(shown[::-1], [c for _, c in pieces][::-1], color="C0")
        ax[2].tick_params(axis="y", labelsize=7)
    ax[2].set_xlabel("occurrences in the held-out encoding")
    ax[2].set_title(f"LiB's most used multi-word units (␣ = space; {sum(meas_main['lib']['multiword_pieces'].values())} "
                    "multi-word tokens in all)", fontsize=10)
    fig.tight_layout()
    return fig


def plot_learning(toks: dict[int, dict]):
    """LiB's lexicon size and characters per token (per article read) as reading goes on, per V."""
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(1, 2, figsize=(12.5, 3.6))
    for V, arms in sorted(toks.items()):
        log = arms["lib"].info.get("log", [])
        if not log:
            continue
        x = [r["chars_read"] / 1e6 for r in log]
        ax[0].plot(x, [r["lexicon"] for r in log], label=f"V={V}")
        cpt = np.array([r["chars_per_token"] for r in log])
        w = max(1, len(cpt) // 50)
        smooth = np.convolve(cpt, np.ones(w) / w, mode="valid")
        ax[1].plot(x[w - 1:], smooth, label=f"V={V}")
    ax[0].set_xlabel("million characters read")
    ax[0].set_ylabel("learned units")
    ax[0].set_title("lexicon size (capped at V − 258)")
    ax[1].set_xlabel("million characters read")
    ax[1].set_ylabel("characters per token (article, smoothed)")
    ax[1].set_title("reading effort while learning")
    ax[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_lm(lm: dict[str, dict], n_boot: int = 2000):
    """Left: held-out bits per byte per tokenizer with 95% intervals. Right: training loss per byte read."""
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(1, 2, figsize=(12.5, 3.8))
    arms = list(lm)
    est = [bpb_estimate(lm[a], n_boot) for a in arms]
    ax[0].bar([LABEL.get(a, a) for a in arms], [e.value for e in est], color=[COLOR.get(a, "C3") for a in arms],
              yerr=[[e.value - e.lo for e in est], [e.hi - e.value for e in est]], capsize=4)
    lo = min(e.lo for e in est)
    ax[0].set_ylim(max(0.0, lo - 0.3), max(e.hi for e in est) + 0.1)
    ax[0].set_ylabel("held-out bits per byte")
    ax[0].set_title("tiny Llama, equal compute")
    for a in arms:
        log = lm[a]["loss_log"]
        bpt = lm[a]["train_bytes_per_token"]
        ax[1].plot([r["tokens"] * bpt / 1e6 for r in log], [r["loss"] / np.log(2) / bpt for r in log],
                   color=COLOR.get(a, "C3"), label=LABEL.get(a, a))
    ax[1].set_xlabel("million training bytes read")
    ax[1].set_ylabel("training loss (bits per byte)")
    ax[1].set_title("same steps × tokens: longer tokens read more text")
    ax[1].legend(fontsize=8)
    fig.tight_layout()
    return fig
