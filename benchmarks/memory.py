"""Section ``memory``: peak resident memory (RSS) of a training run and of BPE training.

Each job runs in a fresh Python subprocess (``python -m benchmarks.memory JOB ...``) so that
peaks do not mix: the child reads its own peak RSS once after its imports (the baseline:
Python, torch, course_utils) and once after the job, and prints both as JSON. On Linux the
peak is ``VmHWM`` of ``/proc/self/status``: ``getrusage(RUSAGE_SELF).ru_maxrss`` would
carry over the parent's peak, which Linux keeps across ``fork`` and ``exec``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .harness import Context, SectionResult, Table

TITLE = "5. Peak memory (RSS)"
ROOT = Path(__file__).resolve().parent.parent  # the folder that holds benchmarks/


def peak_rss_mib() -> float:
    """This process's peak resident set size so far, in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**10  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # macOS: bytes, else KiB
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _child(argv: list[str]) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.memory")
    p.add_argument("job", choices=["train", "bpe", "load-smollm2", "load-smollm2-hf"])
    p.add_argument("--steps", type=int, default=100, help="train: optimizer steps")
    p.add_argument("--eval-iters", type=int, default=None, help="train: batches per evaluation")
    p.add_argument("--vocab-size", type=int, default=4096, help="bpe: vocabulary size")
    p.add_argument("--chars", type=int, default=None, help="bpe: use only this many characters")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    import torch

    from course_utils.bpe import train_bpe
    from course_utils.config import TrainConfig
    from course_utils.corpora import load_text
    from course_utils.train import train

    torch.set_num_threads(a.threads)
    if a.job == "load-smollm2-hf":
        import transformers  # imported before the baseline: its import is not the load

        transformers.utils.logging.disable_progress_bar()
    baseline = peak_rss_mib()
    t0 = time.perf_counter()
    if a.job == "train":
        extra = {} if a.eval_iters is None else {"eval_iters": a.eval_iters}
        with tempfile.TemporaryDirectory() as tmp:
            cfg = TrainConfig.from_preset("shakespeare-char", out_dir=tmp, max_iters=a.steps,
                                          device=a.device, dtype="float32", **extra)
            train(cfg, progress=False)
    elif a.job == "load-smollm2":  # section smollm2: the course's GGUF loader, float32
        from course_utils.pretrained import from_gguf

        from_gguf()
    elif a.job == "load-smollm2-hf":  # the same file through transformers' GGUF loader
        from course_utils.pretrained import gguf_path

        path = gguf_path()
        transformers.LlamaForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    else:
        text = load_text("tinyshakespeare")[:a.chars]
        train_bpe(text, a.vocab_size)
    return {"baseline_mib": baseline, "peak_mib": peak_rss_mib(),
            "seconds": time.perf_counter() - t0}


def measure(args: list[str], threads: int) -> dict:
    """Run ``python -m benchmarks.memory ARGS`` in a fresh process; its JSON report."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "benchmarks.memory", *args, "--threads", str(threads)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(ctx: Context) -> SectionResult:
    res = SectionResult("memory", TITLE)
    steps = ctx.pick(full=200, quick=20, tiny=3)
    train_args = ["train", "--steps", str(steps), "--device", ctx.device]
    bpe_args = ["bpe", "--vocab-size", "4096"]
    if ctx.mode == "tiny":
        train_args += ["--eval-iters", "2"]
        bpe_args = ["bpe", "--vocab-size", "1024", "--chars", "50000"]
    jobs = {
        f"train shakespeare-char, {steps} steps (+2 evaluations)": train_args,
        "train_bpe, Tiny Shakespeare" + (" (first 50,000 chars), vocab 1024"
                                         if ctx.mode == "tiny" else ", vocab 4096"): bpe_args,
    }
    table = Table("peak RSS of one job in a fresh process",
                  ["job", "peak RSS (MiB)", "after imports (MiB)", "job (MiB)", "seconds"])
    for name, args in jobs.items():
        ctx.log(f"memory: {name}")
        r = measure(args, ctx.threads)
        res.figure(f"{args[0]}", {**r, "job": name, "args": args})
        table.add(name, f"{r['peak_mib']:.0f}", f"{r['baseline_mib']:.0f}",
                  f"{r['peak_mib'] - r['baseline_mib']:.0f}", f"{r['seconds']:.1f}")
    res.tables.append(table)
    res.notes.append("One run per job. `peak RSS` is the child process's peak resident set "
                     "size (`VmHWM` on Linux); "
                     "`after imports` is its peak after importing torch and course_utils, "
                     "before the job; `job` is the difference.")
    return res


if __name__ == "__main__":
    print(json.dumps(_child(sys.argv[1:])))
