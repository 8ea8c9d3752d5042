"""`tokenbook.setup(...)` → `Run`: the one object a chapter notebook talks to.

    run = tokenbook.setup("prepacking", scale, overrides, seed)
    ...                                     # experiment, using run.cfg / run.device / run.dtype
    run.claim("speedup", paper="…", measured=stats.bootstrap_ratio(...), criterion=AtLeast(1.5))
    run.finish()                            # writes results/<scale>/<slug>.json (schema-checked)
"""
from __future__ import annotations

import datetime as _dt
import os
import random
import time
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from . import claims as _claims, config as _config, paths, provenance, registry, results
from .stats import Estimate


class Run:
    def __init__(self, slug: str, scale: str, overrides: list[str], seed: int, cfg: DictConfig):
        self.chapter = registry.get(slug)
        self.slug, self.scale, self.overrides, self.seed, self.cfg = slug, scale, list(overrides), seed, cfg
        self.device = _pick_device(cfg.device)
        self.dtype = _pick_dtype(cfg.dtype, self.device)
        self.metrics: dict = {}
        self.figures: list[str] = []
        self._claims: list[dict] = []
        self._t0 = time.perf_counter()
        self._started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        self.finished: Path | None = None

    # ---- what a chapter records -------------------------------------------------------------
    def claim(self, id: str, *, paper: str, measured: Estimate | None, criterion: _claims.Criterion,
              testable_at: tuple[str, ...] | list[str] = paths.SCALES, why_not: str = "", note: str = "") -> str:
        """Judge one claim of the paper against a measurement with uncertainty; returns the verdict.

        `testable_at` lists the scales whose measurements can decide the claim; elsewhere the verdict
        is "not testable at this scale" (with `why_not`). `measured=None` is allowed only there, for
        a quantity this run could not measure at all (e.g. CUDA peak memory on a CPU).
        """
        if any(c["id"] == id for c in self._claims):
            raise ValueError(f"claim {id!r} recorded twice")
        unknown = set(testable_at) - set(paths.SCALES)
        if unknown:
            raise ValueError(f"testable_at names unknown scales {sorted(unknown)}; valid: {paths.SCALES}")
        testable = self.scale in testable_at
        if not testable and not why_not:
            why_not = f"judged only at scale {', '.join(testable_at)}"
        if measured is None and testable:
            raise ValueError(f"claim {id!r}: measured=None, but the claim is testable at scale {self.scale!r}")
        verdict, reason = _claims.judge(measured, criterion, testable=testable, why_not=why_not)
        entry = {"id": id, "paper": paper, "criterion": criterion.describe(),
                 "measured": None if measured is None else measured.to_dict(),
                 "verdict": verdict, "reason": reason}
        if note:
            entry["note"] = note
        self._claims.append(entry)
        return verdict

    def log(self, **metrics) -> None:
        """Record measured numbers (JSON-serialisable) that the results file should keep."""
        self.metrics.update(_jsonable(metrics))

    def savefig(self, fig, name: str) -> None:
        """Save a matplotlib figure beside the results (results/<scale>/figures/<slug>-<name>.png).

        The figure stays open, so a notebook still shows it inline below the cell."""
        path = paths.figures_dir(self.scale) / f"{self.slug}-{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp.png")
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
        os.replace(tmp, path)
        rel = str(path.relative_to(paths.ROOT))
        if rel not in self.figures:
            self.figures.append(rel)

    def claims_table(self):
        """The claim-check table for the notebook's 'Claim check' section (a pandas-free HTML table)."""
        from .display import claims_table
        return claims_table(self._claims)

    def provenance(self):
        """After finish(): the provenance table of the written results file."""
        import json
        from .display import provenance
        if self.finished is None:
            raise RuntimeError("call run.finish() first")
        return provenance(json.loads(self.finished.read_text()))

    def finish(self) -> Path:
        """Write the results file atomically; a run that never reaches here leaves no result."""
        if not self._claims:
            raise RuntimeError("run.finish(): no claim was checked; every chapter checks at least one")
        import sys
        from .data import usage
        from .runner import library_hashes
        prov = provenance.collect()
        prov.update(device=self.device, dtype=self.dtype, started_utc=self._started,
                    wall_time_s=round(time.perf_counter() - self._t0, 3),
                    content_hash=os.environ.get("TOKENBOOK_CONTENT_HASH"),
                    # the library files this run actually imported: a later change to any of them
                    # (and only to them) makes this result stale
                    library=library_hashes(getattr(m, "__file__", None) or "" for m in list(sys.modules.values())),
                    # the corpora and sources it read, by content (tokenbook.data.usage)
                    data=usage.snapshot())
        c = self.chapter
        doc = {"schema_version": 1,
               "chapter": {"n": c.n, "slug": c.slug, "part": c.part, "title": c.title, "arxiv": c.arxiv},
               "scale": self.scale, "seed": self.seed, "overrides": self.overrides,
               "config": _config.to_dict(self.cfg), "status": "complete", "claims": self._claims,
               "metrics": self.metrics, "figures": self.figures, "provenance": prov}
        self.finished = results.write(doc)
        return self.finished

    def __repr__(self) -> str:
        return (f"Run({self.slug!r}, scale={self.scale!r}, seed={self.seed}, device={self.device!r}, "
                f"dtype={self.dtype!r}, overrides={self.overrides})")


def setup(slug: str, scale: str = "smoke", overrides=(), seed: int = 0) -> Run:
    """Compose the chapter's config, seed every RNG, pick device and dtype, start the clock."""
    registry.get(slug)  # a clear error for an unknown slug before Hydra's
    overrides = [str(o) for o in (overrides or [])]
    cfg = _config.compose(slug, scale, overrides + [f"seed={int(seed)}"])
    seed_everything(int(seed))
    return Run(slug, scale, overrides, int(seed), cfg)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    import torch
    torch.manual_seed(seed)


def _pick_device(want: str) -> str:
    import torch
    if want == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if want == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda was asked for but torch sees no CUDA device; use device=auto or cpu")
    if want not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {want!r}; valid: auto, cpu, cuda")
    return want


def _pick_dtype(want: str, device: str) -> str:
    valid = ("auto", "float32", "bfloat16", "float16")
    if want not in valid:
        raise ValueError(f"unknown dtype {want!r}; valid: {', '.join(valid)}")
    if want == "auto":
        return "bfloat16" if device == "cuda" else "float32"
    return want


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, Estimate):
        return x.to_dict()
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        v = float(x)
        return v if np.isfinite(v) else None
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if hasattr(x, "item") and callable(x.item) and getattr(x, "ndim", 1) == 0:
        return _jsonable(x.item())
    return x
