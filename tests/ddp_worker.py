"""The program ``tests/test_distributed.py`` starts on 2 CPU processes with ``torchrun``.

    torchrun --standalone --nproc_per_node=2 tests/ddp_worker.py MODE FOLDER

Every process runs the command line (``course_utils.cli.main``) as ``python -m course_utils
train`` would, with the ``smoke`` preset, so that what is tested is the front door:

- ``runs``: a whole run (``ddp_full``), the first half of one (``ddp_part``, ``--stop-at``),
  and the second half of a run a single process started (``single_part``, ``--resume``);
- ``muon``: a whole run with Muon (``ddp_muon``), whose Newton-Schulz work the two processes
  split between them;
- ``crash``: a run in which rank 1 fails at step 5 (its task's loss raises), to see how the
  other process ends.

Each process exits with the command line's exit code.
"""

import sys

import torch

from course_utils import cli, distributed
from course_utils.tasks import LMTask

SMOKE = ["--preset", "smoke", "--grad-accum-steps", "2", "--max-iters", "8",
         "--eval-interval", "4", "--no-progress", "--device", "cpu", "--sample-tokens", "0"]
CRASH_STEP = 5


def main(mode: str, folder: str) -> int:
    torch.set_num_threads(1)
    if mode == "runs":
        for args in (["--out-dir", f"{folder}/ddp_full"],
                     ["--out-dir", f"{folder}/ddp_part", "--stop-at", "4"],
                     ["--out-dir", f"{folder}/single_part", "--resume"]):
            rc = cli.main(["train", *SMOKE, *args])
            if rc:
                return rc
        return 0
    if mode == "muon":
        return cli.main(["train", *SMOKE, "--optimizer", "muon", "--out-dir",
                         f"{folder}/ddp_muon"])
    if mode == "crash":
        rank, _ = distributed.world()
        loss, calls = LMTask.loss, []

        def failing_loss(self, model, batch):
            calls.append(1)  # one micro-batch per process and step: the call is the step
            if rank == 1 and len(calls) == CRASH_STEP + 1:
                raise ValueError(f"rank 1 failed on purpose at step {CRASH_STEP}")
            return loss(self, model, batch)

        LMTask.loss = failing_loss
        return cli.main(["train", *SMOKE, "--eval-interval", "2", "--out-dir",
                         f"{folder}/crash"])
    raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
