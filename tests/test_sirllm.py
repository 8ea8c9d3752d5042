"""SirLLM's streaming cache on a tiny random Llama: exactness without eviction, token entropy, the
budget, who survives an eviction (sinks, recency, entropy, decay), RoPE positions, forks, batches;
and the chapter's dialogues (with SmolLM2's tokenizer) and arms."""
from dataclasses import replace

import pytest
import torch

from tokenbook import paths
from tokenbook.longctx import sirllm as sir

TINY_LLAMA_LAYERS = 2


def ids_of(n, seed=0):
    return torch.randint(1, 97, (n,), generator=torch.Generator().manual_seed(seed))


def chunks_of(ids, cuts):
    return [ids[a:b] for a, b in zip([0, *cuts], [*cuts, len(ids)])]


@torch.no_grad()
def ref_logits(model, ids, **kw):
    return model(input_ids=ids[None], **kw).logits[0]


def stream(model, policy, chunks):
    """A one-policy stream fed `chunks`; returns it and the logits after each chunk [V]."""
    s = sir.Stream(model, policy)
    outs = [s.feed(c)[0] for c in chunks]
    return s, outs


@pytest.mark.parametrize("policy", [sir.full(), sir.sirllm(80), sir.streaming_llm(80), sir.random_keep(80),
                                    sir.sirllm(80, positions="original")], ids=lambda p: f"{p.name}/{p.positions}")
def test_a_budget_that_holds_everything_is_the_full_model(tiny_llama, policy):
    ids = ids_of(60)
    ref = ref_logits(tiny_llama, ids)
    s, outs = stream(tiny_llama, policy, chunks_of(ids, [10, 25, 40]))
    assert s.evictions == 0 and len(s) == 60
    for out, end in zip(outs, [10, 25, 40, 60]):
        torch.testing.assert_close(out, ref[end - 1], atol=1e-4, rtol=1e-4)


def test_token_entropy_is_the_models_surprise(tiny_llama):
    ids = ids_of(50, 1)
    lp = torch.log_softmax(ref_logits(tiny_llama, ids), -1)
    s, _ = stream(tiny_llama, sir.sirllm(100), chunks_of(ids, [7, 30]))
    want = -lp[:-1].gather(-1, ids[1:, None])[:, 0]
    torch.testing.assert_close(s.entropy[0, 1:], want, atol=1e-4, rtol=1e-4)   # chunk starts use the previous chunk's logits
    assert torch.isinf(s.entropy[0, 0])                                      # nothing predicts the first token
    e = sir.token_entropy(lp[:5], ids[:5], prev_logits=lp[0])
    assert e[0] == pytest.approx(float(-lp[0, ids[0]]))


@pytest.mark.parametrize("policy", [sir.sirllm(40), sir.streaming_llm(40), sir.random_keep(40),
                                    sir.sirllm(40, decay=0.5, recent=6), sir.sirllm(40, positions="original")],
                         ids=lambda p: f"{p.name}/{p.positions}")
def test_the_cache_never_exceeds_its_budget(tiny_llama, policy):
    ids = ids_of(120, 2)
    s = sir.Stream(tiny_llama, policy)
    for c in chunks_of(ids, [12, 30, 41, 60, 77, 90, 101]):
        s.feed(c)
        assert len(s) <= 40
        assert s.origin.shape[1] == s.pos.shape[1] == s.entropy.shape[1] == s.cache.layers[1].keys.shape[2] == len(s)
    s.generate(ids_of(9, 3), 6)
    assert s.max_len <= 40 and s.evictions > 0 and s.seen >= 120 + 9
    assert torch.all(s.origin[0, 1:] > s.origin[0, :-1])            # the cache keeps the stream's order


def test_streaming_llm_keeps_the_sinks_and_the_most_recent_tokens(tiny_llama):
    s, _ = stream(tiny_llama, sir.streaming_llm(30, sinks=4), chunks_of(ids_of(70, 4), [20, 40, 60]))
    # before the last chunk (10 tokens) the cache was cut to 20: 4 sinks + the 16 most recent
    assert s.origin[0].tolist() == [0, 1, 2, 3] + list(range(44, 70))


def test_sirllm_keeps_the_sinks_and_the_most_surprising_tokens(tiny_llama):
    s, _ = stream(tiny_llama, sir.sirllm(1000), chunks_of(ids_of(60, 5), [20, 40]))
    before = s.entropy[0].clone()
    s.policies, s.budget = [replace(s.policy, budget=30, sinks=3)], 30
    s.make_room(10)                                           # keep 20: 3 sinks + the top 17 entropies
    kept = s.origin[0]
    assert kept[:3].tolist() == [0, 1, 2] and len(kept) == 20
    assert torch.all(before[kept[3:]] >= before[3:].topk(17).values.min())
    torch.testing.assert_close(s.entropy[0], before[kept])    # the bookkeeping follows the tokens
    assert torch.equal(s.pos[0], torch.arange(20))            # shift mode: renumbered slots


