"""`python -m tokenbook.tokenizers table`: measure bytes/token of every tokenizer on the reference corpora.

Writes data/cache/tokenizers/bytes_per_token.json and corpus_tokens.json (GPT-2 tokens of every
split of every text corpus), atomically, and runs every reference-vector check; the book's tokenizer
and data appendices read them. `make data` runs it after preparing the corpora.
"""
import argparse
import json
import sys

from .. import paths
from . import bytes_per_token_table, corpus_token_counts, reference_check, reference_names

TABLE = paths.CACHE / "tokenizers" / "bytes_per_token.json"
COUNTS = paths.CACHE / "tokenizers" / "corpus_tokens.json"


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
    counts = corpus_token_counts("gpt2")
    paths.atomic_write_text(COUNTS, json.dumps(counts, indent=1))
    print(f"wrote {COUNTS} ({len(counts)} rows, {sum(r['tokens'] for r in counts) / 1e6:.1f}M GPT-2 tokens)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
