"""Small helpers shared by every notebook: fast mode, device choice, seeding."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

FAST_ENV = "COURSE_FAST"


def fast_mode() -> bool:
    """True when ``COURSE_FAST`` is set to a true value (``1``, ``true``, ``yes``).

    CI runs the notebooks in fast mode, which shrinks step counts and sizes.
    """
    return os.environ.get(FAST_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def pick(full, fast):
    """Return ``fast`` in fast mode, otherwise ``full`` (e.g. ``steps = pick(2000, 20)``)."""
    return fast if fast_mode() else full


def get_device(preferred: str | None = None) -> str:
    """``preferred`` if given, else the best device there is: ``cuda``, ``mps``, then ``cpu``."""
    if preferred and preferred != "auto":
        return preferred
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def set_seed(seed: int) -> None:
    """Seed Python's, NumPy's and PyTorch's (CPU and CUDA) random generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
