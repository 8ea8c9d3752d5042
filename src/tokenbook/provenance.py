"""Who, where and what produced a result: git commit and dirty flag, package versions, hardware."""
from __future__ import annotations

import importlib.metadata as md
import os
import platform
import subprocess
import sys

from . import paths

PACKAGES = ("tokenbook", "torch", "triton", "transformers", "tokenizers", "numpy", "hydra-core",
            "omegaconf", "papermill", "matplotlib")


def git_state() -> dict:
    def git(*args):
        return subprocess.run(["git", *args], cwd=paths.ROOT, capture_output=True, text=True, timeout=20)
    try:
        head = git("rev-parse", "HEAD")
        commit = head.stdout.strip() if head.returncode == 0 else None
        status = git("status", "--porcelain", "--untracked-files=no")
        dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        commit, dirty = None, None
    return {"git_commit": commit, "git_dirty": dirty}


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def hardware() -> dict:
    hw = {"platform": platform.platform(), "machine": platform.machine(), "cpu": _cpu_name(),
          "cpu_count": os.cpu_count(), "torch_threads": None, "gpu": None, "cuda": None}
    if "torch" in sys.modules or _importable("torch"):
        import torch
        hw["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            hw["gpu"] = torch.cuda.get_device_name(0)
            hw["cuda"] = torch.version.cuda
    return hw


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _importable(name: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(name) is not None


def collect() -> dict:
    return {**git_state(), "versions": versions(), "hardware": hardware()}
