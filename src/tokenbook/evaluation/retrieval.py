"""Long-context retrieval probes: passkey, needle in a haystack, multi-key key-value retrieval.

Each generator returns a `Probe`: the prompt, the expected answer, and where the inserted item
sits — its character span in the prompt and its token span in
`tokenizer.encode(prompt, add_special_tokens=False)` — so a test (or a chapter's attention plot)
can check the item is where the probe says. Haystacks are cut from real text (any list of texts,
e.g. tokenbook.data.python_stdlib_text() or an English corpus), repeated if it is too short.

Depth is the fraction of the haystack before the item: 0 puts it first, 1 last. The insertion
point snaps back to the nearest line or sentence end (within 2% of the haystack) so the
item does not split a word; `actual_depth` reports the depth measured in tokens after snapping.
"""
from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field

PASSKEY_INTRO = ("There is an important piece of information hidden inside a lot of irrelevant text. "
                 "Find it and memorize it. I will quiz you about it.\n\n")
NEEDLE = "The best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day."
NEEDLE_QUESTION = "What is the best thing to do in San Francisco?"
NEEDLE_ANSWER = "eat a sandwich and sit in Dolores Park on a sunny day"


@dataclass
class Probe:
    prompt: str
    answer: str
    char_start: int              # the inserted item's span in `prompt`
    char_end: int
    token_start: int             # ... and in tokenizer.encode(prompt, add_special_tokens=False)
    token_end: int
    depth: float                 # requested depth (fraction of the haystack before the item)
    actual_depth: float          # measured in tokens after snapping to a sentence end
    n_tokens: int                # tokens in the whole prompt
    meta: dict = field(default_factory=dict)

    @property
    def item(self) -> str:
        return self.prompt[self.char_start:self.char_end]


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def char_to_token(tokenizer, text: str, char_pos: int) -> int:
    """Index of the token of encode(text) that contains character `char_pos` (len if at the end)."""
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        for i, (s, e) in enumerate(enc["offset_mapping"]):
            if e > char_pos:
                return i
        return len(enc["input_ids"])
    return len(_encode(tokenizer, text[:char_pos]))  # exact for byte-level tokenizers


def _haystack_ids(tokenizer, texts: list[str], n: int) -> list[int]:
    if not texts:
        raise ValueError("the haystack needs at least one text")
    ids, i = [], 0
    while len(ids) < n:
        ids += _encode(tokenizer, texts[i % len(texts)].strip() + "\n\n")
        i += 1
        if i > 10 * len(texts) + 1000:
            raise ValueError("haystack texts are empty")
    return ids[:n]


