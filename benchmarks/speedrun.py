"""Section ``speedrun``: the ``shakespeare-speedrun`` preset and the ``shakespeare-char``
preset, one after the other in the same run, for the same wall time.

Both are run as the command a learner types, in fresh processes: the record's ``torchrun
--standalone --nproc_per_node=2 -m course_utils train --preset shakespeare-speedrun`` (two
processes with one thread each, DDP over Gloo) and ``python -m course_utils train --preset
shakespeare-char`` (one process with ``--threads`` threads). The wall time is measured around
the whole command: starting Python (and torchrun's processes), importing torch, loading the
data, training, the evaluations, the checkpoints and the loss plot. The validation loss is the
last evaluation's, with the protocol both presets share (Tiny Shakespeare's last 10%, 640
windows of 64 characters drawn with the run's seed).

The speedrun preset runs as it is (its ``max_iters`` is set so that it ends within 120 s on
the 2-core reference machine); ``shakespeare-char`` then gets the same wall time, its
``max_iters`` chosen from a calibration (:func:`benchmarks.quality.calibrate`, plus the
start-up of a fresh process) so that its learning-rate schedule ends at that time, as the
speedrun's does. So the comparison is at equal time on any machine; the record (val loss
<= 1.60 within 120 s) holds only on a machine like the reference one.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .harness import Context, SectionResult, Table, Target
from .quality import calibrate, iters_for_budget

TITLE = "8. Speedrun: shakespeare-speedrun vs shakespeare-char at equal wall time"
RECORD_LOSS, RECORD_SECONDS = 1.60, 120.0
SPEEDRUN_PROCS = 2  # the record's command runs 2 processes (torchrun, DDP), one per core
REPO = Path(__file__).resolve().parent.parent


def command(preset: str, out_dir: str, *flags: str, procs: int = 1) -> list[str]:
    """The command line of a run of ``preset`` into ``out_dir``: ``python -m course_utils
    train ...``, or with ``procs > 1`` the same through ``torchrun --standalone
    --nproc_per_node=PROCS`` (DDP, one CPU process per core)."""
    launch = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={procs}"] if procs > 1 else [sys.executable])
    return [*launch, "-m", "course_utils", "train", "--preset", preset, "--out-dir", out_dir,
            "--no-progress", "--sample-tokens", "0", *flags]


def shown(cmd: list[str]) -> str:
    """``cmd`` as a learner types it (``python``/``torchrun`` instead of this interpreter)."""
    words = cmd[1:]
    if words[:2] == ["-m", "torch.distributed.run"]:
        return "torchrun " + " ".join(words[2:])
    return "python " + " ".join(words)


def run_command(cmd: list[str], threads: int) -> tuple[float, dict]:
    """Run ``cmd`` in a fresh process with ``threads`` CPU threads in all (shared among the
    processes of a ``torchrun`` command); return ``(wall seconds of the whole command, the
    checkpoint's history)``. Raises ``RuntimeError`` with the command's error output when it
    fails."""
    from course_utils.checkpoint import load_checkpoint

    procs = next((int(w.split("=")[1]) for w in cmd if w.startswith("--nproc_per_node=")), 1)
    env = {**os.environ, "PYTHONPATH": str(REPO),
           "OMP_NUM_THREADS": str(max(1, threads // procs))}
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    wall = time.perf_counter() - t0
    if r.returncode:
        raise RuntimeError(f"{shown(cmd)} failed: {r.stderr.strip()[-500:]}")
    out_dir = cmd[cmd.index("--out-dir") + 1]
    return wall, load_checkpoint(out_dir)["history"]


def startup_seconds(threads: int) -> float:
    """Seconds a fresh process takes to start Python and import the command line."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import course_utils.cli"], check=True, env=env,
                   cwd=REPO)
    return time.perf_counter() - t0


def first_below(history: dict, target: float) -> str:
    """The first evaluation at or below ``target``: ``step N (T s of training)``, or ``-``."""
    for step, val, seconds in zip(history["eval_step"], history["val"], history["train_s"]):
        if val <= target:
            return f"step {step} ({seconds:.0f} s of training)"
    return "-"


