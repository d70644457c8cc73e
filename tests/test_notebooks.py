"""Every notebook follows the course conventions (see COURSE_DESIGN.md and the README)."""

import json
import re
import warnings
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


def _mutation_tests():
    """The MUTATIONS table of tests/test_check.py: exercise name -> wrong answers it rejects."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "_test_check", Path(__file__).resolve().parent / "test_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.MUTATIONS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_exercise_conventions(path):
    """Each exercise: a "Your turn" task cell, a stub, a check cell; each check is registered,
    placed in its own notebook and has mutation tests. Notebooks 01-15 have 2 to 4 each."""
    from course_utils import check

    nb = json.loads(path.read_text(encoding="utf-8"))
    cells = [c for c in nb["cells"] if c["cell_type"] == "markdown" or source(c).strip()]
    checked = []
    for i, cell in enumerate(cells):
        match = re.search(r"^check\.(\w+)\((\w+)\)$", source(cell), re.M)
        if cell["cell_type"] != "code" or not match:
            continue
        name = match.group(1)
        assert match.group(2) == name, f"check.{name} must be given the function {name}"
        task, stub = cells[i - 2], cells[i - 1]
        assert stub["cell_type"] == "code" and f"def {name}(" in source(stub), (
            f"the cell before check.{name} must define {name}")
        assert "...  # your code" in source(stub), f"{name}: commit the stub, not a solution"
        assert task["cell_type"] == "markdown" and source(task).startswith("**Your turn"), (
            f"{name}: a 'Your turn' cell must introduce the exercise")
        assert f"`{name}(" in source(task), f"{name}: the task cell must give the signature"
        assert name in check.EXERCISES and check.EXERCISES[name].notebook == path.name[:2], (
            f"check.{name} is not an exercise of notebook {path.name[:2]}")
        if not checked:
            assert "from course_utils import check" in source(cell)
        # committed outputs: the run with the stubs (a kernel may send one printed line as
        # several stream messages, so they are joined first)
        printed = "".join("".join(o.get("text", "")) for o in cell.get("outputs", []))
        assert not printed or printed.startswith(f"{name}: not attempted yet"), printed
        checked.append(name)
    registered = [n for n, e in check.EXERCISES.items() if e.notebook == path.name[:2]
                  and n not in WRITTEN_AHEAD]
    assert sorted(checked) == sorted(registered), (
        f"exercises placed {checked}, registered for this notebook {registered}")
    if 1 <= int(path.name[:2]) <= 14:
        assert 2 <= len(checked) <= 4, f"{len(checked)} exercises; the course wants 2 to 4"
    mutations = _mutation_tests()
    for name in checked:
        diagnoses = {phrase for _, phrase in mutations.get(name, ())}
        assert len(diagnoses) >= 3, f"{name}: fewer than 3 mistakes diagnosed and tested"


# Notebooks whose switch to the learner's function (check.use_mine) is still to be wired:
# they are being rewritten (issue 28). Empty this set as each one lands with its switch.
USE_MINE_PENDING: set[str] = set()
# exercises written (check, solution, mutation tests) for the rewrites of notebooks that are
# not merged yet; each is placed in its notebook when that notebook lands
WRITTEN_AHEAD: dict[str, str] = {}
BEING_REWRITTEN: set[str] = set()


def test_only_the_notebooks_being_rewritten_may_lack_their_switch():
    assert USE_MINE_PENDING <= BEING_REWRITTEN, (
        f"{sorted(USE_MINE_PENDING - BEING_REWRITTEN)} may not go without a switch: every "
        f"notebook from 01 on runs at least one of the learner's answers")
    if USE_MINE_PENDING:
        warnings.warn(f"notebooks still without a check.use_mine switch: "
                      f"{', '.join(sorted(USE_MINE_PENDING))}", stacklevel=1)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_an_exercise_answer_is_what_the_notebook_runs(path):
    """From notebook 01 on, at least one exercise's answer is put to work: a cell after its
    check cell switches with `check.use_mine(NAME)` (the learner's function once it passes,
    the course's until then), and the notebook then runs what it returns."""
    from course_utils import check

    number = path.name[:2]
    sites = check.use_mine_sites(path)
    if number in USE_MINE_PENDING:
        assert not sites, (f"{path.name} has its switch ({sites}): remove {number!r} from "
                           f"USE_MINE_PENDING")
        return
    if number == "00":
        assert not sites
        return
    assert sites, f"{path.name}: no cell switches to the learner's function (check.use_mine)"
    code = [source(c) for c in cells(json.loads(path.read_text(encoding="utf-8")), "code")]
    for name in sites:
        assert check.EXERCISES[name].notebook == number, (
            f"{path.name} switches to {name}, an exercise of notebook "
            f"{check.EXERCISES[name].notebook}")
        checked = min(i for i, c in enumerate(code) if f"check.{name}({name})" in c)
        switched = min(i for i, c in enumerate(code) if re.search(
            rf"\buse_mine\(\s*{name}\b", c))
        assert switched > checked, f"{path.name}: the switch to {name} comes before its check"
        variable = re.search(rf"^(\w+) = check\.use_mine\({name}\)", code[switched], re.M)
        assert variable, f"{path.name}: assign the switch, `fn = check.use_mine({name})`"
        readers = [i for i, c in enumerate(code) if variable.group(1) in _names_read(c)]
        assert readers and min(readers) >= switched, (
            f"{path.name}: nothing after the switch runs {variable.group(1)}, "
            f"the function check.use_mine({name}) returns")


def _names_read(cell_source):
    """The names a code cell reads (loads), anywhere in it, functions' bodies included."""
    import ast

    from course_utils.check import scope

    return {n.id for n in ast.walk(scope.parse_cell(cell_source))
            if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


# An absolute path of a machine: "/" then at least two path components ("/home/me/x",
# "/content/data/", "/usr/lib/..."), not part of a URL or a relative path ("runs/x", "a/b"),
# or a Windows drive path ("C:\\Users").
MACHINE_PATH = re.compile(r"(?<![\w.:/~-])/(?:[\w.@+-]+/)+[\w.@+-]*|\b[A-Za-z]:\\[\w.-]")
BAR_FRAGMENT = re.compile(r"\r|\d+%\|")  # a redraw of a live bar, or a tqdm bar's "45%|"


def _output_texts(nb):
    """(cell index, text) of every text a committed output shows."""
    for i, c in enumerate(nb["cells"]):
        for o in c.get("outputs", []):
            if "text" in o:
                yield i, "".join(o["text"])
            if o["output_type"] == "error":
                yield i, "\n".join(o.get("traceback", []))
            for kind, value in o.get("data", {}).items():
                if kind.startswith("text/"):
                    yield i, "".join(value)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_outputs_hold_no_bar_debris_and_no_machine_paths(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    bars = [(i, t) for i, t in _output_texts(nb) if BAR_FRAGMENT.search(t)]
    assert not bars, (f"cell {bars[0][0]} shows progress-bar fragments ({bars[0][1][:80]!r}): "
                      f"use course_utils.utils.progress_bar and re-run the notebook")
    paths = [(i, m.group(0)) for i, t in _output_texts(nb) for m in MACHINE_PATH.finditer(t)]
    assert not paths, (f"cell {paths[0][0]} shows the machine path {paths[0][1]!r}: print "
                       f"paths relative to the repository (or just names) and re-run")


@pytest.mark.parametrize("text", [
    "train:  45%|####5     | 9/20 [00:01<00:01]", "step 3\rstep 4",
    "saved /home/ada/course/runs/x/ckpt.pt", "data in /content/data/", r"C:\Users\ada\x",
])
def test_clean_output_patterns_catch_debris_and_paths(text):
    assert BAR_FRAGMENT.search(text) or MACHINE_PATH.search(text)


@pytest.mark.parametrize("text", [
    "train: 60/60 step in 258.8 s (loss=3.229)", "checkpoint: runs/shakespeare-char/ckpt.pt",
    "see https://huggingface.co/HuggingFaceTB/x", "loss 1.69 nats/token, (B, T)/C", "../runs/x",
])
def test_clean_output_patterns_pass_clean_text(text):
    assert not (BAR_FRAGMENT.search(text) or MACHINE_PATH.search(text))


# A number as the README writes a result: "4.65", "1,511", "93%", "3.6%", "739 s".
RESULT_NUMBER = re.compile(r"(?<![\w.,])\d{1,3}(?:,\d{3})*(?:\.\d+)?%|(?<![\w.,-])\d[\d,]*\.\d+"
                           r"|(?<![\w.,])\d[\d,]* s\b")
# The README's result paragraphs that come from one notebook's committed outputs, each with
# the numbers it may cite that are settings or figures from elsewhere, not outputs.
README_RESULTS = {
    "**Notebook 11**": ("11_modern_architecture.ipynb", {"0.0"}),
    "**Report card**": ("12_evaluation.ipynb", set()),  # notebook 12
    "**Notebook 13**": ("13_instruction_tuning.ipynb", set()),
    "**Notebook 14**": ("14_preference_tuning.ipynb", set()),
    "**Notebook 15**": ("15_reasoning.ipynb", set()),
    "**Notebook 16**": ("16_speedrun.ipynb", set()),
}


@pytest.mark.parametrize("heading", sorted(README_RESULTS))
def test_readme_results_are_the_notebooks_committed_outputs(heading):
    """Every result the README cites for a notebook (decimals, percentages, times in s) is
    printed by that notebook's committed outputs, so that a re-run that changes a number
    fails here until the README follows (issue 28)."""
    name, quoted = README_RESULTS[heading]
    readme = (NOTEBOOK_DIR.parent / "README.md").read_text(encoding="utf-8")
    assert heading in readme, f"the README's results lack the '{heading}' paragraph"
    section = readme.split(heading, 1)[1].split("\n\n**", 1)[0]
    nb = json.loads((NOTEBOOK_DIR / name).read_text(encoding="utf-8"))
    printed = "\n".join(text for _, text in _output_texts(nb))
    cited = [n for n in RESULT_NUMBER.findall(section) if n not in quoted]
    assert cited, f"no numbers found in the README's {heading} paragraph"
    missing = [n for n in cited if n not in printed]
    assert not missing, f"README {heading} numbers not in {name}'s committed outputs: {missing}"
