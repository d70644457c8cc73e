"""The shared machinery of the checks: the registry of exercises, :func:`run` (and
:func:`judge`, the same within the time limit), :func:`hint`, :func:`solution`, the learner's
function as the checks call it (:class:`_Learner`), and the comparisons that turn a wrong
tensor or number into a diagnosis (:func:`_tensor`, :func:`_number`). The checks themselves
live in one module per notebook (``nb04_attention`` ...); :mod:`course_utils.check` gathers
them.
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import limits, scope

PASSED, NOT_ATTEMPTED, FAILED = "passed", "not attempted", "failed"


class Wrong(Exception):
    """A wrong answer. The message is what the learner reads: what is wrong, and how to fix it."""


class NotAttempted(Exception):
    """The function is still the stub: it returned ``None`` (or raised ``NotImplementedError``)."""


@dataclass
class Exercise:
    """One exercise: its notebook (``"04"``), its check and its hints, mildest first.

    ``stand_in`` is the course's function that runs in the learner's place until the answer
    passes (:func:`course_utils.check.use_mine`): a callable, ``"module:function"`` in
    ``course_utils`` (``"bpe:merge"``, imported when first needed), or ``None`` for the
    course's solution (``course_utils/solutions/``). It has the exercise's signature and passes
    the check (tested).
    """

    name: str
    notebook: str
    check: Callable
    hints: tuple[str, ...]
    in_place: bool = False  # the function returns nothing and changes its arguments
    stand_in: Callable | str | None = None


EXERCISES: dict[str, Exercise] = {}
_hints_shown: dict[str, int] = {}


def _exercise(notebook: str, hints: tuple[str, str], in_place: bool = False,
              stand_in: Callable | str | None = None):
    """Register the decorated check; the module gets a function of the same name that prints
    the verdict (:func:`judge`), with the check's docstring and what an answer may use
    (:mod:`.scope`). ``stand_in``: see :class:`Exercise`."""

    def register(check_fn):
        name = check_fn.__name__
        EXERCISES[name] = Exercise(name, notebook, check_fn, hints, in_place, stand_in)

        def show(fn) -> None:
            print(f"{name}: {judge(name, fn)[1]}")

        show.__name__ = show.__qualname__ = name
        show.__module__ = check_fn.__module__
        show.__doc__ = (f"{check_fn.__doc__}\n\nChecks your function and prints one line: passed, "
                        f"not attempted yet, or what is wrong. As in `python -m course_utils "
                        f"exercises`, {scope.RULE}.")
        return show

    return register


def _get(name: str) -> Exercise:
    if name not in EXERCISES:
        close = difflib.get_close_matches(str(name), EXERCISES, n=1)
        suggestion = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"no exercise named {name!r}{suggestion} "
                         f"(the names are in course_utils.check.EXERCISES)")
    return EXERCISES[name]


def run(name: str, fn, computed: dict[str, str] | None = None) -> tuple[str, str]:
    """Check ``fn`` for exercise ``name``; return ``(status, message)``.

    ``status`` is ``"passed"``, ``"not attempted"`` or ``"failed"``; ``message`` is the line
    :func:`causal_mask` and the other checks print. Wrong answers, exceptions raised by
    ``fn`` (``SystemExit`` included) and stubs are all reported, never raised. The global
    torch random state is restored afterwards, so a notebook's later random numbers do not
    depend on the checks.

    A right answer that reads a variable an earlier cell computes (not an import, function,
    class or literal constant: :mod:`course_utils.check.scope`) is reported failed, because
    ``python -m course_utils exercises`` does not run that computation. ``computed`` maps
    such names to the statement that sets them; by default they are read from the
    notebook's history (IPython's ``In``), and outside a notebook there are none.

    Raises ``ValueError`` for an unknown exercise name.
    """
    exercise = _get(name)
    if fn is None or fn is Ellipsis:
        return NOT_ATTEMPTED, "not attempted yet: write the function, then run this cell again"
    if not callable(fn):
        return FAILED, (f"pass the function itself, check.{name}({name}); "
                        f"got a {type(fn).__name__}")
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            exercise.check(_Learner(fn, name, exercise.in_place))
    except NotAttempted:
        return NOT_ATTEMPTED, "not attempted yet: replace the `...` with your code"
    except Wrong as e:
        return FAILED, str(e)
    except SystemExit as e:
        return FAILED, f"the answer called sys.exit({e.code!r}); return the result instead"
    except Exception as e:  # an answer so unexpected that the check itself tripped over it
        return FAILED, f"unexpected result ({type(e).__name__}: {_first_line(e)}); see the task"
    reads = scope.computed_reads(fn, computed)
    if reads:
        return FAILED, f"right here, but {scope.explain(reads)}"
    return PASSED, PASSED


def judge(name: str, fn, computed: dict[str, str] | None = None) -> tuple[str, str]:
    """:func:`run` within the time limit of ``python -m course_utils exercises``: the one in
    force while grading, otherwise :data:`~course_utils.check.limits.DEFAULT_SECONDS` of the
    learner's own code per check (:mod:`course_utils.check.limits`). So a notebook's check cell
    and :func:`course_utils.check.use_mine` grade an answer as the command does: one that runs
    longer (an endless loop), raises ``KeyboardInterrupt`` or calls ``sys.exit`` is failed, and
    the notebook goes on. A Ctrl+C of the user still interrupts.

    Raises ``ValueError`` for an unknown exercise name.
    """
    _get(name)
    armed = limits.seconds() is not None
    clock = contextlib.nullcontext() if armed else limits.grading(limits.DEFAULT_SECONDS)
    with clock, limits.allowance():
        result, error = _attempt(run, name, fn, computed)
    if error is not None:
        return FAILED, f"the answer {error}"
    return result


def _attempt(fn, *args):
    """``(result, None)``, or ``(None, what went wrong)`` for any exception of the learner's
    code, ``SystemExit``, ``KeyboardInterrupt`` and the time limit included; what went wrong
    reads after a subject ("the answer ..."). A Ctrl+C of the user is not caught."""
    try:
        return fn(*args), None
    except limits.TimeLimit:
        return None, (f"was stopped after {limits.seconds():g} s, still running (an endless "
                      f"loop?); each check may run it {limits.seconds():g} s (--time-limit)")
    except KeyboardInterrupt:
        if limits.user_interrupted():
            raise
        return None, "raised KeyboardInterrupt"
    except SystemExit as e:
        return None, f"called sys.exit({e.code!r}); return the result instead"
    except BaseException as e:  # anything the learner's code raises
        return None, f"raised {type(e).__name__}: {_first_line(e)}"


def hint(name: str) -> None:
    """Print a hint for exercise ``name``; each further call prints the next, stronger one."""
    hints = _get(name).hints
    shown = _hints_shown.get(name, 0)
    print(f"hint {min(shown, len(hints) - 1) + 1} of {len(hints)}: "
          f"{hints[min(shown, len(hints) - 1)]}")
    _hints_shown[name] = shown + 1


def solution(name: str) -> None:
    """Print the source of the course's solution to exercise ``name``."""
    from .. import solutions

    module = solutions.module_for(_get(name).notebook)
    path = Path(module.__file__)
    print(f"# course_utils/solutions/{path.name}\n{inspect.getsource(getattr(module, name))}")


