"""The Less-is-Better learner and tokenizer: exact round trips, equal vocabularies, the reading and the learning."""
import json
import random

import numpy as np
import pytest

from tokenbook.tokenization import lib

ODD = ["", "a", " ", "\n\n", "naïve café — 東京 🙂", "\x00\x01\x7f\x80", "trailing  \t\r\n", "é" * 40,
       "The sons of Israel said to Moses, “We will go.” " * 3, "a_b__c 12,345.67 don't ’tis"]
TEXT = ("The sons of Israel went out of the land of Egypt, and the sons of Israel said to Moses: "
        "we will go into the land. ") * 60


def _units(k=50, seed=0):
    rng = random.Random(seed)
    pool = ["the", " the ", "of the", "sons", " of", "and ", "é", "東京", "ca", "caf", "café", "ab", "abc", "Isr",
            "Israel", ", and the ", "🙂!", "an", "nd"]
    rng.shuffle(pool)
    return pool[:k]


@pytest.mark.parametrize("mode", lib.MODES)
def test_round_trip_is_exact_on_arbitrary_utf8(mode):
    tok = lib.LibTokenizer(_units(), mode=mode)
    rng = random.Random(1)
    alphabet = "ab cé東🙂\n\x00ther"
    texts = ODD + ["".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 60))) for _ in range(200)]
    for t in texts:
        ids = tok.encode(t)
        assert tok.decode(ids) == t
        assert all(0 <= i < tok.vocab_size - tok.n_reserved for i in ids)
        assert b"".join(tok.token_bytes(ids)) == t.encode("utf-8")


def test_greedy_reading_is_longest_match_with_byte_fallback():
    tok = lib.LibTokenizer(["ab", "abc", "cd", "é"])
    # longest match first: "abc" then "d"; a greedy reader does not look ahead to "ab|cd"
    assert tok.pieces("abcd") == ["abc", "d"]
    assert tok.encode("abcd") == [256 + 1, ord("d")]
    # an unknown non-ASCII character falls back to its UTF-8 bytes; a learned one is one id
    assert tok.encode("ü") == list("ü".encode("utf-8"))
    assert tok.encode("é") == [256 + 3]


def test_shortest_reading_never_needs_more_tokens_than_greedy():
    units = ["ab", "abc", "cd", "bcd", "xa", "a b", " b"]
    g, s = lib.LibTokenizer(units), lib.LibTokenizer(units, mode="shortest")
    assert len(g.encode("abcd")) == 2 and len(s.encode("abcd")) == 2
    assert g.pieces("xabcd") == ["xa", "bcd"]
    rng = random.Random(0)
    for _ in range(300):
        t = "".join(rng.choice("abcdx ") for _ in range(rng.randrange(1, 30)))
        assert len(s.encode(t)) <= len(g.encode(t))
        assert s.decode(s.encode(t)) == t
    # a case where greedy loses: "abc|d" + "x" … vs the DP optimum
    g2, s2 = lib.LibTokenizer(["abc", "cde", "ab"]), lib.LibTokenizer(["abc", "cde", "ab"], mode="shortest")
    assert len(g2.encode("abcde")) == 3 and len(s2.encode("abcde")) == 2


def test_vocabulary_accounting_and_bad_ids():
    tok = lib.LibTokenizer(["ab", "cd"], vocab_size=300, n_reserved=2)
    assert len(tok) == tok.vocab_size == 300
    with pytest.raises(ValueError, match="reserved"):
        tok.decode([258])
    with pytest.raises(ValueError):
        lib.LibTokenizer(["ab", "ab"])
    with pytest.raises(ValueError, match="2 UTF-8 bytes"):
        lib.LibTokenizer(["a"])
    with pytest.raises(ValueError, match="no room"):
        lib.LibConfig(vocab_size=258, n_reserved=2)
    with pytest.raises(ValueError, match="unknown mode"):
        lib.LibTokenizer(["ab"], mode="optimal")


def test_learner_fills_capacity_and_shortens_reading():
    cfg = lib.LibConfig(vocab_size=256 + 60 + 2, n_reserved=2, n_articles=40, article_chars=600, seed=0)
    learner = lib.LibLearner(cfg).fit(TEXT)
    # full, less the few units punished past the tail or expired on probation in the last article
    assert cfg.capacity - 5 <= len(learner.units) <= cfg.capacity == 60
    assert len(set(learner.units)) == len(learner.units)
    assert all(len(u) <= cfg.max_len for u in learner.units)
    tok = lib.LibTokenizer(learner.units, vocab_size=cfg.vocab_size, n_reserved=2)
    n_bytes = len(TEXT.encode())
    # far fewer tokens than bytes: the lexicon holds what this repetitive text is made of
    assert n_bytes / len(tok.encode(TEXT)) > 3.0
    # it learned units across word boundaries (multi-word units)
    assert lib.multiword_units(learner.units)
    # the trie holds exactly the surviving units
    assert all(tok._unit_id(u) is not None for u in learner.units)
    first, last = learner.log[0]["chars_per_token"], np.mean([r["chars_per_token"] for r in learner.log[-5:]])
    assert last > first + 1.0


def test_learning_is_deterministic_given_the_seed():
    cfg = lib.LibConfig(vocab_size=256 + 40, n_articles=15, article_chars=500, seed=3)
    a = lib.LibLearner(cfg).fit(TEXT).units
    b = lib.LibLearner(cfg).fit(TEXT).units
    assert a == b
    c = lib.LibLearner(lib.LibConfig(vocab_size=256 + 40, n_articles=15, article_chars=500, seed=4)).fit(TEXT).units
    assert a != c


