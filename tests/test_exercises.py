"""Every notebook's exercises, graded from the notebook file itself: with the stubs as committed
nothing is attempted; with the course's solutions pasted into the stub cells, all pass."""

import inspect
import json
from pathlib import Path

import pytest

from course_utils import check, solutions
from course_utils.check import NOT_ATTEMPTED, PASSED

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
WITH_EXERCISES = sorted({e.notebook for e in check.EXERCISES.values()})
NOTEBOOKS = [p for p in sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
             if p.name[:2] in WITH_EXERCISES]


def registered(path):
    return [name for name, e in check.EXERCISES.items() if e.notebook == path.name[:2]]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_stubs_are_not_attempted(path):
    results = check.grade_notebook(path)
    assert sorted(name for name, _, _ in results) == sorted(registered(path))
    missing = [name for name, _, message in results if "no cell defines it" in message]
    assert not missing, (f"{path.name} has no exercise cells for {missing}: insert them "
                         f"(see course_utils/check.py and the notebook conventions)")
    assert all(status == NOT_ATTEMPTED for _, status, _ in results), results


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_solutions_pasted_into_the_notebook_pass(path, tmp_path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    module = solutions.module_for(path.name[:2])
    cells = nb["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    pasted = 0
    for stub, following in zip(code, code[1:]):
        for name in registered(path):
            if f"check.{name}({name})" in "".join(following["source"]):
                stub["source"] = inspect.getsource(getattr(module, name))
                pasted += 1
    assert pasted == len(registered(path)), (
        f"{path.name}: {pasted} exercise cells for {len(registered(path))} exercises")
    solved = tmp_path / path.name
    solved.write_text(json.dumps(nb), encoding="utf-8")
    results = check.grade_notebook(solved)
    assert [status for _, status, _ in results] == [PASSED] * len(results), results
