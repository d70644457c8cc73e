"""The report card (evaluation notebook): every measurement of a model in one table, and the
``eval`` command.

``python -m course_utils eval --model smollm2-135m-instruct`` (or ``--checkpoint RUN_DIR``)
measures a model on the course's tasks (:mod:`course_utils.eval_tasks`: bits per byte, MMLU,
GSM8K, IFEval, addition, chat-stop) and writes ``report.md`` (a table for people) and
``report.json`` (every item's outcome, for machines) into its run folder;
``python -m course_utils eval --compare A B ...`` puts two or more cards side by side with
the paired differences of consecutive stages.

Every accuracy is printed with its Wilson interval and chance
(:func:`course_utils.stats.accuracy`), every comparison with a paired test
(:func:`course_utils.stats.compare`; for bits per byte a paired bootstrap over the pieces of
text). A card is cached: a task measured before with the same settings on the same model file
(sha256) is read back from ``report.json`` instead of measured again.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import stats
from .checkpoint import load_checkpoint
from .corpora import DataError
from .eval_tasks import (
    BATCH_SIZE,
    CARD_SIZES,
    MAX_NEW_TOKENS,
    MMLU_FORMS,
    TASK_FUNCTIONS,
    TASKS,
    Measure,
    NotApplicable,
    Subject,
    TaskResult,
    load_subject,
)
from .utils import atomic_write, resolve_device, run_dir

FORMAT = "course-report-card"  # the "format" field of report.json
VERSION = 1  # bump when a task's definition changes: cached results of other versions are redone


# --------------------------------------------------------------------------------- the card
@dataclass
class ReportCard:
    """Every task measured on one model (``results``, in :data:`TASKS` order), with the
    model's ``name``, ``fingerprint`` (sha256 of its file) and the ``device`` it ran on."""

    name: str
    fingerprint: str
    results: dict[str, TaskResult]
    device: str = "cpu"

    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "model": self.name,
                "fingerprint": self.fingerprint, "device": self.device,
                "written": datetime.datetime.now(datetime.UTC).isoformat(
                    timespec="seconds"),
                "tasks": {k: r.to_dict() for k, r in self.results.items()}}

    @classmethod
    def from_dict(cls, d: dict, source: str = "report.json") -> ReportCard:
        """Raises ``ValueError`` for anything but a card this version wrote."""
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ValueError(f"{source} is not a report card written by python -m course_utils "
                             f"eval")
        if d.get("version") != VERSION:
            raise ValueError(f"{source} is a report card of another version ({d.get('version')}"
                             f", this one reads {VERSION}): measure the model again")
        try:
            results = {k: TaskResult.from_dict(r) for k, r in d["tasks"].items()}
            return cls(str(d["model"]), str(d["fingerprint"]), results, str(d.get("device")))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{source} is a damaged report card: {type(e).__name__} "
                             f"{e}") from None

    def measures(self) -> dict[str, Measure]:
        """Every measure by name, in the card's order."""
        return {m.name: m for r in self.results.values() for m in r.measures}

    def markdown(self) -> str:
        """The card as Markdown: one row per measure (its items, result with 95% interval,
        time of its task), then the notes and settings of each task."""
        lines = [f"# Report card: {self.name}", "",
                 "| task | measure | items | result [95% interval] | time |",
                 "| --- | --- | --- | --- | --- |"]
        for task, r in self.results.items():
            if r.not_applicable:
                lines.append(f"| {task} | not applicable | | {r.not_applicable} | |")
                continue
            for i, m in enumerate(r.measures):
                when = format_seconds(r.seconds) if i == 0 else ""
                lines.append(f"| {task if i == 0 else ''} | {m.name} | {m.n:,} | "
                             f"{m.summary()} | {when} |")
        lines += ["", f"Model file sha256 {self.fingerprint[:12]}..., measured on "
                      f"{self.device}. Intervals: Wilson (accuracies), percentile bootstrap "
                      f"over pieces of text (bits per byte).", ""]
        for task, r in self.results.items():
            if r.not_applicable:
                continue
            shown = ", ".join(f"{k} {v}" for k, v in r.settings.items())
            lines.append(f"- **{task}** ({shown}): " + "; ".join(r.notes)
                         + (" (reused from an earlier run)" if r.reused else ""))
        return "\n".join(lines) + "\n"

    def save(self, folder: str | Path) -> tuple[Path, Path]:
        """Write ``report.md`` and ``report.json`` into ``folder`` (atomically) -> their
        paths."""
        folder = Path(folder)
        md, js = folder / "report.md", folder / "report.json"
        with atomic_write(js) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=1) + "\n", encoding="utf-8")
        with atomic_write(md) as tmp:
            tmp.write_text(self.markdown(), encoding="utf-8")
        return md, js


