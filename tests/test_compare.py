"""Equal-compute tokenizer comparison: streams, step matching, per-byte scoring."""
import numpy as np
import pytest

from tokenbook.train import ByteTokenizer, compare

TEXTS = [f"The {w} sat on the mat number {i}. " * 3 for i, w in enumerate(["cat", "dog", "owl", "fox"] * 6)]
MODEL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
             num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True)
TRAIN = dict(steps=3, batch_size=2, seq_len=32, lr=1e-3, warmup_steps=1, log_every=1)


class Pairs:
    """A toy tokenizer: two bytes per token (an odd tail byte is its own token)."""
    vocab_size = 65536 + 256

    def encode(self, text):
        b = text.encode("utf-8")
        return [b[i] * 256 + b[i + 1] if i + 1 < len(b) else 65536 + b[i] for i in range(0, len(b), 2)]

    def decode(self, ids):
        out = bytearray()
        for i in ids:
            out += bytes([i - 65536]) if i >= 65536 else bytes([i // 256, i % 256])
        return out.decode("utf-8", "replace")


def test_stream_has_one_separator_per_document_and_counts_bytes():
    sep = compare.SeparatedTokenizer(ByteTokenizer())
    ids, n = compare.token_stream(sep, ["ab", "çd"])
    assert sep.bos_token_id == len(ByteTokenizer()) == 259
    assert ids.tolist().count(259) == 2 and ids[0] == 259
    assert n == 2 + 3 and len(ids) == 2 + 5


def test_equal_bytes_gives_fewer_steps_to_longer_tokens():
    assert compare.steps_for("bytes", TRAIN, bytes_per_token=1.0, budget=640) == 10
    assert compare.steps_for("bytes", TRAIN, bytes_per_token=2.0, budget=640) == 5
    assert compare.steps_for("tokens", TRAIN, bytes_per_token=2.0, budget=None) == 3
    with pytest.raises(ValueError, match="valid: tokens, bytes"):
        compare.steps_for("flops", TRAIN, 1.0, None)


def test_train_lm_scores_every_validation_byte_and_pairs_arms():
    a = compare.train_lm(ByteTokenizer(), TEXTS[:20], TEXTS[20:], model=MODEL, train=TRAIN, progress=False)
    b = compare.train_lm(Pairs(), TEXTS[:20], TEXTS[20:], model=MODEL, train=TRAIN, progress=False)
    nbytes = sum(len(t.encode()) for t in TEXTS[20:])
    assert a["val_bytes"] == b["val_bytes"] == nbytes
    assert a["bytes_per_token"] == pytest.approx(1.0) and b["bytes_per_token"] == pytest.approx(2.0, rel=0.05)
    assert a["val_tokens"] == nbytes
    # the pooled value equals the scorer's; an untrained byte model is near log2(260) bits per byte
    assert compare.pooled_bpb(a) == pytest.approx(a["val_bpb"])
    assert 6.0 < a["val_bpb"] < 9.0
    # same non-embedding parameters, and a per-byte forward cost that halves with 2-byte tokens
    assert a["non_embedding_parameters"] == b["non_embedding_parameters"]
    assert b["flops_per_byte"] == pytest.approx(a["flops_per_byte"] / 2, rel=0.05)
    d = compare.bpb_difference(a, b, n_boot=200)
    assert d.value == pytest.approx(a["val_bpb"] - b["val_bpb"]) and d.lo <= d.value <= d.hi


def test_training_lowers_bits_per_byte():
    cold = compare.train_lm(ByteTokenizer(), TEXTS[:20], TEXTS[20:], model=MODEL, train={**TRAIN, "steps": 1},
                            progress=False)
    warm = compare.train_lm(ByteTokenizer(), TEXTS[:20], TEXTS[20:], model=MODEL,
                            train={**TRAIN, "steps": 60, "lr": 1e-2}, progress=False)
    assert warm["val_bpb"] < cold["val_bpb"] - 1.0
    assert np.all(np.isfinite(warm["val_bpb_per_doc"]))
