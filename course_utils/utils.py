"""Small helpers shared by every notebook: fast mode, device choice, seeding, atomic files,
progress bars that save cleanly in notebooks, checks of loaded weights, the command lines'
one-line errors and the loss-curve plot of a training run."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm  # live bars in a terminal

FAST_ENV = "COURSE_FAST"


def fast_mode() -> bool:
    """True when ``COURSE_FAST`` is set to a true value (``1``, ``true``, ``yes``).

    CI runs the notebooks in fast mode, which shrinks step counts and sizes.
    """
    return os.environ.get(FAST_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def pick(full, fast):
    """Return ``fast`` in fast mode, otherwise ``full`` (e.g. ``steps = pick(2000, 20)``)."""
    return fast if fast_mode() else full


def run_dir(name: str) -> Path:
    """The run folder ``runs/NAME`` that the notebooks and the CLI share.

    From a checkout of the repository this is ``runs/NAME`` at its root, the folder that
    ``python -m course_utils train`` writes to when it runs from the root (as the README does),
    so notebook 08 finds the model of notebook 07 or of the main job. Elsewhere (a package
    installed in Colab) it is ``runs/NAME`` under the working directory. The path is given
    relative to the working directory when it lies below it or beside it (``../runs/NAME``
    from ``notebooks/``), so that printing it shows no path of the machine.

    Raises ``ValueError`` for an empty name or one that is not a plain folder name.
    """
    if not name or Path(name).name != name or name in {".", ".."}:
        raise ValueError(f"run_dir({name!r}): give a plain folder name such as 'shakespeare-char'")
    root = Path(__file__).resolve().parent.parent
    base = root / "runs" if (root / "pyproject.toml").is_file() else Path.cwd() / "runs"
    path = base / name
    try:
        return Path(os.path.relpath(path, Path.cwd()))
    except ValueError:  # another drive on Windows
        return path


def get_device(preferred: str | None = None) -> str:
    """``preferred`` if given, else the best device there is: ``cuda``, ``mps``, then ``cpu``."""
    if preferred and preferred != "auto":
        return preferred
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_device(name: str = "auto") -> str:
    """The device to run on: ``name``, or for ``"auto"`` the best one there is (cuda, then
    mps, then cpu; :func:`get_device`).

    Raises ``ValueError`` for a name that is no device, or a device this machine lacks."""
    device = get_device(name)
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but PyTorch finds no CUDA GPU on this "
                         f"machine; use --device cpu, or auto for the best device there is")
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"device {name!r} asked for, but this machine has "
                         f"{torch.cuda.device_count()} CUDA GPU(s) (cuda:0 ...)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r} asked for, but MPS (Apple GPUs) is not available "
                         f"here; use --device cpu, or auto for the best device there is")
    return device


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


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module):
    """Run the ``with`` block with ``model`` in eval mode (no dropout), then put it back in the
    mode it was in, even when the block raises."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none), for
    one-line error reports."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def check_finite(state: dict, what: str, error: type[Exception] = ValueError) -> None:
    """Raise ``error`` unless every floating-point tensor of ``state`` (name -> tensor, e.g. a
    state dict) is finite. The message names ``what`` (e.g. ``"the checkpoint runs/x"``) and up
    to three of the tensors that hold NaN or infinite values."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise error(f"{what} holds weights that are NaN or infinite ({', '.join(bad[:3])}"
                    f"{' ...' if len(bad) > 3 else ''}): the file is damaged, or the run that "
                    f"wrote it diverged")


def sha256_of(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()


def set_seed(seed: int) -> None:
    """Seed Python's, NumPy's and PyTorch's (CPU and CUDA) random generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def atomic_write(path: str | Path):
    """Write a file all at once or not at all: yields a temporary path next to ``path``.

    The caller writes the temporary file (``open``, ``torch.save``, ``np.save`` ...). When the
    ``with`` block ends without an error it is renamed over ``path`` (``os.replace``, atomic on
    one file system), so readers see either the old file or the complete new one. On an error
    the temporary file is deleted and the error propagates; ``path`` is untouched.

    The temporary name is ``.NAME.PID.tmp``: a process killed mid-write leaves such a file,
    which :func:`remove_stale_temp_files` deletes on the next start.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def remove_stale_temp_files(folder: str | Path) -> list[Path]:
    """Delete the leftovers of interrupted :func:`atomic_write` calls in ``folder``.

    A leftover is a ``.NAME.PID.tmp`` file whose process (PID) no longer runs. Returns the
    deleted paths.
    """
    removed = []
    for tmp in Path(folder).glob(".*.tmp"):
        pid = tmp.name.rsplit(".", 2)[-2]
        if not pid.isdigit() or _process_alive(int(pid)):
            continue
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


class _LogBar:
    """The part of tqdm's interface the course uses, printing one line when it closes."""

    def __init__(self, iterable=None, total=None, desc="", unit="it", initial=0,
                 disable=False, **_ignored):
        self.iterable, self.desc, self.unit, self.disable = iterable, desc or "", unit, disable
        self.total = len(iterable) if total is None and hasattr(iterable, "__len__") else total
        self.n, self.postfix, self.start, self.closed = initial, "", time.perf_counter(), False

    def __iter__(self):
        try:
            for item in self.iterable:
                yield item
                self.n += 1
        finally:
            self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def update(self, n=1):
        self.n += n

    def set_postfix(self, refresh=True, **values):
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def write(self, text):
        print(text)

    def close(self):
        if self.closed or self.disable:
            return
        self.closed = True
        done = f"{self.n:,}" + (f"/{self.total:,}" if self.total is not None else "")
        line = f"{self.desc}: {done} {self.unit} in {time.perf_counter() - self.start:.1f} s"
        print(line + (f" ({self.postfix})" if self.postfix else ""), file=sys.stderr)


def progress_bar(iterable=None, **kwargs):
    """A progress bar: tqdm's live bar in a terminal, one summary line everywhere else.

    Takes tqdm's arguments (``total``, ``desc``, ``unit``, ``initial``, ``disable`` ...).
    A live bar redraws itself with carriage returns; in a saved notebook or a CI log every
    redraw stays behind as a fragment, so when standard error is not a terminal the bar
    stays silent while it runs and prints ``desc: n/total unit in S s`` once at the end.
    """
    if sys.stderr.isatty():
        return tqdm(iterable, **kwargs)
    return _LogBar(iterable, **kwargs)


class OneLineErrorParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose mistakes are one line on stderr, exit code 2:
    ``error: MESSAGE (usage: USAGE)``, instead of argparse's usage block. A long usage (a
    command with many flags) is shortened to ``PROG [options]; PROG --help lists them``.

    Subcommands made with ``add_subparsers`` are of this class too (argparse makes them of
    the parent's class), and each reports the arguments it does not know itself, with its own
    usage (argparse would leave them to the main parser)."""

    def error(self, message: str):
        usage = " ".join(self.format_usage().split()[1:])
        if len(usage) > 100:
            usage = f"{self.prog} [options]; {self.prog} --help lists them"
        self.exit(2, f"error: {message} (usage: {usage})\n")

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras


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
    ax.set_ylabel("loss (cross-entropy: nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)
