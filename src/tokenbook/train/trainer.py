"""One trainer for every causal LM in the book (HF `transformers` models built from config).

AdamW with linear warm-up and a cosine decay to `min_lr_ratio`, gradient clipping and
accumulation, bf16 autocast on CUDA (fp32 on CPU), a text progress bar, validation loss and
bits per byte at intervals, and checkpoints that let an interrupted run resume exactly.

Determinism and resume. The data is a 1-D token tensor cut into non-overlapping sequences of
`seq_len` tokens; epoch e visits them in the order `randperm(n, seed + e)`. The data position is
a single integer (sequences consumed so far), so the batch at any step is a pure function of
(seed, position): a resumed run restores the position, the model, the optimizer, the scheduler
and every RNG state, and then sees the same batches and produces the same losses as a run that
was never interrupted (up to float noise from kernel selection on GPU).

Checkpoints are directories `ckpt-<step>/` written under a temporary name and renamed into place;
a pointer file `latest` (written atomically) names the newest complete one. A crash while saving
leaves a stray temporary directory and the previous checkpoint still loadable.

Bits per byte: validation loss is in nats per predicted token; bits/byte = loss / ln 2 / bytes
per token, where `bytes_per_token` (UTF-8 bytes of the validation text over its token count) is
supplied by the caller — exact for byte-level models, a corpus average for subword models.
"""
from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .. import paths

LN2 = math.log(2.0)


