"""%TR / %Pure on Turkish: suffix inventory, lexicon lookups, gold boundaries, purity, alignment, estimates."""
import numpy as np
import pytest

from tokenbook.tokenization import turkish as tk


# ---------------------------------------------------------------- suffix inventory
@pytest.mark.parametrize("template, forms", [
    ("lAr", {"lar", "ler"}),
    ("DA", {"da", "de", "ta", "te"}),
    ("(y)I", {"ı", "i", "u", "ü", "yı", "yi", "yu", "yü"}),
    ("lArI", {"ları", "leri"}),                       # the I follows the A inside the suffix: never *lari
    ("(I)yor", {"ıyor", "iyor", "uyor", "üyor", "yor"}),
    ("mAK", {"mak", "mek", "mağ", "meğ"}),
])
def test_expand_template(template, forms):
    assert tk.expand_template(template) == forms


def test_inventory_holds_single_morphemes_not_chains():
    inv = tk.suffix_allomorphs()
    assert {"lar", "ler", "dan", "ten", "ıyor", "acak", "eceğ", "lık", "liğ", "çı", "mış"} <= inv
    assert not {"lara", "ların", "dığını", "lari"} & inv


def test_turkish_case():
    assert tk.tr_lower("İSTANBUL") == "istanbul" and tk.tr_lower("IĞDIR") == "ığdır"
    assert tk.tr_upper("istanbul") == "İSTANBUL" and tk.tr_upper("ığdır") == "IĞDIR"
    assert tk.fold("görevleri") == "gorevleri"


# ---------------------------------------------------------------- lexicon
@pytest.fixture(scope="module")
def toy_lexicon():
    stems = tk.parse_hunspell_lines(["kitap\tlar ları\nev\tde", "ev\tden\nAnkara\t'da"])
    return tk.Lexicon(stems, tk.suffix_allomorphs())


def test_parse_merges_repeated_stems(toy_lexicon):
    assert set(toy_lexicon.stems["ev"].split()) == {"de", "den"}


@pytest.mark.parametrize("text, cls", [
    ("kitaplar", "word"), ("Kitapları", "word"), ("KİTAPLAR", "word"), (" evden", "word"), ("ev", "word"),
    ("kitapde", "invalid"),                 # a suffix chain the stem's flags do not allow
    ("lar", "morpheme"), ("'de", "morpheme"), (" ıyor", "morpheme"),
    ("xq", "invalid"), ("ev1", "invalid"), ("lara", "invalid"),
    ("123", "skip"), (" .", "skip"), ("  ", "skip"),
    ("ankara", "word"),                     # capitalised entries also accept the lower-cased token
])
def test_classify(toy_lexicon, text, cls):
    assert toy_lexicon.classify(text) == cls


def test_undecodable_byte_piece_is_invalid(toy_lexicon):
    cache = tk.TokenClassCache(toy_lexicon)
    assert cache("ı".encode()[:1]) == "invalid" and cache(b" ev") == "word"


# ---------------------------------------------------------------- gold boundaries
@pytest.mark.parametrize("form, lemma, end", [
    ("kuşlara", "kuş", 3), ("Kuşlara", "kuş", 3), ("İnternette", "internet", 8),
    ("kemiğimde", "kemik", 5),     # k → ğ
    ("şeklinde", "şekil", 4),      # dropped vowel
    ("gorevleri", "görev", 5),     # written without diacritics
    ("ko", "koy", 2),              # colloquial truncation: all stem
    ("bana", "ben", None), ("xyz", "_", None),
])
def test_stem_end(form, lemma, end):
    assert tk.stem_end(form, lemma) == end


RECORD = {"text": "Açıklanmayan kuşlara baktım.",
          "words": [["Açıklanmayan", "açık", "ADJ", ["Açık", "la", "nma", "yan"], True],
                    ["kuşlara", "kuş", "NOUN", ["kuşlara"], True],
                    ["baktım", "bak", "VERB", ["baktım"], False],
                    [".", ".", "PUNCT", ["."], True]]}


def test_gold_sentence_boundaries():
    from tokenbook.chapters.tokenization_standards import show_gold
    g = tk.gold_sentence(RECORD)
    assert show_gold(g) == "Açık|la|nma|yan kuş|lara bak|tım."
    b = lambda s: len(s.encode())
    assert g.stem_cuts == (b("Açık"), b("Açıklanmayan kuş"), b("Açıklanmayan kuşlara bak"))
    assert [w[2] for w in g.words] == ["eval", "eval", "eval", "skip"]
    with pytest.raises(ValueError):
        tk.gold_sentence({"text": "kuşlar", "words": [["kuşlara", "kuş", "NOUN", ["kuşlara"], False]]})


class Pieces:
    """A fake tokenizer that cuts the text into given pieces (optionally with a SentencePiece prefix space)."""
    name = "pieces"

    def __init__(self, pieces, prefix=False):
        self.pieces = [p.encode() for p in pieces]
        if prefix:
            self.pieces[0] = b" " + self.pieces[0]
        self.vocab_size = len(self.pieces)

    def encode(self, text):
        return list(range(len(self.pieces)))

    def token_bytes(self, ids):
        return [self.pieces[i] for i in ids]


def _purity(pieces, prefix=False):
    g = tk.gold_sentence(RECORD)
    _, spans, _ = tk.token_spans(Pieces(pieces, prefix), RECORD["text"])
    return tk.purity_counts(spans, RECORD["text"].encode(), g)


def test_purity_morpheme_aligned_tokens_are_pure():
    c = _purity(["Açık", "la", "nma", "yan", " kuş", "lara", " bak", "tım", "."])
    assert (c["pure"], c["pure_total"], c["cuts_hit"], c["cuts"]) == (8, 8, 3, 3)


