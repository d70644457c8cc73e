"""The pieces every benchmark section shares: timing, summaries, ratios, machine facts,
and writing ``results.md`` / ``results.json``.

Conventions:

- Every figure is a :class:`Stat`: the raw samples (seconds, tokens/s, MB/s, MiB ...), their
  median, min, max and interquartile range.
- Two sides are timed in the same process, one call of each per round, the order of the
  sides rotating from round to round (:func:`interleave`), after an untimed warm-up of
  each side. A ratio is the median of the per-round ratios, so that a burst of load
  from something else on the machine hits both sides of a round alike.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

MODES = ("full", "quick", "tiny")


@dataclass
class Context:
    """What a section needs to know about the run.

    ``mode`` is ``"full"`` (the published figures, median of ``repeats >= 3``), ``"quick"``
    (about a minute for everything: small sizes, figures indicative only) or ``"tiny"`` (a
    smoke test of the harness itself; its figures mean nothing).
    """

    mode: str = "quick"
    repeats: int = 1
    threads: int = 1
    device: str = "cpu"
    notebooks_full: bool = False
    notebooks_dir: Path | None = None
    log: Callable[[str], None] = print
    # the load average when the run began (os.getloadavg: 1, 5 and 15 minutes), or None
    load_at_start: list | None = field(default_factory=lambda: list(os.getloadavg())
                                       if hasattr(os, "getloadavg") else None)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {self.repeats}")

    def pick(self, full, quick, tiny):
        """The value for this run's mode."""
        return {"full": full, "quick": quick, "tiny": tiny}[self.mode]


@dataclass
class Stat:
    """Repeated measurements of one quantity (e.g. tokens/s of one side), in ``unit``."""

    samples: list[float]
    unit: str

    def __post_init__(self):
        if not self.samples:
            raise ValueError("a Stat needs at least one sample")

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def iqr(self) -> tuple[float, float]:
        """(first quartile, third quartile); both equal the sample when there is one."""
        if len(self.samples) < 2:
            return self.samples[0], self.samples[0]
        q1, _, q3 = statistics.quantiles(self.samples, n=4, method="inclusive")
        return q1, q3

    def to_dict(self) -> dict:
        q1, q3 = self.iqr
        return {"unit": self.unit, "median": self.median, "min": min(self.samples),
                "max": max(self.samples), "q1": q1, "q3": q3, "n": len(self.samples),
                "samples": list(self.samples)}

    def fmt(self, digits: int = 3) -> str:
        """``median (min-max)`` for a table cell; just the median when there is one sample."""
        if len(self.samples) == 1:
            return _num(self.median, digits)
        return (f"{_num(self.median, digits)} ({_num(min(self.samples), digits)}-"
                f"{_num(max(self.samples), digits)})")


def _num(x: float, digits: int = 3) -> str:
    """A number with ``digits`` significant digits, thousands separated, no exponent."""
    if x == 0 or not (abs(x) < float("inf")):
        return str(x)
    decimals = max(0, digits - 1 - int(f"{abs(x):e}".split("e")[1]))
    return f"{x:,.{decimals}f}"


def ratio(numerators: Stat, denominators: Stat) -> Stat:
    """Per-round ratios of two interleaved measurements (round ``i`` of one over round ``i``
    of the other), as a Stat with unit ``"x"``."""
    if len(numerators.samples) != len(denominators.samples):
        raise ValueError("ratio needs the same number of rounds on both sides")
    return Stat([a / b for a, b in zip(numerators.samples, denominators.samples)], "x")


