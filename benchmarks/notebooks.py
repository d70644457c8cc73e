"""Section ``notebooks``: wall time of each notebook, executed top to bottom in a fresh
kernel with ``nbclient`` (kernel start included), in fast mode (``COURSE_FAST=1``, what CI
runs) and, with ``--notebooks-full``, in full mode. Outputs are not written back.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from .harness import Context, SectionResult, Table, Target

TITLE = "6. Notebook wall time"
FAST_SUITE_TARGET_S = 300
NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"


@contextlib.contextmanager
def _env(**values):
    """Set (or, for ``None``, unset) environment variables; the kernel inherits them."""
    old = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def execute(path: Path, fast: bool, threads: int, timeout: int = 1800
            ) -> tuple[float, str | None]:
    """Run the notebook at ``path`` in a fresh ``python3`` kernel, in its own folder, with
    ``OMP_NUM_THREADS=threads`` (torch's default thread count in the kernel).

    Returns ``(seconds, error)``: ``error`` is ``None``, or the name and message of the
    exception a cell raised (the run stops there)."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    error = None
    with _env(COURSE_FAST="1" if fast else None, MPLBACKEND="Agg",
              OMP_NUM_THREADS=str(threads)):
        t0 = time.perf_counter()
        try:
            client.execute()
        except CellExecutionError as e:
            error = f"{e.ename}: {e.evalue}"[:200]
        seconds = time.perf_counter() - t0
    return seconds, error


def run(ctx: Context) -> SectionResult:
    res = SectionResult("notebooks", TITLE)
    folder = Path(ctx.notebooks_dir or NOTEBOOK_DIR)
    paths = sorted(folder.glob("[0-9][0-9]_*.ipynb"))
    if ctx.mode == "quick":
        paths = paths[:1]
    modes = [("fast", True)] + ([("full", False)] if ctx.notebooks_full else [])
    table = Table("wall time of one top-to-bottom run in a fresh kernel (s)",
                  ["notebook"] + [f"{m} mode" for m, _ in modes])
    totals = {m: 0.0 for m, _ in modes}
    failed = []
    for path in paths:
        cells = []
        for m, fast in modes:
            ctx.log(f"notebooks: {path.name}, {m} mode")
            seconds, error = execute(path, fast, ctx.threads)
            totals[m] += seconds
            res.figure(f"{path.stem}/{m}_s", {"seconds": seconds, "error": error})
            cells.append(f"{seconds:.1f}" + (f" (ERROR {error})" if error else ""))
            if error:
                failed.append(f"{path.name} ({m})")
        table.add(path.name, *cells)
    if paths:
        table.add("**total**", *(f"**{totals[m]:.1f}**" for m, _ in modes))
    res.tables.append(table)
    for m, _ in modes:
        res.figure(f"total_{m}_s", totals[m])
    passed = None  # quick mode runs one notebook: the suite's total is not measured
    if ctx.mode != "quick" and paths:
        passed = not failed and totals["fast"] <= FAST_SUITE_TARGET_S
    res.targets.append(Target(
        f"all notebooks in fast mode within {FAST_SUITE_TARGET_S} s together",
        f"{totals['fast']:.0f} s for {len(paths)} notebook(s)"
        + (f", failed: {', '.join(failed)}" if failed else ""), passed))
    res.targets.append(Target("every notebook runs without error",
                              f"failed: {', '.join(failed)}" if failed else "all ran",
                              not failed, check=True))
    res.notes.append(f"{len(paths)} notebook(s) from `{folder}`"
                     + (" (quick mode: the first only)" if ctx.mode == "quick" else "")
                     + f"; kernel start included; kernels run with OMP_NUM_THREADS={ctx.threads}."
                     + ("" if ctx.notebooks_full else " Full mode: pass `--notebooks-full`."))
    return res
