"""The training loop: AdamW, warmup + cosine schedule, clipping, evaluation, checkpoints
that resume exactly, and a loss-curve plot (notebook 07).

AdamW: Loshchilov & Hutter (2019), "Decoupled Weight Decay Regularization". Warmup +
cosine decay: Loshchilov & Hutter (2017), "SGDR"; the recipe follows GPT-2/GPT-3 and
nanoGPT.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm  # text bars: the same in terminals, notebooks and CI logs

from .corpora import load_text
from .datasets import get_batch, read_token_file, train_val_split
from .model import GPT, GPTConfig
from .presets import PRESETS
from .tokenization import CharTokenizer, tokenizer_from_dict
from .utils import get_device

CHECKPOINT_NAME = "ckpt.pt"
PLOT_NAME = "loss.png"


@dataclass
class TrainConfig:
    """Everything a training run needs. Presets (:mod:`course_utils.presets`) fill it in."""

    dataset: str = "tinyshakespeare"
    out_dir: str = "runs/default"
    # model shape
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 64
    dropout: float = 0.0
    bias: bool = True
    attn_impl: str = "sdpa"
    # optimisation
    batch_size: int = 32
    grad_accum_steps: int = 1
    max_iters: int = 2000
    learning_rate: float = 1e-3
    min_lr: float = 1e-4
    warmup_iters: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # 0 switches clipping off
    # evaluation and output
    eval_interval: int = 250
    eval_iters: int = 20
    sample_tokens: int = 300
    seed: int = 1337
    device: str = "auto"  # auto picks cuda, then mps, then cpu
    dtype: str = "auto"  # auto: bfloat16 autocast where the GPU supports it, else float32
    compile: bool = False

    def __post_init__(self):
        checks = {
            "max_iters": self.max_iters >= 1, "batch_size": self.batch_size >= 1,
            "grad_accum_steps": self.grad_accum_steps >= 1,
            "eval_interval": self.eval_interval >= 1, "eval_iters": self.eval_iters >= 1,
            "warmup_iters": self.warmup_iters >= 0, "learning_rate": self.learning_rate > 0,
            "min_lr": 0 <= self.min_lr <= self.learning_rate,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError("invalid training setting(s): "
                             + ", ".join(f"{k}={getattr(self, k)!r}" for k in bad))
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(
                f"dtype must be auto, float32, bfloat16 or float16, got {self.dtype!r}")
        self.model_config()  # validates the model shape early

    def model_config(self, vocab_size: int = 1) -> GPTConfig:
        return GPTConfig(vocab_size=vocab_size, block_size=self.block_size, n_layer=self.n_layer,
                         n_head=self.n_head, n_embd=self.n_embd, dropout=self.dropout,
                         bias=self.bias, attn_impl=self.attn_impl)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> TrainConfig:
        """A preset with some settings replaced. Raises ``KeyError`` for an unknown preset
        and ``TypeError`` for an unknown setting."""
        if name not in PRESETS:
            raise KeyError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


def get_lr(step: int, max_lr: float, min_lr: float, warmup_iters: int, max_iters: int) -> float:
    """Learning rate at ``step``: linear warmup to ``max_lr`` over ``warmup_iters`` steps
    (``max_lr * (step + 1) / warmup_iters``), then cosine decay to ``min_lr`` at
    ``max_iters``, then ``min_lr``."""
    if step < warmup_iters:
        return max_lr * (step + 1) / warmup_iters
    if step >= max_iters:
        return min_lr
    progress = (step - warmup_iters) / max(1, max_iters - warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (max_lr - min_lr)


def load_corpus(name: str):
    """A dataset -> ``(tokenizer, train_ids, val_ids)``.

    ``name`` is either a registry text corpus (e.g. ``"tinyshakespeare"``: character-level,
    90/10 split) or a folder holding ``train.bin`` and ``val.bin`` (token files from
    :func:`course_utils.datasets.write_token_file`, uint16) and ``tokenizer.json`` (a saved
    tokenizer). Raises ``FileNotFoundError`` for a folder missing one of those files.
    """
    folder = Path(name)
    if folder.is_dir():
        missing = [f for f in ("train.bin", "val.bin", "tokenizer.json")
                   if not (folder / f).is_file()]
        if missing:
            raise FileNotFoundError(f"dataset folder {folder} lacks {', '.join(missing)}")
        tok = tokenizer_from_dict(json.loads((folder / "tokenizer.json").read_text("utf-8")))
        return tok, read_token_file(folder / "train.bin"), read_token_file(folder / "val.bin")
    text = load_text(name)
    tok = CharTokenizer.from_text(text)
    data = torch.tensor(tok.encode(text), dtype=torch.int64)
    train, val = train_val_split(data, 0.1)
    return tok, train, val


def autocast_context(device: str, dtype: str):
    """The mixed-precision context for ``device``: bf16 autocast on GPUs that support it
    (``dtype="auto"``), fp16 when asked, plain float32 otherwise."""
    if device.startswith("cuda"):
        if dtype == "auto":  # bf16 natively from Ampere (compute capability 8) on; a T4
            # reports bf16 "supported" but only emulates it, slowly: use float16 there
            major, _ = torch.cuda.get_device_capability(device)
            dtype = "bfloat16" if major >= 8 else "float32"
        if dtype in ("bfloat16", "float16"):
            return torch.autocast("cuda", dtype=getattr(torch, dtype))
    elif dtype in ("bfloat16", "float16"):
        return torch.autocast(device.split(":")[0], dtype=getattr(torch, dtype))
    return contextlib.nullcontext()


@torch.no_grad()
def estimate_loss(model, splits: dict, cfg: TrainConfig, device: str, ctx) -> dict:
    """Mean loss over ``cfg.eval_iters`` batches of each split. The batches come from a
    generator seeded the same way at every evaluation, so they do not disturb the
    training batches and successive evaluations are comparable."""
    was_training = model.training
    model.eval()
    out = {}
    for name, data in splits.items():
        g = torch.Generator().manual_seed(cfg.seed + 1)
        losses = []
        for _ in range(cfg.eval_iters):
            x, y = get_batch(data, cfg.block_size, cfg.batch_size, g, device)
            with ctx:
                _, loss = model(x, y)
            losses.append(loss.item())
        out[name] = float(np.mean(losses))
    model.train(was_training)
    return out


def _rng_state(batch_gen: torch.Generator) -> dict:
    state = {"torch": torch.get_rng_state(), "batch": batch_gen.get_state(),
             "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict, batch_gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    batch_gen.set_state(state["batch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write ``state`` with ``torch.save`` atomically: to a temporary file in the same
    folder, then renamed over ``path``, so an interrupted save never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Read a checkpoint file, or the ``ckpt.pt`` inside a run folder.

    Raises ``FileNotFoundError`` naming the path when there is none."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"no checkpoint at {path}; train first (python -m course_utils train ...) or "
            f"pass the run folder that holds {CHECKPOINT_NAME}"
        )
    return torch.load(path, map_location=map_location, weights_only=False)


def model_from_checkpoint(ckpt: dict, device: str = "cpu"):
    """``(model, tokenizer)`` rebuilt from a checkpoint dict, model in eval mode."""
    model = GPT(GPTConfig(**ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    model.to(device).eval()
    return model, tokenizer_from_dict(ckpt["tokenizer"])


def plot_losses(history: dict, path: str | Path) -> Path:
    """Save a PNG of per-step training loss and the periodic train/val estimates."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=100)
    ax = fig.add_subplot()
    steps, losses = history["step"], history["loss"]
    if steps:
        ax.plot(steps, losses, color="0.75", lw=0.8, label="train (per batch)")
    if history["eval_step"]:
        ax.plot(history["eval_step"], history["train"], "o-", label="train (estimate)")
        ax.plot(history["eval_step"], history["val"], "o-", label="val (estimate)")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


