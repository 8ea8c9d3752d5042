"""Tokenizers of real LLMs from the vocab-only GGUF files that llama.cpp ships for its tokenizer tests.

The `llama-cpp-python` sdist (registry source `llama-cpp-vocabs`) holds
`vendor/llama.cpp/models/ggml-vocab-<model>.gguf`, most with `.inp`/`.out` reference vectors: test
strings separated by "\\n__ggml_vocab_test__\\n" and, one line per string, the ids the model's own
(HF) tokenizer gives without special tokens. transformers turns a GGUF vocabulary into a HF
tokenizer (slow: up to ~80 s for a SentencePiece vocabulary on 2 cores), so the result is saved once
as data/cache/tokenizers/gguf/<name>-<sha12 of the file>/converted.json and read from there.

Where transformers' conversion departs from llama.cpp's reading of the same file we repair the
tokenizer.json, each repair driven by the GGUF metadata and listed in meta.json:
  * SentencePiece vocabularies (tokenizer.ggml.model = "llama") get llama.cpp's space handling
    (prepend "▁", spaces -> "▁") and byte fallback to their <0xNN> tokens when the conversion lost
    them (Phi-3 in transformers 5.17);
  * pre-tokenizer "qwen35" does not NFC-normalize (Qwen2's does; transformers reuses Qwen2's);
  * byte-level (tokenizer.ggml.model = "gpt2") vocabularies decode without the SentencePiece
    leading-space strip that transformers adds for Llama-architecture files (Llama-3, DeepSeek);
  * pre-tokenizers "llama-bpe" (Llama-3's regex, whole words found in the vocabulary skip merging) and
    "starcoder" (digits split one by one) get their own pre-tokenization, not GPT-2's.
The transformers conversion is cached as is (converted.json); repairs are applied on every load, so
changing a repair never needs a slow re-conversion.
`reference_check(name)` measures how many reference vectors the result reproduces; the measurement
is stored in data/cache/tokenizers/reference-checks.json.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from .. import paths

SOURCE = "llama-cpp-vocabs"
MODELS_DIR = "llama_cpp_python-0.3.36/vendor/llama.cpp/models"
SEPARATOR = "\n__ggml_vocab_test__\n"
# Llama-3's pre-tokenizer (its tokenizer.json; llama.cpp's LLAMA3 pre-type)
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")

# our name -> ggml-vocab-<stem>.gguf; only the ones transformers 5.17 can convert
VOCABS = {
    "llama3": "llama-bpe",
    "llama2": "llama-spm",
    "phi3": "phi-3",
    "qwen2": "qwen2",
    "qwen3.5": "qwen35",
    "starcoder": "starcoder",
    "deepseek-llm": "deepseek-llm",
    "deepseek-coder": "deepseek-coder",
    "falcon": "falcon",
    "gpt2-gguf": "gpt-2",
}
# present in the sdist but not convertible by transformers 5.17 ("architecture ... not supported"):
# bert-bge, command-r, mpt, refact, gpt-neox, aquila, baichuan, nomic-bert-moe; gemma-4 fails config checks.


def models_dir() -> Path:
    from tokenbook.data import source_dir
    return source_dir(SOURCE) / MODELS_DIR


def gguf_path(name: str) -> Path:
    return models_dir() / f"ggml-vocab-{VOCABS[name]}.gguf"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _metadata(path: Path) -> dict:
    import gguf
    reader = gguf.GGUFReader(str(path))
    out = {}
    for key in ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.add_space_prefix",
                "tokenizer.ggml.unknown_token_id", "general.architecture"):
        field = reader.fields.get(key)
        if field is None:
            continue
        value = field.parts[field.data[0]]
        out[key] = bytes(value).decode() if field.types and field.types[0] == gguf.GGUFValueType.STRING \
            else value.tolist()[0]
    return out


def _repair(spec: dict, meta: dict) -> list[str]:
    """Bring the converted tokenizer.json in line with llama.cpp's reading of the GGUF file (in place)."""
    repairs = []
    if meta.get("tokenizer.ggml.model") == "llama" and spec["model"]["type"] == "BPE":
        if meta.get("tokenizer.ggml.add_space_prefix", True) and spec.get("normalizer") is None:
            spec["normalizer"] = {"type": "Sequence", "normalizers": [
                {"type": "Prepend", "prepend": "\u2581"},
                {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]}
            repairs.append("SentencePiece space handling: prepend '▁', replace ' ' with '▁'")
        vocab = spec["model"]["vocab"]
        if not spec["model"].get("byte_fallback") and "<0x00>" in vocab:
            spec["model"]["byte_fallback"] = True
            spec["model"]["fuse_unk"] = True
            unk_id = meta.get("tokenizer.ggml.unknown_token_id", 0)
            spec["model"]["unk_token"] = next(t for t, i in vocab.items() if i == unk_id)
            repairs.append("SentencePiece byte fallback to <0xNN> tokens, unknown token restored")
    decoder = spec.get("decoder") or {}
    if meta.get("tokenizer.ggml.model") == "gpt2" and decoder.get("type") == "Sequence" and \
            any(d.get("type") == "ByteLevel" for d in decoder["decoders"]):
        spec["decoder"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
        repairs.append("byte-level decoder without SentencePiece's leading-space strip")
    pre = meta.get("tokenizer.ggml.pre")
    if pre == "qwen35" and spec.get("normalizer") is not None:
        spec["normalizer"] = None
        repairs.append("qwen35 pre-tokenizer: no NFC normalization")
    if pre == "llama-bpe" and spec.get("pre_tokenizer", {}).get("type") == "ByteLevel":
        spec["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_REGEX}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
        spec["model"]["ignore_merges"] = True
        repairs.append("llama-bpe pre-tokenizer: Llama-3 regex, ignore_merges")
    if pre == "starcoder" and spec.get("pre_tokenizer", {}).get("type") == "ByteLevel":
        spec["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True}, spec["pre_tokenizer"]]}
        repairs.append("starcoder pre-tokenizer: split digits one by one")
    return repairs


def cached_dir(name: str) -> Path:
    """The converted tokenizer's folder (converting the GGUF vocabulary on first use, atomically)."""
    path = gguf_path(name)
    sha = _sha256(path)
    target = paths.CACHE / "tokenizers" / "gguf" / f"{name}-{sha[:12]}"
    if (target / "meta.json").exists():
        return target
    import contextlib
    import io
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    t0 = time.perf_counter()
    print(f"[tokenbook] converting {path.name} to a HF tokenizer (once) ...", flush=True)
    old_level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:  # the SentencePiece converter draws a progress bar per token on stderr
        with contextlib.redirect_stderr(io.StringIO()):
            hf = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    finally:
        hf_logging.set_verbosity(old_level)
    spec = json.loads(hf.backend_tokenizer.to_str())
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "converted.json").write_text(json.dumps(spec, ensure_ascii=False))
    (tmp / "meta.json").write_text(json.dumps({
        "name": name, "file": path.name, "source": SOURCE, "sha256": sha, "gguf": _metadata(path),
        "converted_by": "transformers " + __import__("transformers").__version__,
        "converted_s": round(time.perf_counter() - t0, 1)}, indent=1))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return target


def load_backend(name: str):
    """(tokenizers.Tokenizer, meta dict) for GGUF vocabulary `name`."""
    from tokenizers import Tokenizer as HFTokenizer
    folder = cached_dir(name)
    meta = json.loads((folder / "meta.json").read_text())
    # the repaired tokenizer.json is itself cached, keyed by this module's source (where the repairs live)
    key = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]
    repaired, record = folder / f"tokenizer-{key}.json", folder / f"repairs-{key}.json"
    if not record.exists():
        spec = json.loads((folder / "converted.json").read_text())
        repairs = _repair(spec, meta["gguf"])
        paths.atomic_write_text(repaired, json.dumps(spec, ensure_ascii=False))
        paths.atomic_write_text(record, json.dumps(repairs))
    meta["repairs"] = json.loads(record.read_text())
    return HFTokenizer.from_file(str(repaired)), meta


def reference_vectors(name: str) -> list[tuple[str, list[int]]]:
    """llama.cpp's (text, expected ids) pairs for vocabulary `name`."""
    path = gguf_path(name)
    texts = Path(str(path) + ".inp").read_text(encoding="utf-8").split(SEPARATOR)
    if texts and texts[-1] == "":  # most files end with a separator; gemma-4's does not
        texts = texts[:-1]
    lines = Path(str(path) + ".out").read_text(encoding="utf-8").split("\n")[:len(texts)]
    if len(lines) != len(texts):
        raise ValueError(f"{path.name}: {len(texts)} test strings but {len(lines)} expected-id lines")
    return [(t, [int(x) for x in line.split()]) for t, line in zip(texts, lines)]


def has_reference(name: str) -> bool:
    return name in VOCABS and Path(str(gguf_path(name)) + ".inp").exists()


def check_against_vectors(tok, name: str) -> dict:
    """How many of the reference vectors `tok` (a zoo Tokenizer) reproduces, with the mismatches."""
    vectors = reference_vectors(name)
    mismatches = []
    for text, expected in vectors:
        got = tok.encode(text)
        if got != expected:
            mismatches.append({"text": text, "expected": expected, "got": got})
    n = len(vectors)
    return {"name": name, "file": gguf_path(name).name, "n": n, "matched": n - len(mismatches),
            "match_rate": round((n - len(mismatches)) / n, 4), "mismatches": mismatches,
            "repairs": tok.info.get("repairs", [])}
