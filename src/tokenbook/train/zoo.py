"""House models by name: tiny Llamas trained by `tokenbook.train.trainer` on first use, then cached.

    model, tokenizer, card = house_model("house-prose", scale="smoke", device="cpu")

The recipe of each is `conf/house/<name>.yaml`, composed as the Hydra group `house` through
`tokenbook.config.compose(None, scale, ["+house=<name>", *overrides])`, so per-scale values
(`${by_scale:...}`) and overrides (`house.train.steps=50`) work as they do for chapters.

Cache layout: `data/cache/zoo/<name>-<scale>-<hash>/` holds the model (safetensors), the tokenizer,
`card.json`, `train_log.json` and `loss_curve.png`. The hash covers the model config, the training
config, the tokenizer, the data recipe and a fingerprint of the actual token streams, and
CODE_VERSION (bump it when the trainer changes what a model would learn), so a stale model never
masquerades as a fresh one. Training runs in `data/cache/zoo/.work/<same name>/` with periodic
checkpoints — an interrupted training resumes there — and the finished folder is renamed into
place at the end, so a folder with a card is always complete.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from .. import paths
from .byte_tokenizer import ByteTokenizer
from .trainer import TrainConfig, train

CODE_VERSION = "zoo-1"          # bump when training code changes what a cached model would be
BUILTIN_CORPORA = ("pydoc_topics", "python_stdlib")  # no val split: every 1/val_fraction-th document (tests, quick runs)


def names() -> list[str]:
    return sorted(p.stem for p in (paths.CONF / "house").glob("*.yaml"))


def recipe(name: str, scale: str, overrides=()):
    """The composed `house` config (read-only DictConfig) for one house model at one scale."""
    from ..config import ConfigError, compose
    if name not in names():
        raise ConfigError(f"unknown house model {name!r}; valid: {', '.join(names())}")
    return compose(None, scale, [f"+house={name}", *overrides]).house


# --- data ------------------------------------------------------------------------------------

def corpus_texts(corpus: str, max_docs: int = 0) -> tuple[list[str], list[str] | None]:
    """(train texts, val texts or None). Built-in corpora return None for val: split by document."""
    limit = max_docs if max_docs and max_docs > 0 else None
    if corpus == "pydoc_topics":  # the Python language reference: English prose, in every Python
        from pydoc_data.topics import topics
        docs = [topics[k] for k in sorted(topics)]
        return docs[:limit], None
    if corpus == "python_stdlib":
        from ..data import python_stdlib_text
        return python_stdlib_text(max_files=limit or 100_000), None
    from .. import data
    if hasattr(data, "load_corpus"):  # registered corpora (data/registry.yaml) ship their own splits
        return data.load_corpus(corpus, "train", limit), data.load_corpus(corpus, "val")
    raise ValueError(f"unknown corpus {corpus!r}; built in: {', '.join(BUILTIN_CORPORA)} "
                     f"(others need tokenbook.data.load_corpus)")


def split_docs(docs: list[str], val_fraction: float) -> tuple[list[str], list[str]]:
    """Every round(1/val_fraction)-th document goes to validation (deterministic, spread over the corpus)."""
    k = max(2, round(1 / val_fraction))
    val = [d for i, d in enumerate(docs) if i % k == k - 1]
    trn = [d for i, d in enumerate(docs) if i % k != k - 1]
    if not val or not trn:
        raise ValueError(f"{len(docs)} documents cannot be split with val_fraction={val_fraction}")
    return trn, val


def tokenize_docs(tokenizer, docs: list[str]) -> torch.Tensor:
    """One stream: each document preceded by the end-of-text token (so documents stay apart)."""
    sep = tokenizer.eos_token_id
    if isinstance(tokenizer, ByteTokenizer):
        encoded = [tokenizer.encode(d) for d in docs]
    else:
        encoded = tokenizer(docs, add_special_tokens=False)["input_ids"]
    out = []
    for ids in encoded:
        out.append(sep)
        out.extend(ids)
    return torch.tensor(out, dtype=torch.long)


def load_tokenizer(spec: str):
    if spec == "bytes":
        return ByteTokenizer()
    from ..config import compose
    from ..models import load_tokenizer as load_model_tokenizer
    return load_model_tokenizer(compose(None, "cpu", [f"model={spec}"]).model)


def _fingerprint(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(np.ascontiguousarray(t.numpy().astype(np.int32)).tobytes())
        h.update(b"|")
    return h.hexdigest()


def config_hash(rec: dict, data_sha: str) -> str:
    key = {"model": rec["model"], "train": rec["train"], "tokenizer": rec["tokenizer"], "data": rec["data"],
           "data_sha256": data_sha, "code": CODE_VERSION}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def prepare(name: str, scale: str, overrides=()) -> dict:
    """Everything that determines a house model, without training it: recipe, tokenizer, token streams."""
    from ..config import to_dict
    rec = to_dict(recipe(name, scale, overrides))
    tok = load_tokenizer(rec["tokenizer"])
    docs, val_docs = corpus_texts(rec["data"]["corpus"], rec["data"].get("max_docs", 0))
    if val_docs is None:
        docs, val_docs = split_docs(docs, rec["data"].get("val_fraction", 0.05))
    train_ids, val_ids = tokenize_docs(tok, docs), tokenize_docs(tok, val_docs)
    val_bytes = sum(len(d.encode("utf-8")) for d in val_docs)
    sha = _fingerprint(train_ids, val_ids)
    h = config_hash(rec, sha)
    return {"recipe": rec, "tokenizer": tok, "train_ids": train_ids, "val_ids": val_ids,
            "bytes_per_token": val_bytes / len(val_ids), "data_sha256": sha, "hash": h,
            "n_docs": (len(docs), len(val_docs)), "dir": paths.CACHE / "zoo" / f"{name}-{scale}-{h}"}


# --- build and load --------------------------------------------------------------------------

def build_model(model_cfg: dict, tokenizer, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    conf = LlamaConfig(**model_cfg, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return LlamaForCausalLM(conf)


def _resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def house_model(name: str, scale: str = "smoke", device: str = "cpu", overrides=(), *,
                train_if_missing: bool = True, progress: bool = True):
    """(model, tokenizer, card) for a house model; trains it (minutes at most) if not cached yet.

    The model is fp32, in eval mode, on `device`. `card["loaded_from_cache"]` says whether this
    call trained it.
    """
    device = _resolve_device(device)
    prep = prepare(name, scale, overrides)
    final: Path = prep["dir"]
    cached = (final / "card.json").exists()
    if not cached:
        if not train_if_missing:
            raise FileNotFoundError(f"house model {name!r} at scale {scale!r} is not cached at {final}")
        with _lock(final):  # two processes asking at once: one trains, the other then loads
            if not (final / "card.json").exists():
                _train_and_store(name, scale, prep, device, progress)
            else:
                cached = True
    model, tok = _load_dir(final, prep["recipe"]["tokenizer"], device)
    card = json.loads((final / "card.json").read_text())
    return model, tok, {**card, "path": str(final), "loaded_from_cache": cached}


@contextlib.contextmanager
def _lock(final: Path):
    import fcntl
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.parent / f".{final.name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _quiet_hf():
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()  # its bars clutter logs; ours is the training bar


def _load_dir(folder: Path, tok_spec: str, device: str):
    from transformers import AutoTokenizer, LlamaForCausalLM
    _quiet_hf()
    model = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).to(device).eval()
    tok = ByteTokenizer.from_pretrained(folder) if tok_spec == "bytes" else AutoTokenizer.from_pretrained(folder)
    return model, tok


def _train_and_store(name: str, scale: str, prep: dict, device: str, progress: bool) -> None:
    from .. import provenance
    _quiet_hf()
    rec, final = prep["recipe"], prep["dir"]
    work = final.parent / ".work" / final.name
    cfg = TrainConfig.from_dict({**rec["train"], "progress": progress})
    model = build_model(rec["model"], prep["tokenizer"], cfg.seed)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"[tokenbook] training house model {name} ({scale}, {n_params / 1e6:.1f}M parameters, "
          f"{cfg.steps} steps x {cfg.tokens_per_step} tokens) into {final}", flush=True)
    t0 = time.perf_counter()
    res = train(model, prep["train_ids"], cfg, val_tokens=prep["val_ids"],
                bytes_per_token=prep["bytes_per_token"], out_dir=work, device=device, resume=True)
    tmp = final.with_name(f".tmp-{final.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.to("cpu").save_pretrained(tmp)
    prep["tokenizer"].save_pretrained(tmp)
    for f in ("train_log.json", "loss_curve.png"):
        if (work / f).exists():
            shutil.copy2(work / f, tmp / f)
    card = {
        "name": name, "scale": scale, "hash": prep["hash"], "code_version": CODE_VERSION,
        "tokenizer": rec["tokenizer"], "vocab_size": len(prep["tokenizer"]),
        "data": {**rec["data"], "train_docs": prep["n_docs"][0], "val_docs": prep["n_docs"][1],
                 "train_tokens": len(prep["train_ids"]), "val_tokens": len(prep["val_ids"]),
                 "val_bytes_per_token": prep["bytes_per_token"], "sha256": prep["data_sha256"]},
        "model": rec["model"], "parameters": n_params, "train": rec["train"],
        "steps": res.steps, "tokens_seen": res.tokens_seen,
        "epochs": res.tokens_seen / max(1, len(prep["train_ids"])),
        "final_train_loss": res.final_loss, "val_loss": res.val_loss, "val_bits_per_byte": res.val_bpb,
        "train_wall_s": res.wall_s, "build_wall_s": time.perf_counter() - t0, "resumed_from": res.resumed_from,
        "device": device, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **provenance.collect(),
    }
    (tmp / "card.json").write_text(json.dumps(card, indent=1, default=str))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    shutil.rmtree(work, ignore_errors=True)
