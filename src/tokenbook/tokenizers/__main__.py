"""`python -m tokenbook.tokenizers table`: measure bytes/token of every tokenizer on the reference corpora.

Writes data/cache/tokenizers/bytes_per_token.json (atomically) and runs every reference-vector check;
the book's tokenizer appendix reads both. `make data` runs it after preparing the corpora.
"""
import argparse
import json
import sys

from .. import paths
from . import bytes_per_token_table, reference_check, reference_names

TABLE = paths.CACHE / "tokenizers" / "bytes_per_token.json"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tokenbook.tokenizers")
    p.add_argument("cmd", choices=["table"])
    p.add_argument("--max-bytes", type=int, default=1_000_000)
    args = p.parse_args(argv)
    for name in reference_names():
        r = reference_check(name)
        print(f"reference vectors {name:<16} {r['matched']}/{r['n']}", flush=True)
    rows = bytes_per_token_table(max_bytes=args.max_bytes)
    paths.atomic_write_text(TABLE, json.dumps(rows, indent=1))
    print(f"wrote {TABLE} ({len(rows)} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
