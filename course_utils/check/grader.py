"""Grading the answers saved in notebook files: :func:`grade_notebook`, the switches of a
notebook (:func:`use_mine_sites`), and the command ``python -m course_utils exercises
[NOTEBOOK]`` (:func:`add_exercises_parser`, :func:`run_exercises`).

An exercise is a code cell that defines the function, followed by a cell that calls
``check.NAME(NAME)``. The grader runs, in notebook order, the definitions of the code cells
up to the exercise's cell (imports, ``def``, ``class``, literal constants:
:mod:`course_utils.check.scope`), never their computations, and checks the function with
:func:`course_utils.check.run`, as the notebook does. Each check has a time limit
(:mod:`course_utils.check.limits`); an answer that loops forever, calls ``sys.exit`` or raises
``KeyboardInterrupt`` is graded failed and the grader goes on. A notebook's switches,
``check.use_mine(NAME)`` (:mod:`course_utils.check.switch`), run the learner's ``NAME`` when
it passes: the command says, per notebook, which of them do.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import io
import json
import math
import os
import re
import sys
from pathlib import Path

from . import limits, scope
from .core import EXERCISES, FAILED, NOT_ATTEMPTED, PASSED, _attempt, run

HOW_TO_RECORD = (
    "Progress is read from the saved .ipynb files: save the notebook (Ctrl+S) after editing. "
    "An answer may use the imports, functions, classes and literal constants (like T = 8) of "
    "its own cell and the cells before it, not the variables those cells compute; a check "
    f"stops an answer that runs longer than {limits.DEFAULT_SECONDS:g} s (--time-limit)."
)
_CHECK_CALL = re.compile(r"^check\.(\w+)\(\1\)", re.M)


class NotebookError(ValueError):
    """A file that is not a readable Jupyter notebook; the message names the file."""


def read_code_cells(path: str | Path) -> list[str]:
    """The sources of a notebook's code cells, in order.

    Raises ``FileNotFoundError`` when ``path`` does not exist, :class:`NotebookError` when it
    is not a notebook (not UTF-8 JSON, not an object with a list of ``cells``, a cell that is
    not a cell).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise
    except UnicodeDecodeError as e:
        raise NotebookError(f"{path}: not a notebook: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise NotebookError(f"{path}: cannot read it: {e.strerror or e}") from None
    if not text.strip():
        raise NotebookError(f"{path}: not a notebook: the file is empty")
    try:
        nb = json.loads(text)
    except json.JSONDecodeError as e:
        raise NotebookError(f"{path}: not a notebook: invalid JSON at line {e.lineno}, column "
                            f"{e.colno} ({e.msg}); open it in Jupyter and save it again") from None
    if not isinstance(nb, dict):
        raise NotebookError(f"{path}: not a notebook: the file holds a JSON "
                            f"{type(nb).__name__}, not an object with a list of 'cells'")
    if not isinstance(nb.get("cells"), list):
        raise NotebookError(f"{path}: not a notebook: it has no list of 'cells' (Jupyter's "
                            f"format 4)")
    cells = []
    for number, cell in enumerate(nb["cells"], start=1):
        if not isinstance(cell, dict) or not isinstance(cell.get("cell_type"), str):
            raise NotebookError(f"{path}: cell {number} is not a notebook cell (an object "
                                f"with a 'cell_type')")
        if cell["cell_type"] != "code":
            continue
        source = cell.get("source", "")
        if isinstance(source, list) and all(isinstance(line, str) for line in source):
            source = "".join(source)
        if not isinstance(source, str):
            raise NotebookError(f"{path}: cell {number}'s source is neither text nor a list "
                                f"of lines")
        cells.append(source)
    return cells


class _Namespace:
    """The grader's stand-in for a notebook's namespace: the definitions of the cells run so
    far, and for the names it does not hold, why (a computation sets them, or their
    definition failed here)."""

    def __init__(self, label: str):
        self.label = label
        self.names: dict = {"__name__": "__main__"}
        self.computed: dict[str, str] = {}  # name -> the statement that computes it
        self.broken: dict[str, str] = {}  # name -> why its definition failed here

    def run_cell(self, number: int, source: str) -> str | None:
        """Run the definitions of a code cell; return a message if the cell does not parse."""
        try:
            cell = scope.statements(source)
        except SyntaxError as e:
            return f"its cell has a SyntaxError (line {e.lineno}): {e.msg}"
        with limits.allowance():
            for statement in cell:
                for name in statement.names:
                    self.computed.pop(name, None)
                    self.broken.pop(name, None)
                    if not statement.definition:
                        self.names.pop(name, None)
                        self.computed[name] = statement.text
                if statement.definition:
                    self._define(number, statement)
        return None

    def _define(self, number: int, statement: scope.Statement) -> None:
        # imports may take long (transformers); the learner's own definitions are timed
        imports = isinstance(statement.node, (ast.Import, ast.ImportFrom))
        clock = contextlib.nullcontext() if imports else limits.learner_code()
        error = _attempt(_exec_in, statement.node, f"<{self.label}, cell {number}>",
                         self.names, clock)[1]
        if error is not None:
            for name in statement.names:
                self.broken[name] = f"`{statement.text}` {error}"

    def explain_missing(self, message: str) -> str:
        """Add to a message that ends in a ``NameError`` why the grader does not hold that
        name: a computation sets it, or its definition failed here (and why, in turn)."""
        seen = set()
        while True:
            found = re.findall(r"NameError: name '(\w+)' is not defined", message)
            name = found[-1] if found else None
            if name in self.computed:
                return f"{message}; {scope.explain({name: self.computed[name]})}"
            if name not in self.broken or name in seen:
                return message
            seen.add(name)
            message += f"; an earlier cell defines `{name}`, but here {self.broken[name]}"


def _exec_in(node: ast.stmt, filename: str, names: dict, clock) -> None:
    """Run one top-level statement in ``names``, under ``clock``."""
    program = compile(ast.Module(body=[node], type_ignores=[]), filename, "exec")
    with clock:
        exec(program, names)


def grade_notebook(path: str | Path, time_limit: float | None = limits.DEFAULT_SECONDS
                   ) -> list[tuple[str, str, str]]:
    """Grade the exercises of a saved notebook: ``[(name, status, message), ...]``.

    An exercise is a code cell that defines the function (``def NAME(``), followed by a
    cell that calls ``check.NAME(NAME)``. The grader goes through the code cells in order
    and runs only their definitions: top-level imports, ``def`` and ``class`` statements,
    and assignments of literal values (``T = 8``); it never runs the other statements (the
    notebook's computations: training, plots, downloads). So an answer may use the
    notebook's imports, the functions and classes of earlier cells (``rope`` may call
    ``rotate``) and their literal constants, but not a variable an earlier cell computes:
    such an answer is graded failed with a message that names the variable and the
    statement that computes it (:mod:`course_utils.check.scope`; the notebook's own check
    says the same). Then :func:`course_utils.check.run` checks the function, as in the
    notebook. Exercises of this notebook that it has no cell for are reported
    ``"not attempted"``.

    The learner's code may run ``time_limit`` seconds per check (``None``: no limit; see
    :mod:`course_utils.check.limits`). An answer that runs longer, calls ``sys.exit`` or
    raises any other exception is graded failed. What the cells print is discarded, and
    ``input()`` reads an empty stdin.

    Raises ``FileNotFoundError`` when ``path`` does not exist, :class:`NotebookError` when it
    is not a readable notebook, and ``ValueError`` for a ``time_limit`` that is not positive.
    """
    path = Path(path)
    cells = read_code_cells(path)
    exercises = {}  # code cell index -> the exercises it answers
    for index, (source, following) in enumerate(zip(cells, cells[1:])):
        names = [n for n in _CHECK_CALL.findall(following)
                 if n in EXERCISES and f"def {n}(" in source]
        if names:
            exercises[index] = list(dict.fromkeys(names))
    namespace = _Namespace(path.name)
    results, seen = [], set()
    quiet = io.StringIO()
    with (limits.grading(time_limit), contextlib.redirect_stdout(quiet),
          contextlib.redirect_stderr(quiet), _empty_stdin()):
        for index, source in enumerate(cells[: max(exercises, default=-1) + 1]):
            problem = namespace.run_cell(index + 1, source)
            for name in exercises.get(index, []):
                seen.add(name)
                results.append((name, *_grade(name, namespace, problem)))
    number = path.name[:2]
    for name, exercise in EXERCISES.items():
        if exercise.notebook == number and name not in seen:
            results.append((name, NOT_ATTEMPTED, "no cell defines it in this notebook"))
    return results


def use_mine_sites(path: str | Path) -> list[str]:
    """The exercises whose answer a saved notebook puts to work: the names its code cells give
    to ``check.use_mine`` (``use_mine(causal_mask)``, or ``use_mine(fn, name="causal_mask")``),
    in order, each once, registered exercises only. Cells that do not parse are skipped.

    Raises as :func:`read_code_cells`.
    """
    names = []
    for source in read_code_cells(path):
        try:
            tree = scope.parse_cell(source)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and _callee(node.func) == "use_mine"):
                continue
            given = [k.value for k in node.keywords if k.arg == "name"]
            if given and isinstance(given[0], ast.Constant):
                names.append(given[0].value)
            elif node.args and isinstance(node.args[0], ast.Name):
                names.append(node.args[0].id)
    return [n for n in dict.fromkeys(names) if n in EXERCISES]