def test_purity_counts_crossings():
    # "lanma" crosses la|nma, "aktım" crosses bak|tım; fragments that cross nothing are pure
    c = _purity(["Açık", "lanma", "yan", " kuş", "l", "ara", " b", "aktım", "."], prefix=True)
    assert (c["pure"], c["pure_total"]) == (6, 8)
    assert c["cuts_hit"] == 2  # açık|la and kuş|lara coincide with a token edge, bak|tım does not
    # a token across a word edge is impure, and so is every token that straddles a gold boundary
    c = _purity(["Açıkla", "nmayan", " kuşl", "ara b", "aktım", "."])
    assert (c["pure"], c["pure_total"], c["cuts_hit"]) == (0, 5, 0)


def test_char_tokenizer_is_pure_and_cuts_every_boundary():
    g = tk.gold_sentence(RECORD)
    c = tk.sentence_counts(tk.CharTokenizer(), RECORD["text"], tk.TokenClassCache(tk.Lexicon({}, frozenset())), g)
    assert c["pure"] == c["pure_total"] == len([ch for ch in RECORD["text"] if ch.isalpha()])
    assert c["cuts_hit"] == c["cuts"] == 3
    assert c["tokens"] == len(RECORD["text"]) and c["bytes"] == len(RECORD["text"].encode())


def test_token_spans_alignment():
    _, spans, _ = tk.token_spans(Pieces(["kuş", "lara"], prefix=True), "kuşlara")
    assert spans == [(0, 4), (4, 8)]
    with pytest.raises(tk.AlignmentError):
        tk.token_spans(Pieces(["kuş", "lar"]), "kuşlara")


# ---------------------------------------------------------------- estimates
def _counts(types, classes):
    n = len(types)
    return {"types": [np.array(t) for t in types], "classes": classes,
            "tokens": np.ones(n, dtype=np.int64)}


def test_type_rate_counts_unique_types_and_pairs():
    c = _counts([[1, 2], [2, 3], [3]], {1: "word", 2: "invalid", 3: "morpheme", 4: "skip"})
    est = tk.type_rate(c, n_boot=200)
    assert est.value == pytest.approx(2 / 3) and est.lo <= est.value <= est.hi
    assert tk.type_rate(c, valid=("word",), n_boot=50).value == pytest.approx(1 / 3)
    assert tk.type_rate(c, other=c, n_boot=50).value == 0.0


def test_rate_and_difference():
    a = {"v": np.array([1, 2, 3]), "n": np.array([2, 2, 4])}
    b = {"v": np.array([0, 1, 1]), "n": np.array([2, 2, 4])}
    assert tk.rate(a, "v", "n", n_boot=100).value == pytest.approx(6 / 8)
    assert tk.rate_difference(a, b, "v", "n", n_boot=100).value == pytest.approx(6 / 8 - 2 / 8)


def test_correlation_gap():
    y = np.arange(6.0)
    est = tk.correlation_gap(y, -y, y, n_boot=200)
    assert est.value == pytest.approx(2.0)
    with pytest.raises(ValueError):
        tk.correlation_gap(np.ones(6), y, y)


def test_paper_table_correlations():
    """Transcription check of the paper's table: the signed correlations we quote."""
    from tokenbook.chapters.tokenization_standards import paper_correlations
    pc = paper_correlations()
    assert pc["r_tr_mmlu"] == pytest.approx(0.10, abs=0.01) and pc["r_pure_mmlu"] == pytest.approx(-0.51, abs=0.01)


# ---------------------------------------------------------------- the real data (when prepared)
def _prepared(name):
    from tokenbook.data.corpus import is_prepared
    try:
        return is_prepared(name)
    except Exception:
        return False


@pytest.mark.skipif(not _prepared("turkish-treebank"), reason="turkish-treebank corpus not prepared (make data)")
def test_treebank_gold_is_consistent():
    from tokenbook.data import load_records
    recs = load_records("turkish-treebank", "val")
    golds = [tk.gold_sentence(r) for r in recs]
    words = [w for g in golds for w in g.words if w[2] != "skip"]
    assert len(recs) > 100 and sum(w[2] == "eval" for w in words) / len(words) > 0.97
    c = [tk.purity_counts(tk.token_spans(tk.CharTokenizer(), g.text)[1], g.text.encode(), g) for g in golds]
    assert sum(x["pure"] for x in c) == sum(x["pure_total"] for x in c) > 0
    assert sum(x["cuts_hit"] for x in c) == sum(x["cuts"] for x in c) > 0


@pytest.mark.skipif(not _prepared("turkish-hunspell"), reason="turkish-hunspell corpus not prepared (make data)")
def test_hunspell_lexicon():
    lex = tk.load_lexicon()
    assert len(lex.stems) > 300_000
    assert all(lex.classify(w) == "word" for w in ("kuşlara", "araştırdım", "bulamadım", "çizgiler"))
    assert lex.classify("xqzt") == "invalid" and lex.classify("lar") in ("word", "morpheme")


def test_token_premium_counts_tokens_per_side():
    pairs = [("ab", "abcd"), ("abc", "abcdef")]
    est = tk.token_premium(tk.CharTokenizer(), pairs, n_boot=100)
    assert est.value == pytest.approx(10 / 5)


def test_correlation_estimate_and_within_vocab_agreement():
    from tokenbook.chapters.tokenization_standards import within_vocab_agreement
    y = np.arange(8.0)
    assert tk.correlation_estimate(y, -y, n_boot=100).value == pytest.approx(-1.0)
    p = {"vocab": np.array([512, 512, 1024, 1024]), "tr": np.array([0.8, 0.7, 0.9, 0.6]),
         "bpb": np.array([2.0, 2.1, 1.9, 1.8])}
    assert within_vocab_agreement(p) == (1, 2)
