"""Exact byte-level probabilities (BTR): brute-force equality, exact toy recovery, baselines, LM cache."""
import itertools
import math
import zlib

import numpy as np
import pytest
import torch

from tokenbook.tokenization import byte_probs as bp


def random_lm(vocab_size: int, special: tuple = (), seed: int = 0) -> bp.TableLM:
    """A deterministic 'neural-like' LM: next-token probabilities are a pseudo-random function of the prefix."""
    def fn(seq):
        rng = np.random.default_rng([seed, zlib.crc32(repr(seq).encode())])
        logits = rng.normal(0, 1.5, vocab_size)
        logits[list(special)] = -np.inf
        p = np.exp(logits - logits[np.isfinite(logits)].max())
        return p / p.sum()
    return bp.TableLM(fn, vocab_size)


def tiny_bpe():
    return bp.TinyBPE(b"ab", [(b"a", b"b"), (b"b", b"a"), (b"a", b"a"), (b"ab", b"a")], specials=())


def brute_force_prefix(lm, tokz, x: bytes, canonical: bool) -> float:
    """P(stream starts with x) = Σ over covers c of x of P(c), by enumerating token strings."""
    vocab = tokz.vocab
    total = 0.0

    def walk(seq, covered, logp):
        nonlocal total
        lp = lm([seq])[0]
        for t in range(vocab.size):
            b = vocab.token_bytes[t]
            if not b or not np.isfinite(lp[t]):
                continue
            got = covered + b
            if len(got) >= len(x):                  # t reaches the end of x: a cover if it agrees
                if got[:len(x)] == x and (not canonical or list(seq) == tokz.encode(covered)):
                    total += math.exp(logp + lp[t])
            elif x.startswith(got):
                walk(seq + (t,), got, logp + lp[t])
    walk((), b"", 0.0)
    return total


# ------------------------------------------------------------------------------------- vocabulary

def test_vocab_prefix_queries_match_a_scan():
    toks = [b"a", b"ab", b"abc", b"b", None, b"ba", b"abd", b"\xff", b"\xff\xfe", b"c"]
    v = bp.Vocab(toks)
    probs = np.arange(1, len(toks) + 1, dtype=float)
    for prefix in [b"", b"a", b"ab", b"abc", b"b", b"\xff", b"z"]:
        want = sorted(i for i, t in enumerate(toks) if t is not None and t.startswith(prefix))
        assert sorted(v.with_prefix(prefix).tolist()) == want
        mass = np.zeros(256)
        for i in want:
            if len(toks[i]) > len(prefix):
                mass[toks[i][len(prefix)]] += probs[i]
        np.testing.assert_allclose(v.next_byte_mass(probs, prefix), mass)
        assert v.cover_mass(probs, prefix) == pytest.approx(sum(probs[i] for i in want))


def test_tiny_bpe_applies_merges_by_rank():
    tok = bp.TinyBPE(b"abc", [(b"b", b"c"), (b"a", b"b")])
    assert tok.pieces(b"abc") == [b"a", b"bc"]          # b+c outranks a+b
    assert tok.pieces(b"abab") == [b"ab", b"ab"]
    for x in [b"", b"a", b"cabbacab"]:
        assert tok.vocab.bytes_of(tok.encode(x)) == x
    with pytest.raises(ValueError):
        tok.encode(b"abd")


# ------------------------------------------------------------------------------- exactness

@pytest.mark.parametrize("mode", ["canonical", "all"])
def test_btr_equals_brute_force_marginalisation(mode):
    tokz = tiny_bpe()
    lm = random_lm(tokz.vocab.size, seed=1)
    for x in [b"a", b"ab", b"aab", b"abab", b"baab"]:
        d = bp.byte_distribution(lm, tokz, x, "exact", mode)
        p_x = brute_force_prefix(lm, tokz, x, canonical=mode == "canonical")
        assert d.log_prefix == pytest.approx(math.log(p_x), abs=1e-10)
        for b in b"ab":
            want = brute_force_prefix(lm, tokz, x + bytes([b]), canonical=mode == "canonical")
            assert math.exp(d.log_mass[b]) == pytest.approx(want, rel=1e-9)
        assert np.exp(d.logp).sum() == pytest.approx(1.0, abs=1e-12)