def _callee(func: ast.expr) -> str | None:
    if isinstance(func, ast.Name):
        return func.id
    return func.attr if isinstance(func, ast.Attribute) else None


def switch_summary(results: list[tuple[str, str, str]], sites: list[str]) -> str:
    """One line on a graded notebook: how many of its exercises pass, and whether each of its
    switches (``sites``, from :func:`use_mine_sites`) runs the learner's function or the
    course's: ``2 of 4 passed; runs your causal_mask, and the course's split_heads until
    yours passes``."""
    status = {name: s for name, s, _ in results}
    passed = sum(s == PASSED for s in status.values())
    line = f"{passed} of {len(results)} passed"
    if not sites:
        return f"{line}; no switch to your functions in this notebook yet"
    mine = [n for n in sites if status.get(n) == PASSED]
    course = [n for n in sites if status.get(n) != PASSED]
    until = f"until {'yours passes' if len(course) == 1 else 'yours pass'}"
    if not course:
        return f"{line}; runs your {_and(mine)}"
    if not mine:
        return f"{line}; runs the course's {_and(course)} {until}"
    return f"{line}; runs your {_and(mine)}, and the course's {_and(course)} {until}"


def _and(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _grade(name: str, namespace: _Namespace, problem: str | None) -> tuple[str, str]:
    if problem is not None:
        return FAILED, problem
    if name in namespace.broken:
        return FAILED, namespace.explain_missing(f"its cell could not define {name}: "
                                                 f"{namespace.broken[name]}")
    if name not in namespace.names:
        where = namespace.computed.get(name)
        inside = f", only in `{where}`, which the grader does not run" if where else ""
        return FAILED, (f"its cell does not define {name} at its top level{inside}: write "
                        f"`def {name}(...):` at the start of a line")
    with limits.allowance():
        result, error = _attempt(run, name, namespace.names[name], namespace.computed)
    if error is not None:
        return FAILED, f"the answer {error}"
    status, message = result
    return status, namespace.explain_missing(message) if status == FAILED else message


@contextlib.contextmanager
def _empty_stdin():
    stdin, sys.stdin = sys.stdin, io.StringIO()
    try:
        yield
    finally:
        sys.stdin = stdin


# ------------------------------------------------------------------ the exercises command


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def add_exercises_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``exercises [NOTEBOOK]`` to the command line's subcommands; returns its parser.

    A mistake in its arguments prints one line, ``error: ...`` with a short usage, and exits
    with code 2, when ``subparsers`` belong to a
    :class:`~course_utils.utils.OneLineErrorParser` (the command line's).
    """
    p = subparsers.add_parser("exercises", help="your progress on the notebooks' exercises",
                              description="Grade the exercises saved in the notebooks. "
                                          + HOW_TO_RECORD)
    p.add_argument("notebook", nargs="?", default=None, metavar="NOTEBOOK",
                   help="a notebook number (04), name or .ipynb path; default: all")
    p.add_argument("--notebooks-dir", default=None, metavar="DIR",
                   help="the folder of the notebooks (default: ./notebooks, or the "
                        "repository's)")
    p.add_argument("--time-limit", type=_seconds, default=limits.DEFAULT_SECONDS,
                   metavar="SECONDS", help="how long each check may run the answer, in "
                                           f"seconds (default {limits.DEFAULT_SECONDS:g})")
    return p


def _find_notebooks(notebook: str | None, folder: str | None) -> list[Path]:
    if notebook and Path(notebook).suffix == ".ipynb":
        if not Path(notebook).is_file():
            raise FileNotFoundError(f"no notebook at {notebook}")
        return [Path(notebook)]
    candidates = [Path(folder)] if folder else [Path("notebooks"),
                                                Path(__file__).resolve().parents[2] / "notebooks"]
    root = next((d for d in candidates if d.is_dir()), None)
    if root is None:
        raise FileNotFoundError(f"no notebooks folder at {', '.join(map(str, candidates))}; "
                                f"pass --notebooks-dir")
    paths = sorted(root.glob("[0-9][0-9]_*.ipynb"))
    if notebook:
        key = notebook.zfill(2) if notebook.isdigit() else notebook.removesuffix(".ipynb")
        paths = [p for p in paths if p.stem == key or p.name[:2] == key]
        if not paths:
            raise FileNotFoundError(f"no notebook {notebook!r} in {root}")
    return paths


def run_exercises(args) -> int:
    """``python -m course_utils exercises [NOTEBOOK]``: grade the notebooks and print the
    progress table, a notebook's rows as soon as it is graded.

    Returns the exit code: 0 when every notebook was graded (whatever the answers), 2 when
    no notebook is found or one of them cannot be read: that notebook is named on stderr in
    one line (``error: ...``) and the others are still graded. 130 after Ctrl+C. When the
    reader of the output goes away (``... exercises | head -1``) the command stops quietly
    and returns 0.
    """
    try:
        paths = _find_notebooks(args.notebook, args.notebooks_dir)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        return _print_progress(paths, getattr(args, "time_limit", limits.DEFAULT_SECONDS))
    except BrokenPipeError:
        _silence_stdout()
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


def _print_progress(paths: list[Path], time_limit: float) -> int:
    width = max(map(len, EXERCISES))
    print(f"{'notebook':24} {'exercise':{width}} status", flush=True)
    passed = total = running = switches = 0
    unreadable = []
    for path in paths:
        try:
            results = grade_notebook(path, time_limit)
            sites = use_mine_sites(path)
        except (NotebookError, FileNotFoundError) as e:
            unreadable.append(path.name)
            print(f"error: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
            continue
        for name, status, message in results:
            detail = f": {' '.join(message.split())}" if status == FAILED else ""
            print(f"{path.stem:24} {name:{width}} {status}{detail}", flush=True)
        print(f"  {path.stem}: {switch_summary(results, sites)}", flush=True)
        passed += sum(status == PASSED for _, status, _ in results)
        total += len(results)
        ok = {name for name, status, _ in results if status == PASSED}
        running += sum(name in ok for name in sites)
        switches += len(sites)
    print(f"\n{passed} of {total} exercises passed; the notebooks run {running} of your "
          f"functions (of {switches} switches to them). {HOW_TO_RECORD}")
    if unreadable:
        print(f"Not graded: {', '.join(unreadable)} (not a readable notebook; see the error "
              f"above).")
    sys.stdout.flush()
    return 2 if unreadable else 0


def _silence_stdout() -> None:
    """Point stdout at the null device, so that Python's last flush at exit does not fail
    again on the closed pipe (Python's documentation, "Note on SIGPIPE")."""
    with contextlib.suppress(OSError, ValueError, AttributeError, io.UnsupportedOperation):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
