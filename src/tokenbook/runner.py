"""Execute chapter notebooks with papermill: content-hash caching, time limits, failure isolation.

Each chapter runs in its own papermill subprocess writing build/executed/<scale>/<slug>.ipynb.
The executed copy is written to a temporary name and renamed only on success; a stamp file
records the content hash (notebook + config + pins + parameters; library code and data are checked per result) so an unchanged
chapter is skipped and any change re-runs it. Ctrl-C stops the current chapter; re-running resumes.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import config as _config, paths, registry


@dataclass
class Outcome:
    slug: str
    status: str                     # ok | cached | failed | timeout | skipped
    seconds: float = 0.0
    verdicts: dict = field(default_factory=dict)
    message: str = ""


def content_hash(ch: registry.Chapter, scale: str, overrides=(), seed: int = 0) -> str:
    """sha256 over a chapter's inputs: notebook, configs, pins and parameters.

    Library code and data are tracked separately and precisely: a finished run records the hash of
    every tokenbook module it imported (provenance.library) and the content of every corpus and
    source it read (provenance.data, see tokenbook.data.usage); see `freshness`.
    """
    h = hashlib.sha256()
    h.update(json.dumps({"slug": ch.slug, "scale": scale, "overrides": list(overrides), "seed": seed}).encode())
    files = [ch.notebook] + _config.config_files(ch.slug, scale)
    files += [paths.ROOT / "requirements.txt"]
    for f in files:
        h.update(_name(f).encode())
        h.update(f.read_bytes() if f.exists() else b"<missing>")
    return h.hexdigest()


def library_hashes(module_files) -> dict[str, str]:
    """{repo-relative path: sha256} for the files among module_files that belong to the library."""
    roots = (paths.ROOT / "src" / "tokenbook", paths.ROOT / "kernels")
    out = {}
    for f in module_files:
        f = Path(f).resolve()
        if f.suffix == ".py" and any(f.is_relative_to(r) for r in roots) and f.exists():
            out[_name(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return dict(sorted(out.items()))


def library_changes(doc: dict) -> list[str]:
    """Library files a result was computed with that have changed (or vanished) since."""
    recorded = doc.get("provenance", {}).get("library")
    if not recorded:
        return ["<no library record>"]
    changed = []
    for rel, digest in recorded.items():
        f = paths.ROOT / rel
        if not f.exists() or hashlib.sha256(f.read_bytes()).hexdigest() != digest:
            changed.append(rel)
    return changed


def freshness(ch: registry.Chapter, scale: str, doc: dict) -> tuple[bool, str]:
    """Is this result what running the chapter now would compute? (fresh, reason if not)"""
    have = doc.get("provenance", {}).get("content_hash")
    if have is None:
        return False, "written outside the runner (no content hash)"
    if have != content_hash(ch, scale, doc.get("overrides", []), doc.get("seed", 0)):
        return False, "the notebook, configs or pins changed since this run"
    changed = library_changes(doc)
    if changed:
        return False, "library code it used changed since this run: " + ", ".join(changed[:5])
    from .data import usage
    changed = usage.changes(doc.get("provenance", {}).get("data", {}))
    if changed:
        return False, "data it read changed since this run: " + ", ".join(changed[:5])
    return True, ""


def _name(f) -> str:
    try:
        return Path(f).relative_to(paths.ROOT).as_posix()
    except ValueError:
        return str(f)


def stamp_path(scale: str, slug: str):
    return paths.EXECUTED / scale / f"{slug}.stamp.json"


def is_fresh(ch: registry.Chapter, scale: str, digest: str) -> bool:
    stamp, out = stamp_path(scale, ch.slug), paths.EXECUTED / scale / f"{ch.slug}.ipynb"
    res = paths.results_file(scale, ch.slug)
    if not (stamp.exists() and out.exists() and res.exists()):
        return False
    try:
        ok_stamp = json.loads(stamp.read_text()).get("hash") == digest
        doc = json.loads(res.read_text())
    except (ValueError, KeyError):
        return False
    return ok_stamp and freshness(ch, scale, doc)[0]


def run_chapter(ch: registry.Chapter, scale: str, overrides=(), seed: int = 0, *, force: bool = False,
                time_limit: float | None = None, progress: bool = True) -> Outcome:
    digest = content_hash(ch, scale, overrides, seed)
    if not force and is_fresh(ch, scale, digest):
        return Outcome(ch.slug, "cached", 0.0, _verdicts(scale, ch.slug), "unchanged since last run")
    if time_limit is None:
        time_limit = float(_config.compose(ch.slug, scale, list(overrides)).scale.time_limit_s)
    outdir = paths.EXECUTED / scale
    outdir.mkdir(parents=True, exist_ok=True)
    final, partial = outdir / f"{ch.slug}.ipynb", outdir / f"{ch.slug}.partial.ipynb"
    failed_copy = outdir / f"{ch.slug}.failed.ipynb"
    stamp_path(scale, ch.slug).unlink(missing_ok=True)
    params = json.dumps({"scale": scale, "overrides": list(overrides), "seed": seed})
    cmd = [sys.executable, "-m", "papermill", str(ch.notebook), str(partial), "-y", params,
           "--cwd", str(ch.notebook.parent), "-k", "python3"]
    cmd.append("--progress-bar" if progress else "--no-progress-bar")
    env = dict(os.environ, TOKENBOOK_CONTENT_HASH=digest, TOKENBOOK_ROOT=str(paths.ROOT),
               MPLBACKEND="module://matplotlib_inline.backend_inline", PYDEVD_DISABLE_FILE_VALIDATION="1",
               HF_HUB_DISABLE_PROGRESS_BARS="1")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    try:
        rc = proc.wait(timeout=time_limit)
    except subprocess.TimeoutExpired:
        _kill(proc)
        _keep_failed(partial, failed_copy)
        return Outcome(ch.slug, "timeout", time.perf_counter() - t0,
                       message=f"exceeded the time limit of {time_limit:.0f} s (scale.time_limit_s)")
    except KeyboardInterrupt:
        _kill(proc)
        partial.unlink(missing_ok=True)
        raise
    secs = time.perf_counter() - t0
    if rc != 0:
        _keep_failed(partial, failed_copy)
        return Outcome(ch.slug, "failed", secs, message=f"papermill exited {rc}; see {_name(failed_copy)}")
    res = paths.results_file(scale, ch.slug)
    try:
        written = json.loads(res.read_text())["provenance"]["content_hash"] == digest
    except (OSError, ValueError, KeyError):
        written = False
    if not written:
        _keep_failed(partial, failed_copy)
        return Outcome(ch.slug, "failed", secs, message="the notebook ran but never called run.finish()")
    os.replace(partial, final)
    failed_copy.unlink(missing_ok=True)
    paths.atomic_write_text(stamp_path(scale, ch.slug), json.dumps({"hash": digest, "seconds": round(secs, 2)}))
    return Outcome(ch.slug, "ok", secs, _verdicts(scale, ch.slug))


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _keep_failed(partial, failed_copy) -> None:
    if partial.exists():
        os.replace(partial, failed_copy)


def _verdicts(scale: str, slug: str) -> dict:
    from collections import Counter
    try:
        doc = json.loads(paths.results_file(scale, slug).read_text())
    except (OSError, ValueError):
        return {}
    return dict(Counter(c["verdict"] for c in doc["claims"]))


def run_many(slugs: list[str] | None, scale: str, overrides=(), seed: int = 0, *, force: bool = False,
             time_limit: float | None = None) -> list[Outcome]:
    chapters = registry.built() if not slugs else [registry.get(s) for s in slugs]
    for ch in chapters:
        if not ch.built:
            raise SystemExit(f"chapter {ch.slug!r} is not built yet (needs {_name(ch.notebook)} and {_name(ch.config)})")
    outcomes: list[Outcome] = []
    total = len(chapters)
    try:
        for i, ch in enumerate(chapters, 1):
            print(f"\n[{i}/{total}] {ch.slug} at scale {scale} ...", flush=True)
            try:
                out = run_chapter(ch, scale, overrides, seed, force=force, time_limit=time_limit)
            except KeyboardInterrupt:
                raise
            except Exception as err:  # one chapter's crash never stops the others
                out = Outcome(ch.slug, "failed", 0.0, message=f"{type(err).__name__}: {err}")
            outcomes.append(out)
            print(f"[{i}/{total}] {ch.slug}: {out.status} ({out.seconds:.1f} s) {out.message}", flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted: finished chapters are kept; re-run the same command to resume", flush=True)
        print(summary(outcomes, scale))
        raise SystemExit(130)
    print(summary(outcomes, scale))
    return outcomes


def summary(outcomes: list[Outcome], scale: str) -> str:
    lines = [f"\nSummary (scale {scale})", f"{'chapter':<28} {'status':<8} {'time':>8}  verdicts"]
    for o in outcomes:
        v = ", ".join(f"{k}: {n}" for k, n in sorted(o.verdicts.items())) or o.message
        lines.append(f"{o.slug:<28} {o.status:<8} {o.seconds:>7.1f}s  {v}")
    bad = [o for o in outcomes if o.status in ("failed", "timeout")]
    lines.append(f"{len(outcomes) - len(bad)} of {len(outcomes)} chapters ok" + (f"; failed: {', '.join(o.slug for o in bad)}" if bad else ""))
    return "\n".join(lines)