def test_all_segmentations_give_a_consistent_prefix_measure():
    """Without special tokens, Σ_b P(x b) = P(x) exactly when every segmentation is summed."""
    tokz = tiny_bpe()
    lm = random_lm(tokz.vocab.size, seed=2)
    for n in range(1, 6):
        for x in itertools.product(b"ab", repeat=n):
            d = bp.byte_distribution(lm, tokz, bytes(x), "exact", "all")
            assert np.logaddexp.reduce(d.log_mass) == pytest.approx(d.log_prefix, abs=1e-10)


def markov_setup(seed: int, merges: int = 4, length: int = 8):
    rng = np.random.default_rng(seed)
    trans = rng.dirichlet([1, 1], size=2)
    src = bp.MarkovSource(b"AB", [0.5, 0.5], trans)
    tokz = bp.train_bpe(src.sample(100, length, rng), merges, b"AB")
    return src, tokz, bp.exact_token_model(src, tokz, length)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_conversion_recovers_the_markov_chain_and_naive_does_not(seed):
    src, tokz, lm = markov_setup(seed)
    worst_naive = 0.0
    for n in range(1, 6):
        for x in itertools.product(b"AB", repeat=n):
            x = bytes(x)
            truth = src.next_byte(x)
            for mode in ("canonical", "all"):
                d = bp.byte_distribution(lm, tokz, x, "exact", mode)
                np.testing.assert_allclose(np.exp(d.logp), truth, atol=1e-12)
            assert bp.prefix_logprob(lm, tokz, x) == pytest.approx(math.log(src.prob(x)), abs=1e-10)
            if lm.seen(tokz.encode(x)):
                worst_naive = max(worst_naive, bp.total_variation(np.exp(bp.byte_distribution(lm, tokz, x, "naive").logp), truth))
    assert worst_naive > 0.05   # tokenization bias: the perfect token model, naively prompted, is wrong


def test_chain_of_exact_next_bytes_is_the_prefix_probability():
    src, tokz, lm = markov_setup(3)
    x = b"ABBABAAB"[:7]
    chain = bp.text_byte_logprobs(lm, tokz, x)
    assert chain.sum() == pytest.approx(math.log(src.prob(x)), abs=1e-10)


def test_naive_and_healing_are_the_formula_on_smaller_path_sets():
    tokz = tiny_bpe()
    lm = random_lm(tokz.vocab.size, seed=4)
    x = b"abaab"
    ids = tokz.encode(x)
    # naive: first byte of the next token after the canonical encoding
    p = np.exp(lm([tuple(ids)])[0])
    want = np.zeros(256)
    for t, b in enumerate(tokz.vocab.token_bytes):
        want[b[0]] += p[t]
    np.testing.assert_allclose(np.exp(bp.byte_distribution(lm, tokz, x, "naive").logp), want / want.sum())
    # healing: drop the last token r, the next token must start with r
    r = tokz.vocab.token_bytes[ids[-1]]
    p0 = np.exp(lm([tuple(ids[:-1])])[0])
    want = np.zeros(256)
    for t, b in enumerate(tokz.vocab.token_bytes):
        if b.startswith(r) and len(b) > len(r):
            want[b[len(r)]] += p0[t]
    for t, b in enumerate(tokz.vocab.token_bytes):
        want[b[0]] += p0[ids[-1]] * p[t]
    np.testing.assert_allclose(np.exp(bp.byte_distribution(lm, tokz, x, "healing").logp), want / want.sum())


def test_greedy_decoders_on_a_known_model():
    src, tokz, lm = markov_setup(0)
    truth_arg = lambda x: max(b"AB", key=lambda b: src.next_byte(x)[b])
    x = b"AB"
    out = bp.greedy_bytes(lm, tokz, x, max_bytes=4)
    want = b""
    for _ in range(4):
        want += bytes([truth_arg(x + want)])
    assert out == want
    assert bp.greedy_bytes(lm, tokz, x, max_bytes=4, target=b"" + bytes([255 - want[0]])) == want[:1]
    assert len(bp.greedy_tokens(lm, tokz, x, max_bytes=3)) <= 3
    assert bp.greedy_tokens(lm, tokz, x, max_bytes=5, healing=True, keep=lambda b: False) == b""


