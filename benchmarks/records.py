"""The speedrun's records (notebook 16): ``python -m benchmarks.records [--only N,...]``.

Each record is one command line that trains a character-level model on Tiny Shakespeare
until its final validation loss is at most 1.60, each adding one improvement to the one
before. The rules, the same for every record:

- the data: Tiny Shakespeare, the course's character tokenizer, the last 10% held out
  (:func:`course_utils.datasets.train_val_split`);
- the validation loss: the mean cross-entropy (nats per character) of 640 windows of 64
  characters of the held-out part, drawn with the run's seed (``eval_iters x batch_size =
  640``, ``block_size = 64``), after the last step;
- the time: wall-clock seconds around the whole command (``python -m course_utils train
  ...`` in a fresh process with 2 threads, or ``torchrun --standalone --nproc_per_node=2 -m
  course_utils train ...``, two processes with one thread each: start-up, imports, data,
  training, evaluations, checkpoints and the loss plot), on the 2-core reference machine;
- two seeds (1337 and 1338); a record counts when both reach 1.60.

Writes ``benchmarks/records.json`` (every run, the machine and its load) and prints the
markdown table that the README shows (:func:`markdown`; a test keeps the two equal).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
from pathlib import Path

from .harness import cpu_model
from .speedrun import RECORD_SECONDS, command, run_command

TARGET = 1.60
SEEDS = (1337, 1338)
RECORDS_PATH = Path(__file__).resolve().parent / "records.json"

# Each record: what changed, the number of processes (1: python, 2: torchrun) and the flags
# after `train`. Notebook 16 measures each change of the recipe at equal time; the rows here
# are whole commands, timed under the rules above.
RECORDS = [
    ("the shakespeare-char preset as it is (GPT-2 block, AdamW, 1500 steps of 32 sequences)",
     1, ["--preset", "shakespeare-char"]),
    ("shakespeare-speedrun in one process: the Llama block, Muon, n_embd 96, 700 steps of "
     "2 x 32 sequences, warmup 30", 1, ["--preset", "shakespeare-speedrun"]),
    ("the same in two processes (DDP through torchrun, one thread each; Muon's Newton-Schulz "
     "split between them)", 2, ["--preset", "shakespeare-speedrun"]),
]


def record_command(procs: int, flags: list[str], out_dir: str, seed: int) -> list[str]:
    """The command of a record (``flags`` start with ``--preset NAME``)."""
    return command(flags[1], out_dir, *flags[2:], "--seed", str(seed), "--device", "cpu",
                   procs=procs)


def measure(procs: int, flags: list[str], seed: int, threads: int) -> dict:
    """One record's command with ``seed``: its wall time, final val loss and steps."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = record_command(procs, flags, f"{tmp}/run", seed)
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        wall, hist = run_command(cmd, threads)
    return {"seed": seed, "wall_s": wall, "val_loss": hist["val"][-1],
            "steps": hist["eval_step"][-1], "load_before": load}


def markdown(doc: dict) -> str:
    """The records table of ``doc`` (the content of ``records.json``)."""
    lines = ["| # | change | wall time (s), seeds 1337 / 1338 | val loss | command |",
             "| --- | --- | --- | --- | --- |"]
    for i, r in enumerate(doc["records"]):
        runs = r["runs"]
        reached = all(run["val_loss"] <= TARGET for run in runs)
        times = " / ".join(f"{run['wall_s']:.0f}" for run in runs)
        vals = " / ".join(f"{run['val_loss']:.3f}" for run in runs)
        late = [run["seed"] for run in runs if run["wall_s"] > RECORD_SECONDS]
        said = times if reached else f"1.60 not reached ({times})"
        if reached and late:
            which = "both seeds" if len(late) == len(runs) else f"seed {late[0]}"
            said += f" (over {RECORD_SECONDS:.0f} s: {which})"
        launch = ("python" if r["procs"] == 1
                  else f"torchrun --standalone --nproc_per_node={r['procs']}")
        lines.append(f"| {i} | {r['change']} | {said} | {vals} | "
                     f"`{launch} -m course_utils train {' '.join(r['flags'])}` |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.records", description=__doc__)
    p.add_argument("--only", default=None, help="comma-separated record numbers to re-run")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    doc = json.loads(RECORDS_PATH.read_text()) if RECORDS_PATH.is_file() else {"records": []}
    keep = {r["change"]: r for r in doc["records"]}
    wanted = ({int(i) for i in args.only.split(",")} if args.only
              else set(range(len(RECORDS))))
    records = []
    for i, (change, procs, flags) in enumerate(RECORDS):
        old = keep.get(change)
        if i not in wanted:  # kept as measured, when it was (and its command did not change)
            if old is not None and (old["procs"], old["flags"]) == (procs, flags):
                records.append(old)
            continue
        runs = []
        for seed in SEEDS:
            runs.append(measure(procs, flags, seed, args.threads))
            print(f"[{i}] {change}, seed {seed}: {runs[-1]['wall_s']:.1f} s, val loss "
                  f"{runs[-1]['val_loss']:.4f} (load {runs[-1]['load_before']})",
                  file=sys.stderr, flush=True)
        records.append({"change": change, "procs": procs, "flags": flags, "runs": runs,
                        "measured": datetime.date.today().isoformat()})
    doc = {"machine": f"{cpu_model()}, {os.cpu_count()} cores, {args.threads} threads",
           "target": TARGET, "records": records}
    RECORDS_PATH.write_text(json.dumps(doc, indent=1) + "\n")
    print(markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
