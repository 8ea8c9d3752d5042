"""Likelihood metrics, retrieval probes, answer metrics and the generation-speed harness."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tokenbook import paths
from tokenbook.evaluation import metrics, perplexity, retrieval, speed
from tokenbook.train import ByteTokenizer

TEXTS = ["The quick brown fox jumps over the lazy dog. " * 3, "Ünïcödé — bytes ≠ characters.\nSecond line here.",
         "short"]


class UniformLM(torch.nn.Module):
    """Logits all zero: every token has probability 1/V."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None, **_):
        return SimpleNamespace(logits=torch.zeros(*input_ids.shape, self.vocab))


class PairTokenizer:
    """Two characters per token (a stand-in subword tokenizer): fewer tokens than bytes."""
    bos_token_id, eos_token_id = 0, 0

    def encode(self, text, add_special_tokens=False):
        return [1 + (hash(text[i:i + 2]) % 999) for i in range(0, len(text), 2)]


def tiny_llama(vocab: int, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                                        bos_token_id=1, eos_token_id=2, pad_token_id=0)).eval()


# --- bits per byte -----------------------------------------------------------------------------

def test_uniform_model_bits_per_byte_byte_tokenizer():
    tok = ByteTokenizer()
    s = perplexity.score_texts(UniformLM(len(tok)), tok, TEXTS, max_length=16)
    n_bytes = sum(len(t.encode()) for t in TEXTS)
    assert s.n_tokens == n_bytes == s.n_bytes                     # every byte predicted exactly once
    assert s.bits_per_token == pytest.approx(math.log2(259))
    assert s.bits_per_byte == pytest.approx(math.log2(259))
    assert s.perplexity == pytest.approx(259)
    np.testing.assert_allclose(s.per_text_bits_per_byte(), math.log2(259))


def test_uniform_model_bits_per_byte_normalizes_by_bytes_not_tokens():
    tok, V = PairTokenizer(), 1000
    s = perplexity.score_texts(UniformLM(V), tok, TEXTS, max_length=8, stride=3)
    n_tokens = sum(math.ceil(len(t) / 2) for t in TEXTS)
    n_bytes = sum(len(t.encode()) for t in TEXTS)
    assert s.n_tokens == n_tokens and s.n_bytes == n_bytes
    assert s.bits_per_token == pytest.approx(math.log2(V))
    assert s.bits_per_byte == pytest.approx(n_tokens * math.log2(V) / n_bytes)


@pytest.mark.parametrize("length,max_length,stride", [(1, 4, None), (10, 4, None), (10, 4, 1), (37, 8, 3), (8, 8, 5)])
def test_windows_score_every_target_once(length, max_length, stride):
    wins = perplexity.windows(length, max_length, stride)
    targets = [j for s, e, f in wins for j in range(f, e)]
    assert targets == list(range(1, length))
    for i, (s, e, f) in enumerate(wins):
        assert e - s <= max_length and s < f or f == e
        if i > 0 and stride is not None:
            assert f - s >= max_length - stride                  # sliding: at least this much context


def test_scores_match_hf_loss_and_sliding_window_keeps_context():
    tok = ByteTokenizer()
    model = tiny_llama(len(tok))
    text = "A sentence that repeats. " * 6
    full = perplexity.score_texts(model, tok, [text], max_length=512)
    ids = torch.tensor([[tok.bos_token_id] + tok.encode(text)])
    with torch.no_grad():
        ref = model(input_ids=ids, labels=ids).loss.item()
    assert full.mean_nll == pytest.approx(ref, rel=1e-5)
    assert list(full.position) == list(range(len(text)))
    chunks = perplexity.score_texts(model, tok, [text], max_length=32)
    sliding = perplexity.score_texts(model, tok, [text], max_length=32, stride=8)
    assert chunks.n_tokens == sliding.n_tokens == full.n_tokens
    assert chunks.context.min() == 1 and chunks.context.max() == 31
    assert sliding.context[sliding.position >= 31].min() >= 24
    buckets = sliding.by_bucket()
    assert sum(b["n"] for b in buckets) == sliding.n_tokens
    assert sum(b["n"] for b in full.by_bucket([0, 10, 1000], key="position")) == full.n_tokens
    # batching with right padding does not change scores
    batched = perplexity.score_texts(model, tok, [text, "short one"], max_length=64, batch_size=2)
    single = perplexity.score_texts(model, tok, [text], max_length=64, batch_size=1)
    np.testing.assert_allclose(batched.nll[batched.text_index == 0], single.nll, atol=1e-5)


# --- retrieval probes --------------------------------------------------------------------------

HAYSTACK = [t for t in __import__("tokenbook.data", fromlist=["x"]).python_stdlib_text(max_files=6)]


def _tokenizers():
    out = [ByteTokenizer()]
    if (paths.CACHE / "models" / "smollm2-135m" / "tokenbook.json").exists():  # converted once by `make setup`
        from tokenbook.train.zoo import load_tokenizer
        out.append(load_tokenizer("smollm2-135m"))
    return out


