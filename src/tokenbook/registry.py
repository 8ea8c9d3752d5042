"""The chapter registry: conf/chapters.tsv lists all 66 chapters (number, slug, part, grade, arXiv, title).

The book's table of contents, the scoreboard and the runner all read it from here.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from . import paths

PARTS = {
    "A-long-context": "A. Long-context inference",
    "B-positions": "B. Positions and length extrapolation",
    "C-tokenization": "C. Tokenization",
    "D-decoding": "D. Decoding",
    "E-peft": "E. Prompt tuning and parameter-efficient methods",
    "F-retrieval": "F. Retrieval and compression",
    "G-security-theory": "G. Security and theory",
    "H-code": "H. Code",
    "I-vision": "I. Vision tokens",
    "J-applied": "J. Applied",
}
GRADES = {"A": "the claim can be tested faithfully in miniature",
          "B": "a faithful mechanism on proxy data or a proxy model",
          "C": "only a proxy of the mechanism can be tested"}


@dataclass(frozen=True)
class Chapter:
    n: int
    slug: str
    part: str
    feasibility: str
    arxiv: str
    title: str

    @property
    def notebook(self) -> Path:
        return paths.NOTEBOOKS / self.part / f"{self.n:02d}-{self.slug}.ipynb"

    @property
    def config(self) -> Path:
        return paths.CONF / "chapter" / f"{self.slug}.yaml"

    @property
    def built(self) -> bool:
        """A chapter is built once its notebook and its config exist."""
        return self.notebook.exists() and self.config.exists()

    @property
    def arxiv_url(self) -> str:
        return f"https://arxiv.org/abs/{self.arxiv}" if self.arxiv else ""


@lru_cache(maxsize=None)
def chapters() -> tuple[Chapter, ...]:
    with open(paths.CONF / "chapters.tsv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    out = tuple(Chapter(int(r["n"]), r["slug"], r["part"], r["feasibility"], r["arxiv"], r["title"])
                for r in rows)
    unknown = {c.part for c in out} - set(PARTS)
    if unknown:
        raise ValueError(f"conf/chapters.tsv names unknown parts {sorted(unknown)}; known: {list(PARTS)}")
    return out


def get(slug: str) -> Chapter:
    by_slug = {c.slug: c for c in chapters()}
    if slug not in by_slug:
        import difflib
        close = difflib.get_close_matches(slug, by_slug, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise KeyError(f"unknown chapter {slug!r}.{hint} Built chapters: "
                       f"{', '.join(c.slug for c in chapters() if c.built) or 'none'}.")
    return by_slug[slug]


def built() -> list[Chapter]:
    return [c for c in chapters() if c.built]
