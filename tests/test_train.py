"""The trainer (resume, atomic checkpoints, learning) and the house-model zoo (caching, hashing)."""
from __future__ import annotations

import math

import pytest
import torch

from tokenbook import paths
from tokenbook.train import trainer as tr
from tokenbook.train import zoo

V = 48


def tiny_llama(seed: int = 0, layers: int = 1, d: int = 32):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=V, hidden_size=d, intermediate_size=2 * d,
                                        num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=2,
                                        max_position_embeddings=64, tie_word_embeddings=True))


def repetitive_tokens(n: int = 4096, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    motif = torch.randint(0, V, (24,), generator=g)
    return motif.repeat(n // 24 + 1)[:n]


def random_tokens(n: int = 4096, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (n,), generator=torch.Generator().manual_seed(seed))


def cfg(**kw) -> tr.TrainConfig:
    base = dict(steps=12, batch_size=4, seq_len=32, lr=3e-3, warmup_steps=2, eval_every=0, eval_batches=1,
                ckpt_every=0, log_every=1, seed=0, progress=False)
    return tr.TrainConfig(**{**base, **kw})


def record_batches(model) -> list:
    seen = []
    model.model.embed_tokens.register_forward_pre_hook(
        lambda mod, args: seen.append(args[0].clone()) if mod.training else None)
    return seen


def test_lr_schedule_warmup_then_cosine():
    c = cfg(steps=100, warmup_steps=10, min_lr_ratio=0.1)
    assert tr.lr_factor(0, c) == pytest.approx(0.1)
    assert tr.lr_factor(9, c) == pytest.approx(1.0)
    assert tr.lr_factor(10, c) == pytest.approx(1.0)
    assert tr.lr_factor(55, c) == pytest.approx(0.55)
    assert tr.lr_factor(100, c) == pytest.approx(0.1)


def test_sampler_is_deterministic_and_covers_each_epoch():
    s1, s2 = tr.SequenceSampler(random_tokens(320), 32, seed=3), tr.SequenceSampler(random_tokens(320), 32, seed=3)
    assert s1.indices(0, 25) == s2.indices(0, 25)
    assert sorted(s1.indices(0, 10)) == list(range(10)) and sorted(s1.indices(10, 10)) == list(range(10))
    assert s1.indices(0, 10) != tr.SequenceSampler(random_tokens(320), 32, seed=4).indices(0, 10)


def test_loss_goes_down_on_repetitive_text(tmp_path):
    model = tiny_llama()
    res = tr.train(model, repetitive_tokens(), cfg(steps=40, ckpt_every=0), val_tokens=repetitive_tokens(512, 5),
                   bytes_per_token=1.0, out_dir=tmp_path)
    assert res.log[0]["loss"] > math.log(V) * 0.8             # starts near uniform
    assert res.final_loss < 0.5 * res.log[0]["loss"]
    assert res.val_bpb == pytest.approx(res.val_loss / math.log(2))
    assert (tmp_path / "loss_curve.png").stat().st_size > 1000
    assert (tmp_path / "train_log.json").exists()
    assert res.tokens_seen == 40 * 4 * 32


def test_resume_after_crash_matches_uninterrupted_run(tmp_path):
    data, val = random_tokens(), random_tokens(512, 9)
    c = cfg(steps=12, ckpt_every=4, grad_accum=2)

    straight = tiny_llama()
    seen_a = record_batches(straight)
    losses_a = {}
    res_a = tr.train(straight, data, c, val_tokens=val, bytes_per_token=2.0, out_dir=tmp_path / "a",
                     on_step=lambda s, l: losses_a.__setitem__(s, l))

    class Crash(RuntimeError):
        pass

    def crash_at_7(step, loss):
        losses_b[step] = loss
        if step == 7:
            raise Crash

    crashed = tiny_llama()
    seen_b = record_batches(crashed)
    losses_b = {}
    with pytest.raises(Crash):
        tr.train(crashed, data, c, val_tokens=val, bytes_per_token=2.0, out_dir=tmp_path / "b", on_step=crash_at_7)
    assert tr.latest_checkpoint(tmp_path / "b" / "checkpoints").name == "ckpt-00000004"

    resumed = tiny_llama(seed=123)                  # a different init: the checkpoint must overwrite it
    seen_c = record_batches(resumed)
    losses_c = {}
    res_c = tr.train(resumed, data, c, val_tokens=val, bytes_per_token=2.0, out_dir=tmp_path / "b",
                     on_step=lambda s, l: losses_c.__setitem__(s, l))
    assert res_c.resumed_from == 4
    assert sorted(losses_c) == list(range(5, 13))
    for s in range(5, 13):
        assert losses_c[s] == pytest.approx(losses_a[s], abs=1e-5)
    # same data order: steps 5..12 of the resumed run saw the batches the straight run saw there
    per_step = c.grad_accum                          # one forward per micro-batch
    assert len(seen_c) == 8 * per_step
    for x, y in zip(seen_a[4 * per_step:], seen_c):
        assert torch.equal(x, y)
    for x, y in zip(seen_a[:7 * per_step], seen_b):
        assert torch.equal(x, y)
    assert res_c.final_loss == pytest.approx(res_a.final_loss, abs=1e-5)
    assert res_c.val_loss == pytest.approx(res_a.val_loss, abs=1e-5)
    assert res_c.tokens_seen == res_a.tokens_seen
    assert [r["step"] for r in res_c.log] == list(range(1, 13))      # the log continues across the crash
    for p, q in zip(straight.parameters(), resumed.parameters()):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-4)


def test_crash_while_saving_leaves_previous_checkpoint_loadable(tmp_path, monkeypatch):
    model = tiny_llama()
    c = cfg(steps=10, ckpt_every=2)
    tr.train(model, random_tokens(), c, out_dir=tmp_path, stop_after=2)
    ck_dir = tmp_path / "checkpoints"
    good = tr.latest_checkpoint(ck_dir)
    assert good.name == "ckpt-00000002"
    saved = {k: v.clone() for k, v in model.state_dict().items()}

    def torn_write(obj, path):
        path.write_bytes(b"\x00partial")
        raise OSError("disk full")

    monkeypatch.setattr(tr, "_save_blob", torn_write)
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    with pytest.raises(OSError):
        tr.save_checkpoint(ck_dir, 4, model, opt, sched, {"position": 0, "wall_s": 0, "log": [], "evals": []})
    monkeypatch.undo()
    assert tr.latest_checkpoint(ck_dir) == good
    fresh = tiny_llama(seed=5)
    state = tr.load_checkpoint(good, fresh)
    assert state["step"] == 2 and state["position"] == 2 * c.batch_size
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, saved[k])
    res = tr.train(tiny_llama(seed=6), random_tokens(), c, out_dir=tmp_path)   # and a run resumes from it
    assert res.resumed_from == 2 and res.steps == 10
    with pytest.raises(ValueError, match="different"):          # a changed recipe must not silently resume
        tr.train(tiny_llama(), random_tokens(), cfg(steps=10, ckpt_every=2, batch_size=2), out_dir=tmp_path)