def _snap(hay: str, cut: int) -> int:
    """Move `cut` back to just after a line or sentence end (else a space) within 2% of the haystack."""
    if cut <= 0 or cut >= len(hay):
        return max(0, min(cut, len(hay)))
    window = max(8, min(300, len(hay) // 50))
    lo = max(0, cut - window)
    best = max(hay.rfind("\n", lo, cut), hay.rfind(". ", lo, cut))
    if best >= 0:
        return best + 1
    space = hay.rfind(" ", lo, cut)
    return space + 1 if space >= 0 else cut


def insert_item(tokenizer, haystack_texts: list[str], item: str, *, prefix: str, suffix: str,
                n_tokens: int, depth: float, answer: str, meta: dict | None = None) -> Probe:
    """prefix + haystack[:d] + item + haystack[d:] + suffix, about n_tokens tokens long."""
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    fixed = len(_encode(tokenizer, prefix)) + len(_encode(tokenizer, suffix)) + len(_encode(tokenizer, "\n" + item + "\n"))
    budget = n_tokens - fixed
    if budget < 16:
        raise ValueError(f"n_tokens={n_tokens} leaves no room for a haystack (the fixed parts take {fixed})")
    hay = tokenizer.decode(_haystack_ids(tokenizer, haystack_texts, budget))
    cut = _snap(hay, round(depth * len(hay)))
    before, after = hay[:cut].rstrip(" "), hay[cut:].lstrip(" ")
    head = prefix + before + ("\n" if before and not before.endswith("\n") else "")
    prompt = head + item + "\n" + after + suffix
    cs, ce = len(head), len(head) + len(item)
    ts, te = char_to_token(tokenizer, prompt, cs), char_to_token(tokenizer, prompt, ce)
    hs, he = char_to_token(tokenizer, prompt, len(prefix)), char_to_token(tokenizer, prompt, len(prompt) - len(suffix))
    hay_tokens = max(1, (he - hs) - (te - ts))
    return Probe(prompt=prompt, answer=answer, char_start=cs, char_end=ce, token_start=ts, token_end=te,
                 depth=depth, actual_depth=(ts - hs) / hay_tokens, n_tokens=len(_encode(tokenizer, prompt)),
                 meta=meta or {})


def passkey(tokenizer, haystack_texts: list[str], n_tokens: int, depth: float, seed: int = 0,
            digits: int = 5) -> Probe:
    """The passkey task (Mohtashami & Jaggi 2023) with a real-text haystack; answer: the digits."""
    rng = random.Random(seed)
    while True:
        key = str(rng.randrange(10 ** (digits - 1), 10 ** digits))
        if not any(key in t for t in haystack_texts):
            break
    item = f"The pass key is {key}. Remember it. {key} is the pass key."
    return insert_item(tokenizer, haystack_texts, item, prefix=PASSKEY_INTRO,
                       suffix="\n\nWhat is the pass key? The pass key is", n_tokens=n_tokens, depth=depth,
                       answer=key, meta={"task": "passkey", "seed": seed})


def needle(tokenizer, haystack_texts: list[str], n_tokens: int, depth: float, *, needle_text: str = NEEDLE,
           question: str = NEEDLE_QUESTION, answer: str = NEEDLE_ANSWER) -> Probe:
    """Needle in a haystack (Kamradt 2023): a sentence at `depth` of a real-text haystack, then a question."""
    return insert_item(tokenizer, haystack_texts, needle_text, prefix="",
                       suffix=f"\n\nQuestion: {question}\nAnswer:", n_tokens=n_tokens, depth=depth,
                       answer=answer, meta={"task": "needle", "question": question})


def kv_retrieval(tokenizer, n_pairs: int, query: int | list[int], seed: int = 0) -> Probe:
    """Key-value retrieval over a JSON object of random UUIDs (Liu et al. 2023, "Lost in the Middle").

    `query` is the index of the pair asked for, or a list of indices (multi-key: the answer is the
    values in that order, comma-separated). The probe's span is the first queried pair's line;
    meta["items"] lists every queried pair's (char_start, char_end, token_start, token_end).
    """
    queries = [query] if isinstance(query, int) else list(query)
    if not queries or any(not 0 <= q < n_pairs for q in queries) or len(set(queries)) != len(queries):
        raise ValueError(f"query indices must be distinct and in [0, {n_pairs}), got {query}")
    rng = random.Random(seed)
    strings: set[str] = set()
    pairs = []
    while len(pairs) < n_pairs:
        k, v = str(uuid.UUID(int=rng.getrandbits(128), version=4)), str(uuid.UUID(int=rng.getrandbits(128), version=4))
        if k not in strings and v not in strings:
            strings |= {k, v}
            pairs.append((k, v))
    head = "Extract the value corresponding to the specified key in the JSON object below.\n\nJSON data:\n{"
    lines, spans, pos = [], [], len(head)
    for i, (k, v) in enumerate(pairs):
        line = f'"{k}": "{v}"' + (", " if i < n_pairs - 1 else "")
        spans.append((pos, pos + len(f'"{k}": "{v}"')))
        lines.append(line)
        pos += len(line)
    keys = ", ".join(f'"{pairs[q][0]}"' for q in queries)
    ask = "Key" if len(queries) == 1 else "Keys"
    tail = f"}}\n\n{ask}: {keys}\nCorresponding value{'s' if len(queries) > 1 else ''}:"
    prompt = head + "".join(lines) + tail
    items = []
    for q in queries:
        cs, ce = spans[q]
        items.append((cs, ce, char_to_token(tokenizer, prompt, cs), char_to_token(tokenizer, prompt, ce)))
    cs, ce, ts, te = items[0]
    return Probe(prompt=prompt, answer=", ".join(pairs[q][1] for q in queries), char_start=cs, char_end=ce,
                 token_start=ts, token_end=te, depth=queries[0] / max(1, n_pairs - 1),
                 actual_depth=queries[0] / max(1, n_pairs - 1), n_tokens=len(_encode(tokenizer, prompt)),
                 meta={"task": "kv", "seed": seed, "n_pairs": n_pairs, "queries": queries, "items": items,
                       "values": [pairs[q][1] for q in queries]})