@pytest.mark.parametrize("tok", _tokenizers(), ids=lambda t: type(t).__name__)
@pytest.mark.parametrize("depth", [0.0, 0.3, 0.5, 0.9, 1.0])
def test_needle_sits_at_the_stated_depth(tok, depth):
    p = retrieval.needle(tok, HAYSTACK, n_tokens=600, depth=depth)
    assert p.item == retrieval.NEEDLE
    ids = tok.encode(p.prompt, add_special_tokens=False)
    assert tok.decode(ids[p.token_start:p.token_end]).strip() == retrieval.NEEDLE
    assert abs(p.actual_depth - depth) < 0.06
    assert abs(p.n_tokens - 600) <= 30 and p.n_tokens == len(ids)
    assert p.prompt.count(p.answer) == 1


@pytest.mark.parametrize("tok", _tokenizers(), ids=lambda t: type(t).__name__)
def test_passkey_answer_only_in_the_item(tok):
    for seed, depth in [(0, 0.1), (1, 0.6)]:
        p = retrieval.passkey(tok, HAYSTACK, n_tokens=400, depth=depth, seed=seed)
        assert p.answer.isdigit() and len(p.answer) == 5
        assert p.prompt.count(p.answer) == 2 == p.item.count(p.answer)
        assert abs(p.actual_depth - depth) < 0.06
        ids = tok.encode(p.prompt, add_special_tokens=False)
        assert p.answer in tok.decode(ids[p.token_start:p.token_end])
    assert retrieval.passkey(tok, HAYSTACK, 400, 0.5, seed=3).answer == retrieval.passkey(tok, HAYSTACK, 400, 0.5, seed=3).answer


@pytest.mark.parametrize("tok", _tokenizers(), ids=lambda t: type(t).__name__)
def test_kv_retrieval_value_present_exactly_once(tok):
    p = retrieval.kv_retrieval(tok, n_pairs=20, query=7, seed=0)
    assert p.prompt.count(p.answer) == 1
    key = p.item.split('"')[1]
    assert p.prompt.count(key) == 2                             # in the object and in the question
    assert p.item == f'"{key}": "{p.answer}"'
    ids = tok.encode(p.prompt, add_special_tokens=False)
    assert p.answer in tok.decode(ids[p.token_start:p.token_end])
    multi = retrieval.kv_retrieval(tok, n_pairs=10, query=[8, 2, 5], seed=1)
    assert multi.answer == ", ".join(multi.meta["values"]) and len(multi.meta["items"]) == 3
    for v, (cs, ce, ts, te) in zip(multi.meta["values"], multi.meta["items"]):
        assert multi.prompt.count(v) == 1 and v in multi.prompt[cs:ce]
    with pytest.raises(ValueError):
        retrieval.kv_retrieval(tok, n_pairs=5, query=5)


# --- answer metrics and paired comparisons -------------------------------------------------------

def test_exact_match_and_token_f1_on_known_strings():
    assert metrics.exact_match("The Cat!", "cat") == 1.0
    assert metrics.exact_match("a cat", ["dog", "Cat."]) == 1.0
    assert metrics.exact_match("cats", "cat") == 0.0
    assert metrics.token_f1("the cat sat", "cat sat down") == pytest.approx(0.8)
    assert metrics.token_f1("dog", "cat") == 0.0
    assert metrics.token_f1("", "") == 1.0
    assert metrics.token_f1("cat cat", ["cat", "dog"]) == pytest.approx(2 / 3)
    assert metrics.contains_answer("The pass key is 12345.", "12345") == 1.0
    assert metrics.contains_answer("1234", "12345") == 0.0


def test_paired_difference_and_permutation_p():
    rng = np.random.default_rng(0)
    b = rng.random(40)
    est = metrics.paired_difference(b + 0.2, b)
    assert est.value == pytest.approx(0.2) and est.lo == pytest.approx(0.2) and est.hi == pytest.approx(0.2)
    assert metrics.paired_permutation_p(np.ones(10), np.zeros(10)) == pytest.approx(2 / 1024)
    assert metrics.paired_permutation_p(b, b) == 1.0
    assert metrics.paired_permutation_p(b + 1.0, b) < 0.01
    noisy = metrics.paired_permutation_p(rng.random(40), rng.random(40))
    assert 0.0 < noisy <= 1.0


# --- generation speed ----------------------------------------------------------------------------

def test_generation_speed_reports_ttft_and_decode_rate():
    model = tiny_llama(64)
    out = speed.generation_speed(model, torch.randint(3, 64, (12,)), new_tokens=4, repeats=2, warmup=1)
    assert out["ttft_s"].value > 0 and out["decode_tok_per_s"].value > 0
    assert out["prompt_tokens"] == 12 and len(out["raw"]["full"]) == 2