def train(cfg: TrainConfig, resume: bool = False, stop_at: int | None = None,
          progress: bool = True) -> dict:
    """Train a GPT as ``cfg`` says; return a summary dict.

    Writes ``ckpt.pt`` (model, optimizer, configs, tokenizer, step, RNG states, best val
    loss, loss history) at every evaluation and ``loss.png`` into ``cfg.out_dir``.
    ``resume=True`` continues from that checkpoint so exactly that the later losses equal
    those of an uninterrupted run. ``stop_at`` ends the run early at that step (after
    saving), e.g. to continue later with ``resume``.

    Returns a dict with ``model``, ``tokenizer``, ``train_loss``, ``val_loss``,
    ``best_val_loss``, ``tokens_per_s``, ``wall_s``, ``checkpoint``, ``plot`` and
    ``history``.
    """
    out_dir = Path(cfg.out_dir)
    ckpt = None
    if resume:
        ckpt = load_checkpoint(out_dir)
        saved = ckpt["train_config"]
        cfg = TrainConfig(**{**saved, "max_iters": cfg.max_iters, "out_dir": cfg.out_dir,
                             "device": cfg.device})
    device = get_device(cfg.device)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    batch_gen = torch.Generator().manual_seed(cfg.seed)

    tok, train_data, val_data = load_corpus(cfg.dataset)
    if ckpt is not None:
        tok = tokenizer_from_dict(ckpt["tokenizer"])
    model = GPT(cfg.model_config(tok.vocab_size)).to(device)
    optimizer = torch.optim.AdamW(model.optimizer_groups(cfg.weight_decay), lr=cfg.learning_rate,
                                  betas=(cfg.beta1, cfg.beta2),
                                  fused=device.startswith("cuda") or None)
    step, best_val = 0, float("inf")
    history = {"step": [], "loss": [], "eval_step": [], "train": [], "val": []}
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        step, best_val, history = ckpt["step"], ckpt["best_val_loss"], ckpt["history"]
        _set_rng_state(ckpt["rng"], batch_gen)
    fwd_model = torch.compile(model) if cfg.compile else model
    ctx = autocast_context(device, cfg.dtype)
    scaler = torch.amp.GradScaler("cuda", enabled=device.startswith("cuda")
                                  and cfg.dtype == "float16")
    if ckpt is not None and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    splits = {"train": train_data, "val": val_data}
    tokens_per_step = cfg.batch_size * cfg.block_size * cfg.grad_accum_steps
    ckpt_path, plot_path = out_dir / CHECKPOINT_NAME, out_dir / PLOT_NAME
    train_time, trained_steps, tok_s, losses = 0.0, 0, 0.0, {}
    start_step, t_start = step, time.perf_counter()
    stop = cfg.max_iters if stop_at is None else min(stop_at, cfg.max_iters)

    model.train()
    # redraw about every 1% of the steps: a long run in a notebook keeps a short output
    bar = tqdm(total=stop, initial=step, disable=not progress, desc="train", unit="step",
               miniters=max(1, (stop - step) // 100))
    while True:
        if (step % cfg.eval_interval == 0 or step == stop) and not (resume and step == start_step):
            losses = estimate_loss(fwd_model, splits, cfg, device, ctx)
            history["eval_step"].append(step)
            history["train"].append(losses["train"])
            history["val"].append(losses["val"])
            best_val = min(best_val, losses["val"])
            save_checkpoint(ckpt_path, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "model_config": model.config.to_dict(), "train_config": dataclasses.asdict(cfg),
                "tokenizer": tok.to_dict(), "step": step, "best_val_loss": best_val,
                "history": history, "rng": _rng_state(batch_gen), "scaler": scaler.state_dict(),
            })
            bar.write(f"step {step}: train loss {losses['train']:.4f}, "
                      f"val loss {losses['val']:.4f}")
        if step >= stop:
            break
        t0 = time.perf_counter()
        lr = get_lr(step, cfg.learning_rate, cfg.min_lr, cfg.warmup_iters, cfg.max_iters)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum = 0.0
        for _ in range(cfg.grad_accum_steps):
            x, y = get_batch(train_data, cfg.block_size, cfg.batch_size, batch_gen, device)
            with ctx:
                _, loss = fwd_model(x, y)
            scaler.scale(loss / cfg.grad_accum_steps).backward()
            loss_sum += loss.item() / cfg.grad_accum_steps
        if cfg.grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        train_time += time.perf_counter() - t0
        trained_steps += 1
        tok_s = trained_steps * tokens_per_step / train_time
        history["step"].append(step)
        history["loss"].append(loss_sum)
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss_sum:.3f}", lr=f"{lr:.2e}", tok_s=f"{tok_s:,.0f}",
                        refresh=False)
    bar.close()
    plot_losses(history, plot_path)
    model.eval()
    return {
        "model": model, "tokenizer": tok, "config": cfg, "device": device,
        "train_loss": losses.get("train"), "val_loss": losses.get("val"),
        "best_val_loss": best_val, "tokens_per_s": tok_s, "steps": step - start_step,
        "wall_s": time.perf_counter() - t_start, "checkpoint": ckpt_path, "plot": plot_path,
        "history": history,
    }
