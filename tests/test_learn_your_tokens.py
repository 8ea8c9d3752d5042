"""Word-pooled tokenization (eTok): segmentation, pooling locality, causality, greedy decoding."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tokenbook.tokenization import word_pooled as wp

TINY = dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_key_value_heads=2,
            enc_layers=1, main_layers=1, dec_layers=1, max_word_bytes=8, max_words=64)


def tiny_model(seed=0, **kw):
    torch.manual_seed(seed)
    return wp.WordPooledLM(wp.WordPooledConfig(**{**TINY, **kw})).eval()


# ---- segmentation ------------------------------------------------------------------------------------
def test_segment_gpt2_boundaries():
    text = "Hello  world\n\nKING. don't 123ab café!"
    assert wp.segment(text, 16) == ["Hello", " ", " world", "\n", "\n", "KING", ".", " don", "'t", " 123", "ab",
                                    " café", "!"]


@pytest.mark.parametrize("max_bytes", [4, 5, 16])
def test_segment_round_trip_and_caps(max_bytes):
    rng = np.random.default_rng(0)
    alphabet = list("abcXYZ 019.,;'\"-\n\t_") + ["é", "ß", "中", "😀", "\u0301", "  ", "\r\n"]
    for _ in range(200):
        text = "".join(rng.choice(alphabet, rng.integers(0, 60)))
        text += "supercalifragilistic" if rng.random() < 0.3 else ""
        pairs = wp.segment_flags(text, max_bytes)
        assert "".join(w for w, _ in pairs) == text
        assert all(0 < len(w.encode("utf-8")) <= max_bytes for w, _ in pairs)
        for w, whole in pairs:
            if whole:
                assert w in wp.pretokenize(text)


def test_long_word_is_cut_into_marked_chunks():
    pairs = wp.segment_flags(" internationalization", 8)
    assert [w for w, _ in pairs] == [" interna", "tionaliz", "ation"]
    assert [f for _, f in pairs] == [False, False, False]


def test_vocab_stream_separates_texts():
    v = wp.WordVocab(16)
    ids = v.stream(["to be", " or not"])
    assert ids.tolist()[0] == 0 and ids.tolist().count(0) == 2
    assert "".join(v.words[i] for i in ids.tolist()) == "to be or not"


def test_frequency_buckets():
    edges = [0, 1, 11, 46]
    assert [wp.frequency_bucket(c, edges) for c in (0, 1, 10, 11, 45, 46, 10 ** 6)] == [0, 1, 1, 2, 2, 3, 3]
    assert wp.word_key(" King") == wp.word_key("King") == "King"
    assert wp.is_wordlike(" x1") and not wp.is_wordlike(" ,") and not wp.is_wordlike("\n")


# ---- the model ---------------------------------------------------------------------------------------
def test_targets_put_eow_after_the_bytes():
    wb, wl = wp.byte_table(["ab", "", "abc"], 4)
    t = wp.WordPooledLM.targets(wb, wl, 3)
    a, b, c = ord("a"), ord("b"), ord("c")
    assert t.tolist() == [[a, b, wp.EOW, -100], [wp.EOW, -100, -100, -100], [a, b, c, wp.EOW]]


def test_word_vector_sees_only_its_own_bytes():
    m = tiny_model()
    words = ["cat", " sat", " on", "x"]
    other = ["cat", " sit", " onions", "x"]          # other words changed (and a length band changed)
    with torch.no_grad():
        v1 = m.pool(*wp.byte_table(words, 8))
        v2 = m.pool(*wp.byte_table(other, 8))
        alone = m.pool(*wp.byte_table(["cat"], 8))
    torch.testing.assert_close(v1[0], v2[0])
    torch.testing.assert_close(v1[3], v2[3])
    torch.testing.assert_close(v1[0], alone[0], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(v1[1], v2[1])          # and a word's own bytes do matter


def test_pool_ignores_padding_values():
    m = tiny_model()
    wb, wl = wp.byte_table(["ab"], 8)
    wb2 = wb.clone()
    wb2[0, 2:] = 7                                    # garbage after the word's end
    with torch.no_grad():
        torch.testing.assert_close(m.pool(wb, wl), m.pool(wb2, wl))


def test_prediction_for_word_i_ignores_words_from_i_on():
    m = tiny_model()
    v = wp.WordVocab(8)
    a = v.stream(["the cat sat on the mat"])
    b = v.stream(["the cat sat by a wall"])            # same first 4 words (incl. separator), then different
    m.set_vocab(v)
    same = int((a[:len(b)] == b[:len(a)]).long().cumprod(0).sum())
    with torch.no_grad():
        na, _ = m.word_nll(a[None])
        nb, _ = m.word_nll(b[None])
        # target j+1 is predicted from words 0..j: equal wherever the target and all earlier words agree
        torch.testing.assert_close(na[0, :same - 1], nb[0, :same - 1])
        # the state after word i depends on words <= i only
        ha = m.states(m._vectors(a[None]))
        hb = m.states(m._vectors(b[None]))
        torch.testing.assert_close(ha[0, :same], hb[0, :same])
        assert not torch.allclose(ha[0, same], hb[0, same])
        # the same holds for contexts given as text, with right padding in the batch
        s = m.context_states([["", "the", " cat"], ["", "the", " cat", " sat", " on", " the"]])
        s1 = m.context_states([["", "the", " cat"]])
    torch.testing.assert_close(s[0], s1[0], rtol=1e-5, atol=1e-6)


def test_training_lowers_loss_and_greedy_decodes_a_learned_word():
    from tokenbook.train.trainer import TrainConfig, train
    text = "the cat sat on the mat. " * 40
    v = wp.WordVocab(8)
    ids = v.stream([text])
    m = tiny_model(seed=1)
    m.set_vocab(v)
    res = train(m, ids, TrainConfig(steps=100, batch_size=8, seq_len=12, lr=1e-2, warmup_steps=5, progress=False,
                                    log_every=10, seed=0))
    assert res.log[-1]["loss"] < 0.2 * res.log[0]["loss"]
    got = m.next_words([[" the", " cat"], [" on", " the", " mat"], [" mat", ".", " the", " cat", " sat", " on"]])
    assert got == [" sat", ".", " the"]


def test_unseen_word_is_pooled_from_its_bytes():
    m = tiny_model()
    v = wp.WordVocab(8)
    v.stream(["a b"])
    m.set_vocab(v)
    with torch.no_grad():
        s = m.context_states([["", "zebra"]])          # never in the vocabulary
    assert torch.isfinite(s).all()


def test_word_longer_than_max_bytes_is_rejected():
    v = wp.WordVocab(4)
    with pytest.raises(ValueError):
        v.id("abcdef")


# ---- token-level next word ---------------------------------------------------------------------------
class Scripted(torch.nn.Module):
    """A fake causal LM that emits a fixed token sequence after any prompt."""

    def __init__(self, script, vocab):
        super().__init__()
        self.script, self.vocab = script, vocab

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=True):
        step = 0 if past_key_values is None else past_key_values
        logits = torch.zeros(input_ids.shape[0], input_ids.shape[1], self.vocab)
        logits[:, -1, self.script[min(step, len(self.script) - 1)]] = 1.0
        return SimpleNamespace(logits=logits, past_key_values=step + 1)


def test_token_lm_next_word_stops_at_the_boundary():
    from tokenbook.chapters.learn_your_tokens import lm_next_words
    from tokenbook.train import ByteTokenizer
    from tokenbook.train.compare import SeparatedTokenizer
    sep = SeparatedTokenizer(ByteTokenizer())
    script = sep.encode(" king, my lord")
    got = lm_next_words(Scripted(script, len(sep)), sep, [["", "O"], ["the"]], 8)
    assert got == [" king", " king"]
    unfinished = lm_next_words(Scripted(sep.encode("x" * 20), len(sep)), sep, [["a"]], 8)
    assert unfinished[0].endswith("\u2026")
    ended = lm_next_words(Scripted(sep.encode(" end") + [sep.bos_token_id], len(sep)), sep, [["a"]], 8)
    assert ended == [" end"]


def test_flops_accounting():
    cfg = wp.WordPooledConfig(**TINY)
    lengths = np.array([3, 4, 5])
    f = wp.etok_forward_flops_per_byte(cfg, lengths, 16)
    d, ff = cfg.hidden_size, cfg.intermediate_size
    blk = wp.block_flops(d, ff)
    assert blk == 2 * (4 * d * d + 3 * d * ff)
    # two local stacks over L+1 positions per word and one main position per word bound it from below
    assert f > (2 * (lengths + 1).sum() * blk + 3 * blk) / lengths.sum()
    byte = wp.lm_forward_flops_per_byte(d=d, ff=ff, n_layers=3, seq_len=64, bytes_per_token=1.0, vocab=260)
    assert byte > 3 * blk


def test_score_stream_scores_every_word_once():
    m = tiny_model()
    v = wp.WordVocab(8)
    ids = v.stream(["to be, or not to be: that is the question"])
    m.set_vocab(v)
    with torch.no_grad():
        whole, _ = m.word_nll(ids[None])
    one = m.score_stream(ids, len(ids))
    assert one[0] == 0 and np.allclose(one[1:], whole[0].numpy(), atol=1e-5)
    windowed = m.score_stream(ids, 4)                  # restarts the context: other values, same coverage
    assert (windowed[1:] > 0).all() and np.allclose(windowed[1:4], one[1:4], atol=1e-5)


def test_eval_items_give_whole_word_contexts_that_end_at_the_gold_word():
    from omegaconf import OmegaConf
    from tokenbook.chapters.learn_your_tokens import eval_items
    cfg = OmegaConf.create({"max_word_bytes": 16, "freq_edges": [0, 1, 11], "context_bytes": 40,
                            "eval_words_per_piece": 50})
    pieces = ["KING.\nNow, lords, for France; the enterprise whereof\nShall be to you, as us, like glorious.",
              "Exeunt all but ANTONY and CLEOPATRA, who speak apart."]
    items = eval_items(cfg, pieces, {"lords": 3, "France": 20}, seed=0, window_words=6)
    assert items and all(wp.is_wordlike(it["gold"]) for it in items)
    for it in items:
        words = wp.segment(pieces[it["piece"]], 16)
        ctx = [w for w in it["context"] if w]
        assert words[it["position"]] == it["gold"]
        assert words[it["position"] - len(ctx):it["position"]] == ctx
        assert (it["context"][:1] == [""]) == (len(ctx) == it["position"])   # separator only at a piece start
        assert len(it["context"]) <= 6 and sum(len(w.encode()) for w in ctx) <= 40 - 18
    by_gold = {it["gold"].strip(): it for it in items}
    assert by_gold["lords"]["bucket"] == 1 and by_gold["France"]["bucket"] == 2 and by_gold["Now"]["bucket"] == 0
