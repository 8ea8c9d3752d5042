"""Landmark attention (tokenbook.longctx.landmark): grouped softmax, retrieval, layout, passkey items."""
import numpy as np
import pytest
import torch

from tokenbook.longctx import landmark as lm


def logits(B=2, H=3, G=5, block=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    T = G * (block + 1)
    return torch.randn(B, H, T, T, generator=g) * 2, torch.arange(T)


def test_insert_landmarks_layout():
    ids = torch.arange(10, 20).view(1, 10)
    out, keep = lm.insert_landmarks(ids, 4, landmark_id=99, pad_id=0)
    assert out.tolist() == [[10, 11, 12, 13, 99, 14, 15, 16, 17, 99, 18, 19, 0, 0, 99]]
    assert torch.equal(out[0, keep], ids[0])


@pytest.mark.parametrize("block", [1, 3, 4])
def test_grouped_weights_rows_sum_to_one_causal_and_landmarks_unread(block):
    s, pos = logits(block=block)
    w = lm.grouped_weights(s, pos, block)
    T = s.shape[-1]
    assert torch.allclose(w.sum(-1), torch.ones(w.shape[:-1]), atol=1e-5)
    assert (w[..., ~torch.ones(T, T, dtype=torch.bool).tril()] == 0).all()    # causal
    is_lm = (pos % (block + 1)) == block
    assert (w[..., is_lm] == 0).all()                                          # landmark values never read


def test_grouped_weights_by_hand():
    """Query in block 2: own-block tokens share an outer softmax with the landmarks of blocks 0, 1;
    each landmark's share is split over its block by an inner softmax."""
    block = 3
    s, pos = logits(B=1, H=1, G=3, block=block, seed=1)
    w = lm.grouped_weights(s, pos, block)
    i = 2 * 4 + 1                                    # block 2, offset 1
    row = s[0, 0, i]
    outer_keys = [3, 7, 8, 9]                        # landmark 0, landmark 1, tokens 8 and 9
    outer = torch.softmax(row[outer_keys], 0)
    assert torch.allclose(w[0, 0, i, [8, 9]], outer[2:], atol=1e-6)
    for g, share in ((0, outer[0]), (1, outer[1])):
        toks = [g * 4 + o for o in range(3)]
        assert torch.allclose(w[0, 0, i, toks], share * torch.softmax(row[toks], 0), atol=1e-6)


def test_landmark_gate_moves_the_whole_block():
    """Raising one landmark's score raises the total weight of its block and nothing inside it changes ratio."""
    block = 4
    s, pos = logits(B=1, H=1, G=4, block=block, seed=2)
    i = pos[-2]
    w0 = lm.grouped_weights(s, pos, block)[0, 0, i]
    s2 = s.clone()
    s2[0, 0, i, 1 * 5 + 4] += 5.0                     # landmark of block 1
    w1 = lm.grouped_weights(s2, pos, block)[0, 0, i]
    blk1 = slice(5, 9)
    assert w1[blk1].sum() > w0[blk1].sum() + 0.05
    assert torch.allclose(w1[blk1] / w1[blk1].sum(), w0[blk1] / w0[blk1].sum(), atol=1e-6)


def test_retrieval_with_all_blocks_equals_full_grouped_attention():
    torch.manual_seed(0)
    model = lm.LandmarkLM(40, 32, 2, 2, 64, block=4)
    x = torch.randint(3, 40, (2, 37))
    full = model(input_ids=x).logits
    with lm.attention_mode(model, kind="retrieval", n_local=2, k=100, far_pos=None, q_chunk=7):
        same = model(input_ids=x).logits
    assert torch.allclose(full, same, atol=1e-5)
    with lm.attention_mode(model, kind="retrieval", n_local=2, k=0, far_pos=None):
        local = model(input_ids=x).logits
    assert not torch.allclose(full[:, -1], local[:, -1], atol=1e-4)       # dropping old blocks changes the end
    assert torch.allclose(full[:, :12], local[:, :12], atol=1e-5)          # but not queries whose blocks are all local


def test_retrieval_select_keeps_local_and_topk_far():
    block, G = 2, 6
    qpos = torch.tensor([5 * 3 + 1])                                       # block 5
    sc = torch.tensor([[[[0.0, 9.0, 1.0, 5.0, 0.0, 0.0]]]])
    sel = lm.retrieval_select(sc, qpos, block, n_local=2, k=1)
    assert sel[0, 0, 0].tolist() == [False, True, False, True, True, False]


def test_models_are_causal():
    torch.manual_seed(0)
    for block in (None, 4):
        model = lm.LandmarkLM(40, 32, 2, 2, 64, block=block)
        x = torch.randint(3, 40, (1, 30))
        y = x.clone()
        y[0, 20:] = torch.randint(3, 40, (10,))
        assert torch.allclose(model(input_ids=x).logits[:, :20], model(input_ids=y).logits[:, :20], atol=1e-5)
        out = model(input_ids=x, labels=x)
        assert out.loss.ndim == 0 and torch.isfinite(out.loss)


def test_sliding_window_equals_full_within_window():
    torch.manual_seed(0)
    model = lm.LandmarkLM(40, 32, 2, 2, 64)
    x = torch.randint(3, 40, (1, 24))
    full = model(input_ids=x).logits
    with lm.attention_mode(model, kind="causal", window=8):
        win = model(input_ids=x).logits
    assert torch.allclose(full[:, :8], win[:, :8], atol=1e-5)
    assert not torch.allclose(full[:, -1], win[:, -1], atol=1e-4)


def test_window_blocks_and_keys_per_query():
    n_local, far = lm.window_blocks(64, 16)
    assert (n_local, far) == (3, 4 * 17 - 1)
    assert lm.keys_per_query(10, "full") == 5.5
    assert lm.keys_per_query(10, "window", window=4) == (1 + 2 + 3 + 4 * 7) / 10
    # one block of 2, n_local 1, k 1: blocks 0,1,2 → counts off+1 + local + retrieved
    got = lm.keys_per_query(6, "retrieval", block=2, n_local=1, k=1)
    assert got == (1 + 2 + 3 + 4 + 5 + 6) / 6
    assert lm.keys_per_query(64, "retrieval", block=4, n_local=1, k=1) < lm.keys_per_query(64, "full")


def test_passkey_item_hides_key_far_from_end():
    rng = np.random.default_rng(0)
    ids, ans = lm.passkey_item(256, rng, far_from_end=100)
    text = bytes(i - 3 for i in ids).decode()
    key = text[-5:]
    assert len(ids) == 256 and ans == list(range(251, 256)) and key.isdigit()
    hidden = text.index(f"pass key is @{key}.")
    assert hidden + len(f"pass key is @{key}. ") <= 256 - 100 and len(set(key)) == 5 and text.count("@") == 2
    with pytest.raises(ValueError):
        lm.passkey_item(30, rng)


def test_passkey_training_items_repeat_the_question():
    rng = np.random.default_rng(1)
    ids, ans = lm.passkey_item(128, rng, digits=1, repeats=4)
    text = bytes(i - 3 for i in ids).decode()
    key = text[-1]
    assert len(ids) == 128 and ans == [127] and text.count("@") == 5
    assert text.endswith(f" The pass key is @{key}." * 3 + f" The pass key is @{key}")
    assert sum(c.isdigit() for c in text) == 5
