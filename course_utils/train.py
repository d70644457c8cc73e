"""The training loop (notebook 07): AdamW, warmup + cosine schedule, gradient clipping,
evaluation, checkpoints that load safely and resume exactly, and a loss-curve plot.

Notable features:

- One loop for every kind of training. What it trains on is a task
  (:class:`course_utils.tasks.Task`): plain language modelling (pretraining), chat SFT
  (notebook 13), DPO (14), GRPO (15). The loop asks the task for batches and for the loss of
  a batch, and does everything else the same way for all of them.
- The settings are a :class:`course_utils.config.TrainConfig`; checkpoints are written and
  read by :mod:`course_utils.checkpoint` (tensors and plain values only, loaded with
  ``torch.load(weights_only=True)``; written atomically).
- A run folder is never overwritten silently: training into a folder that holds a checkpoint
  needs ``resume=True`` or ``overwrite=True``, and a lock file (``train.lock``, the
  ``filelock`` package) keeps a second process out while one trains there
  (:mod:`course_utils.runs`). Ctrl-C ends a run with :class:`~course_utils.runs.
  TrainingInterrupted`, which says the step and the checkpoint to resume from.
- Resume is the same run: the checkpoint's settings are used (only those in
  :data:`course_utils.config.RESUMABLE` may differ), and losses after a resume equal those of
  an uninterrupted run, bit for bit (on the same device): the checkpoint holds the
  optimizer's moments and the random generators' states. A run that started from another
  model (``init_from``) stored that model's sha256 and refuses to resume on a changed one.
- A loss that becomes NaN or infinite stops the run at that step, before anything is saved.
- Fine-tuning: ``init_from`` starts from a trained run or a released model
  (:func:`course_utils.checkpoint.start_model`); new special tokens (ChatML's) get new
  embedding rows. ``lora_rank > 0`` freezes the model and trains LoRA adapters only
  (notebook 15); the checkpoint then holds just the adapters.

AdamW: Loshchilov & Hutter (2019), "Decoupled Weight Decay Regularization". The recipe
(linear warmup, cosine decay to 10% of the peak, weight decay 0.1, gradient clipping at 1.0)
is GPT-3's (Brown et al. 2020, appendix B), as nanoGPT uses it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from pathlib import Path

import numpy as np
import torch

from . import distributed
from .bpe import tokenizer_from_dict
from .checkpoint import (
    CHECKPOINT_NAME,
    CheckpointError,
    build_model,
    check_optimizer_state,
    init_sha256,
    load_adapters,
    load_checkpoint,
    load_init_weights,
    pinned_init_from,
    save_checkpoint,
    start_model,
)
from .config import TrainConfig, init_config, resumed_config
from .lora import apply_lora
from .model import GPT
from .optim import get_lr, make_optimizer, step_seconds  # noqa: F401 (notebook 16 imports it here)
from .runs import RunFinished, TrainingError, TrainingInterrupted, previous_run, run_folder
from .tasks import SPLITS, LMTask, Task
from .utils import autocast_context, eval_mode, plot_losses, progress_bar, resolve_device, set_seed

PLOT_NAME = "loss.png"


def train(cfg: TrainConfig, resume: bool = False, stop_at: int | None = None,
          progress: bool = True, overwrite: bool = False, task=None) -> dict:
    """Train a GPT as ``cfg`` says, on ``task``; return a summary dict.

    ``task`` is a :class:`~course_utils.tasks.Task`, a task class (built here with
    ``build(cfg, tokenizer, device)``, ``tokenizer`` being the start or resumed model's), or
    ``None`` for language modelling on ``cfg.dataset``
    (:class:`~course_utils.tasks.LMTask`).

    Writes ``ckpt.pt`` (settings, model, optimizer, tokenizer, step, random generators'
    states, best val loss, loss history) at every evaluation and ``loss.png`` at the end into
    ``cfg.out_dir``. A folder that already holds a checkpoint needs ``resume=True``
    (continue it; the checkpoint's settings are used, and ``cfg`` may differ from them only
    in :data:`~course_utils.config.RESUMABLE`) or ``overwrite=True`` (start over).
    ``stop_at`` ends the run early at that step (after saving), e.g. to continue later with
    ``resume``.

    Returns a dict with ``model``, ``tokenizer``, ``task``, ``config`` (the settings used),
    ``device``, ``train_loss``, ``val_loss``, ``best_val_loss``, ``tokens_per_s``, ``steps``
    (trained in this call), ``wall_s``, ``checkpoint``, ``plot`` and ``history``.

    Raises :class:`TrainingError` (busy, unwritable or occupied folder; NaN/inf loss, which
    stops the run before anything is saved at that step), :class:`RunFinished` (resuming a
    run that reached ``max_iters``), ``ValueError`` (settings that contradict the checkpoint
    or each other, a device this machine lacks, data the task cannot use),
    ``FileNotFoundError`` (no checkpoint to resume or to start from, a missing dataset) and
    :class:`~course_utils.checkpoint.CheckpointError`.
    """
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other: resume continues the run "
                         "in out_dir, overwrite replaces it")
    if stop_at is not None and stop_at < 0:
        raise ValueError(f"stop_at must be >= 0, got {stop_at}")
    out_dir = Path(cfg.out_dir)
    # several processes (torchrun): rank 0 holds the folder's lock and writes into it
    with distributed.process_group(resolve_device(cfg.device)), \
            (run_folder(out_dir) if distributed.is_main() else contextlib.nullcontext()):
        ckpt = previous_run(out_dir, resume, overwrite)
        if ckpt is not None:  # the start model (fine-tuning) is checked before any use
            saved = {**ckpt["config"], "init_from": pinned_init_from(ckpt, cfg.init_from)}
            cfg = resumed_config(TrainConfig.from_dict(saved), cfg.settings()
                                 if not cfg.init_from else _without_shape(cfg))
            if ckpt["step"] >= cfg.max_iters:
                raise RunFinished(
                    f"the run in {out_dir} is finished: it trained {ckpt['step']} of "
                    f"max_iters {cfg.max_iters} steps. To train it further, resume with a "
                    f"larger --max-iters (e.g. --max-iters {2 * ckpt['step']})")
            if stop_at is not None and stop_at <= ckpt["step"]:
                raise ValueError(f"--stop-at {stop_at} is not after the checkpoint's step "
                                 f"{ckpt['step']}; choose a later step")
        return _train(cfg, ckpt, stop_at, progress, task)


def _without_shape(cfg: TrainConfig) -> dict:
    """``cfg``'s settings without the model's shape, which a fine-tuning run takes from the
    model it started from."""
    shape = {f.name for f in dataclasses.fields(cfg.model)} - {"dropout"}
    return {k: v for k, v in cfg.settings().items() if k not in shape}


def _train(cfg: TrainConfig, ckpt: dict | None, stop_at: int | None, progress: bool,
           task) -> dict:
    """The loop of :func:`train`, in a folder it has locked; ``ckpt`` is the checkpoint to
    continue, or ``None``."""
    device = distributed.local_device(resolve_device(cfg.device))
    main = distributed.is_main()  # the process that evaluates, saves and logs
    distributed.shard(cfg.grad_accum_steps)  # refuses micro-batches the processes cannot share
    set_seed(cfg.seed)
    batch_gen = torch.Generator().manual_seed(cfg.seed)
    start, init_sha = None, None
    if cfg.init_from:  # a fine-tuning run: pin the model it starts from (train checked a
        init_sha = ckpt.get("init_sha256") if ckpt is not None else None  # resumed one's)
        if ckpt is None or cfg.lora_rank:  # a new run, or a resumed one that needs its base
            start = start_model(cfg.init_from, expect_sha256=init_sha)
            init_sha = start["sha256"]
    if start is not None and ckpt is None:
        cfg = init_config(cfg, start["config"]["model"])
    tokenizer = (tokenizer_from_dict(ckpt["tokenizer"]) if ckpt is not None
                 else None if start is None else tokenizer_from_dict(start["tokenizer"]))
    # a task given as an object may hold data the settings do not name: its fingerprint pins it
    task_sha = (task.fingerprint() if isinstance(task, Task)
                else None if ckpt is None else ckpt.get("task_sha256"))  # resumed as it was
    task = _build_task(task, cfg, tokenizer, device)
    if ckpt is not None and task.tokenizer.to_dict() != tokenizer.to_dict():
        raise ValueError(f"the tokenizer of dataset {cfg.dataset} differs from the one the "
                         f"checkpoint was trained with; resume on the same data")
    if ckpt is not None and ckpt.get("task_sha256") not in (None, task_sha):
        raise ValueError(f"the task given differs from the one the run in {cfg.out_dir} was "
                         f"trained on (its data or its own settings); resume with the same "
                         f"task, or start again with overwrite=True")
    cfg = dataclasses.replace(cfg, model=cfg.model_config(task.tokenizer.vocab_size))
    model = _build_model(cfg, start, ckpt, device)
    optimizer = make_optimizer(model, cfg, device)
    scaler = torch.amp.GradScaler("cuda", enabled=device.startswith("cuda")
                                  and cfg.dtype == "float16")
    step, best_val, saved_step = 0, float("inf"), None
    history = {"step": [], "loss": [], "eval_step": [], "train": [], "val": [], "train_s": [],
               "tokens": [], "metrics": {}}
    if ckpt is not None:
        try:
            optimizer.load_state_dict(ckpt["optimizer"])
            if ckpt["scaler"]:  # empty when saved from a run without float16 loss scaling
                scaler.load_state_dict(ckpt["scaler"])
            # all of the loop's randomness comes from batch_gen: it draws each micro-batch's
            # seed, which seeds that batch and the global generators (dropout, GRPO's samples)
            batch_gen.set_state(ckpt["rng"]["batch"])
        except (ValueError, KeyError, TypeError, RuntimeError) as e:
            raise CheckpointError(f"{cfg.out_dir} cannot be resumed: its optimizer or random "
                                  f"generator state is damaged ({type(e).__name__})") from None
        check_optimizer_state(optimizer, f"the checkpoint in {cfg.out_dir}")
        step, best_val, history = ckpt["step"], ckpt["best_val_loss"], ckpt["history"]
        for key, empty in (("train_s", []), ("tokens", []), ("metrics", {})):
            history.setdefault(key, empty)  # checkpoints of earlier versions lack them
        saved_step = step
    fwd_model = torch.compile(model) if cfg.compile else model
    train_model = distributed.wrap(fwd_model, device)  # DDP when there are several processes
    ctx = autocast_context(device, cfg.dtype)
    out_dir = Path(cfg.out_dir)
    ckpt_path, plot_path = out_dir / CHECKPOINT_NAME, out_dir / PLOT_NAME
    train_time, trained_tokens, tok_s, losses = 0.0, 0, 0.0, {}
    time_before = history["train_s"][-1] if history["train_s"] else 0.0  # of a resumed run
    tokens_before = history["tokens"][-1] if history["tokens"] else 0
    start_step, t_start = step, time.perf_counter()
    stop = cfg.max_iters if stop_at is None else min(stop_at, cfg.max_iters)

    def kept() -> str:
        return (f"{ckpt_path} still holds step {saved_step}" if saved_step is not None
                else "nothing was saved")

    def diverged(what: str, value: float) -> TrainingError:
        return TrainingError(
            f"the {what} became {value} at step {step}: the run diverged and stopped "
            f"({kept()}). Try a lower --learning-rate (now {cfg.learning_rate}) or a longer "
            f"warmup")

    model.train()
    # a live bar in a terminal (redrawn about every 1% of the steps), one line in a notebook
    bar = progress_bar(total=stop, initial=step, disable=not (progress and main), desc="train",
                       unit="step", miniters=max(1, (stop - step) // 100))
    def evaluate_and_save() -> dict:
        nonlocal best_val, saved_step
        losses = estimate_loss(fwd_model, task, cfg.eval_iters, cfg.seed, ctx)
        for name, value in losses.items():
            if not math.isfinite(value):
                raise diverged(f"{name} loss estimate", value)
        history["eval_step"].append(step)
        history["train"].append(losses["train"])
        history["val"].append(losses["val"])
        history["train_s"].append(time_before + train_time)
        history["tokens"].append(tokens_before + trained_tokens)
        best_val = min(best_val, losses["val"])
        save_checkpoint(ckpt_path, {
            "config": dataclasses.asdict(cfg), "model": _saved_weights(model, cfg),
            "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
            "tokenizer": task.tokenizer.to_dict(), "step": step,
            "best_val_loss": best_val, "history": history,
            "rng": {"torch": torch.get_rng_state(), "batch": batch_gen.get_state()},
            "init_sha256": init_sha, "task_sha256": task_sha,
        })
        saved_step = step  # before the line saying so: a Ctrl-C right after it names this step
        bar.write(f"step {step}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
        return losses

    try:
        while True:
            if (step % cfg.eval_interval == 0 or step == stop) and step != saved_step:
                losses = evaluate_and_save() if main else {}  # only rank 0 evaluates and saves
                saved_step = step
            if step >= stop:
                break
            t0 = time.perf_counter()
            lr = get_lr(step, cfg.learning_rate, cfg.min_lr, cfg.warmup_iters, cfg.max_iters)
            for group in optimizer.param_groups:  # lr_ratio: Muon's matrices have their own
                group["lr"] = lr * group.get("lr_ratio", 1.0)
            loss_sum, tokens, metrics = torch.zeros((), device=device), 0, {}
            # this process's share of the step's micro-batches, each with its own seed (for its
            # windows and its dropout), so that any number of processes trains the same run
            seeds = distributed.micro_batch_seeds(batch_gen, cfg.grad_accum_steps)
            for i, seed in enumerate(seeds):
                torch.manual_seed(seed)
                batch = task.batch("train", torch.Generator().manual_seed(seed), model)
                tokens += task.tokens(batch)
                with distributed.sync_gradients(train_model, last=i == len(seeds) - 1):
                    with ctx:
                        loss, metrics = task.loss(train_model, batch)
                    loss = loss / len(seeds)  # the step's gradient is the batches' mean
                    scaler.scale(loss).backward()
                loss_sum += loss.detach()
            # The step's loss (averaged over the processes), read back for the history and to
            # stop every process before a NaN/inf reaches the weights; here the loop waits.
            out_of_time = bool(cfg.max_seconds) and (
                train_time + time.perf_counter() - t0 >= cfg.max_seconds)
            loss_value, tokens, out_of_time = distributed.reduce_step(loss_sum, tokens,
                                                                      out_of_time)
            trained_tokens += tokens
            if not math.isfinite(loss_value):
                raise diverged("training loss", loss_value)
            if cfg.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            train_time += time.perf_counter() - t0
            tok_s = trained_tokens / train_time
            history["step"].append(step)
            history["loss"].append(loss_value)
            for name, value in metrics.items():  # the last micro-batch's (e.g. GRPO's reward)
                history["metrics"].setdefault(name, []).append(float(value))
            step += 1
            if out_of_time:
                stop = step  # out of time: evaluate and save here, then end
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{lr:.2e}", tok_s=f"{tok_s:,.0f}",
                            refresh=False)
    except KeyboardInterrupt:  # Ctrl-C: say where the run stopped and what was saved
        raise TrainingInterrupted(step, saved_step, out_dir) from None
    except RuntimeError as e:  # several processes: did another one fail?
        if not distributed.peer_failed(e):
            raise
        raise distributed.PeerFailed(f"another process of the run failed, so this one stopped "
                                     f"at step {step} ({kept()})") from None
    finally:
        bar.close()
    if main:
        plot_losses(history, plot_path)
    model.eval()
    return {
        "model": model, "tokenizer": task.tokenizer, "task": task, "config": cfg,
        "device": device, "train_loss": losses.get("train"), "val_loss": losses.get("val"),
        "best_val_loss": best_val, "tokens_per_s": tok_s, "steps": step - start_step,
        "wall_s": time.perf_counter() - t_start, "checkpoint": ckpt_path, "plot": plot_path,
        "history": history,
    }


def _build_task(task, cfg: TrainConfig, tokenizer, device: str) -> Task:
    if isinstance(task, Task):
        return task
    return (task or LMTask).build(cfg, tokenizer, device)


def _build_model(cfg: TrainConfig, start: dict | None, ckpt: dict | None, device: str) -> GPT:
    """The model of a run: new, from ``start``'s weights (fine-tuning), with LoRA adapters
    (``cfg.lora_rank``), and with ``ckpt``'s weights when resuming."""
    if ckpt is not None and not cfg.lora_rank:
        return build_model(cfg.model, ckpt["model"], device,
                           f"the checkpoint in {cfg.out_dir}")
    model = GPT(cfg.model)
    if start is not None:
        load_init_weights(model, start["model"])
    if cfg.lora_rank:
        apply_lora(model, r=cfg.lora_rank, alpha=cfg.lora_alpha)
        if ckpt is not None:
            load_adapters(model, ckpt["model"], f"the checkpoint in {cfg.out_dir}")
    return model.to(device)


def _saved_weights(model: GPT, cfg: TrainConfig) -> dict:
    """What a checkpoint keeps of the model: every weight, or a LoRA run's adapters only."""
    state = model.state_dict()
    return {k: v for k, v in state.items() if ".lora_" in k} if cfg.lora_rank else state


def finished_or_train(cfg: TrainConfig, task=None) -> dict:
    """The run in ``cfg.out_dir`` if it finished with exactly these settings (and, when it
    started from another model, after that model was last written), else a new run that
    replaces whatever the folder held. A ``task`` given as an object must also be the same
    (:meth:`~course_utils.tasks.Task.fingerprint`: its data and its own settings), so a
    changed problem pool or GRPO ``beta`` trains again. Notebooks use it to reuse a run made
    earlier, by themselves or by the command line. Returns :func:`train`'s dict, or for a reused run
    ``{"model", "tokenizer", "history", "config", "tokens_per_s", "reused": True}``
    (``tokens_per_s`` of the whole run, from its history)."""
    from .checkpoint import model_from_checkpoint

    try:
        ckpt = load_checkpoint(cfg.out_dir)
    except (FileNotFoundError, CheckpointError):
        ckpt = None
    if ckpt is not None and ckpt["step"] == cfg.max_iters:
        saved = TrainConfig.from_dict(ckpt["config"])
        wanted = cfg.settings() if not cfg.init_from else _without_shape(cfg)
        same = all(saved.settings()[k] == v for k, v in wanted.items())
        if same and cfg.init_from:
            same = ckpt.get("init_sha256") == init_sha256(cfg.init_from)
        if same and isinstance(task, Task) and ckpt.get("task_sha256") != task.fingerprint():
            why = ("was saved before runs recorded their task" if "task_sha256" not in ckpt
                   else "was trained on another task (its data or its own settings differ)")
            print(f"the run in {cfg.out_dir} {why}: training again")
            same = False
        if same:
            print(f"reusing the finished run in {cfg.out_dir}")
            model, tok = model_from_checkpoint(ckpt, resolve_device(cfg.device),
                                               f"the checkpoint in {cfg.out_dir}")
            h = ckpt["history"]
            tok_s = h["tokens"][-1] / h["train_s"][-1] if h.get("tokens") and h["train_s"][-1] \
                else float("nan")
            return {"model": model, "tokenizer": tok, "history": h, "config": saved,
                    "tokens_per_s": tok_s, "reused": True}
    return train(cfg, overwrite=True, task=task)


@torch.no_grad()
def estimate_loss(model, task: Task, eval_iters: int, seed: int, ctx=None) -> dict:
    """Mean loss of ``task`` (nats/token for language modelling and SFT; DPO runs: the DPO
    loss) over ``eval_iters`` batches of each split, in eval mode (no dropout). The batches
    come from a generator seeded with ``seed + 1`` at every evaluation, so they do not disturb
    the training batches and successive evaluations are comparable. ``ctx`` is the
    autocast context (:func:`autocast_context`), none by default."""
    ctx = contextlib.nullcontext() if ctx is None else ctx
    out = {}
    with eval_mode(model):
        for split in SPLITS:
            g = torch.Generator().manual_seed(seed + 1)
            losses = []
            for _ in range(eval_iters):
                batch = task.batch(split, g, model)
                with ctx:
                    loss, _ = task.loss(model, batch)
                losses.append(loss.item())
            out[split] = float(np.mean(losses))
    return out

