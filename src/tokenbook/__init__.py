"""TokenBook: the shared library behind every chapter.

Chapters call `tokenbook.setup(slug, scale, overrides, seed)` and use the subpackages for method
code; see README.md for the layout and the chapter contract. `setup` and `Run` are imported on
first use, so `import tokenbook.kernels` alone (e.g. on a GPU box running only the benchmarks)
needs neither Hydra nor OmegaConf.
"""
__version__ = "0.1.0"
__all__ = ["Run", "setup"]


def __getattr__(name):
    if name in __all__:
        from . import run
        return getattr(run, name)
    raise AttributeError(f"module 'tokenbook' has no attribute {name!r}")
