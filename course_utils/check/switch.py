"""The switch that puts the learner's answer to work: :func:`use_mine`.

An exercise is not only checked; the notebook then runs the answer. Some cells after the
check cell, one line chooses the function that the notebook's model, tokenizer, batches or
loss use from there on::

    mask_fn = check.use_mine(causal_mask)  # using your causal_mask (its check passes)
    ...                                    # the attention below is built with mask_fn

:func:`use_mine` runs the exercise's check again, right there and within the time limit of
``python -m course_utils exercises`` (:func:`course_utils.check.core.judge`), so a wrong
answer never trains or runs anything unnoticed. When the check passes it returns the
learner's function itself; otherwise the course's version, the exercise's *stand-in*
(:func:`stand_in`), which has the same signature, so either one drops in. One printed line
says which one runs, and why.

``python -m course_utils exercises`` finds these switches in the saved notebooks and says
which of the learner's functions each notebook now runs (:mod:`course_utils.check.grader`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from .core import NOT_ATTEMPTED, PASSED, _get, judge


def stand_in(name: str) -> Callable:
    """The course's function that runs in place of the learner's answer to exercise ``name``
    until it passes: the piece registered with the exercise (``"bpe:merge"`` is
    ``course_utils.bpe.merge``), or else the course's solution
    (``course_utils/solutions/nbNN_*.py``). Same signature as the exercise.

    Raises ``ValueError`` for an unknown exercise name.
    """
    exercise = _get(name)
    piece = exercise.stand_in
    if callable(piece):
        return piece
    if isinstance(piece, str):
        module, _, attr = piece.partition(":")
        return getattr(importlib.import_module(f"course_utils.{module}"), attr)
    from .. import solutions

    return getattr(solutions.module_for(exercise.notebook), name)


def use_mine(fn, name: str | None = None) -> Callable:
    """The function a notebook runs from here on: ``fn``, the learner's answer, when its check
    passes now; otherwise the course's version of it (:func:`stand_in`). Prints one line that
    says which, e.g. ``using your causal_mask (its check passes)``, ``using the course's
    causal_mask: yours is not attempted yet``, or ``using the course's causal_mask: yours
    fails (<what the check found>)``.

    ``name`` is the exercise; by default ``fn.__name__`` (``use_mine(causal_mask)``). The check
    is the notebook's check cell over again, with the same rules: an answer that reads a
    variable computed by an earlier cell, or runs past the time limit, is not used. The
    function returned is the learner's own object or the stand-in, never a wrapper: it has
    the exercise's signature and raises what it raises.

    Raises ``TypeError`` when ``fn`` has no name and none is given, ``ValueError`` when the
    name is not an exercise's.
    """
    if name is None:
        name = getattr(fn, "__name__", None)
        if not isinstance(name, str):
            raise TypeError(f"check.use_mine needs your function, e.g. "
                            f"check.use_mine(causal_mask); got a {type(fn).__name__}")
        if name == "<lambda>":
            raise ValueError("check.use_mine cannot tell which exercise a lambda answers: "
                             "give its name too, e.g. check.use_mine(fn, name='causal_mask')")
    try:
        _get(name)
    except ValueError as e:
        raise ValueError(f"{e}; to switch to a function of another name, give the exercise's "
                         f"name: check.use_mine(fn, name='causal_mask')") from None
    status, message = judge(name, fn)
    if status == PASSED:
        print(f"using your {name} (its check passes)")
        return fn
    why = "is not attempted yet" if status == NOT_ATTEMPTED else f"fails ({message})"
    print(f"using the course's {name}: yours {why}")
    return stand_in(name)