def test_mixture():
    a, b = np.log([0.5, 0.1]), np.log([0.1, 0.3])
    np.testing.assert_allclose(np.exp(bp.mix_logprobs([a, b], [0.25, 0.75])), [0.2, 0.25])
    with pytest.raises(ValueError):
        bp.mix_logprobs([a, b], [0.5, 0.6])


def test_bad_method_or_mode():
    tokz = tiny_bpe()
    with pytest.raises(ValueError):
        bp.path_set(tokz, b"ab", "greedy")
    with pytest.raises(ValueError):
        bp.path_set(tokz, b"ab", "exact", "some")


# -------------------------------------------------------------------------- real tokenizers and models

@pytest.fixture(scope="module")
def byte_level_bpe():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    texts = ["def read(self, size):\n    return self._reader.read(size)\n",
             "    for key, value in items:\n        self.headers[key] = value  # 2 spaces\n"] * 20
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return bp.HFByteLevel(tok, "tiny-bpe")


def test_hf_byte_level_stable_prefix_holds_for_any_continuation(byte_level_bpe):
    tokz = byte_level_bpe
    assert tokz.vocab.token_bytes[0] is None                      # the special token carries no bytes
    rng = np.random.default_rng(0)
    alphabet = b"ab _.()\n:=x1  \n\n"
    for _ in range(300):
        x = bytes(rng.choice(list(alphabet), size=rng.integers(1, 12)))
        y = bytes(rng.choice(list(alphabet), size=rng.integers(1, 6)))
        S, tail, _ = bp.path_set(tokz, x, "exact")
        assert tokz.vocab.bytes_of(S) + tail == x
        assert tokz.encode(x + y)[:len(S)] == list(S), (x, y)
    assert tokz.vocab.bytes_of(tokz.encode("self._reader".encode())) == b"self._reader"
    with pytest.raises(ValueError):
        tokz.encode(b"\xff")


def test_exact_next_byte_sums_to_one_with_a_real_vocabulary(byte_level_bpe):
    tokz = byte_level_bpe
    lm = random_lm(tokz.vocab.size, special=(0,), seed=5)
    for x in [b"    return self._rea", b"def re", b"x = (1"]:
        for method in bp.METHODS:
            d = bp.byte_distribution(lm, tokz, x, method)
            assert np.exp(d.logp).sum() == pytest.approx(1.0, abs=1e-12)


def tiny_llama(vocab: int, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)).eval()


def test_hf_token_lm_matches_plain_forward_passes():
    model = tiny_llama(13)
    lm = bp.HFTokenLM(model, start_id=0, max_batch=3)

    def direct(s):
        with torch.no_grad():
            return torch.log_softmax(model(torch.tensor([[0, *s]])).logits[0, -1].float(), -1).numpy()
    rng = np.random.default_rng(0)
    for _ in range(25):
        base = list(rng.integers(1, 13, size=rng.integers(0, 6)))
        seqs = [tuple(base + list(rng.integers(1, 13, size=rng.integers(0, 4)))) for _ in range(rng.integers(1, 7))]
        for out, s in zip(lm(seqs), seqs):
            np.testing.assert_allclose(out, direct(s), atol=2e-5)
    seq = [3, 1, 4, 1, 5]
    full = lm.sequence_logprobs(seq)
    np.testing.assert_allclose(full[2], direct(seq[:2]), atol=2e-5)


def test_byte_model_scoring_matches_the_generic_path():
    model = tiny_llama(259, seed=1)
    bv = bp.ByteVocab()
    lm = bp.HFTokenLM(model, start_id=1)
    data = b"def f(x):\n    return x"
    np.testing.assert_allclose(bp.byte_model_logprobs(lm, bv, data), bp.text_byte_logprobs(lm, bv, data), atol=1e-5)


def test_hf_token_lm_survives_a_full_memo():
    model = tiny_llama(13)
    lm = bp.HFTokenLM(model, start_id=0)
    lm.memo_limit = 4
    a = lm([(1,), (1, 2), (1, 2, 3)])
    b = lm([(1,), (1, 2), (1, 2, 3), (4,), (4, 5)])       # overflows the memo mid-way
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, atol=1e-6)
