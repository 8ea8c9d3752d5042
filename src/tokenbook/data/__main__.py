"""`python -m tokenbook.data prepare [NAMES...] [--list] [--force]` and `... fetch [SOURCES...]`.

`make data` runs `prepare` with no names: every corpus, then every tokenizer-files source.
"""
from __future__ import annotations

import argparse
import sys
import time

from tokenbook.data import corpus as _corpora
from tokenbook.data.fetch import FetchError, download, sha256_file, source_dir
from tokenbook.data.registry import RegistryError, load


def _table(rows: list[list[str]], head: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    line = lambda r: "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(r) for r in rows])


def cmd_list() -> int:
    reg = load()
    rows = [[c.name, c.kind, ",".join(c.sources), c.description[:70]] for c in reg.corpora.values()]
    print(_table(rows, ["corpus", "kind", "sources", "description"]))
    tok = [s for s in reg.sources.values() if s.use == "tokenizer-files"]
    print("\ntokenizer-file sources: " + ", ".join(f"{s.name} ({s.package} {s.version})" for s in tok))
    return 0


def cmd_prepare(names: list[str], force: bool) -> int:
    reg = load()
    todo = names or list(reg.corpora)
    for n in todo:
        reg.corpus(n)  # unknown names fail before anything is fetched
    rows, failed = [], []
    for i, n in enumerate(todo, 1):
        t0 = time.time()
        print(f"[{i}/{len(todo)}] {n}: ", end="", flush=True)
        try:
            m = _corpora.prepare(n, force=force, progress=lambda s: print(s, end=" ... ", flush=True))
        except (FetchError, RuntimeError, OSError, ValueError) as e:
            print(f"FAILED\n  {e}", flush=True)
            failed.append(n)
            continue
        dt = time.time() - t0
        print(f"ok ({dt:.1f} s)", flush=True)
        mb = sum(m["bytes"].values()) / 1e6
        rows.append([n, sum(m["docs"].values()), f"{mb:.1f}", m["docs"]["train"], m["docs"]["val"], m["docs"]["test"],
                     m.get("duplicates_dropped", 0), "yes" if m.get("capped_at_bytes") else "", f"{dt:.1f}"])
    if not names:  # `make data`: the tokenizer files too
        for s in (s for s in reg.sources.values() if s.use == "tokenizer-files"):
            t0 = time.time()
            print(f"[tokenizer files] {s.name}: ", end="", flush=True)
            try:
                source_dir(s.name)
                print(f"ok ({time.time() - t0:.1f} s)")
            except FetchError as e:
                print(f"FAILED\n  {e}")
                failed.append(s.name)
    if rows:
        print()
        print(_table(rows, ["corpus", "docs", "MB", "train", "val", "test", "dups", "capped", "seconds"]))
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def cmd_fetch(names: list[str], update_sha: bool) -> int:
    reg = load()
    for n in names or list(reg.sources):
        s = reg.source(n)
        if update_sha:
            # download without trusting the pin, print what the registry should say
            from dataclasses import replace
            from tokenbook.data import fetch
            import tempfile, pathlib, shutil
            tmp = pathlib.Path(tempfile.mkdtemp())
            try:
                res = fetch._run(fetch.download_command(s, tmp), tmp)
                if res.returncode:
                    print(f"{n}: download failed: {res.stderr.strip()[-500:]}")
                    continue
                f = next(p for p in tmp.iterdir() if p.is_file())
                print(f"{n}: {f.name}  sha256: {sha256_file(f)}  size_mb: {f.stat().st_size / 1e6:.1f}")
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            continue
        print(f"{n}: {source_dir(n)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tokenbook.data", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="fetch sources and build corpora under data/cache/")
    p.add_argument("names", nargs="*", help="corpus names (default: all, plus tokenizer files)")
    p.add_argument("--list", action="store_true", help="list the corpora and exit")
    p.add_argument("--force", action="store_true", help="rebuild even if an up-to-date copy exists")
    f = sub.add_parser("fetch", help="fetch and unpack sources only")
    f.add_argument("names", nargs="*")
    f.add_argument("--update-sha", action="store_true", help="download and print the archive's sha256 for the registry")
    a = ap.parse_args(argv)
    try:
        if a.cmd == "prepare":
            return cmd_list() if a.list else cmd_prepare(a.names, a.force)
        return cmd_fetch(a.names, a.update_sha)
    except (RegistryError, FetchError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
