"""Every notebook follows the course conventions (see COURSE_DESIGN.md and the README)."""

import json
import re
from pathlib import Path

import pytest

import course_utils

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))


def cells(nb, kind):
    return [c for c in nb["cells"] if c["cell_type"] == kind]


def source(cell):
    return "".join(cell["source"])


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks found in notebooks/"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_conventions(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    first = nb["cells"][0]
    assert first["cell_type"] == "markdown" and source(first).startswith("# ")
    badge = (f"https://colab.research.google.com/github/{course_utils.GITHUB_REPO}"
             f"/blob/main/notebooks/{path.name}")
    assert badge in source(first), f"the Colab badge must point at {badge}"

    code = [c for c in cells(nb, "code") if source(c).strip()]
    setup = source(code[0])
    assert '"google.colab" in sys.modules' in setup, "first code cell must be the Colab setup"
    assert course_utils.GITHUB_REPO in setup

    counts = [c["execution_count"] for c in code]
    assert counts == list(range(1, len(code) + 1)), (
        "outputs must come from one clean top-to-bottom run (execution counts 1..N)")
    errors = [o for c in code for o in c["outputs"] if o["output_type"] == "error"]
    assert not errors, f"committed error output: {errors[0].get('ename')}"

    markdown = "\n".join(source(c) for c in cells(nb, "markdown"))
    headings = re.findall(r"^## (\d+)\.", markdown, re.M)
    assert headings and [int(h) for h in headings] == list(range(1, len(headings) + 1)), (
        f"sections must be numbered 1, 2, 3...: found {headings}")
    assert re.search(r"^## .*summary", source(cells(nb, "markdown")[-1]), re.I | re.M), (
        "the last markdown cell must be the summary")
    for c in code:
        for line in source(c).splitlines():
            if line.startswith("# NBVAL"):
                assert line.strip() in ("# NBVAL_CHECK_OUTPUT", "# NBVAL_IGNORE_OUTPUT",
                                        "# NBVAL_SKIP", "# NBVAL_RAISES_EXCEPTION"), line