TINY_ZOO = ["house.train.steps=3", "house.train.batch_size=2", "house.train.seq_len=32", "house.train.eval_batches=1",
            "house.train.eval_every=0", "house.train.ckpt_every=0", "house.train.warmup_steps=1",
            "house.model.hidden_size=32", "house.model.intermediate_size=64", "house.model.num_hidden_layers=1",
            "house.model.num_attention_heads=2", "house.model.num_key_value_heads=2",
            "house.data.corpus=pydoc_topics", "house.data.max_docs=8", "+house.data.val_fraction=0.25"]


def test_zoo_trains_once_then_loads_from_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "CACHE", tmp_path)
    model, tok, card = zoo.house_model("house-bytes", "smoke", overrides=TINY_ZOO, progress=False)
    assert not card["loaded_from_cache"]
    assert card["steps"] == 3 and card["tokens_seen"] == 3 * 2 * 32 and card["vocab_size"] == 259
    assert card["val_bits_per_byte"] > 0 and card["train_wall_s"] > 0 and card["versions"]["torch"]
    folder = tmp_path / "zoo" / f"house-bytes-smoke-{card['hash']}"
    assert str(folder) == card["path"] and (folder / "loss_curve.png").exists()
    assert not any((tmp_path / "zoo" / ".work").iterdir())          # the work folder is cleaned up

    def no_training(*a, **k):
        raise AssertionError("a cached house model was retrained")

    monkeypatch.setattr(zoo, "train", no_training)
    model2, tok2, card2 = zoo.house_model("house-bytes", "smoke", overrides=TINY_ZOO)
    assert card2["loaded_from_cache"] and card2["hash"] == card["hash"]
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)
    assert tok2.decode(tok2.encode("héllo")) == "héllo"

    changed = zoo.prepare("house-bytes", "smoke", TINY_ZOO + ["house.train.lr=1e-3"])
    assert changed["hash"] != card["hash"]
    other_data = zoo.prepare("house-bytes", "smoke", TINY_ZOO[:-2] + ["house.data.max_docs=12", "+house.data.val_fraction=0.25"])
    assert other_data["hash"] != card["hash"]
    assert zoo.prepare("house-bytes", "smoke", TINY_ZOO)["hash"] == card["hash"]


def test_zoo_names_and_recipes_compose_at_every_scale():
    assert {"house-prose", "house-code", "house-bytes"} <= set(zoo.names())
    for name in ("house-prose", "house-code", "house-bytes"):
        for scale in paths.SCALES:
            rec = zoo.recipe(name, scale)
            tr.TrainConfig.from_dict(dict(rec.train))
            assert rec.model.hidden_size % rec.model.num_attention_heads == 0
            assert rec.train.seq_len <= rec.model.max_position_embeddings
    with pytest.raises(ValueError, match="valid"):
        zoo.recipe("house-nope", "smoke")
