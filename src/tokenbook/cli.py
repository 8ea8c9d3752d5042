"""Command line behind the Makefile: `python -m tokenbook {run,book,list,validate}`."""
from __future__ import annotations

import argparse
import sys

from . import paths


def auto_scale() -> str:
    try:
        import torch
        return "gpu" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tokenbook", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("run", help="execute chapter notebooks (all built chapters by default)")
    r.add_argument("chapters", nargs="*", help="chapter slugs (default: every chapter with a notebook)")
    r.add_argument("--scale", default="auto", choices=("auto",) + paths.SCALES,
                   help="auto = gpu when CUDA is available, else cpu")
    r.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                   help="Hydra override, repeatable (e.g. -o chapter.n_prompts=16 -o model=random-llama)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--force", action="store_true", help="re-run even when nothing changed")
    r.add_argument("--time-limit", type=float, default=None, help="seconds per chapter (default: scale.time_limit_s)")

    b = sub.add_parser("book", help="generate the book sources and build the HTML (never executes notebooks)")
    b.add_argument("--out", default=None, help="output folder (default: build/book)")

    sub.add_parser("list", help="list the 66 chapters, their part and whether they are built")

    v = sub.add_parser("validate", help="check every results file against the schema")
    v.add_argument("--scale", default=None, choices=paths.SCALES)

    args = p.parse_args(argv)
    if args.cmd == "run":
        from . import config, runner
        scale = auto_scale() if args.scale == "auto" else args.scale
        try:
            for slug in args.chapters:
                from . import registry
                registry.get(slug)
        except KeyError as err:
            print(f"error: {err.args[0]}", file=sys.stderr)
            return 2
        try:
            if args.chapters:  # fail fast on a bad override, before any notebook starts
                config.compose(args.chapters[0], scale, args.override)
        except config.ConfigError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        outcomes = runner.run_many(args.chapters or None, scale, args.override, args.seed,
                                   force=args.force, time_limit=args.time_limit)
        return 1 if any(o.status in ("failed", "timeout") for o in outcomes) else 0
    if args.cmd == "book":
        from . import book
        out = book.build(out=args.out)
        print(f"book: {out}/html/index.html")
        return 0
    if args.cmd == "list":
        from . import registry
        for c in registry.chapters():
            print(f"{c.n:>3}  {c.slug:<26} {c.part:<18} {c.feasibility}  {'built' if c.built else '-'}")
        return 0
    if args.cmd == "validate":
        import json
        from . import results
        bad = 0
        for scale in ([args.scale] if args.scale else paths.SCALES):
            for f in sorted((paths.RESULTS / scale).glob("*.json")):
                try:
                    results.validate(json.loads(f.read_text()))
                    print(f"ok    {f.relative_to(paths.ROOT)}")
                except Exception as err:
                    bad += 1
                    print(f"BAD   {f.relative_to(paths.ROOT)}: {str(err).splitlines()[0]}")
        return 1 if bad else 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
