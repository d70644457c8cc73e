"""The grader's time limit per check, and telling a real Ctrl+C from an answer that raises one.

``python -m course_utils exercises`` runs the learner's code in its own process, so an
endless loop in an answer must not hang the command; nor must it hang a notebook, whose check
cells and switches (``check.use_mine``) grade an answer as the command does
(:func:`course_utils.check.core.judge`). While a check runs under :func:`grading`, it gets an
allowance of seconds (10 by default, the command's ``--time-limit``): a POSIX interval
timer (``signal.setitimer(ITIMER_REAL)``) counts down the allowance while the learner's code
runs (an exercise cell's definitions, each call of the learner's function by the check:
:func:`learner_code`), and when it fires, the SIGALRM handler raises :class:`TimeLimit`
inside that code. The check's own work (importing
``transformers``, building a reference model) does not count.

Why a timer in the main thread and not a child process per check: the answer is graded in
the very namespace and process a notebook would use (the same objects, no pickling), and no
second copy of PyTorch has to start for each check. The price: the signal is handled between
two Python bytecodes, so a loop written in Python stops at once, but one long call into C
(an enormous matrix product) only when it returns. :class:`TimeLimit` derives from
``BaseException``, so an ``except Exception`` in the answer does not swallow it.

This works on Linux and macOS. Where it cannot (Windows has no ``setitimer``; signal
handlers can only be set from the main thread) the checks run without a time limit.

While grading, a SIGINT (Ctrl+C) is noted before it raises ``KeyboardInterrupt``, so the
grader can stop when the user presses Ctrl+C and grade an answer that raises
``KeyboardInterrupt`` itself as failed (:func:`user_interrupted`).
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time

DEFAULT_SECONDS = 10.0


class TimeLimit(BaseException):
    """The learner's code ran past its check's allowance of seconds (see :func:`grading`)."""


class _State:
    limit: float | None = None  # seconds per check while grading; None: no time limit
    left: float | None = None  # seconds the current check's learner code may still run
    running = False  # the learner's code is running and the timer is armed
    interrupted = False  # the user pressed Ctrl+C while grading


_state = _State()


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _on_alarm(signum, frame) -> None:
    if _state.running:  # a timer that fires just as the code returned is ignored
        raise TimeLimit


def _on_interrupt(signum, frame) -> None:
    _state.interrupted = True
    raise KeyboardInterrupt


@contextlib.contextmanager
def grading(seconds: float | None = DEFAULT_SECONDS):
    """Arm the time limit (``seconds`` per check, ``None`` for none) and note Ctrl+C, for
    the duration of the ``with`` block; the previous signal handlers are restored after.

    Raises ``ValueError`` when ``seconds`` is not a positive number.
    """
    if seconds is not None and not seconds > 0:
        raise ValueError(f"the time limit must be a positive number of seconds, got {seconds}")
    handlers, timed = {}, False
    if _main_thread():
        if seconds is not None and hasattr(signal, "setitimer"):
            handlers[signal.SIGALRM] = signal.signal(signal.SIGALRM, _on_alarm)
            _state.limit, timed = seconds, True
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            handlers[signal.SIGINT] = signal.signal(signal.SIGINT, _on_interrupt)
    _state.interrupted = False
    try:
        yield
    finally:
        if timed:
            signal.setitimer(signal.ITIMER_REAL, 0)
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        _state.limit = _state.left = None
        _state.running = False


@contextlib.contextmanager
def allowance():
    """One check: the learner's code inside this block may run the time limit in all."""
    _state.left = _state.limit
    try:
        yield
    finally:
        _state.left = None


@contextlib.contextmanager
def learner_code():
    """Run the learner's code against the current allowance; without one (outside
    :func:`grading` and :func:`allowance`) this does nothing. Raises :class:`TimeLimit` when the
    allowance runs out."""
    if _state.left is None or _state.running:
        yield
        return
    if _state.left <= 0:
        raise TimeLimit
    start = time.monotonic()
    _state.running = True
    signal.setitimer(signal.ITIMER_REAL, _state.left)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        _state.running = False
        _state.left -= time.monotonic() - start


def seconds() -> float | None:
    """The time limit per check in force (``None``: none)."""
    return _state.limit


def user_interrupted() -> bool:
    """Whether the user pressed Ctrl+C during :func:`grading` (a ``KeyboardInterrupt`` that
    the learner's code raised itself does not count)."""
    return _state.interrupted