def test_evaluation_rewards_the_unit_that_saves_tokens():
    # "the" reads "the cat" in fewer tokens than "th"+"e": reward "the"; "ec" wins nothing over "e"|"c"
    learner = lib.LibLearner(lib.LibConfig(vocab_size=300))
    for u in ("th", "the", "ec", " cat"):
        learner.units.append(u)
        learner.trie.add(u, True)
    rank = {u: r for r, u in enumerate(learner.units)}
    assert learner._compare("the cat", 0, 3, 2, 1, rank)           # the| cat (2) vs th|e| cat (3)
    # "thec" + "at": "th|ec|at" = th, ec, a, t (4) vs "the|c|a|t" (4): a tie, decided by rank sums
    s = "thecat"
    assert learner._compare(s, 0, 3, 2, 1, rank) is (rank["the"] <= rank["th"] + rank["ec"])
    # a punished unit at the tail is forgotten; a rewarded one moves up
    n = len(learner.units)
    learner._update([(" cat", -1), ("ec", +1)], rank)
    assert " cat" not in learner.units and learner.units.index("ec") < 2 and len(learner.units) == n - 1
    assert learner.trie.longest(" cat", 0) == 0


def test_capacity_forgets_the_lowest_ranked_units():
    learner = lib.LibLearner(lib.LibConfig(vocab_size=256 + 3))
    for u in ("aa", "bb", "cc", "dd", "ee"):
        learner.units.append(u)
        learner.trie.add(u, True)
    rank = {u: r for r, u in enumerate(learner.units)}
    learner._update([("ee", +1), ("ee", +1), ("ee", +1)], rank)
    assert learner.units == ["ee", "aa", "bb"]
    assert learner.trie.longest("dd", 0) == 0 and learner.trie.longest("ee", 0) == 2


def test_learn_caches_atomically_and_reloads_the_same_lexicon(tmp_path, monkeypatch):
    monkeypatch.setattr(lib.paths, "CACHE", tmp_path)
    cfg = lib.LibConfig(vocab_size=256 + 30, n_articles=5, article_chars=300)
    a = lib.learn([TEXT], cfg, label="t", progress=False)
    files = list((tmp_path / "tokenizers" / "lib").rglob("*"))
    assert [f.name for f in files if f.is_file()] == ["lexicon.json"]
    doc = json.loads(next(f for f in files if f.is_file()).read_text())
    assert doc["settings"]["vocab_size"] == 286 and doc["tokenizer"]["units"] == a.units
    b = lib.learn([TEXT], cfg, label="t", progress=False)
    assert b.info["cached"] and b.units == a.units and not a.info["cached"]
    c = lib.learn([TEXT + "!"], cfg, label="t", progress=False)  # other texts: another cache entry
    assert not c.info["cached"]
    many = lib.learn_many([TEXT], [cfg], label="t", workers=2, progress=False)
    assert many[0].units == a.units and many[0].info["cached"]


def test_word_tokenizer_round_trips_and_spells_unknown_words_in_bytes():
    w = lib.WordTokenizer.train([TEXT], vocab_size=256 + 10 + 2, n_reserved=2)
    assert len(w) == 268 and len(w.words) == 10
    for t in ODD:
        assert w.decode(w.encode(t)) == t
    assert w.encode(" the") == [w.ids[" the"]]
    assert w.encode(" zebra") == list(b" zebra")


def test_token_kinds():
    text = "the sons of Israel"
    pieces = ["the", " so", "ns", " of Israel"]
    assert lib.token_kinds(text, [p.encode() for p in pieces]) == ["word", "subword", "subword", "multi-word"]
    assert lib.token_kinds("a, b", [b"a", b", ", b"b"]) == ["word", "other", "word"]
    assert lib.token_kinds("don't", [b"don't"]) == ["word"]
    assert lib.token_kinds("é!", [bytes([b]) for b in "é!".encode()]) == ["subword", "subword", "other"]
    with pytest.raises(ValueError):
        lib.token_kinds("abc", [b"ab"])
    assert lib.multiword_units(["of the", "the", " of", "s of"]) == ["of the", "s of"]


def test_word_breaks_counts_tokens_that_bridge_two_words():
    text = "the sons of Israel"
    assert lib.word_breaks(text, [b"the", b" sons", b" of", b" Israel"]) == (3, 3)
    assert lib.word_breaks(text, [b"the ", b"sons ", b"of ", b"Israel"]) == (3, 3)
    # "e s" bridges the|sons, "of Isr" bridges of|Israel; "ons " ends at the break before "of"
    assert lib.word_breaks(text, [b"th", b"e s", b"ons ", b"of Isr", b"ael"]) == (1, 3)
    assert lib.word_breaks("é é", [b"\xc3", b"\xa9 \xc3", b"\xa9"]) == (0, 1)
    assert lib.word_breaks("word", [b"word"]) == (0, 0)


def test_learn_many_in_processes_matches_learning_in_process(tmp_path, monkeypatch):
    monkeypatch.setattr(lib.paths, "CACHE", tmp_path)
    monkeypatch.setenv("TOKENBOOK_CACHE", str(tmp_path))  # the spawned workers' cache
    cfgs = [lib.LibConfig(vocab_size=256 + k, n_articles=6, article_chars=300, seed=1) for k in (20, 35)]
    par = lib.learn_many([TEXT], cfgs, label="p", workers=2, progress=False)
    assert [t.info["cached"] for t in par] == [False, False]
    seq = [lib.learn([TEXT], c, label="p", use_cache=False, progress=False) for c in cfgs]
    assert [t.units for t in par] == [t.units for t in seq]
    assert [len(t.units) for t in par] == [20, 35]
    again = lib.learn_many([TEXT], cfgs, label="p", workers=2, progress=False)
    assert all(t.info["cached"] for t in again)
