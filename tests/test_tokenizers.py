"""The tokenizer zoo: real tokenizers round-trip and reproduce llama.cpp's reference vectors; trained
ones are deterministic and cached. The first run converts the GGUF vocabularies (minutes, once)."""
import json

import pytest

from tokenbook import paths
import tokenbook.tokenizers as T

SAMPLES = [
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "İstanbul'da güzel bir gün; naïve café, Äpfel, ½ × 3 ≈ 1.5, 日本語のテキスト, Ελληνικά, 🦙🚀 😶‍🌫️",
    "  leading spaces,\ttabs\t\tand   runs   of    spaces\n\n\n  trailing  \n",
    "def f(x, *args, **kw):\n    if x >= 10:\n        return [i ** 2 for i in range(x)]  # comment\n\treturn {}\n",
    "<html><body class=\"x\">&amp; <b>bold</b></body></html>\r\n3333 1000000 0.001",
]

# reference vectors: the names whose tokenizer reproduces every vector, and the measured mismatch
# counts of the others (a regression test: these must not grow)
FULL_MATCH = ["gpt2", "r50k_base", "gpt2-gguf", "qwen2", "qwen3.5", "phi3", "llama2", "llama3", "starcoder"]
KNOWN_MISMATCHES = {"deepseek-llm": 1, "deepseek-coder": 1, "falcon": 9}


@pytest.mark.parametrize("name", T.names())
def test_round_trip_real(name):
    tok = T.load(name)
    assert tok.vocab_size > 30_000
    for text in SAMPLES:
        ids = tok.encode(text)
        assert ids and all(0 <= i < tok.vocab_size for i in ids)
        assert tok.decode(ids) == text, (name, text)
        pieces = b"".join(tok.token_bytes(ids))
        # SentencePiece vocabularies encode the text with one space prepended
        assert pieces in (text.encode(), b" " + text.encode()), (name, text)
        assert len(tok.token_strings(ids)) == len(ids)


def test_tiktoken_files_and_p50k():
    p50k, r50k = T.load("p50k_base"), T.load("r50k_base")
    assert (r50k.vocab_size, p50k.vocab_size, T.load("cl100k_base").vocab_size) == (50257, 50281, 100277)
    assert T.load("o200k_base").vocab_size == 200019
    # p50k = r50k + 24 whitespace-run tokens: identical on text without runs of spaces
    assert p50k.encode(SAMPLES[0]) == r50k.encode(SAMPLES[0])
    assert p50k.token_bytes([50257, 50280]) == [b"  ", b" " * 25]
    assert len(p50k.encode(" " * 8 + "x")) < len(r50k.encode(" " * 8 + "x"))
    # the GPT-2 data-gym files and r50k_base.tiktoken are the same vocabulary
    assert T.load("gpt2").encode(SAMPLES[3]) == r50k.encode(SAMPLES[3])


@pytest.mark.parametrize("name", FULL_MATCH)
def test_reference_vectors_match(name):
    r = T.reference_check(name)
    assert r["n"] >= 46
    assert r["matched"] == r["n"], r["mismatches"][:3]


@pytest.mark.parametrize("name", sorted(KNOWN_MISMATCHES))
def test_reference_vectors_do_not_regress(name):
    r = T.reference_check(name)
    assert r["n"] - r["matched"] <= KNOWN_MISMATCHES[name], r["mismatches"]


def test_reference_table_recorded():
    T.reference_check("qwen2")
    table = T.reference_table()
    assert table["qwen2"]["match_rate"] == 1.0 and "mismatches" not in table["qwen2"]
    assert set(FULL_MATCH) | set(KNOWN_MISMATCHES) == set(T.reference_names())


def test_unknown_name():
    with pytest.raises(T.UnknownTokenizerError, match=r"unknown tokenizer 'gpt5'.*cl100k_base.*smollm2"):
        T.load("gpt5")
    with pytest.raises(ValueError, match="valid: bpe, unigram, byte, char"):
        T.train("wordpiece", ["x"], 100)


@pytest.fixture(scope="module")
def fortunes():
    texts = __import__("tokenbook.data.pieces", fromlist=["x"]).take_bytes(__import__("tokenbook.data", fromlist=["x"]).load_corpus("fortunes"), 200_000)
    assert sum(len(t) for t in texts) > 150_000
    return texts


