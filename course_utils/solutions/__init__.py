"""The course's solutions to the exercises, one plain module per notebook.

Try an exercise first; then ``check.solution("causal_mask")`` prints one solution, or read a
whole file here: ``nb04_attention.py`` holds the solutions of notebook 04, and so on. Each
function is what a learner could write in the notebook's code cell, using only the notebook's
imports (``torch``, ``F = torch.nn.functional``, ``math``, ``np``). The checks in
:mod:`course_utils.check` do not compare against these functions: they compare against
PyTorch, Hugging Face or the course's finished pieces, and the tests run every solution
through its check.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType


def module_for(notebook: str) -> ModuleType:
    """The solutions module of ``notebook`` (``"04"`` -> ``nb04_attention``).

    Raises ``ValueError`` when the notebook has no solutions module.
    """
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith(f"nb{notebook}_"):
            return importlib.import_module(f"{__name__}.{info.name}")
    raise ValueError(f"no solutions module for notebook {notebook!r} in {__path__[0]}")