def test_decay_lets_newer_tokens_displace_an_old_surprise():
    scores = torch.tensor([0.0, 10.0, 6.0, 6.0, 6.0])         # token 1 from turn 0, tokens 2-4 from turn 3
    turn = torch.tensor([0, 0, 3, 3, 3])
    for decay, survives in [(1.0, True), (0.9, True), (0.7, False)]:
        eff = scores * decay ** (4 - turn).double()              # as Stream.scores() ages them at turn 4
        keep = sir.keep_indices(eff.float(), 4, sinks=1, recent=0)
        assert (1 in keep.tolist()) == survives, decay


def test_keep_indices_always_keeps_sinks_and_recent():
    sc = torch.tensor([9.0, 0.0, 0.0, 5.0, 1.0, 7.0, 0.0, 0.0])
    assert sir.keep_indices(sc, 5, sinks=2, recent=2).tolist() == [0, 1, 5, 6, 7]
    assert sir.keep_indices(sc, 4, sinks=1, recent=0).tolist() == [0, 3, 4, 5]
    assert sir.keep_indices(sc, 20, sinks=2, recent=2).tolist() == list(range(8))


@pytest.mark.parametrize("mode", ["shift", "original"])
def test_kept_keys_sit_at_the_stated_positions(tiny_llama, mode):
    """Layer 0's keys depend on the token and its RoPE position only: after evictions they must equal a
    fresh pass over the kept tokens at the positions the stream says they have (slots 0..k−1 in shift
    mode: re-rotation is exact; stream positions in original mode)."""
    ids = ids_of(90, 6)
    s, _ = stream(tiny_llama, sir.sirllm(40, positions=mode), chunks_of(ids, [15, 30, 45, 60, 75]))
    assert s.evictions > 0
    kept = ids[s.origin[0]]
    want = torch.arange(len(kept)) if mode == "shift" else s.origin[0]
    assert torch.equal(s.pos[0], want)
    with torch.no_grad():
        fresh = tiny_llama(input_ids=kept[None], position_ids=want[None], use_cache=True).past_key_values
    torch.testing.assert_close(s.cache.layers[0].keys, fresh.layers[0].keys, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(s.cache.layers[0].values, fresh.layers[0].values, atol=1e-5, rtol=1e-4)


def test_shift_equals_original_positions_when_only_a_suffix_is_kept(tiny_llama):
    """RoPE sees relative distances only: keeping a contiguous suffix (no sinks) and renumbering it is
    the same computation as keeping its stream positions. With sinks the gap changes and so do the logits."""
    ids = ids_of(70, 7)
    cs = chunks_of(ids, [10, 20, 30, 40, 50, 60])
    _, a = stream(tiny_llama, sir.streaming_llm(30, sinks=0, positions="shift"), cs)
    _, b = stream(tiny_llama, sir.streaming_llm(30, sinks=0, positions="original"), cs)
    torch.testing.assert_close(a[-1], b[-1], atol=1e-4, rtol=1e-4)
    _, c = stream(tiny_llama, sir.streaming_llm(30, sinks=4, positions="shift"), cs)
    _, d = stream(tiny_llama, sir.streaming_llm(30, sinks=4, positions="original"), cs)
    assert float((c[-1] - d[-1]).abs().max()) > 1e-4


def test_a_fork_before_any_eviction_is_a_fresh_stream(tiny_llama):
    ids = ids_of(80, 8)
    cs = chunks_of(ids, [20, 35, 50, 65])
    base = sir.Stream(tiny_llama, sir.Policy("full", score="entropy"))
    for c in cs[:2]:
        base.feed(c)
    pol = sir.sirllm(45, decay=0.8)
    forked = base.fork(pol)
    fresh, _ = stream(tiny_llama, pol, cs[:2])
    for c in cs[2:]:
        a, b = forked.feed(c)[0], fresh.feed(c)[0]
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert torch.equal(forked.origin, fresh.origin) and forked.evictions == fresh.evictions > 0
    assert forked.computed == 45 and fresh.computed == 80
    with pytest.raises(RuntimeError, match="after an eviction"):
        forked.fork(pol)
    plain = sir.Stream(tiny_llama, sir.full())
    plain.feed(cs[0])
    with pytest.raises(RuntimeError, match="computed entropies"):
        plain.fork(pol)


def test_a_batch_of_policies_computes_each_row_as_alone(tiny_llama):
    ids = ids_of(100, 10)
    cs = chunks_of(ids, [18, 33, 50, 64, 80])
    pols = [sir.sirllm(45), sir.streaming_llm(45), sir.sirllm(45, decay=0.6, positions="original"), sir.random_keep(45, seed=3)]
    batch = sir.Stream(tiny_llama, pols)
    outs = [batch.feed(c) for c in cs[:-1]]
    ans = batch.generate(cs[-1], 5)
    for r, p in enumerate(pols):
        alone = sir.Stream(tiny_llama, p)
        for c, o in zip(cs[:-1], outs):
            torch.testing.assert_close(alone.feed(c)[0], o[r], atol=1e-4, rtol=1e-4)
        assert alone.generate(cs[-1], 5)[0] == ans[r]
        assert torch.equal(alone.origin[0], batch.origin[r]) and torch.equal(alone.pos[0], batch.pos[r])
    assert not torch.equal(batch.origin[0], batch.origin[1])          # the rows did keep different tokens
    with pytest.raises(ValueError, match="share the budget"):
        sir.Stream(tiny_llama, [sir.sirllm(40), sir.sirllm(50)])


def test_rotate_rows_is_patterns_rotate_per_row():
    from tokenbook.longctx import patterns as pt
    x = torch.randn(3, 2, 7, 8)
    delta = torch.randint(-20, 20, (3, 7))
    f = 1.0 / (10000 ** (torch.arange(0, 8, 2).float() / 8))
    got = sir.rotate_rows(x, delta, f)
    for r in range(3):
        torch.testing.assert_close(got[r], pt.rotate(x[r], delta[r], f))
    torch.testing.assert_close(sir.rotate_rows(got, -delta, f), x, atol=1e-5, rtol=1e-5)


def test_bad_settings_fail_clearly(tiny_llama):
    with pytest.raises(ValueError, match="decay"):
        sir.sirllm(64, decay=1.5)
    with pytest.raises(ValueError, match="no room"):
        sir.sirllm(4, sinks=4)
    with pytest.raises(ValueError, match="unknown score"):
        sir.Policy("x", 10, score="attention")
    s = sir.Stream(tiny_llama, sir.streaming_llm(20))
    with pytest.raises(ValueError, match="does not fit cache budget 20"):
        s.feed(ids_of(19))


SMOL = paths.CACHE / "models" / "smollm2-135m" / "tokenbook.json"


@pytest.mark.skipif(not SMOL.exists(), reason="SmolLM2's tokenizer is converted on first use (make setup)")
def test_dialogue_chunks_are_the_chat_template_and_locate_the_fact():
    from omegaconf import OmegaConf

    from tokenbook.chapters import sirllm as ch
    from tokenbook.train.zoo import load_tokenizer
    tok = load_tokenizer("smollm2-135m")
    cfg = OmegaConf.create({"faqs": ["python"], "filler_words": 12})
    fill = ch.faq_fillers(cfg)[:3]
    d = ch.make_dialogue(tok, "grocery", "peanut butter", fill)
    text = tok.apply_chat_template([m for u, a in [("I want you to buy the GROCERY: [peanut butter].", "OK."), *fill]
                                    for m in ({"role": "user", "content": u}, {"role": "assistant", "content": a})]
                                   + [{"role": "user", "content": "Which one is the GROCERY that I want you to buy earlier?"}],
                                   tokenize=False, add_generation_prompt=True) + "You want me to buy the GROCERY: ["
    assert sum(d.chunks, []) == tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(d.chunks[0][slice(*d.fact_span)]).strip() == "peanut butter"
    assert d.distance == 3 and len(d.chunks) == 5
    r = ch.make_dialogue(tok, "rps", "walrus", [ch.rps_round(1, __import__("numpy").random.default_rng(0))])
    assert tok.decode(r.chunks[0][slice(*r.fact_span)]).strip() == "walrus"


def test_chapter_arms_share_budgets_and_are_checked():
    from omegaconf import OmegaConf

    from tokenbook.chapters import sirllm as ch
    cfg = OmegaConf.create({"budget": 128, "budgets": [96, 128], "decay": 1.0, "decays": [1.0, 0.5], "sinks": 4,
                            "recent": 0, "controls": ["random", "original_positions"]})
    names = [p.name for p in ch.policies(cfg)]
    assert names == ["streaming@96", "sirllm@96,d=1", "streaming@128", "sirllm@128,d=1", "random@128",
                     "sirllm@128,d=0.5", "sirllm@128,d=1,orig"]
    assert ch.arm_label("sirllm@128,d=1,orig") == "SirLLM B=128, d=1, original positions"
    with pytest.raises(ValueError, match="main budget 64"):
        ch.policies(OmegaConf.merge(cfg, {"budget": 64}))
    with pytest.raises(ValueError, match="unknown controls"):
        ch.policies(OmegaConf.merge(cfg, {"controls": ["h2o"]}))
    moves = [ch.rps_round(k, __import__("numpy").random.default_rng(k)) for k in range(30)]
    for (u, a) in moves:                                     # the rounds are scored right
        me, you = u.split("I play ")[1].rstrip("."), a.split("I play ")[1].split(".")[0]
        want = "tie" if me == you else ("I win" if ch.BEATS[you] == me else "you win")
        assert want in a