@pytest.mark.parametrize("kind,vocab", [("bpe", 600), ("unigram", 600), ("char", 120)])
def test_trained_deterministic(kind, vocab, fortunes, tmp_path, monkeypatch):
    made = []
    for run in ("a", "b"):
        monkeypatch.setattr(paths, "CACHE", tmp_path / run)
        tok = T.train(kind, fortunes, vocab, name=f"{kind}-fortunes")
        made.append(tok)
    a, b = made
    assert a.info["dir"].split("/")[-1] == b.info["dir"].split("/")[-1]  # same settings -> same cache key
    assert a.raw.get_vocab() == b.raw.get_vocab()
    assert json.loads(a.raw.to_str()) == json.loads(b.raw.to_str())
    assert a.vocab_size <= vocab
    sample = fortunes[-1][:2000]
    assert a.decode(a.encode(sample)) == sample
    if kind != "char":  # byte-level: anything round-trips
        assert a.decode(a.encode(SAMPLES[1])) == SAMPLES[1]
    # a cache hit returns the same tokenizer without retraining
    again = T.train(kind, fortunes, vocab, name=f"{kind}-fortunes")
    assert again.info["dir"] == b.info["dir"]
    # different settings -> a different cache folder
    assert T.train(kind, fortunes[:50], vocab, name=f"{kind}-fortunes").info["dir"] != b.info["dir"]


def test_trained_from_corpus_name_is_cached():
    tok = T.train("bpe", "fortunes", 400, max_bytes=50_000)
    assert tok.info["corpus"] == "fortunes" and tok.vocab_size == 400
    assert T.load_dir(tok.info["dir"]).encode(SAMPLES[0]) == tok.encode(SAMPLES[0])


def test_byte_tokenizer_exact(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "CACHE", tmp_path)
    tok = T.train("byte", ["unused"], 0)
    assert tok.vocab_size == 256 + len(T.trained.DEFAULT_SPECIALS)
    for text in SAMPLES + ["\x00\x01\x7f\u0080\uffff\U0010ffff", "<|endoftext|> is just text here"]:
        ids = tok.encode(text)
        assert ids == list(text.encode("utf-8"))
        assert tok.decode(ids) == text
        assert b"".join(tok.token_bytes(ids)) == text.encode("utf-8")


def test_char_tokenizer_unknown(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "CACHE", tmp_path)
    tok = T.train("char", ["abcab ba", "cab"], 50)
    assert tok.encode("abc") == [2, 3, 4]  # <unk>=0, then characters by code point (" " is 1)
    assert tok.encode("z") == [0]
    assert tok.vocab_size == 1 + 4 + len(T.trained.DEFAULT_SPECIALS)


def test_bytes_per_token_table():
    rows = T.bytes_per_token_table(["gpt2", "o200k_base"], ["fortunes", "python-stdlib"], max_bytes=20_000)
    assert [(r["tokenizer"], r["corpus"]) for r in rows] == [
        ("gpt2", "fortunes"), ("o200k_base", "fortunes"), ("gpt2", "python-stdlib"), ("o200k_base", "python-stdlib")]
    for r in rows:
        assert 19_000 <= r["bytes"] <= 20_000 and 1.5 < r["bytes_per_token"] < 8
    gpt2 = T.load("gpt2")
    texts = ["hello world"] * 3
    assert T.bytes_per_token(gpt2, texts) == pytest.approx(33 / 6)


def test_corpus_token_counts_cover_every_split_of_a_text_corpus():
    from tokenbook.data.corpus import manifest
    rows = T.corpus_token_counts("gpt2", ["fortunes", "digits"])   # digits holds images: skipped
    assert [(r["corpus"], r["split"]) for r in rows] == [("fortunes", s) for s in ("train", "val", "test")]
    m = manifest("fortunes")
    for r in rows:
        assert r["bytes"] == m["bytes"][r["split"]] and r["docs"] == m["docs"][r["split"]]
        assert 2.5 < r["bytes"] / r["tokens"] < 6      # English prose under GPT-2's BPE