def interleave(sides: dict[str, Callable[[], float]], repeats: int, warmup: int = 1
               ) -> dict[str, list[float]]:
    """Call every side ``warmup`` times untimed, then ``repeats`` rounds of one call each.

    Each side's callable does its own setup, times only the work (``time.perf_counter``) and
    returns the seconds it took. The order of the sides rotates by one every round.
    Returns ``{side: [seconds of round 0, round 1, ...]}``.
    """
    names = list(sides)
    for _ in range(warmup):
        for name in names:
            sides[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            times[name].append(sides[name]())
    return times


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    """``(seconds, result)`` of one call of ``fn``."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def stopwatch(fn: Callable[[], object]) -> Callable[[], float]:
    """A callable that calls ``fn`` and returns the seconds it took (for :func:`interleave`)."""
    return lambda: timed(fn)[0]


def keeping(outputs: dict, name: str, fn: Callable[[], object]) -> Callable[[], float]:
    """Like :func:`stopwatch`, and the result of each call is kept in ``outputs[name]`` (so
    that the sides' outputs can be compared after they are timed)."""
    def run() -> float:
        seconds, outputs[name] = timed(fn)
        return seconds
    return run


def first_difference(a: torch.Tensor, b: torch.Tensor) -> int | None:
    """Index of the first position where two ``(1, T)`` id tensors differ (``None``: equal)."""
    m = min(a.size(1), b.size(1))
    diffs = (a[0, :m] != b[0, :m]).nonzero()
    if len(diffs):
        return int(diffs[0])
    return None if a.size(1) == b.size(1) else m


def same_tokens(diff: int | None, prompt_len: int) -> str:
    """The ``measured`` text of a same-tokens check, from :func:`first_difference`."""
    return "identical" if diff is None else f"differ from new token {diff - prompt_len} on"


def cpu_model() -> str:
    """The CPU's marketing name, from /proc/cpuinfo on Linux, else what platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(ctx: Context) -> dict:
    """The facts a reader needs to compare figures between machines."""
    info = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": ctx.threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": ctx.device,
        "load_average_at_start": ctx.load_at_start,
    }
    if ctx.device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


@dataclass
class Target:
    """A goal and whether this run met it (``None``: not measured in this mode).

    ``check=True`` marks a correctness check (e.g. identical tokens) rather than a speed
    goal: the command exits with an error when a check fails."""

    what: str
    measured: str
    passed: bool | None
    check: bool = False


@dataclass
class Table:
    """A markdown table: ``columns`` and rows of already formatted cells."""

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)

    def add(self, *cells) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(f"row has {len(cells)} cells, table has {len(self.columns)} columns")
        self.rows.append([str(c) for c in cells])

    def markdown(self) -> str:
        lines = [f"**{self.title}**", "", "| " + " | ".join(self.columns) + " |",
                 "|" + "---|" * len(self.columns)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |"
                  for row in self.rows]
        return "\n".join(lines)


@dataclass
class SectionResult:
    """One section's output: tables for people, figures (Stats and plain values) for
    machines, targets, and notes saying exactly what was measured."""

    name: str
    title: str
    tables: list[Table] = field(default_factory=list)
    figures: dict[str, dict] = field(default_factory=dict)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    mode: str = ""

    def figure(self, key: str, value: Stat | dict | float | str) -> None:
        """Record a machine-readable figure under ``key`` (a Stat, or any JSON value)."""
        self.figures[key] = value.to_dict() if isinstance(value, Stat) else value

    def to_dict(self) -> dict:
        return {"title": self.title, "mode": self.mode, "seconds": self.seconds,
                "notes": self.notes, "figures": self.figures,
                "targets": [vars(t) for t in self.targets],
                "tables": [vars(t) for t in self.tables]}


def _fingerprint(machine: dict) -> tuple:
    return tuple(machine.get(k) for k in ("cpu", "cores", "torch_threads", "torch", "device"))


def write_results(out_dir: Path, ctx: Context, sections: list[SectionResult]) -> tuple[Path, Path]:
    """Write ``results.json`` and ``results.md`` into ``out_dir``.

    Sections of an earlier ``results.json`` that this run did not measure (``--only``) are
    kept when that file comes from the same machine fingerprint (CPU, cores, threads, torch,
    device) and the same mode; otherwise the files hold only this run's sections.
    Returns the two paths.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "results.json", out_dir / "results.md"
    machine = machine_info(ctx)
    doc = {"machine": machine, "mode": ctx.mode,
           "written": datetime.datetime.now().isoformat(timespec="seconds"), "sections": {}}
    if json_path.is_file():
        try:
            old = json.loads(json_path.read_text())
            same = _fingerprint(old["machine"]) == _fingerprint(machine)
            if same and old.get("mode") == ctx.mode:
                doc["sections"] = old.get("sections", {})
        except (ValueError, KeyError):
            pass  # unreadable old file: start afresh
    for s in sections:
        doc["sections"][s.name] = s.to_dict()
    json_path.write_text(json.dumps(doc, indent=1) + "\n")
    md_path.write_text(render_markdown(doc))
    return md_path, json_path


def render_markdown(doc: dict) -> str:
    """``results.md`` from the ``results.json`` document."""
    m = doc["machine"]
    lines = [
        "# Benchmark results",
        "",
        f"Written {doc['written']} by `python -m benchmarks` in **{doc['mode']}** mode"
        + ("" if doc["mode"] == "full" else " (small sizes: figures are indicative only)")
        + ". See `benchmarks/README.md` for what each section measures.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} with "
        f"{m['torch_threads']} threads, device `{m['device']}`, Python {m['python']}; "
        f"load average at start {m['load_average_at_start']}.",
        "",
        "Figures are `median (min-max)` over the repeats; a ratio is the median of per-round "
        "ratios of interleaved measurements (ours / theirs for speeds, so > 1 means ours is "
        "faster).",
        "",
        "## Targets",
        "",
        "| section | target | measured | result |",
        "|---|---|---|---|",
    ]
    for name, s in doc["sections"].items():
        for t in s["targets"]:
            verdict = {True: "PASS", False: "MISS", None: "n/a"}[t["passed"]]
            cells = [name, t["what"], t["measured"], verdict]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    for name, s in doc["sections"].items():
        lines += ["", f"## {s['title']}", "",
                  f"Section `{name}`, {s['mode']} mode, {s['seconds']:.0f} s.", ""]
        for t in s["tables"]:
            lines += [Table(t["title"], t["columns"], t["rows"]).markdown(), ""]
        lines += [f"- {n}" for n in s["notes"]]
    return "\n".join(lines).rstrip() + "\n"
