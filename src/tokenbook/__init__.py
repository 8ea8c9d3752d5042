"""TokenBook: the shared library behind every chapter.

Chapters call `tokenbook.setup(slug, scale, overrides, seed)` and use the subpackages for method
code; see README.md for the layout and the chapter contract.
"""
__version__ = "0.1.0"

from .run import Run, setup  # noqa: E402,F401
