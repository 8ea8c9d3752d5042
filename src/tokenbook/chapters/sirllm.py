"""Experiment for the `sirllm` chapter: streaming dialogues on SmolLM2 under a bounded KV cache.

- `make_dialogues`: multi-turn chats in the model's chat template. Task "grocery" (the paper's
  Grocery Shopping, in its phrasing "I want you to buy the GROCERY: [chocolate]."): one item in the
  first turn, then chat turns that are real FAQ pairs (Python, Perl, Django; the assistant's replies
  are the FAQ answers), then the question. Task "rps" (after the paper's Rock-Paper-Scissors): a house
  rule of a rock-paper-scissors game is stated once ("whoever loses a round must shout the WORD:
  [pelican]"), game rounds follow, then the question. The answer is started for the model up to the
  bracket. The number of turns between the fact and the question varies.
- `evaluate`: every arm streams every dialogue turn by turn (teacher-forced: the same text for all
  arms), then answers greedily; an answer is correct when it contains the fact (`contains_answer`).
  Arms: the full cache; StreamingLLM (4 sinks + recent) and SirLLM (4 sinks + top token entropy)
  at several cache budgets; SirLLM at several decays; a random-retention control. All arms share the
  stream up to their first eviction (`Stream.fork`), so that part runs once.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from .. import stats
from ..claims import AtLeast, AtMost
from ..data import faq_pairs
from ..evaluation import contains_answer, paired_difference
from ..longctx import selection as sel
from ..longctx import sirllm as sir

GROCERIES = ["chocolate", "peanut butter", "oats", "cinnamon", "avocados", "mangoes", "basil", "honey",
             "lentils", "salmon", "yogurt", "blueberries", "spinach", "mushrooms", "walnuts", "paprika",
             "coconut milk", "raisins", "tofu", "zucchini", "maple syrup", "almonds", "cabbage", "shrimp",
             "pistachios", "chickpeas", "ginger", "cranberries", "pumpkin seeds", "olives", "mozzarella",
             "pineapple", "asparagus", "turmeric", "hazelnuts", "sardines", "apricots", "quinoa", "kiwis",
             "vanilla ice cream", "sourdough", "pomegranates", "anchovies", "cauliflower", "plums", "rice noodles"]
RULE_WORDS = ["pumpkin", "avalanche", "jellyfish", "trombone", "marshmallow", "hurricane", "dinosaur", "spaghetti",
              "volcano", "kangaroo", "lighthouse", "cucumber", "penguin", "harmonica", "butterfly", "waffle",
              "octopus", "cactus", "walrus", "pancake", "giraffe", "rainbow", "pelican", "meatball", "zeppelin",
              "tambourine", "flamingo", "broccoli", "submarine", "porcupine"]
MOVES = ["rock", "paper", "scissors"]
BEATS = {"rock": "scissors", "paper": "rock", "scissors": "paper"}
VERB = {"rock": "crushes", "paper": "covers", "scissors": "cut"}


@dataclass
class Dialogue:
    task: str
    chunks: list[list[int]]            # turns to stream; the last is the question, ending with the answer's start
    answer: str                        # the fact the answer must contain
    fact_span: tuple[int, int]         # stream token indices of the fact's mention [start, end)
    distance: int                      # turns between the fact's turn and the question
    tokens: int                        # length of the whole dialogue (question included)


# ---- building dialogues ---------------------------------------------------------------------------

def words(text: str) -> list[str]:
    return " ".join(text.split()).split(" ")


def cut_words(text: str, n: int) -> str:
    """The first n words, ending at a sentence end when one falls in the second half."""
    w = words(text)[:n]
    s = " ".join(w)
    m = [x.end() for x in re.finditer(r"[.!?](?=\s|$)", s)]
    return s[:m[-1]] if m and m[-1] > len(s) // 2 else s + ("…" if len(words(text)) > n else "")


TEMPLATE_TOKENS = 10        # what the chat template adds to a turn (role headers, end markers)


def faq_fillers(cfg, tok=None) -> list[tuple[str, str]]:
    """(user question, assistant reply) turns from the FAQs: questions of at most cfg.filler_words words,
    replies cut to cfg.filler_words; with `tok`, only turns of at most cfg.max_turn_tokens tokens."""
    out = []
    for name in cfg.faqs:
        for q, a in faq_pairs(name):
            q, a = " ".join(q.split()), cut_words(a, cfg.filler_words)
            if len(words(q)) > cfg.filler_words or len(words(a)) < 8:
                continue
            if tok is not None:
                n_tok = len(tok(q + " " + a, add_special_tokens=False)["input_ids"]) + TEMPLATE_TOKENS
                if n_tok > cfg.max_turn_tokens:
                    continue
            out.append((q, a))
    return out


def rps_round(k: int, rng: np.random.Generator) -> tuple[str, str]:
    me, you = MOVES[rng.integers(3)], MOVES[rng.integers(3)]
    if me == you:
        result = f"We both played {me}, so this round is a tie."
    elif BEATS[you] == me:
        result = f"{you.capitalize()} {VERB[you]} {me}, so I win this round."
    else:
        result = f"{me.capitalize()} {VERB[me]} {you}, so you win this round."
    return f"Round {k}: I play {me}.", f"I play {you}. {result}"


def render_chunks(tok, turns: list[tuple[str, str]], question: str, prefix: str) -> list[str]:
    """The chat template's text, cut into one chunk per turn (user + assistant); the last chunk is the
    question turn ending with the assistant's `prefix`. The first chunk carries the template's system
    prompt (its first tokens are the attention sinks)."""
    msgs: list[dict] = []
    texts, done = [], ""
    for u, a in turns:
        msgs += [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
        full = tok.apply_chat_template(msgs, tokenize=False)
        texts.append(full[len(done):])
        done = full
    full = tok.apply_chat_template(msgs + [{"role": "user", "content": question}], tokenize=False,
                                   add_generation_prompt=True) + prefix
    texts.append(full[len(done):])
    return texts


def encode_chunks(tok, texts: list[str]) -> list[list[int]]:
    return [tok(t, add_special_tokens=False)["input_ids"] for t in texts]


def fact_token_span(tok, text: str, fact: str) -> tuple[int, int]:
    """Token indices [start, end) of the last occurrence of `fact` in `text` (tokenized alone)."""
    c = text.rindex(fact)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    toks = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if b > c and a < c + len(fact)]
    return toks[0], toks[-1] + 1


def make_dialogue(tok, task: str, fact: str, fillers: list[tuple[str, str]]) -> Dialogue:
    """The paper's phrasing for the fact ("I want you to buy the GROCERY: [chocolate].") and an answer
    started for the model so that it only has to fill the brackets."""
    if task == "grocery":
        first = (f"I want you to buy the GROCERY: [{fact}].", "OK.")
        question, prefix = "Which one is the GROCERY that I want you to buy earlier?", "You want me to buy the GROCERY: ["
    elif task == "rps":
        first = (f"Let's play rock-paper-scissors. House rule: whoever loses a round must shout the WORD: [{fact}].",
                 "Deal! Let's play.")
        question, prefix = "What is the WORD in our house rule?", "The WORD in our house rule is: ["
    else:
        raise ValueError(f"unknown task {task!r}; valid: grocery, rps")
    texts = render_chunks(tok, [first, *fillers], question, prefix)
    chunks = encode_chunks(tok, texts)
    span = fact_token_span(tok, texts[0], fact)
    return Dialogue(task, chunks, fact, span, len(fillers), sum(map(len, chunks)))


def make_dialogues(cfg, tok, seed: int) -> list[Dialogue]:
    """cfg.n_per_distance dialogues per task and distance (filler turns between fact and question);
    every dialogue draws its own fact and fillers."""
    pool = faq_fillers(cfg, tok)
    out = []
    for ti, task in enumerate(cfg.tasks):
        rng = np.random.default_rng([seed, 26, ti])
        facts = GROCERIES if task == "grocery" else RULE_WORDS
        order = rng.permutation(len(facts))
        k = 0
        for d in cfg.distances:
            for _ in range(int(cfg.n_per_distance)):
                fact = facts[order[k % len(facts)]]
                k += 1
                if task == "grocery":
                    fill = [pool[j] for j in rng.choice(len(pool), int(d), replace=False)]
                else:
                    fill = [rps_round(r + 1, rng) for r in range(int(d))]
                out.append(make_dialogue(tok, task, fact, fill))
    return out


# ---- arms -----------------------------------------------------------------------------------------

def policies(cfg) -> list[sir.Policy]:
    """Every bounded arm: StreamingLLM and SirLLM at each budget; at the main budget SirLLM's decay
    sweep and the controls (random retention, SirLLM with original positions)."""
    B0, d0 = int(cfg.budget), float(cfg.decay)
    if B0 not in [int(b) for b in cfg.budgets]:
        raise ValueError(f"the main budget {B0} must be one of budgets {list(cfg.budgets)}")
    unknown = set(cfg.controls) - {"random", "original_positions"}
    if unknown:
        raise ValueError(f"unknown controls {sorted(unknown)}; valid: random, original_positions")
    kw = dict(sinks=int(cfg.sinks))
    out = []
    for B in cfg.budgets:
        out.append(sir.streaming_llm(int(B), **kw))
        out.append(sir.sirllm(int(B), decay=d0, recent=int(cfg.recent), **kw))
    if "random" in cfg.controls:
        out.append(sir.random_keep(B0, **kw))
    for d in cfg.decays:
        if float(d) != d0:
            out.append(sir.sirllm(B0, decay=float(d), recent=int(cfg.recent), **kw))
    if "original_positions" in cfg.controls:
        out.append(sir.sirllm(B0, decay=d0, recent=int(cfg.recent), positions="original",
                              name=f"sirllm@{B0},d={d0:g},orig"))
    names = [p.name for p in out]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate arms {names}: check budgets/decays")
    return out


def arm_label(name: str) -> str:
    """'sirllm@128,d=0.7' → 'SirLLM B=128, d=0.7'."""
    if name == "full":
        return "full cache"
    kind, rest = name.split("@")
    lab = {"streaming": "StreamingLLM", "sirllm": "SirLLM", "random": "random keep"}[kind]
    rest = rest.replace(",", ", ").replace(", orig", ", original positions")
    return f"{lab} B={rest}"


@torch.inference_mode()
def run_dialogue(model, tok, dlg: Dialogue, arms: list[sir.Policy], cfg, stop) -> dict:
    """Stream one dialogue under the full cache and every arm; each answers the final question.

    The full cache runs first and computes token entropies; arms of one budget fork off it (one
    batch) just before their first eviction, so the shared prefix runs once."""
    n_new = int(cfg.new_tokens)
    base = sir.Stream(model, sir.Policy("full", score="entropy"))    # the full cache, with entropies for the forks
    groups: dict[int, list[sir.Policy]] = {}
    for p in arms:
        groups.setdefault(int(p.budget), []).append(p)
    streams: list[sir.Stream] = []
    secs: dict[int, float] = {id(base): 0.0}
    answers: dict[int, list[list[int]]] = {}
    for j, chunk in enumerate(dlg.chunks):
        last = j == len(dlg.chunks) - 1
        need = len(chunk) + (n_new if last else 0)
        for B in [B for B in groups if last or len(base) + need > B]:
            streams.append(base.fork(groups.pop(B)))
            secs[id(streams[-1])] = 0.0
        for s in [base, *streams]:
            t0 = time.perf_counter()
            if last:
                answers[id(s)] = s.generate(chunk, n_new, stop)
            else:
                s.feed(chunk)
            secs[id(s)] += time.perf_counter() - t0
    out = {}
    for s in [base, *streams]:
        kept = s.retained(*dlg.fact_span)
        for r, p in enumerate(s.policies):
            pred = tok.decode(answers[id(s)][r], skip_special_tokens=True)
            out[p.name] = {"prediction": pred, "correct": contains_answer(pred, dlg.answer), "fact_retained": kept[r],
                           "max_cache": s.max_len, "computed": s.computed, "evictions": s.evictions,
                           "seconds_batch": secs[id(s)]}
    ent = base.entropy[0]
    fact = ent[dlg.fact_span[0]:dlg.fact_span[1]]
    return {"task": dlg.task, "distance": dlg.distance, "tokens": dlg.tokens, "answer": dlg.answer,
            "fact_entropy": fact.tolist(), "median_entropy": float(ent[1:].median()),
            # share of the dialogue's tokens more surprising than the fact's most surprising token
            "fact_entropy_rank": float((ent[1:] > fact.max()).float().mean()), "arms": out}


def evaluate(model, tok, dialogues: list[Dialogue], cfg) -> dict:
    arms = policies(cfg)
    stop = sel.stop_tokens(tok, ".\n]")
    per = [run_dialogue(model, tok, d, arms, cfg, stop) for d in tqdm(dialogues, desc="dialogues")]
    names = ["full"] + [p.name for p in arms]
    acc = {t: {a: float(np.mean([p["arms"][a]["correct"] for p in per if p["task"] == t])) for a in names}
           for t in cfg.tasks}
    return {"dialogues": per, "arms": names, "accuracy": acc,
            "tokens_streamed": int(sum(p["tokens"] for p in per)),
            "token_forwards": int(sum(x["computed"] for p in per for x in p["arms"].values()))}


def misses(ev: dict, arm: str) -> list[dict]:
    """The dialogues an arm got wrong: the fact, its answer, and how much of the fact was still cached."""
    return [{"task": p["task"], "distance": p["distance"], "fact": p["answer"], "answer": p["arms"][arm]["prediction"],
             "fact_retained": round(p["arms"][arm]["fact_retained"], 2)}
            for p in ev["dialogues"] if not p["arms"][arm]["correct"]]


@torch.inference_mode()
def exactness(model, dlg: Dialogue, cfg) -> dict:
    """With a budget that holds the whole dialogue, SirLLM and StreamingLLM must be the full model:
    max |logit difference| at the end of every turn against one forward pass over the dialogue."""
    ids = torch.tensor(sum(dlg.chunks, []))
    B = len(ids) + 1
    s = sir.Stream(model, [sir.sirllm(B, sinks=int(cfg.sinks)), sir.streaming_llm(B, sinks=int(cfg.sinks))])
    ref = model(input_ids=ids[None].to(model.device)).logits[0].float()
    ends = np.cumsum([len(c) for c in dlg.chunks]) - 1
    err = max(float((s.feed(c) - ref[e][None]).abs().max()) for c, e in zip(dlg.chunks, ends))
    return {"max_abs_logit_diff": err, "tokens": len(ids), "evictions": s.evictions}


# ---- claims -------------------------------------------------------------------------------------

def col(ev: dict, arm: str, key: str = "correct", task: str | None = None) -> list[float]:
    return [float(p["arms"][arm][key]) for p in ev["dialogues"] if task is None or p["task"] == task]


def main_arms(cfg) -> dict[str, str]:
    B, d = int(cfg.budget), float(cfg.decay)
    return {"sirllm": f"sirllm@{B},d={d:g}", "streaming": f"streaming@{B}", "random": f"random@{B}"}


def check_claims(run, ev: dict, ex: dict) -> None:
    cfg = run.cfg.chapter
    m = main_arms(cfg)
    B, gain = int(cfg.budget), float(cfg.min_gain)
    per = ev["dialogues"]
    n = len(per)
    acc = dict(testable_at=("cpu", "gpu"), why_not="a smoke run has too few dialogues to decide an accuracy claim")
    mean_len = np.mean([p["tokens"] for p in per])
    ctx = (f"{n} dialogues (~{mean_len:.0f} tokens, {min(cfg.distances)}-{max(cfg.distances)} turns between fact and "
           f"question), cache budget B={B} tokens incl. the incoming turn, 4 sinks")
    full = col(ev, "full")
    run.claim("task.full_cache_ceiling", paper="(precondition, not a claim of the paper) with the whole dialogue in "
              "its cache, SmolLM2-135M recalls the fact; otherwise a bounded cache has nothing to preserve",
              measured=stats.bootstrap(full, unit="recall, full cache") if n > 1 else stats.exact(full[0], unit="recall"),
              criterion=AtLeast(float(cfg.ceiling)),
              note=ctx + "; per task: " + ", ".join(f"{t} {ev['accuracy'][t]['full']:.0%}" for t in cfg.tasks), **acc)
    paper = {"grocery": "SirLLM remembers the grocery item asked for early in a long chat better than StreamingLLM "
                        "at the same cache size (Grocery Shopping; 'stable and significant improvements' over StreamLLM "
                        "across LLMs)",
             "rps": "SirLLM keeps game information from early rounds that StreamingLLM forgets (after the paper's "
                    "Rock-Paper-Scissors, where SirLLM beats StreamLLM against every player type)"}
    for t in cfg.tasks:
        a, b = col(ev, m["sirllm"], task=t), col(ev, m["streaming"], task=t)
        run.claim(f"{t}.vs_streamingllm", paper=paper[t],
                  measured=paired_difference(a, b, unit="recall difference") if len(a) > 1 else stats.exact(a[0] - b[0]),
                  criterion=AtLeast(gain), note=f"{len(a)} dialogues: SirLLM (d={cfg.decay:g}) {np.mean(a):.0%} vs "
                  f"StreamingLLM {np.mean(b):.0%} (full cache {np.mean(col(ev, 'full', task=t)):.0%}); 'better' = paired "
                  f"gain ≥ {gain:g}", **acc)
    budgets = [int(x) for x in cfg.budgets]
    samples = {f"{k}@{b}": col(ev, m_) for b in budgets for k, m_ in
               (("s", f"sirllm@{b},d={float(cfg.decay):g}"), ("t", f"streaming@{b}"))}
    fn = lambda d: min(float(np.mean(d[f"s@{b}"] - d[f"t@{b}"])) for b in budgets)  # noqa: E731
    run.claim("budgets.never_worse", paper="the improvement over StreamingLLM is stable (here: across cache budgets, "
              "both tasks)", measured=stats.bootstrap_fn(samples, fn, unit="min over budgets of recall difference")
              if n > 1 else stats.exact(fn({k: np.asarray(v) for k, v in samples.items()})),
              criterion=AtLeast(0.0), note="budgets " + ", ".join(
                  f"{b}: {np.mean(samples[f's@{b}']) - np.mean(samples[f't@{b}']):+.2f}" for b in budgets), **acc)
    if m["random"] in ev["arms"]:
        a, b = col(ev, m["sirllm"]), col(ev, m["random"])
        run.claim("selection.entropy_vs_random", paper="token entropy picks the tokens worth keeping (the fact), not "
                  "merely keeping some old tokens", measured=paired_difference(a, b, unit="recall difference")
                  if n > 1 else stats.exact(a[0] - b[0]), criterion=AtLeast(gain),
                  note=f"SirLLM {np.mean(a):.0%} vs a random subset (+ sinks) of the same size {np.mean(b):.0%}; fact "
                  f"tokens still cached at the question: {np.mean(col(ev, m['sirllm'], 'fact_retained')):.0%} vs "
                  f"{np.mean(col(ev, m['random'], 'fact_retained')):.0%} (StreamingLLM "
                  f"{np.mean(col(ev, m['streaming'], 'fact_retained')):.0%})", **acc)
    rank = [p["fact_entropy_rank"] for p in per]
    run.claim("mechanism.fact_is_surprising", paper="the key information of a dialogue has high token entropy "
              "(−log P of the token), which is why SirLLM keeps it", measured=stats.bootstrap(rank, unit="share of "
              "tokens more surprising than the fact") if n > 1 else stats.exact(rank[0]),
              criterion=AtMost(float(cfg.rank_threshold)), note="share of the dialogue's tokens whose entropy (full "
              f"cache) exceeds the fact's most surprising token; median dialogue-token entropy "
              f"{np.median([p['median_entropy'] for p in per]):.2f} nats, fact's max "
              f"{np.median([max(p['fact_entropy']) for p in per]):.2f}", **acc)
    low = min(float(x) for x in cfg.decays)
    if low < float(cfg.decay):
        a, b = col(ev, m["sirllm"]), col(ev, f"sirllm@{B},d={low:g}")
        run.claim("decay.early_facts_fade", paper="the memory decay lets old information fade (flexible memory); "
                  "the official runs use d = 1 for Grocery Shopping, where the early item must be kept, and d < 1 for "
                  "DailyDialog (0.7) and Rock-Paper-Scissors (0.9)",
                  measured=paired_difference(a, b, unit="recall difference") if n > 1 else stats.exact(a[0] - b[0]),
                  criterion=AtLeast(gain), note=f"SirLLM d={cfg.decay:g} {np.mean(a):.0%} vs d={low:g} {np.mean(b):.0%} "
                  f"at B={B}", **acc)
    run.claim("method.exact_without_eviction", paper="(implementation check) a budget that holds the whole dialogue "
              "changes nothing: SirLLM and StreamingLLM equal the full model",
              measured=stats.exact(ex["max_abs_logit_diff"], unit="max |Δ logit|"),
              criterion=AtMost(float(cfg.exact_tolerance)), note=f"one dialogue of {ex['tokens']} tokens, streamed turn "
              "by turn vs one forward pass")


# ---- figures ------------------------------------------------------------------------------------

def _est(x: list[float]) -> stats.Estimate:
    return stats.bootstrap(x) if len(x) > 1 else stats.exact(x[0])


def plot(ev: dict, cfg, title: str = ""):
    """Per task (rows): (a) recall vs cache budget, (b) recall vs turns between fact and question at the
    main budget, (c) the main budget's arms: recall and fact tokens still cached at the question."""
    import matplotlib.pyplot as plt
    tasks = list(cfg.tasks)
    budgets = [int(b) for b in cfg.budgets]
    B, d0 = int(cfg.budget), float(cfg.decay)
    m = main_arms(cfg)
    fig, axes = plt.subplots(len(tasks), 3, figsize=(16, 4.2 * len(tasks)), squeeze=False)
    for i, t in enumerate(tasks):
        ax = axes[i, 0]
        for j, (kind, c) in enumerate((("sirllm", "C0"), ("streaming", "C1"))):
            est = [_est(col(ev, f"sirllm@{b},d={d0:g}" if kind == "sirllm" else f"streaming@{b}", task=t)) for b in budgets]
            err = [[e.value - e.lo for e in est], [e.hi - e.value for e in est]]
            ax.errorbar(np.array(budgets) + (j - 0.5) * 2.5, [e.value for e in est], yerr=err,
                        marker="o", capsize=3, color=c, label=f"SirLLM, d={d0:g}" if kind == "sirllm" else "StreamingLLM")
        if m["random"] in ev["arms"]:
            e = _est(col(ev, m["random"], task=t))
            ax.errorbar([B], [e.value], yerr=[[e.value - e.lo], [e.hi - e.value]], marker="s", color="C7", capsize=3,
                        label="random keep")
        ax.axhline(np.mean(col(ev, "full", task=t)), color="k", ls="--", lw=1, label="full cache")
        ax.set(xlabel="cache budget B (tokens)", ylabel="recall", ylim=(-0.05, 1.05), title=f"{t}: recall vs budget")
        ax.legend(fontsize=7)
        ax = axes[i, 1]
        dists = sorted({p["distance"] for p in ev["dialogues"] if p["task"] == t})
        show = ["full", m["streaming"], m["sirllm"]] + [a for a in ev["arms"] if a.startswith(f"sirllm@{B},") and a != m["sirllm"]]
        show += [m["random"]] if m["random"] in ev["arms"] else []
        for j, a in enumerate(show):
            ys = [np.mean([p["arms"][a]["correct"] for p in ev["dialogues"] if p["task"] == t and p["distance"] == d])
                  for d in dists]
            ax.plot(np.array(dists) + (j - len(show) / 2) * 0.04, ys, marker="o", ls="--" if a == "full" else "-",
                    color="k" if a == "full" else f"C{j}", label=arm_label(a))
        ax.set(xlabel="turns between the fact and the question", ylabel="recall", ylim=(-0.05, 1.05),
               title=f"{t}: recall vs distance (B={B})")
        ax.legend(fontsize=7)
        ax = axes[i, 2]
        arms = [a for a in ev["arms"] if a != "full" and ("@" + str(B)) in a]
        rec = [_est(col(ev, a, task=t)) for a in arms]
        kept = [np.mean(col(ev, a, "fact_retained", task=t)) for a in arms]
        y = np.arange(len(arms))
        ax.barh(y + 0.2, [e.value for e in rec], 0.4, xerr=[[e.value - e.lo for e in rec], [e.hi - e.value for e in rec]],
                capsize=3, color="C0", label="recall (95% CI)")
        ax.barh(y - 0.2, kept, 0.4, color="C2", alpha=0.6, label="fact tokens cached at the question")
        ax.set_yticks(y, [arm_label(a) for a in arms], fontsize=8)
        ax.set(xlim=(0, 1.05), title=f"{t}: arms at B={B}")
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