class _Learner:
    """The learner's function as the checks call it: a stub's ``None`` means "not attempted",
    and an exception becomes a :class:`Wrong` that names the call."""

    def __init__(self, fn, name: str, in_place: bool):
        self.fn, self.name, self.in_place = fn, name, in_place
        self.answered = False

    def __call__(self, *args):
        call = f"{self.name}({', '.join(_describe(a) for a in args)})"
        try:
            out = self.raw(*args)
        except NotImplementedError:
            if not self.answered:
                raise NotAttempted from None
            raise Wrong(f"{call} raised NotImplementedError") from None
        except SystemExit as e:
            raise Wrong(f"{call} called sys.exit({e.code!r}); a function returns its result "
                        f"instead of ending the program") from None
        except Exception as e:
            raise Wrong(f"{call} raised {type(e).__name__}: {_first_line(e)}") from None
        if out is None and not self.in_place:
            if not self.answered:
                raise NotAttempted
            raise Wrong(f"{call} returned None: does every path end in a `return`?")
        self.answered = True
        return out

    def raw(self, *args):
        """Call the learner's function as it is, exceptions and all, within the time limit of
        the grader (:mod:`course_utils.check.limits`)."""
        with limits.learner_code():
            return self.fn(*args)


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [""])[0][:200]


def _describe(a) -> str:
    """A short description of an argument for messages: ``x (2, 3, 5)`` for a tensor."""
    if isinstance(a, (torch.Tensor, np.ndarray)):
        return f"tensor {tuple(a.shape)}"
    if isinstance(a, dict):
        return f"<dict of {len(a)}>"
    if callable(a):
        return getattr(a, "__name__", type(a).__name__)
    text = repr(a)
    return text if len(text) <= 40 else text[:36] + "...]"


def _close(a: torch.Tensor, b: torch.Tensor, atol: float, rtol: float) -> bool:
    if a.shape != b.shape:
        return False
    if a.dtype == torch.bool or b.dtype == torch.bool:
        return torch.equal(a.bool(), b.bool())
    return torch.allclose(a.double(), b.double(), atol=atol, rtol=rtol, equal_nan=True)


def _tensor(got, expected: torch.Tensor, call: str, reference: str, mistakes=(),
            atol: float = 1e-5, rtol: float = 1e-4) -> None:
    """Raise :class:`Wrong` unless ``got`` equals ``expected`` in shape, dtype and values.

    ``mistakes`` lists ``(tensor, message)``: when ``got`` equals one of those tensors
    instead, its message is the diagnosis.
    """
    if not isinstance(got, torch.Tensor):
        raise Wrong(f"{call} returned a {type(got).__name__}; expected a tensor of shape "
                    f"{tuple(expected.shape)}")
    if got.shape != expected.shape:
        raise Wrong(f"{call}: shape {tuple(got.shape)} but expected {tuple(expected.shape)}")
    if got.dtype != expected.dtype:
        raise Wrong(f"{call}: dtype {got.dtype} but expected {expected.dtype}")
    if _close(got, expected, atol, rtol):
        return
    for wrong, message in mistakes:
        if _close(got, wrong, atol, rtol):
            raise Wrong(message)
    bad = ~torch.isclose(got.double(), expected.double(), atol=atol, rtol=rtol, equal_nan=True)
    at = tuple(bad.nonzero()[0].tolist())
    raise Wrong(f"{call}: differs from {reference} at index {at}: {got[at].item():.6g} "
                f"instead of {expected[at].item():.6g}")


def _number(got, expected: float, call: str, mistakes=(), rel: float = 1e-9) -> None:
    """Like :func:`_tensor` for a Python number; ``mistakes`` is ``(number, message)``."""
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        got = got.item()
    if not isinstance(got, (int, float, np.number)) or isinstance(got, bool):
        raise Wrong(f"{call} returned a {type(got).__name__}; expected a number")
    if math.isclose(got, expected, rel_tol=rel, abs_tol=1e-12):
        return
    for wrong, message in mistakes:
        if math.isclose(got, wrong, rel_tol=rel, abs_tol=1e-12):
            raise Wrong(message)
    raise Wrong(f"{call} returned {got:,.6g}, expected {expected:,.6g}")
