"""TokenBook: the shared library behind every chapter.

Chapters call `tokenbook.setup(slug, scale, overrides, seed)` and use the subpackages for method
code; see README.md for the layout and the chapter contract. `setup` and `Run` are imported on
first use, so `import tokenbook.kernels` alone (e.g. on a GPU box running only the benchmarks)
needs neither Hydra nor OmegaConf.
"""
from pathlib import Path as _Path

__version__ = "0.1.0"

# Installed (make setup), pyproject maps tokenbook.kernels to the top-level kernels/ folder. Run from
# a plain checkout with PYTHONPATH=src (e.g. on a GPU box without our venv), the same mapping comes
# from searching the repository root for the `kernels` subpackage too.
_repo_kernels = _Path(__file__).resolve().parents[2] / "kernels"
if (_repo_kernels / "__init__.py").exists() and str(_repo_kernels.parent) not in __path__:
    __path__.append(str(_repo_kernels.parent))
__all__ = ["Run", "setup"]


def __getattr__(name):
    if name in __all__:
        from . import run
        return getattr(run, name)
    raise AttributeError(f"module 'tokenbook' has no attribute {name!r}")
