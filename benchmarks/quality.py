"""Section ``quality``: validation loss of the ``shakespeare-char`` preset after a fixed
wall-clock budget.

A budget is met by choosing ``max_iters`` so that the whole ``course_utils.train.train``
call (data loading, evaluations, checkpoints, plot included) fits in it: a short calibration
run measures the seconds per training step, one call of ``estimate_loss`` measures the
seconds per evaluation, and the rest of the calibration run's wall time is fixed overhead.
The learning-rate schedule (warmup + cosine) then ends exactly at the budget, which is how
one would train for a fixed time. The reported time is the run's actual wall time, which
can differ from the budget when the machine's load changes.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import time

from .harness import Context, SectionResult, Table, Target, timed

TITLE = "2. Quality per second (shakespeare-char)"
NANOGPT_VAL_LOSS, NANOGPT_SECONDS = 1.88, 180  # nanoGPT README, its CPU recipe


def _config(ctx: Context, out_dir: str, **overrides):
    from course_utils.config import TrainConfig

    return TrainConfig.from_preset("shakespeare-char", out_dir=out_dir, device=ctx.device,
                                   dtype="float32", **overrides)


def _quiet():
    """Swallow what train() prints (its evaluation lines) so the log stays readable."""
    return contextlib.redirect_stdout(io.StringIO())


def _n_evals(max_iters: int, eval_interval: int) -> int:
    """Evaluations train() runs: at every multiple of eval_interval and at the last step."""
    return max_iters // eval_interval + 1 + (max_iters % eval_interval != 0)


def calibrate(ctx: Context, steps: int, overrides: dict) -> dict:
    """Seconds per step, per evaluation and of fixed overhead of the preset on this machine."""
    from course_utils.model import GPT
    from course_utils.tasks import LMTask
    from course_utils.train import estimate_loss, train
    from course_utils.utils import autocast_context

    with tempfile.TemporaryDirectory() as tmp, _quiet():
        cfg = _config(ctx, tmp, max_iters=steps, **overrides)
        call_s, r = timed(lambda: train(cfg, progress=False))
    tokens_per_step = cfg.batch_size * cfg.model.block_size * cfg.grad_accum_steps
    step_s = tokens_per_step / r["tokens_per_s"]
    task = LMTask.build(cfg)
    model = GPT(cfg.model_config(task.tokenizer.vocab_size)).to(ctx.device)
    ctx_amp = autocast_context(ctx.device, cfg.dtype)
    estimate_loss(model, task, cfg.eval_iters, cfg.seed, ctx_amp)  # warm-up
    t0 = time.perf_counter()
    estimate_loss(model, task, cfg.eval_iters, cfg.seed, ctx_amp)
    eval_s = time.perf_counter() - t0
    overhead_s = max(0.0, call_s - steps * step_s
                     - _n_evals(steps, cfg.eval_interval) * eval_s)
    return {"step_s": step_s, "eval_s": eval_s, "overhead_s": overhead_s,
            "eval_interval": cfg.eval_interval}


def iters_for_budget(budget_s: float, cal: dict) -> int:
    """The largest ``max_iters`` whose predicted wall time fits in ``budget_s`` (at least 1)."""
    n = max(1, int((budget_s - cal["overhead_s"]) / cal["step_s"]))
    while n > 1 and (cal["overhead_s"] + n * cal["step_s"]
                     + _n_evals(n, cal["eval_interval"]) * cal["eval_s"]) > budget_s:
        n -= max(1, n // 100)
    return n


def run(ctx: Context) -> SectionResult:
    from course_utils.train import train

    res = SectionResult("quality", TITLE)
    budgets = ctx.pick(full=[60, 180, 300], quick=[10], tiny=[2])
    overrides = ctx.pick(full={}, quick={}, tiny={"eval_iters": 2, "eval_interval": 20})
    cal_steps = ctx.pick(full=50, quick=5, tiny=3)
    ctx.log(f"quality: calibrating with {cal_steps} steps")
    cal = calibrate(ctx, cal_steps, overrides)
    res.figure("calibration", cal)
    table = Table("val loss after a wall-clock budget",
                  ["budget (s)", "max_iters", "wall (s)", "tokens/s", "train loss", "val loss"])
    for budget in budgets:
        # aim a little under the budget: the prediction is a linear fit
        n = iters_for_budget(0.97 * budget, cal)
        ctx.log(f"quality: budget {budget} s -> max_iters {n}")
        with tempfile.TemporaryDirectory() as tmp, _quiet():
            cfg = _config(ctx, tmp, max_iters=n, **overrides)
            wall_s, r = timed(lambda cfg=cfg: train(cfg, progress=False))
        ctx.log(f"quality: {wall_s:.1f} s, val loss {r['val_loss']:.4f}")
        res.figure(f"budget_{budget}s", {
            "max_iters": n, "wall_s": wall_s, "train_wall_s": r["wall_s"],
            "tokens_per_s": r["tokens_per_s"],
            "train_loss": r["train_loss"], "val_loss": r["val_loss"],
            "eval_steps": r["history"]["eval_step"], "eval_val": r["history"]["val"]})
        table.add(budget, n, f"{wall_s:.1f}", f"{r['tokens_per_s']:,.0f}",
                  f"{r['train_loss']:.4f}", f"{r['val_loss']:.4f}")
        if budget == NANOGPT_SECONDS:
            ok = r["val_loss"] < NANOGPT_VAL_LOSS and wall_s <= NANOGPT_SECONDS
            res.targets.append(Target(
                f"val loss < {NANOGPT_VAL_LOSS} within {NANOGPT_SECONDS} s",
                f"{r['val_loss']:.3f} in {wall_s:.0f} s", ok))
    if NANOGPT_SECONDS not in budgets:
        res.targets.append(Target(f"val loss < {NANOGPT_VAL_LOSS} within {NANOGPT_SECONDS} s",
                                  f"not measured in {ctx.mode} mode", None))
    res.tables.append(table)
    res.notes += [
        "Each row is one run of `course_utils.train.train` with the `shakespeare-char` preset "
        "(float32), `max_iters` chosen from a calibration run so that the whole call fits "
        "97% of the budget; the learning-rate schedule ends at `max_iters`. Wall time is "
        "that of the whole call: data loading, model set-up, evaluations, checkpoints and "
        "the loss plot included. One run per budget.",
        f"Calibration: {cal['step_s'] * 1e3:.1f} ms/step, {cal['eval_s']:.2f} s/evaluation, "
        f"{cal['overhead_s']:.1f} s fixed overhead ({cal_steps}-step run).",
        f"Reference: nanoGPT's README reports val loss {NANOGPT_VAL_LOSS} after about "
        f"{NANOGPT_SECONDS // 60} minutes for its CPU recipe on a MacBook.",
    ]
    if overrides:
        res.notes.append(f"Preset overrides in {ctx.mode} mode: {overrides}.")
    return res
