"""Numbers as tokens: chunked number tokenizers, arithmetic datasets with exact answers, and an evaluator.

Used by the chapters `tokcount-arith` (arXiv:2402.14903) and `posdesc-arith` (arXiv:2311.14737).

Chunking. GPT-3.5/4's tokenizers (cl100k_base, and o200k_base after them) cut a run of digits into
tokens of at most three digits *from the left*: 1234567 → 123|456|7. Writing the number with
thousands separators, 1,234,567, makes the same left-to-right rule produce 1|,|234|,|567: the
chunks now line up with place value *from the right*, as in column addition. For a chunk size k
and a run of n digits:

    L2R: chunks of k from the left, the last one has n mod k digits (if n mod k ≠ 0)
    R2L: chunks of k from the right, the first one has n mod k digits (if n mod k ≠ 0)

Under R2L the i-th chunk from the right of a, b and a+b always holds the same decimal places
(10^{ki} … 10^{k(i+1)-1}); under L2R that holds only when the lengths are equal multiples of k —
a sum that grows a digit shifts every output chunk boundary. `NumberTokenizer(k, direction)` has
one token per chunk string ("7", "07", "007" and "456" are four different tokens, 10+100+1000 for
k=3) plus the symbols of the formats below; k=1 is the digit-level tokenizer.

Positional descriptions (posdesc-arith): the same problem written so that digits that must
interact sit at fixed or randomised distances:
    plain           12*345=4140
    padded_reversed 012*345=0414000   operands zero-padded to `width`, product reversed and padded to 2*width
    random_spaces   1 2+34 5=357      random spaces inside operands (training only), answer plain
    reversed        12+345=753        sum reversed (least significant digit first)
    spaces_reversed 1 2+34 5=753      both of the above
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

import numpy as np

SPECIALS = ("<pad>", "<eos>")
SYMBOLS = ("+", "*", "=", ",", " ")
DIRECTIONS = ("l2r", "r2l")
FORMATS = ("plain", "commas", "padded_reversed", "random_spaces", "reversed", "spaces_reversed")
_RUN = re.compile(r"\d+|\D")


def chunk(digits: str, size: int = 3, direction: str = "l2r") -> list[str]:
    """Cut a string of digits into chunks of at most `size`, from the left (l2r) or the right (r2l)."""
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}; valid: {', '.join(DIRECTIONS)}")
    if not digits.isdigit():
        raise ValueError(f"not a run of digits: {digits!r}")
    if direction == "l2r":
        return [digits[i:i + size] for i in range(0, len(digits), size)]
    head = len(digits) % size
    out = [digits[:head]] if head else []
    return out + [digits[i:i + size] for i in range(head, len(digits), size)]


def with_commas(n: int) -> str:
    """1234567 → '1,234,567' (the paper's inference-time trick that forces R2L chunks)."""
    return f"{n:,}"


class NumberTokenizer:
    """Token per digit chunk (all strings of 1..chunk_size digits) plus specials and symbols.

    encode(text) chunks every maximal run of digits in `direction`; every other character must be
    one of SYMBOLS. decode(encode(t)) == t for every such text.
    """

    def __init__(self, chunk_size: int = 3, direction: str = "l2r"):
        if chunk_size < 1 or chunk_size > 4:
            raise ValueError(f"chunk_size must be 1..4, got {chunk_size}")
        if direction not in DIRECTIONS:
            raise ValueError(f"unknown direction {direction!r}; valid: {', '.join(DIRECTIONS)}")
        self.chunk_size, self.direction = chunk_size, direction
        chunks = ["".join(p) for k in range(1, chunk_size + 1) for p in itertools.product("0123456789", repeat=k)]
        self.vocab = list(SPECIALS) + list(SYMBOLS) + chunks
        self.index = {t: i for i, t in enumerate(self.vocab)}
        self.pad_id, self.eos_id = self.index["<pad>"], self.index["<eos>"]

    @property
    def name(self) -> str:
        return "digit" if self.chunk_size == 1 else f"{self.direction}-{self.chunk_size}"

    def __len__(self) -> int:
        return len(self.vocab)

    def __repr__(self) -> str:
        return f"NumberTokenizer(chunk_size={self.chunk_size}, direction={self.direction!r}, vocab={len(self)})"

    def pieces(self, text: str) -> list[str]:
        out = []
        for m in _RUN.finditer(text):
            s = m.group()
            if s.isdigit():
                out.extend(chunk(s, self.chunk_size, self.direction))
            elif s in self.index:
                out.append(s)
            else:
                raise ValueError(f"character {s!r} is not in the arithmetic vocabulary")
        return out

    def encode(self, text: str) -> list[int]:
        return [self.index[p] for p in self.pieces(text)]

    def decode(self, ids) -> str:
        return "".join(self.vocab[i] for i in ids if self.vocab[i] not in SPECIALS)


# --- problems and their formats ------------------------------------------------------------------

@dataclass(frozen=True)
class Problem:
    a: int
    b: int
    op: str                      # "+" or "*"

    @property
    def answer(self) -> int:
        return self.a + self.b if self.op == "+" else self.a * self.b

    @property
    def n_digits(self) -> int:
        """The longer operand's digit count (what 'accuracy by digit length' bins on)."""
        return max(len(str(self.a)), len(str(self.b)))

    @property
    def carries_out(self) -> bool:
        """The answer has more digits than the longer operand (the paper's length-mismatch case)."""
        return len(str(self.answer)) > self.n_digits


def sample_number(rng: np.random.Generator, n_digits: int) -> int:
    """Uniform over the integers with exactly n_digits digits (0 counts as a 1-digit number)."""
    if n_digits == 1:
        return int(rng.integers(0, 10))
    return int(rng.integers(10 ** (n_digits - 1), 10 ** n_digits))


def sample_problems(n: int, op: str, lengths: tuple[int, int], rng: np.random.Generator, *,
                    same_length: bool = False) -> list[Problem]:
    """n problems whose operands have digit counts drawn uniformly from lengths=(lo, hi)."""
    lo, hi = int(lengths[0]), int(lengths[1])
    out = []
    for _ in range(n):
        la = int(rng.integers(lo, hi + 1))
        lb = la if same_length else int(rng.integers(lo, hi + 1))
        out.append(Problem(sample_number(rng, la), sample_number(rng, lb), op))
    return out


def _spaced(s: str, rng: np.random.Generator, p: float) -> str:
    """Insert a space after each digit but the last with probability p."""
    return "".join(c + (" " if i < len(s) - 1 and rng.random() < p else "") for i, c in enumerate(s))


def render(p: Problem, fmt: str = "plain", *, width: int = 0, rng: np.random.Generator | None = None,
           space_p: float = 0.3) -> tuple[str, str]:
    """(prompt, answer) texts; the model reads the prompt (ending in '=') and must write the answer."""
    if fmt == "plain":
        return f"{p.a}{p.op}{p.b}=", str(p.answer)
    if fmt == "commas":
        return f"{with_commas(p.a)}{p.op}{with_commas(p.b)}=", with_commas(p.answer)
    if fmt == "reversed":
        return f"{p.a}{p.op}{p.b}=", str(p.answer)[::-1]
    if fmt == "padded_reversed":
        if width < p.n_digits:
            raise ValueError(f"width {width} is shorter than the operands of {p}")
        return f"{p.a:0{width}d}{p.op}{p.b:0{width}d}=", f"{p.answer:0{2 * width}d}"[::-1]
    if fmt == "random_spaces":
        if rng is None:
            raise ValueError("random_spaces needs an rng")
        return f"{_spaced(str(p.a), rng, space_p)}{p.op}{_spaced(str(p.b), rng, space_p)}=", str(p.answer)
    if fmt == "spaces_reversed":
        q, a = render(p, "random_spaces", rng=rng, space_p=space_p)
        return q, a[::-1]
    raise ValueError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")


def parse_answer(text: str, fmt: str = "plain") -> int | None:
    """The integer an answer text denotes in `fmt`, or None when it is not a well-formed number."""
    t = text.replace(",", "") if fmt == "commas" else text
    if fmt == "commas" and text and not re.fullmatch(r"\d{1,3}(,\d{3})*", text):
        return None
    if not t.isdigit():
        return None
    if fmt in ("reversed", "padded_reversed", "spaces_reversed"):
        t = t[::-1]
    return int(t)


def encode_examples(tok: NumberTokenizer, pairs: list[tuple[str, str]], seq_len: int | None = None) -> np.ndarray:
    """Rows of `prompt answer <eos> <pad>…`, each exactly seq_len tokens (one training sequence each);
    seq_len=None: the longest example's length (tokenized once)."""
    enc = [tok.encode(q + a) + [tok.eos_id] for q, a in pairs]
    longest = max((len(ids) for ids in enc), default=1)
    if seq_len is None:
        seq_len = longest
    elif longest > seq_len:
        i = max(range(len(enc)), key=lambda j: len(enc[j]))
        raise ValueError(f"example {''.join(pairs[i])!r} needs {longest} tokens > seq_len {seq_len}")
    out = np.full((len(pairs), seq_len), tok.pad_id, dtype=np.int64)
    for i, ids in enumerate(enc):
        out[i, :len(ids)] = ids
    return out


# --- evaluation -----------------------------------------------------------------------------------

ERROR_KINDS = ("correct", "malformed", "wrong_length", "one_carry", "one_chunk", "other")


def classify(pred: int | None, true: int, chunk_size: int = 3) -> str:
    """Error taxonomy of one prediction.

    correct · malformed (no number could be read) · wrong_length (digit count differs) ·
    one_carry (off by exactly ±10^j: a single dropped or spurious carry) · one_chunk (all wrong
    digits inside one aligned block of chunk_size places, counted from the right) · other.
    """
    if pred is None:
        return "malformed"
    if pred == true:
        return "correct"
    if len(str(pred)) != len(str(true)):
        return "wrong_length"
    d = abs(pred - true)
    if d == 10 ** (len(str(d)) - 1):
        return "one_carry"
    wrong = wrong_places(pred, true)
    if len({j // chunk_size for j in wrong}) == 1:
        return "one_chunk"
    return "other"


def wrong_places(pred: int, true: int) -> list[int]:
    """Decimal places (0 = units) where pred's digit differs from true's (missing digits count as 0)."""
    a, b = str(pred)[::-1], str(true)[::-1]
    n = max(len(a), len(b))
    a, b = a.ljust(n, "0"), b.ljust(n, "0")
    return [j for j in range(n) if a[j] != b[j]]


def wrong_positions_from_left(pred: int, true: int) -> list[int]:
    """1-based digit positions counted from the left of the true answer that pred gets wrong
    (only for equal-length answers; the paper's 'digit 4' pattern lives here)."""
    a, b = str(pred), str(true)
    if len(a) != len(b):
        return []
    return [i + 1 for i in range(len(b)) if a[i] != b[i]]


# --- models: build, train with tokenbook's one trainer, decode greedily ----------------------------

def digit_components(tok: NumberTokenizer) -> np.ndarray:
    """(V, chunk_size + 1) component ids per token: a chunk is its length plus one (place, digit) per
    digit, places counted from the right inside the chunk (units, tens, hundreds), so "45", "045"
    and "345" share their units-5 and tens-4 vectors, as the digits of a number do; a special or
    symbol is one component of its own. 0 means 'none' (a zero vector)."""
    k = tok.chunk_size
    n_other = len(SPECIALS) + len(SYMBOLS)
    comp = np.zeros((len(tok), k + 1), dtype=np.int64)
    for i, t in enumerate(tok.vocab):
        if i < n_other:
            comp[i, 0] = 1 + i
            continue
        comp[i, 0] = 1 + n_other + 10 * k + (len(t) - 1)
        for place, c in enumerate(reversed(t)):
            comp[i, 1 + place] = 1 + n_other + 10 * place + int(c)
    return comp


def _factorized_modules():
    import torch

    class DigitAwareEmbedding(torch.nn.Module):
        """Token vectors built from the digits inside each chunk: E[t] = len_vec + Σ_p place_p[digit_p],
        p the digit's place inside the chunk counted from the right (units, tens, hundreds).

        The model still reads and writes one token per chunk (so chunk boundaries matter exactly as
        with atomic tokens); it only need not learn from scratch that "045" and "45" share digits."""

        def __init__(self, comp: np.ndarray, d: int):
            super().__init__()
            self.register_buffer("comp", torch.from_numpy(comp), persistent=False)
            self.table = torch.nn.Embedding(int(comp.max()) + 1, d, padding_idx=0)
            torch.nn.init.normal_(self.table.weight, std=0.02)
            with torch.no_grad():
                self.table.weight[0].zero_()

        def weight(self):
            return self.table(self.comp).sum(1)                      # (V, d)

        def forward(self, input_ids):
            return torch.nn.functional.embedding(input_ids, self.weight())

    class DigitAwareHead(torch.nn.Module):
        """Logits against digit-aware output vectors (a separate table from the input one)."""

        def __init__(self, comp: np.ndarray, d: int):
            super().__init__()
            self.emb = DigitAwareEmbedding(comp, d)

        def forward(self, h):
            return h @ self.emb.weight().T

    return DigitAwareEmbedding, DigitAwareHead


def build_model(arch: str, vocab_size: int, *, n_layer: int, d_model: int, n_head: int, max_len: int,
                seed: int = 0, components: np.ndarray | None = None):
    """A small causal LM from config: 'llama' (RoPE) or 'gpt2' (learned absolute positions).

    With `components` (from digit_components), token embeddings and the output layer are
    digit-aware (see DigitAwareEmbedding) instead of one free vector per token."""
    import torch
    torch.manual_seed(seed)
    model = _build_hf(arch, vocab_size, n_layer, d_model, n_head, max_len, tie=components is None)
    if components is not None:
        emb_cls, head_cls = _factorized_modules()
        model.set_input_embeddings(emb_cls(components, d_model))
        model.lm_head = head_cls(components, d_model)
    return model


def _build_hf(arch, vocab_size, n_layer, d_model, n_head, max_len, tie):
    if arch == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM
        conf = LlamaConfig(vocab_size=vocab_size, hidden_size=d_model, intermediate_size=4 * d_model,
                           num_hidden_layers=n_layer, num_attention_heads=n_head, num_key_value_heads=n_head,
                           max_position_embeddings=max_len, pad_token_id=0, bos_token_id=1, eos_token_id=1,
                           tie_word_embeddings=False, attn_implementation="sdpa")
        return LlamaForCausalLM(conf)
    if arch == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel
        conf = GPT2Config(vocab_size=vocab_size, n_embd=d_model, n_layer=n_layer, n_head=n_head,
                          n_positions=max_len, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                          pad_token_id=0, bos_token_id=1, eos_token_id=1, tie_word_embeddings=tie)
        return GPT2LMHeadModel(conf)
    raise ValueError(f"unknown arch {arch!r}; valid: llama, gpt2")


def _answer_only_module():
    import torch

    class AnswerOnlyLoss(torch.nn.Module):
        """Wraps a HF causal LM so that `labels` count only the answer: tokens after '=' up to <eos>.

        The trainer calls model(input_ids=x, labels=x); this turns operand and padding labels into
        -100, so the loss (and its gradient) is the answer's alone. Everything else passes through.
        """

        def __init__(self, model, eq_id: int, pad_id: int):
            super().__init__()
            self.model, self.eq_id, self.pad_id = model, eq_id, pad_id

        def forward(self, input_ids, labels=None, **kw):
            if labels is not None:
                is_eq = input_ids == self.eq_id
                after = (is_eq.long().cumsum(1) > 0) & ~is_eq
                labels = labels.masked_fill(~after | (input_ids == self.pad_id), -100)
            return self.model(input_ids=input_ids, labels=labels, **kw)

    return AnswerOnlyLoss


def train_on_examples(model, tok: NumberTokenizer, rows: np.ndarray, train_cfg: dict, *, device: str = "cpu",
                      answer_only: bool = True):
    """Train with `tokenbook.train.train`: one row per sequence (seq_len = row length), loss on the
    answer tokens only when `answer_only`. Returns the trainer's TrainResult."""
    import torch
    from ..train import TrainConfig, train
    cfg = TrainConfig.from_dict({**train_cfg, "seq_len": rows.shape[1]})
    net = _answer_only_module()(model, tok.index["="], tok.pad_id) if answer_only else model
    res = train(net, torch.from_numpy(rows.reshape(-1)), cfg, device=device, resume=False)
    model.eval()
    return res


def greedy_answers(model, tok: NumberTokenizer, prompts: list[str], max_new: int, *, device: str = "cpu",
                   batch_size: int = 512) -> list[str]:
    """Greedy continuation of each prompt until <eos> (or max_new tokens), decoded to text.

    Prompts are grouped by token length so no padding (and no position shift) is ever needed."""
    import torch
    enc = [tok.encode(p) for p in prompts]
    out: list[str | None] = [None] * len(prompts)
    groups: dict[int, list[int]] = {}
    for i, ids in enumerate(enc):
        groups.setdefault(len(ids), []).append(i)
    model.eval()
    with torch.inference_mode():
        for idx in groups.values():
            for s in range(0, len(idx), batch_size):
                part = idx[s:s + batch_size]
                x = torch.tensor([enc[i] for i in part], device=device)
                done = torch.zeros(len(part), dtype=torch.bool, device=device)
                new = []
                for _ in range(max_new):
                    nxt = model(input_ids=x).logits[:, -1].argmax(-1)
                    nxt = torch.where(done, torch.full_like(nxt, tok.eos_id), nxt)
                    new.append(nxt)
                    done |= nxt == tok.eos_id
                    x = torch.cat([x, nxt[:, None]], 1)
                    if bool(done.all()):
                        break
                gen = torch.stack(new, 1).tolist()
                for k, i in enumerate(part):
                    ids = gen[k]
                    ids = ids[:ids.index(tok.eos_id)] if tok.eos_id in ids else ids
                    out[i] = tok.decode(ids)
    return out  # type: ignore[return-value]


def evaluate(problems: list[Problem], answers: list[str], fmt: str, chunk_size: int = 3) -> list[dict]:
    """One record per problem: exact match, error kind, digit length, carry-out, wrong places."""
    rows = []
    for p, text in zip(problems, answers):
        pred = parse_answer(text, fmt)
        kind = classify(pred, p.answer, chunk_size)
        rows.append({"a": p.a, "b": p.b, "answer": p.answer, "pred_text": text, "pred": pred,
                     "correct": kind == "correct", "kind": kind, "n_digits": p.n_digits,
                     "carries_out": p.carries_out,
                     "wrong_from_left": [] if pred is None else wrong_positions_from_left(pred, p.answer)})
    return rows