@dataclass
class TrainConfig:
    steps: int = 200
    batch_size: int = 8            # sequences per micro-batch
    seq_len: int = 128
    grad_accum: int = 1            # micro-batches per optimizer step
    lr: float = 3e-3
    min_lr_ratio: float = 0.1      # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 20
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0         # max global grad norm; 0 disables clipping
    eval_every: int = 0            # steps between validations; 0: only at the end
    eval_batches: int = 4          # validation micro-batches (the same fixed sequences every time)
    ckpt_every: int = 0            # steps between checkpoints; 0: none (the final state is still returned)
    log_every: int = 10
    seed: int = 0
    progress: bool = True

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown training keys {sorted(unknown)}; valid: {sorted(names)}")
        return cls(**d)

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len * self.grad_accum


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of cfg.lr for optimizer step `step` (0-based): linear warm-up, then cosine."""
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class SequenceSampler:
    """Deterministic batches of fixed-length sequences from a 1-D token tensor."""

    def __init__(self, tokens: torch.Tensor, seq_len: int, seed: int):
        if tokens.ndim != 1:
            raise ValueError(f"tokens must be 1-D, got shape {tuple(tokens.shape)}")
        self.n = len(tokens) // seq_len
        if self.n < 1:
            raise ValueError(f"{len(tokens)} tokens do not fill one sequence of {seq_len}")
        self.seqs = tokens[: self.n * seq_len].long().view(self.n, seq_len)
        self.seed = seed
        self._perm_epoch, self._perm = -1, None

    def _order(self, epoch: int) -> torch.Tensor:
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm, self._perm_epoch = torch.randperm(self.n, generator=g), epoch
        return self._perm

    def indices(self, position: int, batch_size: int) -> list[int]:
        out = []
        for p in range(position, position + batch_size):
            out.append(int(self._order(p // self.n)[p % self.n]))
        return out

    def batch(self, position: int, batch_size: int) -> torch.Tensor:
        return self.seqs[self.indices(position, batch_size)]


@dataclass
class TrainResult:
    steps: int
    tokens_seen: int
    wall_s: float
    final_loss: float
    val_loss: float | None
    val_bpb: float | None
    log: list[dict] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)
    resumed_from: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


# --- checkpoints -----------------------------------------------------------------------------

def _save_blob(obj, path: Path) -> None:
    """One indirection so a test can simulate a crash in the middle of a checkpoint write."""
    torch.save(obj, path)


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(ckpt_dir: Path, step: int, model, optimizer, scheduler, trainer_state: dict,
                    keep: int = 1) -> Path:
    """Write ckpt-<step>/ atomically (temp dir + rename), point `latest` at it, prune older ones."""
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / f"ckpt-{step:08d}"
    tmp = ckpt_dir / f".tmp-ckpt-{step:08d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    _save_blob({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp / "model.pt")
    _save_blob({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "rng": _rng_state()}, tmp / "state.pt")
    (tmp / "trainer.json").write_text(json.dumps({"step": step, **trainer_state}))
    for p in tmp.iterdir():  # make the bytes durable before the rename publishes them
        with open(p, "rb") as fh:
            os.fsync(fh.fileno())
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    paths.atomic_write_text(ckpt_dir / "latest", final.name)
    complete = sorted(p for p in ckpt_dir.glob("ckpt-*") if p.is_dir())
    for old in complete[:-keep] if keep > 0 else []:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    """The newest complete checkpoint: the one `latest` names, else the highest ckpt-* directory."""
    ckpt_dir = Path(ckpt_dir)
    pointer = ckpt_dir / "latest"
    if pointer.exists():
        cand = ckpt_dir / pointer.read_text().strip()
        if (cand / "trainer.json").exists():
            return cand
    for cand in sorted(ckpt_dir.glob("ckpt-*"), reverse=True):
        if (cand / "trainer.json").exists():
            return cand
    return None


def load_checkpoint(path: Path, model, optimizer=None, scheduler=None) -> dict:
    """Restore model (and optimizer, scheduler, RNG states when given); returns the trainer state."""
    path = Path(path)
    model.load_state_dict(torch.load(path / "model.pt", map_location="cpu", weights_only=True))
    if optimizer is not None or scheduler is not None:
        blob = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
        if optimizer is not None:
            optimizer.load_state_dict(blob["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(blob["scheduler"])
        _set_rng_state(blob["rng"])
    return json.loads((path / "trainer.json").read_text())


# --- evaluation ------------------------------------------------------------------------------

def _autocast(device: str):
    if device.startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


@torch.no_grad()
def validation_loss(model, val: SequenceSampler, cfg: TrainConfig, device: str) -> float:
    """Mean next-token loss (nats) over the first eval_batches*batch_size validation sequences."""
    was_training = model.training
    model.eval()
    n = min(val.n, cfg.eval_batches * cfg.batch_size)
    total, count = 0.0, 0
    for start in range(0, n, cfg.batch_size):
        x = val.seqs[start:min(n, start + cfg.batch_size)].to(device)
        with _autocast(device):
            logits = model(input_ids=x).logits
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                                                x[:, 1:].reshape(-1), reduction="sum")
        total += float(nll)
        count += x[:, 1:].numel()
    model.train(was_training)
    return total / count


# --- the loop --------------------------------------------------------------------------------

def _progress_bar(cfg: TrainConfig, start: int):
    from tqdm import tqdm  # the plain text bar: the notebook widget needs ipywidgets
    return tqdm(total=cfg.steps, initial=start, file=sys.stderr, disable=not cfg.progress,
                dynamic_ncols=False, ncols=100, mininterval=1.0, desc="train")


def train(model, train_tokens: torch.Tensor, cfg: TrainConfig, *, val_tokens: torch.Tensor | None = None,
          bytes_per_token: float | None = None, out_dir: Path | None = None, device: str = "cpu",
          resume: bool = True, stop_after: int | None = None,
          on_step: Callable[[int, float], None] | None = None) -> TrainResult:
    """Train `model` in place. With `out_dir`, checkpoints go to out_dir/checkpoints and a run
    found there is resumed (when `resume`); the log and loss curve are written to out_dir.

    `stop_after` ends the run after that step as an interruption would (for tests and for
    splitting long runs); `on_step(step, loss)` is called after every optimizer step.
    """
    out_dir = Path(out_dir) if out_dir is not None else None
    ckpt_dir = out_dir / "checkpoints" if out_dir is not None else None
    torch.manual_seed(cfg.seed)
    model.to(device).train()
    data = SequenceSampler(train_tokens, cfg.seq_len, cfg.seed)
    val = SequenceSampler(val_tokens, cfg.seq_len, cfg.seed) if val_tokens is not None else None

    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                                  fused=device.startswith("cuda"))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg))

    step, position, wall_before, log, evals, resumed_from = 0, 0, 0.0, [], [], None
    if ckpt_dir is not None and resume and (ck := latest_checkpoint(ckpt_dir)) is not None:
        state = load_checkpoint(ck, model, optimizer, scheduler)
        saved = state.get("config", {})
        changed = [k for k in ("batch_size", "seq_len", "grad_accum", "seed", "lr", "steps", "warmup_steps")
                   if k in saved and saved[k] != getattr(cfg, k)]
        if changed:
            raise ValueError(f"checkpoint {ck} was written with different {changed}: resuming would not "
                             f"reproduce that run; use another out_dir or resume=False")
        step, position, wall_before = state["step"], state["position"], state["wall_s"]
        log, evals, resumed_from = state["log"], state["evals"], step
        model.to(device)

    def evaluate_now(at_step: int):
        if val is None:
            return
        vl = validation_loss(model, val, cfg, device)
        row = {"step": at_step, "val_loss": vl, "tokens": at_step * cfg.tokens_per_step}
        if bytes_per_token:
            row["val_bpb"] = vl / LN2 / bytes_per_token
        evals.append(row)

    def trainer_state() -> dict:
        return {"position": position, "wall_s": wall_before + (time.perf_counter() - t0),
                "log": log, "evals": evals, "config": asdict(cfg)}

    bar = _progress_bar(cfg, step)
    t0 = time.perf_counter()
    t_window, tok_window = time.perf_counter(), 0
    last_loss = float("nan")
    try:
        while step < cfg.steps:
            loss_sum = torch.zeros((), device=device)
            for _ in range(cfg.grad_accum):
                x = data.batch(position, cfg.batch_size).to(device, non_blocking=True)
                position += cfg.batch_size
                with _autocast(device):
                    out = model(input_ids=x, labels=x)
                (out.loss / cfg.grad_accum).backward()
                loss_sum += out.loss.detach().float()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tok_window += cfg.tokens_per_step
            logging = step % cfg.log_every == 0 or step == cfg.steps
            if logging or on_step is not None or stop_after is not None:  # reading the loss syncs a GPU
                last_loss = float(loss_sum) / cfg.grad_accum
            if logging:
                now = time.perf_counter()
                tps = tok_window / max(now - t_window, 1e-9)
                log.append({"step": step, "loss": last_loss, "lr": scheduler.get_last_lr()[0],
                            "tokens": step * cfg.tokens_per_step, "tok_per_s": tps,
                            "wall_s": wall_before + now - t0})
                bar.set_postfix(loss=f"{last_loss:.3f}", tok_s=f"{tps:,.0f}", refresh=False)
                t_window, tok_window = now, 0
            bar.update(1)
            if on_step is not None:
                on_step(step, last_loss)
            if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps:
                evaluate_now(step)
            if ckpt_dir is not None and cfg.ckpt_every and step % cfg.ckpt_every == 0 and step < cfg.steps:
                save_checkpoint(ckpt_dir, step, model, optimizer, scheduler, trainer_state())
            if stop_after is not None and step >= stop_after and step < cfg.steps:
                return _result(cfg, step, position, trainer_state()["wall_s"], last_loss, log, evals,
                               resumed_from, out_dir)
    finally:
        bar.close()

    if not evals or evals[-1]["step"] != step:
        evaluate_now(step)
    wall = trainer_state()["wall_s"]
    if ckpt_dir is not None and cfg.ckpt_every:
        save_checkpoint(ckpt_dir, step, model, optimizer, scheduler, trainer_state())
    model.eval()
    return _result(cfg, step, position, wall, last_loss, log, evals, resumed_from, out_dir)


def _result(cfg, step, position, wall, last_loss, log, evals, resumed_from, out_dir) -> TrainResult:
    last_eval = evals[-1] if evals and evals[-1]["step"] == step else None
    res = TrainResult(steps=step, tokens_seen=position * cfg.seq_len, wall_s=wall, final_loss=last_loss,
                      val_loss=last_eval["val_loss"] if last_eval else None,
                      val_bpb=last_eval.get("val_bpb") if last_eval else None,
                      log=list(log), evals=list(evals), resumed_from=resumed_from)
    if out_dir is not None:
        paths.atomic_write_text(out_dir / "train_log.json", json.dumps(res.to_dict(), indent=1))
        if log:
            plot_loss_curve(res, out_dir / "loss_curve.png")
    return res


def plot_loss_curve(res: TrainResult, path: Path, title: str | None = None) -> Path:
    """Training loss (and validation loss) against tokens seen."""
    import matplotlib
    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["tokens"] for r in res.log], [r["loss"] for r in res.log], label="train loss", lw=1)
    if res.evals:
        ax.plot([r["tokens"] for r in res.evals], [r["val_loss"] for r in res.evals], "o-",
                label="validation loss", ms=3)
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("loss (nats / token)")
    ax.set_title(title or f"{res.steps} steps")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path
