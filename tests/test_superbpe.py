"""SuperBPE learner: exact BPE against a naive reference, the curriculum, encoder twins, round trips."""
from collections import Counter

import numpy as np
import pytest

from tokenbook import paths
from tokenbook.tokenization import superbpe as sb

PHRASES = ["by the way", "of the", "in the end", "I am a fan of the Milky Way", "and so on", "as well as"]
WORDS = ["time", "way", "fan", "people", "year", "world", "thing", "man", "day", "life", "hand", "part"]


def synthetic_texts(n=400, seed=0):
    """Sentences that reuse a few multi-word phrases: superwords must pay off here."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        parts = [PHRASES[rng.integers(len(PHRASES))] if rng.random() < 0.5 else WORDS[rng.integers(len(WORDS))]
                 for _ in range(rng.integers(3, 9))]
        out.append(" ".join(parts).capitalize() + ".\n")
    return out


def naive_bpe(counts: dict, vocab_size: int, start=None, min_count=2):
    """Textbook BPE: recount every pair after every merge; same tie rule (count, then byte strings)."""
    tokens = list(start.tokens) if start else [bytes([i]) for i in range(256)]
    index = {t: i for i, t in enumerate(tokens)}
    words = {w: list(w) for w in counts}
    merges = list(start.merges) if start else []

    def apply(a, b, c):
        for w, seq in words.items():
            out, i = [], 0
            while i < len(seq):
                if i + 1 < len(seq) and seq[i] == a and seq[i + 1] == b:
                    out.append(c)
                    i += 2
                else:
                    out.append(seq[i])
                    i += 1
            words[w] = out

    for a, b, c in merges:
        apply(a, b, c)
    while len(tokens) < vocab_size:
        pc = Counter()
        for w, seq in words.items():
            for x, y in zip(seq, seq[1:]):
                pc[(x, y)] += counts[w]
        if not pc:
            break
        (a, b), n = min(pc.items(), key=lambda kv: (-kv[1], tokens[kv[0][0]], tokens[kv[0][1]]))
        if n < min_count:
            break
        j = tokens[a] + tokens[b]
        c = index.get(j)
        if c is None:
            c = index[j] = len(tokens)
            tokens.append(j)
        merges.append((a, b, c))
        apply(a, b, c)
    return tokens, merges


def test_learner_matches_naive_bpe_exactly():
    counts = dict(sb.chunk_counts(synthetic_texts(150) + ["aaaa aaaaaa ab ab ab abab", "ççç ğğ 🙂🙂🙂"], sb.STAGE1_PATTERN))
    m = sb.learn(counts, 256 + 120)
    tokens, merges = naive_bpe(counts, 256 + 120)
    assert m.merges == merges and m.tokens == tokens
    assert m.stage1 == len(m.merges)


def test_stage_two_matches_naive_bpe_from_stage_one():
    texts = synthetic_texts(150)
    stage1 = sb.learn_bpe(texts, 300)
    m = sb.learn_superbpe(texts, 380, 300, stage1=stage1)
    counts = dict(sb.chunk_counts(texts, sb.STAGE2_PATTERN))
    tokens, merges = naive_bpe(counts, 380, start=stage1)
    assert m.merges == merges and m.tokens == tokens
    assert m.stage1 == len(stage1.merges) and m.merges[:m.stage1] == stage1.merges


def test_replay_and_rank_encoder_start_stage_two_alike():
    texts = synthetic_texts(200, seed=1)
    stage1 = sb.learn_bpe(texts, 320)
    counts = dict(sb.chunk_counts(texts, sb.STAGE2_PATTERN))
    a = sb.learn(counts, 420, start=stage1)
    b = sb.learn(counts, 420, start=stage1, replay=True)
    assert a.merges == b.merges


def test_curriculum_makes_superwords_and_saves_tokens():
    texts = synthetic_texts(400)
    bpe = sb.learn_bpe(texts, 400)
    sup = sb.learn_superbpe(texts, 400, 330, stage1=bpe)
    assert not any(sb.is_superword(t) for t in bpe.tokens), "stage 1 must never cross whitespace"
    assert any(t in (b" of the", b"by the way", b" the end") or sb.is_superword(t) for t in sup.tokens[330:])
    held = synthetic_texts(100, seed=7)
    enc_b, enc_s = sb.hf_tokenizer(bpe, sb.STAGE1_PATTERN), sb.hf_tokenizer(sup, sb.STAGE2_PATTERN)
    nb = sum(len(e.ids) for e in enc_b.encode_batch(held))
    ns = sum(len(e.ids) for e in enc_s.encode_batch(held))
    assert ns < 0.9 * nb
    # t = V is plain BPE
    same = sb.learn_superbpe(texts, 400, 400, stage1=bpe)
    assert same.merges == bpe.merges


def test_stage_two_respects_its_cuts():
    texts = synthetic_texts(300) + ["Call 555 1234 now!! Then wait...\n"] * 50
    sup = sb.learn_superbpe(texts, 500, 300)
    for t in sup.tokens:
        s = t.decode("utf-8", errors="ignore")
        assert not any(c.isdigit() for c in s) or s.strip().isdigit(), s     # digits stay alone
        assert "!!" not in s or s.strip(" !\n/") == "", s                     # 2+ punctuation stays alone


UNICODE = ["", "a", " ", "\n\n\t ", "Kırk köşeli şapka, ığdır; İSTANBUL ÇAĞLAYAN.", "emoji 🙂👍🏽 and 👨‍👩‍👧 families",
           "中文没有空格。日本語も。", "tabs\tand  double  spaces   \n  trailing   ", "12345678901 £€¥ ©®",
           "\x00\x01 control \x7f", "e\u0301 combining", "a" * 300, "By the way, I am a fan of the Milky Way."]


@pytest.fixture(scope="module")
def learned():
    texts = synthetic_texts(300) + ["Kırk köşeli şapka 🙂 " * 3]
    bpe = sb.learn_bpe(texts, 360)
    sup = sb.learn_superbpe(texts, 360, 320, stage1=bpe)
    return {"bpe": (bpe, sb.STAGE1_PATTERN), "superbpe": (sup, sb.STAGE2_PATTERN)}


@pytest.mark.parametrize("kind", ["bpe", "superbpe"])
def test_encoder_twins_agree_and_round_trip(learned, kind):
    m, pattern = learned[kind]
    hf = sb.hf_tokenizer(m, pattern)
    for text in UNICODE + synthetic_texts(30, seed=3):
        ids = hf.encode(text, add_special_tokens=False).ids
        assert ids == sb.encode_reference(text, m, pattern), text
        assert hf.decode(ids) == text
        assert b"".join(m.tokens[i] for i in ids) == text.encode("utf-8")


@pytest.mark.parametrize("kind", ["bpe", "superbpe"])
def test_training_segmentation_is_the_encoders(learned, kind):
    """What the learner ends with on its chunks is what the encoder produces on them."""
    m, pattern = learned[kind]
    texts = synthetic_texts(300) + ["Kırk köşeli şapka 🙂 " * 3]
    counts = sb.chunk_counts(texts, pattern)
    start = learned["bpe"][0].prefix(320) if kind == "superbpe" else None
    if start is not None:
        start.stage1 = len(start.merges)
    m2, corpus = sb.learn(dict(counts), m.vocab_size, start=start, _keep_corpus=True)
    assert m2.merges == m.merges
    items = sorted(counts)
    assert corpus.sequences() == sb.segment(items, m)


def test_close_to_hf_tokenizers_bpe():
    """Our stage-1 learner is a valid BPE baseline: HF tokenizers' trainer with the same pretokenizer
    reaches the same bytes/token on held-out text (tie-breaking among equal counts may differ)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    from tokenbook.data import load_corpus
    train = load_corpus("fortunes", "train")[:3000]
    held = load_corpus("fortunes", "val")[:300]
    mine = sb.hf_tokenizer(sb.learn_bpe(train, 1024, min_count=1), sb.STAGE1_PATTERN)
    ref = Tokenizer(models.BPE())
    ref.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(sb.STAGE1_PATTERN), "isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    ref.decoder = decoders.ByteLevel()
    ref.train_from_iterator(train, trainer=trainers.BpeTrainer(vocab_size=1024, show_progress=False,
                                                               initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    assert ref.get_vocab_size() == 1024
    n_mine = sum(len(e.ids) for e in mine.encode_batch(held))
    n_ref = sum(len(e.ids) for e in ref.encode_batch(held))
    assert abs(n_mine / n_ref - 1) < 0.01, (n_mine, n_ref)


def test_prefix_is_the_smaller_bpe():
    texts = synthetic_texts(200)
    big, small = sb.learn_bpe(texts, 400), sb.learn_bpe(texts, 330)
    p = big.prefix(330)
    assert p.merges == small.merges and p.tokens == small.tokens
    with pytest.raises(ValueError, match="outside"):
        big.prefix(10_000)


def test_train_caches_atomically_and_by_content(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "CACHE", tmp_path)
    texts = synthetic_texts(200)
    a = sb.train(texts, 360, 320, label="syn")
    folder = a.info["dir"]
    b = sb.train(texts, 360, 320, label="syn")
    assert b.info["dir"] == folder and b.merges.merges == a.merges.merges
    assert a.kind == "superbpe" and sb.train(texts, 360, label="syn").kind == "bpe"
    c = sb.train(texts[:-1], 360, 320, label="syn")
    assert c.info["dir"] != folder
    assert not [p for p in (tmp_path / "tokenizers" / "superbpe").iterdir() if p.name.startswith(".")]
    text = "By the way, Kırk 🙂!"
    assert a.decode(a.encode(text)) == text
    with pytest.raises(ValueError, match="transition point"):
        sb.train(texts, 360, 400)


def test_is_superword():
    assert sb.is_superword(b" of the") and sb.is_superword(b".\n") and sb.is_superword(b", and")
    assert not sb.is_superword(b" the") and not sb.is_superword(b"the") and not sb.is_superword(b"\n\n ")
    assert not sb.is_superword(b"  x")


# ---- chapter helpers -------------------------------------------------------------------------------
def test_cut_pieces_round_trip_and_fit():
    from tokenbook.data.pieces import cut
    text = "line one\n" * 50 + "x" * 500 + "\nşş🙂\n" * 40
    pieces = cut(text, 120)
    assert "".join(pieces) == text
    assert all(0 < len(p.encode()) <= 120 for p in pieces)


def test_equal_compute_settings_match_tokens_and_context_bytes():
    from omegaconf import OmegaConf

    from tokenbook.chapters.superbpe import arm_settings
    cfg = OmegaConf.create({"lm": {"context_match": "bytes", "equal_data_arm": True,
                                   "train": {"steps": 100, "batch_size": 16, "seq_len": 256}}})
    st = arm_settings(cfg, bpt_bpe=4.0, bpt_super=5.0)
    b, s = st["bpe"]["train"], st["superbpe"]["train"]
    assert s["seq_len"] == 205 and abs(s["seq_len"] * 5.0 - 256 * 4.0) <= 5.0
    tok_b = b["steps"] * b["batch_size"] * b["seq_len"]
    tok_s = s["steps"] * s["batch_size"] * s["seq_len"]
    assert abs(tok_s / tok_b - 1) < 0.01
    assert st["superbpe_bytes"]["match"] == "bytes"
    cfg.lm.context_match = "words"
    with pytest.raises(ValueError, match="context_match"):
        arm_settings(cfg, 4.0, 5.0)


def test_forward_flops_counts_weights_and_attention():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tokenbook.chapters.superbpe import forward_flops
    mc = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    net = LlamaForCausalLM(LlamaConfig(**mc, vocab_size=100, tie_word_embeddings=True))
    matmul_weights = sum(p.numel() for n, p in net.named_parameters() if p.ndim == 2 and "embed" not in n) + 32 * 100
    assert forward_flops(mc, 100, 10, 0) == 2 * 10 * matmul_weights
    assert forward_flops(mc, 100, 10, 55) - forward_flops(mc, 100, 10, 0) == 4 * 2 * 32 * 55
    del torch


def test_byte_ngram_is_a_distribution_and_learns():
    texts = synthetic_texts(200)
    judge = sb.ByteNgram(texts, order=4)
    for hist in (b"", b"by the w", b"zq\xff", b"I am a fan of the Milky"):
        p = np.array([2.0 ** -judge.surprisal(hist + bytes([b]))[-1] for b in range(256)])
        assert abs(p.sum() - 1) < 1e-9, (hist, p.sum())
    seen = judge.surprisal("In the end by the way of the world.\n").mean()
    noise = judge.surprisal("Qx7#zv!kP0@wj$Lm^Yb&Rq%Ne*Ut(").mean()
    assert seen < 2.0 < 6.0 < noise
    assert sb.ByteNgram(texts, order=1).surprisal("aaa").shape == (3,)


def test_token_difficulties_sum_bytes():
    s = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert sb.token_difficulties(s, [2, 1, 2]).tolist() == [3.0, 3.0, 9.0]
    with pytest.raises(ValueError, match="cover"):
        sb.token_difficulties(s, [2, 2])