def format_seconds(s: float) -> str:
    """``42 s``, ``3 min 05 s``."""
    return f"{s:.0f} s" if s < 60 else f"{int(s // 60)} min {int(s % 60):02d} s"


def load_card(path: str | Path) -> ReportCard:
    """Read a card: a ``report.json`` file, or a folder holding one. Loading runs no code
    (JSON). Raises ``FileNotFoundError`` when there is none and ``ValueError`` for a file that
    is not a card."""
    path = Path(path)
    file = path / "report.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"no report card at {file}; measure the model first: "
                                f"python -m course_utils eval --checkpoint RUN_DIR (or "
                                f"--model NAME)")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{file} is not a report card: it is not JSON ({e})") from None
    return ReportCard.from_dict(data, str(file))


def task_settings(task: str, limit=None, forms=("cloze",), shots: int = 0,
                  max_new_tokens: int | None = None, system: str | None = None,
                  seed: int = 0) -> dict:
    """The keyword arguments :func:`run_task` passes to ``task``'s function."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; the tasks are {', '.join(TASKS)}")
    kw: dict = {"limit": limit}
    if task in ("bpb", "mmlu", "gsm8k", "ifeval", "chat-stop"):
        kw["seed"] = seed
    if task == "mmlu":
        kw.update(forms=tuple(forms), shots=shots)
    if task == "gsm8k":
        kw["shots"] = shots
    if task in MAX_NEW_TOKENS:
        kw.update(max_new_tokens=max_new_tokens, system=system)
    return kw




def run_task(subject: Subject, task: str, progress: bool = True, batch_size: int = BATCH_SIZE,
             **kw) -> TaskResult:
    """Measure one task (``kw`` from :func:`task_settings`), timed; a task that does not apply
    comes back with ``not_applicable`` set (its reason) instead of raising."""
    fn = TASK_FUNCTIONS[task]
    extra = {"progress": progress}
    if task in MAX_NEW_TOKENS:
        extra["batch_size"] = batch_size
    t0 = time.perf_counter()
    try:
        result = fn(subject, **kw, **extra)
    except NotApplicable as e:
        result = TaskResult(task, {}, not_applicable=str(e))
    result.seconds = time.perf_counter() - t0
    result.request = request_of(task, kw)
    return result


def _plain(kw: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in kw.items()}


def request_of(task: str, kw: dict) -> dict:
    """What a run of ``task`` with ``kw`` asks for, defaults filled in (the card's size for
    ``limit=None``, the task's token cap for ``max_new_tokens=None``): a cached result is
    reused only when its request is equal."""
    req = _plain(kw)
    if req.get("limit") is None:
        req["limit"] = "all" if CARD_SIZES[task] is None else CARD_SIZES[task]
    if task in MAX_NEW_TOKENS and req.get("max_new_tokens") is None:
        req["max_new_tokens"] = MAX_NEW_TOKENS[task]
    return req


def report_card(subject: Subject, tasks=TASKS, limit=None, forms=("cloze",), shots: int = 0,
                max_new_tokens: int | None = None, system: str | None = None, seed: int = 0,
                batch_size: int = BATCH_SIZE, out: str | Path | None = None,
                fresh: bool = False, progress: bool = True) -> ReportCard:
    """Measure ``subject`` on ``tasks`` -> :class:`ReportCard`; with ``out``, read the card
    already in that folder first and reuse each task measured there with the same settings on
    the same model file (unless ``fresh``), and write the new card there (``report.md``,
    ``report.json``).

    Raises ``ValueError`` for an unknown task or a bad setting, and :class:`NotApplicable`
    when no task asked for applies (with every reason).
    """
    tasks = list(dict.fromkeys(tasks))
    for task in tasks:
        task_settings(task)  # unknown names fail before anything runs
    if not tasks:
        raise ValueError(f"no task given; the tasks are {', '.join(TASKS)}")
    previous = {}
    if out is not None and not fresh:
        try:
            old = load_card(out)
            if old.fingerprint == subject.fingerprint and subject.fingerprint:
                previous = old.results
        except (FileNotFoundError, ValueError):
            previous = {}
    device = str(next(subject.model.parameters()).device)
    results: dict[str, TaskResult] = {}
    for task in TASKS:  # the card's order
        if task not in tasks:
            if task in previous:
                previous[task].reused = True
                results[task] = previous[task]  # keep what was measured before
            continue
        kw = task_settings(task, limit, forms, shots, max_new_tokens, system, seed)
        old = previous.get(task)
        if old is not None and not old.not_applicable and old.request == request_of(task, kw):
            old.reused = True
            results[task] = old
            continue
        results[task] = run_task(subject, task, progress, batch_size, **kw)
    asked = [results[t] for t in tasks]
    if all(r.not_applicable for r in asked):
        raise NotApplicable("; ".join(f"{r.task} does not apply: {r.not_applicable}"
                                      for r in asked))
    card = ReportCard(subject.name, subject.fingerprint, results, device)
    if out is not None:
        card.save(out)
    return card


# ------------------------------------------------------------------------------ comparing
def compare_measures(a: Measure, b: Measure) -> str:
    """``b`` against ``a`` on their common items, paired: for accuracies
    :func:`course_utils.stats.compare` (B minus A, in points, McNemar's test); for bits per
    byte the difference B minus A with a paired bootstrap interval over the pieces of text
    (negative is better)."""
    common = [i for i in a.ids if i in set(b.ids)]
    if not common:
        return "no items in common"
    a, b = a.subset(common), b.subset(common)
    if a.kind == "accuracy":
        return str(stats.compare(b.correct, a.correct))
    bits_a, bits_b = np.asarray(a.bits), np.asarray(b.bits)
    bytes_a, bytes_b = np.asarray(a.n_bytes, float), np.asarray(b.n_bytes, float)
    index = np.arange(len(common), dtype=float)

    def difference(idx, axis):
        idx = idx.astype(int)
        return (bits_b[idx].sum(axis) / bytes_b[idx].sum(axis)
                - bits_a[idx].sum(axis) / bytes_a[idx].sum(axis))

    value = float(bits_b.sum() / bytes_b.sum() - bits_a.sum() / bytes_a.sum())
    if len(common) < 2:
        return f"{value:+.3f} bits per byte (one piece: no interval)"
    low, high = stats.bootstrap_interval(index, difference)
    verdict = ("better" if high < 0 else "worse" if low > 0 else stats.NO_DIFFERENCE)
    return f"{value:+.3f} [{low:+.3f}, {high:+.3f}] bits per byte: {verdict}"


def compare_cards(cards: list[ReportCard], names: list[str] | None = None) -> str:
    """Markdown: each measure of the cards side by side (``names`` label the columns), then
    each stage against the one before it, paired on the items both measured."""
    if len(cards) < 2:
        raise ValueError("compare needs at least two report cards")
    names = names or [c.name for c in cards]
    rows = list(dict.fromkeys(m for c in cards for m in c.measures()))
    head = "| measure | " + " | ".join(names) + " |"
    lines = [head, "|" + " --- |" * (len(names) + 1)]
    for row in rows:
        cells = [c.measures()[row].summary() if row in c.measures() else "-" for c in cards]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    for (na, a), (nb, b) in zip(zip(names, cards), list(zip(names, cards))[1:]):
        lines += ["", f"**{nb}** against **{na}** (paired, on the items both measured):", ""]
        for row in rows:
            if row in a.measures() and row in b.measures():
                ma, mb = a.measures()[row], b.measures()[row]
                common = len(set(ma.ids) & set(mb.ids))
                lines.append(f"- {row} ({common:,} items): {compare_measures(ma, mb)}")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- the command
def parse_limit(text: str | None):
    """``--limit``: ``None`` (the card's sizes), ``"all"`` or a positive number. Raises
    ``ValueError`` for anything else."""
    if text is None or text.lower() == "all":
        return None if text is None else "all"
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"--limit takes a number of items or 'all', got {text!r}") from None
    if value < 1:
        raise ValueError(f"--limit must be >= 1 (or 'all'), got {value}")
    return value


def add_eval_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``eval`` subcommand to an ``argparse`` subparsers object; return its parser."""
    sizes = ", ".join(f"{t} {'all' if n is None else n}" for t, n in CARD_SIZES.items())
    p = subparsers.add_parser(
        "eval", help="a model's report card: bits per byte, MMLU, GSM8K, IFEval, addition ...",
        description="Measure a model on the course's tasks and write report.md and report.json "
                    "(into the run folder, runs/NAME for --model, or --out); or compare cards "
                    "of several stages with --compare.")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--model", help="a released model: smollm2-135m-instruct")
    who.add_argument("--checkpoint", help="a course run folder (or its ckpt.pt)")
    who.add_argument("--compare", nargs="+", metavar="CARD",
                     help="two or more report.json files or folders holding one, in stage "
                          "order: prints them side by side with paired differences")
    p.add_argument("--tasks", default=",".join(TASKS),
                   help=f"comma-separated, from {', '.join(TASKS)} (default: all; a task that "
                        f"does not apply to the model is marked not applicable)")
    p.add_argument("--limit", default=None,
                   help=f"items per task: a number, or 'all' for the complete sets (for a GPU); "
                        f"default, sized for a CPU: {sizes}")
    p.add_argument("--mmlu-form", choices=("cloze", "letter", "both"), default="cloze",
                   help="cloze: score each answer's text; letter: score ' A' to ' D' (default "
                        "cloze)")
    p.add_argument("--shots", type=int, default=0, metavar="K",
                   help="solved examples before each MMLU question and GSM8K problem (0-5, "
                        "default 0)")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="longest reply of every generating task (default: "
                        + ", ".join(f"{t} {n}" for t, n in MAX_NEW_TOKENS.items()) + ")")
    p.add_argument("--system", default=None, help="a system message for every chat prompt "
                                                  "(default: none)")
    p.add_argument("--seed", type=int, default=0, help="seed of the subsets (default 0)")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE,
                   help=f"prompts generated together (default {BATCH_SIZE})")
    p.add_argument("--out", default=None, help="folder for report.md and report.json")
    p.add_argument("--fresh", action="store_true",
                   help="measure every task again instead of reusing report.json's results")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for PyTorch (default: its own choice, one per core; on a "
                        "machine busy with other work, 1 can be much faster)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return p


def _check_args(args) -> list[str]:
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise ValueError(f"unknown task {unknown[0]!r} in --tasks; the tasks are "
                         f"{', '.join(TASKS)}" if unknown else
                         f"--tasks is empty; the tasks are {', '.join(TASKS)}")
    if not 0 <= args.shots <= 5:
        raise ValueError(f"--shots must be 0 to 5 (MMLU has 5 solved examples per subject), "
                         f"got {args.shots}")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    resolve_device(args.device)
    return tasks


def out_folder(args) -> Path:
    """Where the card goes: ``--out``, else the run folder, else ``runs/NAME``."""
    if args.out:
        return Path(args.out)
    if args.checkpoint:
        path = Path(args.checkpoint)
        return path if path.is_dir() else path.parent
    return run_dir(args.model.lower())


def run_eval(args) -> int:
    """Run the ``eval`` command with parsed ``args``; returns the exit code (2: bad input)."""
    try:
        if args.compare:
            if len(args.compare) < 2:
                raise ValueError("--compare needs at least two report cards")
            cards = [load_card(path) for path in args.compare]
            print(compare_cards(cards, [str(p) for p in args.compare]), end="")
            return 0
        tasks = _check_args(args)
        parse_limit(args.limit)
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        if args.checkpoint and not Path(args.checkpoint).exists():
            load_checkpoint(args.checkpoint)  # the course's "no checkpoint at ..." error
        subject = load_subject(args.model, args.checkpoint, args.device)
        forms = MMLU_FORMS if args.mmlu_form == "both" else (args.mmlu_form,)
        folder = out_folder(args)
        card = report_card(subject, tasks, parse_limit(args.limit), forms, args.shots,
                           args.max_new_tokens,
                           args.system, args.seed, args.batch_size, folder, args.fresh,
                           not args.no_progress)
    except (ValueError, FileNotFoundError, DataError, ImportError) as e:
        print("error: " + " ".join(str(e).split()), file=sys.stderr)
        return 2
    print(card.markdown(), end="")
    print(f"\nwritten: {folder / 'report.md'} and {folder / 'report.json'}")
    return 0
