"""The run folder (notebook 07): where a training run keeps its checkpoint, its lock against a
second process, the refusal to overwrite a run silently, and the ways a run ends early.

- A run folder is never overwritten silently (:func:`previous_run`): a folder that holds a
  checkpoint is continued (resume) or replaced (overwrite) only when asked.
- A lock file (``train.lock``, the ``filelock`` package) keeps a second process out of a
  folder one is training into (:func:`run_folder`); the leftovers of interrupted saves are
  deleted when a run starts.
- :class:`TrainingError`: a run that cannot go on as asked; :class:`RunFinished`: nothing left
  to do; :class:`TrainingInterrupted`: Ctrl-C, with the step it stopped at and the checkpoint
  to resume from.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from filelock import FileLock, Timeout

from .checkpoint import CHECKPOINT_NAME, load_checkpoint
from .utils import remove_stale_temp_files

LOCK_NAME = "train.lock"


class TrainingError(RuntimeError):
    """A run that cannot go on as asked: its folder is busy, holds another run or cannot be
    written, or its loss became NaN/inf."""


class RunFinished(TrainingError):
    """Resume was asked of a run that already reached its ``max_iters``."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a run (a ``KeyboardInterrupt``, so it stops a notebook cell as one does).
    The message says the step it was at, and the checkpoint to resume from."""

    def __init__(self, step: int, saved_step: int | None, out_dir):
        saved = (f"the last checkpoint (step {saved_step}) is in {out_dir}: resume with "
                 f"--resume" if saved_step is not None else f"nothing was saved in {out_dir}")
        super().__init__(f"interrupted at step {step}; {saved}")
        self.step, self.saved_step = step, saved_step


@contextlib.contextmanager
def run_folder(out_dir: Path):
    """Create ``out_dir`` and hold its lock file for the ``with`` block; delete what
    interrupted saves left there. Raises :class:`TrainingError` when the folder is a file,
    cannot be written, or another process holds the lock."""
    if out_dir.exists() and not out_dir.is_dir():
        raise TrainingError(f"--out-dir {out_dir} is a file, not a folder; choose a folder "
                            f"for the run")
    lock = FileLock(out_dir / LOCK_NAME, timeout=0)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except Timeout:  # before OSError: filelock's Timeout is a TimeoutError
        raise TrainingError(f"another process is training into {out_dir} (it holds "
                            f"{out_dir / LOCK_NAME}); wait for it to finish or choose "
                            f"another --out-dir") from None
    except OSError as e:
        raise TrainingError(f"cannot write to --out-dir {out_dir}: {e.strerror or e}; "
                            f"choose a folder you can write to") from None
    try:
        remove_stale_temp_files(out_dir)
        yield
    finally:
        lock.release()


def previous_run(out_dir: Path, resume: bool, overwrite: bool) -> dict | None:
    """The checkpoint to continue (``resume``), or ``None`` for a new run. Raises
    :class:`TrainingError` when a new run would silently replace a checkpoint."""
    if resume:
        return load_checkpoint(out_dir)
    if (out_dir / CHECKPOINT_NAME).exists() and not overwrite:
        raise TrainingError(
            f"{out_dir} already holds a run ({CHECKPOINT_NAME}); continue it with --resume, "
            f"replace it with --overwrite (resume=True / overwrite=True in Python), or choose "
            f"another --out-dir")
    return None
