"""Number tokenizers, arithmetic formats and the evaluator: round-trips, exact answers, taxonomy."""
import numpy as np
import pytest
import torch

from tokenbook.tokenization import arithmetic as ar


@pytest.mark.parametrize("digits, size, l2r, r2l", [
    ("1234567", 3, ["123", "456", "7"], ["1", "234", "567"]),
    ("123456", 3, ["123", "456"], ["123", "456"]),
    ("12", 3, ["12"], ["12"]),
    ("0012", 3, ["001", "2"], ["0", "012"]),
    ("12345", 2, ["12", "34", "5"], ["1", "23", "45"]),
])
def test_chunk_directions(digits, size, l2r, r2l):
    assert ar.chunk(digits, size, "l2r") == l2r
    assert ar.chunk(digits, size, "r2l") == r2l
    assert "".join(l2r) == "".join(r2l) == digits


def test_r2l_chunks_align_with_place_value():
    """The property the paper relies on: R2L chunk i from the right holds places 3i..3i+2."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = str(ar.sample_number(rng, int(rng.integers(1, 13))))
        for i, c in enumerate(reversed(ar.chunk(n, 3, "r2l"))):
            assert int(c) == (int(n) // 10 ** (3 * i)) % 1000


def test_commas_make_left_to_right_chunks_right_aligned():
    tok = ar.NumberTokenizer(3, "l2r")
    for n in (7, 1234, 1234567, 12345678901):
        with_c = [p for p in tok.pieces(ar.with_commas(n)) if p != ","]
        assert with_c == ar.chunk(str(n), 3, "r2l")


@pytest.mark.parametrize("size, direction", [(1, "l2r"), (3, "l2r"), (3, "r2l"), (2, "r2l")])
def test_tokenizer_round_trip(size, direction):
    tok = ar.NumberTokenizer(size, direction)
    assert len(tok) == 7 + sum(10 ** k for k in range(1, size + 1))
    rng = np.random.default_rng(1)
    for fmt in ar.FORMATS:
        for p in ar.sample_problems(50, "*" if fmt == "padded_reversed" else "+", (1, 8), rng):
            q, a = ar.render(p, fmt, width=8, rng=rng)
            assert tok.decode(tok.encode(q + a)) == q + a
    with pytest.raises(ValueError, match="not in the arithmetic vocabulary"):
        tok.encode("1-2")


@pytest.mark.parametrize("fmt", ar.FORMATS)
def test_formats_render_exact_answers(fmt):
    rng = np.random.default_rng(2)
    for op in "+*":
        for p in ar.sample_problems(300, op, (1, 7), rng):
            q, a = ar.render(p, fmt, width=7, rng=rng)
            assert ar.parse_answer(a, fmt) == p.answer == (p.a + p.b if op == "+" else p.a * p.b)
            assert q.endswith("=") and q.replace(" ", "").replace(",", "").startswith(
                f"{p.a:07d}" if fmt == "padded_reversed" else str(p.a))


def test_padded_reversed_has_fixed_length_and_random_spaces_only_touch_operands():
    rng = np.random.default_rng(3)
    for p in ar.sample_problems(100, "*", (1, 5), rng):
        q, a = ar.render(p, "padded_reversed", width=5)
        assert len(q) == 12 and len(a) == 10
        q2, a2 = ar.render(p, "random_spaces", rng=rng, space_p=0.5)
        assert q2.replace(" ", "") == f"{p.a}*{p.b}=" and a2 == str(p.answer)


def test_sample_problems_lengths_and_carry_out():
    rng = np.random.default_rng(4)
    ps = ar.sample_problems(2000, "+", (3, 5), rng)
    assert {len(str(p.a)) for p in ps} == {3, 4, 5}
    assert all(p.carries_out == (len(str(p.a + p.b)) > max(len(str(p.a)), len(str(p.b)))) for p in ps)
    assert 0.1 < np.mean([p.carries_out for p in ps]) < 0.6


@pytest.mark.parametrize("pred, true, kind", [
    (12345, 12345, "correct"), (None, 5, "malformed"), (1234, 12345, "wrong_length"),
    (12355, 12345, "one_carry"), (11345, 12345, "one_carry"), (12399, 12345, "one_chunk"),
    (92399, 12345, "other"),
])
def test_error_taxonomy(pred, true, kind):
    assert ar.classify(pred, true, 3) == kind


def test_parse_answer_rejects_malformed():
    assert ar.parse_answer("12a", "plain") is None
    assert ar.parse_answer("", "plain") is None
    assert ar.parse_answer("1,23", "commas") is None
    assert ar.parse_answer("12,345", "commas") == 12345
    assert ar.wrong_positions_from_left(12395, 12345) == [4]


def test_answer_only_loss_masks_everything_but_the_answer():
    tok = ar.NumberTokenizer(3, "r2l")
    rows = ar.encode_examples(tok, [ar.render(ar.Problem(12345, 678, "+"))], 12)
    model = ar.build_model("llama", len(tok), n_layer=1, d_model=16, n_head=2, max_len=32,
                           components=ar.digit_components(tok))
    net = ar._answer_only_module()(model, tok.index["="], tok.pad_id)
    x = torch.from_numpy(rows)
    logits = model(input_ids=x).logits
    n_answer = len(tok.encode("13023")) + 1                              # answer chunks + <eos>
    start = tok.encode("12345+678=").__len__()
    want = torch.nn.functional.cross_entropy(logits[0, start - 1:start - 1 + n_answer], x[0, start:start + n_answer])
    torch.testing.assert_close(net(input_ids=x, labels=x).loss, want)


def test_digit_components_share_digits():
    tok = ar.NumberTokenizer(3, "l2r")
    comp = ar.digit_components(tok)
    assert len(set(map(tuple, comp))) == len(tok)                        # every token distinct
    assert comp[tok.index["4"]][1] == comp[tok.index["45"]][1]           # same first digit, same slot vector


def test_greedy_answers_decode_a_memorised_problem():
    """A model trained by tokenbook.train on one repeated problem answers it exactly."""
    tok = ar.NumberTokenizer(3, "r2l")
    p = ar.Problem(4321, 987, "+")
    rows = ar.encode_examples(tok, [ar.render(p)] * 64, 10)
    model = ar.build_model("llama", len(tok), n_layer=1, d_model=32, n_head=2, max_len=32)
    ar.train_on_examples(model, tok, rows, {"steps": 40, "batch_size": 8, "lr": 1e-2, "warmup_steps": 2,
                                            "progress": False})
    ans = ar.greedy_answers(model, tok, [ar.render(p)[0]], 4)
    assert ar.evaluate([p], ans, "plain")[0]["correct"]