def run(ctx: Context) -> SectionResult:
    res = SectionResult("speedrun", TITLE)
    # tiny/quick: a few steps of each
    speed_flags = ctx.pick(full=[], quick=["--max-iters", "40"],
                           tiny=["--max-iters", "3", "--eval-iters", "2"])
    char_overrides = ctx.pick(full={}, quick={}, tiny={"eval_iters": 2, "eval_interval": 20})
    table = Table("val loss at equal wall time (the whole command, a fresh process each)",
                  ["preset", "max_iters", "wall (s)", "val loss", "first eval <= 1.60",
                   "command"])
    with tempfile.TemporaryDirectory() as tmp:
        # the record's command: two processes (DDP), one thread each, on the CPU
        cmd = command("shakespeare-speedrun", f"{tmp}/speedrun", "--device", "cpu",
                      *speed_flags, procs=SPEEDRUN_PROCS)
        ctx.log(f"speedrun: {shown(cmd)}")
        wall, hist = run_command(cmd, max(ctx.threads, SPEEDRUN_PROCS))
        speed = {"wall_s": wall, "val_loss": hist["val"][-1], "steps": hist["eval_step"][-1],
                 "eval_step": hist["eval_step"], "eval_val": hist["val"]}
        res.figure("shakespeare-speedrun", speed)
        table.add("shakespeare-speedrun", speed["steps"], f"{wall:.1f}",
                  f"{speed['val_loss']:.4f}", first_below(hist, RECORD_LOSS),
                  f"`{shown(cmd).split(' --out-dir')[0]} {' '.join(speed_flags)}`")
        ctx.log(f"speedrun: {wall:.1f} s, val loss {speed['val_loss']:.4f}; calibrating "
                f"shakespeare-char for the same time")
        cal = calibrate(ctx, ctx.pick(full=50, quick=5, tiny=3), char_overrides)
        start = startup_seconds(ctx.threads)
        n = iters_for_budget(max(1.0, 0.97 * wall - start), cal)
        flags = ["--max-iters", str(n)] + [f for k, v in char_overrides.items()
                                             for f in (f"--{k.replace('_', '-')}", str(v))]
        wall_c, hist_c = run_command(command("shakespeare-char", f"{tmp}/char", "--device",
                                             ctx.device, "--dtype", "float32", *flags),
                                     ctx.threads)
        char = {"wall_s": wall_c, "val_loss": hist_c["val"][-1], "steps": n,
                "eval_step": hist_c["eval_step"], "eval_val": hist_c["val"],
                "startup_s": start}
        res.figure("shakespeare-char", char)
        table.add("shakespeare-char", n, f"{wall_c:.1f}", f"{char['val_loss']:.4f}",
                  first_below(hist_c, RECORD_LOSS),
                  f"`python -m course_utils train --preset shakespeare-char {' '.join(flags)}`")
    ctx.log(f"speedrun: shakespeare-char {wall_c:.1f} s, val loss {char['val_loss']:.4f}")
    res.tables.append(table)
    gap = char["val_loss"] - speed["val_loss"]
    res.figure("val_loss_gap", gap)
    ok = speed["val_loss"] <= RECORD_LOSS and wall <= RECORD_SECONDS
    res.targets.append(Target(
        f"shakespeare-speedrun: val loss <= {RECORD_LOSS} within {RECORD_SECONDS:.0f} s",
        f"{speed['val_loss']:.3f} in {wall:.0f} s" if ctx.mode == "full"
        else f"not measured in {ctx.mode} mode", ok if ctx.mode == "full" else None))
    res.targets.append(Target(
        "shakespeare-speedrun below shakespeare-char at equal wall time",
        f"{speed['val_loss']:.3f} vs {char['val_loss']:.3f} ({gap:+.3f} nats)",
        gap > 0 if ctx.mode == "full" else None))
    res.notes += [
        "Each row is one command in fresh processes: shakespeare-speedrun through torchrun "
        f"with {SPEEDRUN_PROCS} processes of one thread each (DDP), shakespeare-char in one "
        "process with `OMP_NUM_THREADS` = the `--threads` value; wall time is measured "
        "around the whole command: Python's start-up, imports, "
        "data, compilation, training, evaluations, checkpoints and the loss plot. The "
        "speedrun preset runs as it is; shakespeare-char's max_iters is chosen from a "
        f"calibration ({cal['step_s'] * 1e3:.1f} ms/step, {cal['eval_s']:.2f} s/evaluation, "
        f"{cal['overhead_s']:.1f} s overhead in-process, {start:.1f} s to start a process) so "
        "that its command takes the speedrun's wall time, its schedule ending there.",
        "Both use the same data and the same validation protocol (the last 10% of Tiny "
        "Shakespeare, 640 windows of 64 characters).",
    ]
    if speed_flags:
        res.notes.append(f"{ctx.mode} mode: the speedrun preset ran with "
                         f"`{' '.join(speed_flags)}`; its record is measured in full mode only.")
    return res
