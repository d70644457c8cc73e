"""Grading the notebook files (course_utils.check.grader, `python -m course_utils exercises`).

Every notebook's exercises as committed are not attempted, and with the course's solutions
pasted into the stub cells all pass. An answer may use the imports, functions, classes and
literal constants of earlier cells (rope may call rotate), in the notebook and in the grader
alike; one that reads a computed variable fails in both with the same message. An answer that
exits, raises KeyboardInterrupt or loops forever is graded failed; an unreadable notebook is
named in one line and the others are graded."""

import inspect
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from course_utils import check, solutions
from course_utils.check import FAILED, NOT_ATTEMPTED, PASSED, grader, scope

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
WITH_EXERCISES = sorted({e.notebook for e in check.EXERCISES.values()})
NOTEBOOKS = [p for p in sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
             if p.name[:2] in WITH_EXERCISES]


from test_notebooks import WRITTEN_AHEAD  # noqa: E402


def registered(path):
    return [name for name, e in check.EXERCISES.items() if e.notebook == path.name[:2]
            and name not in WRITTEN_AHEAD]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_stubs_are_not_attempted(path):
    results = [r for r in check.grade_notebook(path) if r[0] not in WRITTEN_AHEAD]
    assert sorted(name for name, _, _ in results) == sorted(registered(path))
    missing = [name for name, _, message in results if "no cell defines it" in message]
    assert not missing, (f"{path.name} has no exercise cells for {missing}: insert them "
                         f"(see course_utils/check/ and the notebook conventions)")
    assert all(status == NOT_ATTEMPTED for _, status, _ in results), results
    sites = check.use_mine_sites(path)
    summary = grader.switch_summary(results, sites)
    assert "runs your" not in summary
    if sites:
        assert f"runs the course's {sites[0]}" in summary, summary


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
    results = [r for r in check.grade_notebook(solved) if r[0] not in WRITTEN_AHEAD]
    assert [status for _, status, _ in results] == [PASSED] * len(results), results
    sites = check.use_mine_sites(solved)
    summary = grader.switch_summary(results, sites)
    assert "the course's" not in summary and all(name in summary for name in sites), summary


# ------------------------------------------------------------------ the exercises command

SMALL_TIME_LIMIT = "1"  # seconds per check in the tests that stop an endless loop


def _notebook(path, cells):
    """Write a notebook of ``(kind, source)`` cells to ``path``."""
    nb = {"cells": [{"cell_type": kind, "metadata": {}, "source": text,
                     **({"outputs": [], "execution_count": None} if kind == "code" else {})}
                    for kind, text in cells],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path.write_text(json.dumps(nb), encoding="utf-8")
    return path


def _code(cells):
    return [("code", source) for source in cells]


def exercises(argv, capsys):
    """Run ``python -m course_utils exercises ARGV`` in this process: (code, table rows by
    exercise, stdout, stderr)."""
    from course_utils.cli import main

    code = main(["exercises", *argv])
    out, err = capsys.readouterr()
    rows = {line.split()[1]: line for line in out.splitlines()[1:] if line[:2].isdigit()}
    return code, rows, out, err


def test_exercises_command_prints_the_progress_table(tmp_path, capsys):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    _notebook(folder / "04_attention.ipynb", [
        ("code", "import math\n\nimport torch\n"),
        ("markdown", "**Your turn: the causal mask.**"),
        ("code", inspect.getsource(solutions.module_for("04").causal_mask)),
        ("code", "from course_utils import check\n\ncheck.causal_mask(causal_mask)"),
        ("markdown", "**Your turn: softmax.**"),
        ("code", "def softmax(x):\n    return torch.exp(x) / torch.exp(x).sum(-1, keepdim=True)"),
        ("code", "check.softmax(softmax)"),
        ("code", "def split_heads(x, n_head):\n    ...  # your code"),
        ("code", "check.split_heads(split_heads)"),
    ])
    code, rows, out, err = exercises(["4", "--notebooks-dir", str(folder)], capsys)
    assert code == 0 and err == ""
    assert rows["causal_mask"].endswith(" passed")
    assert "failed: " in rows["softmax"] and "exp overflows" in rows["softmax"]
    assert rows["split_heads"].endswith(" not attempted")
    assert rows["causal_attention"].endswith(" not attempted")  # no cell for it
    assert "1 of 4 exercises passed" in out and "save the notebook" in out


def test_exercises_command_says_which_of_your_functions_each_notebook_runs(tmp_path, capsys):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    _notebook(folder / "04_attention.ipynb", _code([
        "import math\n\nimport torch\nfrom course_utils import check",
        inspect.getsource(solutions.module_for("04").causal_mask),
        "check.causal_mask(causal_mask)",
        "def softmax(x):\n    ...  # your code",
        "check.softmax(softmax)",
        "mask_fn = check.use_mine(causal_mask)\nnormalise = check.use_mine(softmax)",
        "print(normalise(torch.zeros(2, 3).masked_fill(~mask_fn(3)[:2], -math.inf)))",
    ]))
    _notebook(folder / "05_transformer_block.ipynb", _code([
        "import torch\nfrom course_utils import check",
        inspect.getsource(solutions.module_for("05").layer_norm),
        "check.layer_norm(layer_norm)",
    ]))
    code, rows, out, err = exercises(["--notebooks-dir", str(folder)], capsys)
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert ("  04_attention: 1 of 4 passed; runs your causal_mask, and the course's softmax "
            "until yours passes") in lines
    assert ("  05_transformer_block: 1 of 3 passed; no switch to your functions in this "
            "notebook yet") in lines
    assert "2 of 7 exercises passed; the notebooks run 1 of your functions (of 2 switches" in out
    # the summary follows the notebook's rows, and no row is taken for an exercise
    assert lines.index("  04_attention: 1 of 4 passed; runs your causal_mask, and the course's "
                       "softmax until yours passes") > max(
        i for i, line in enumerate(lines) if line.startswith("04_attention "))
    assert set(rows) == {"causal_mask", "softmax", "causal_attention", "split_heads",
                         "layer_norm", "dropout", "pre_norm_block"}


def test_switch_summary_reads_well_for_every_mix():
    results = [("a", PASSED, PASSED), ("b", PASSED, PASSED), ("c", FAILED, "x"),
               ("d", NOT_ATTEMPTED, "y")]
    assert grader.switch_summary(results, ["a", "b"]) == "2 of 4 passed; runs your a and b"
    assert grader.switch_summary(results, ["c", "d", "a"]) == (
        "2 of 4 passed; runs your a, and the course's c and d until yours pass")
    assert grader.switch_summary(results, ["d"]) == (
        "2 of 4 passed; runs the course's d until yours passes")


def test_use_mine_sites_finds_every_form_of_the_switch(tmp_path):
    path = _notebook(tmp_path / "04_attention.ipynb", _code([
        "from course_utils import check\nfrom course_utils.check import use_mine",
        "a = check.use_mine(causal_mask)",
        "b = use_mine(my_softmax, name='softmax')",
        "def build():\n    return check.use_mine(split_heads)",
        "c = check.use_mine(causal_mask)  # a second switch to the same function",
        "d = check.use_mine(not_an_exercise)\ne = check.use_mine(lambda T: T, name='nope')",
        "this cell does not parse (",
        "# check.use_mine(causal_attention) in a comment is no switch",
    ]))
    assert check.use_mine_sites(path) == ["causal_mask", "softmax", "split_heads"]


def test_exercises_command_explains_a_missing_notebook(tmp_path, capsys):
    code, _, _, err = exercises(["77", "--notebooks-dir", str(tmp_path)], capsys)
    assert code == 2 and err.startswith("error: ") and "no notebook '77'" in err


# ------------------------------------------------------------------ what an answer may use

ROPE_ANSWER = '''def rope(x, base=10000.0):
    """Rotary position embeddings of x (B, n_head, T, hs) at positions 0 .. T-1."""
    T, hs = x.shape[-2], x.shape[-1]
    return rotate(x, rope_angles(torch.arange(T), hs, base))
'''


def _rope_helpers_cell():
    """Notebook 11's cell that defines ``rope_angles`` and ``rotate`` (and computes a demo)."""
    nb = json.loads((NOTEBOOK_DIR / "11_modern_architecture.ipynb").read_text(encoding="utf-8"))
    cell, = [c for c in nb["cells"] if "def rotate(" in "".join(c["source"])]
    return "".join(cell["source"])


def _in_a_notebook(cells):
    """Run ``cells`` as a Jupyter kernel would, IPython's history ``In`` included; returns the
    namespace."""
    namespace = {"__name__": "__main__", "In": [""]}
    for source in cells:
        namespace["In"].append(source)
        exec(source, namespace)
    return namespace


def test_rope_may_call_a_helper_of_an_earlier_cell_in_the_notebook_and_in_the_grader(
        tmp_path, capsys):
    marker = tmp_path / "computed"
    cells = ["import math\n\nimport torch\nfrom course_utils import check",
             _rope_helpers_cell(),
             f"open({str(marker)!r}, 'w').close()  # a computation: the grader must skip it",
             ROPE_ANSWER,
             "check.rope(rope)"]
    notebook = _in_a_notebook(cells[:-1])
    assert check.run("rope", notebook["rope"]) == (PASSED, PASSED)
    marker.unlink()

    path = _notebook(tmp_path / "11_modern_architecture.ipynb", _code(cells))
    code, rows, _, err = exercises([str(path)], capsys)
    assert code == 0 and err == ""
    assert rows["rope"].endswith(" passed")
    assert rows["rms_norm"].endswith(" not attempted")
    assert not marker.exists()  # the computation did not run


def test_the_real_notebook_11_with_rope_answered_through_its_helpers_passes(tmp_path, capsys):
    nb = json.loads((NOTEBOOK_DIR / "11_modern_architecture.ipynb").read_text(encoding="utf-8"))
    stub, = [c for c in nb["cells"] if "".join(c["source"]).startswith("def rope(x")]
    stub["source"] = ROPE_ANSWER
    path = tmp_path / "11_modern_architecture.ipynb"
    path.write_text(json.dumps(nb), encoding="utf-8")
    code, rows, _, err = exercises([str(path)], capsys)
    assert code == 0 and err == ""
    assert rows["rope"].endswith(" passed"), rows["rope"]
    assert rows["repeat_kv"].endswith(" not attempted")


def test_in_a_real_ipython_kernel_rope_with_helpers_passes_and_a_computed_read_fails():
    """The notebook's side of the rule, in IPython itself (its own process: an IPython shell
    changes the process's display and exception hooks)."""
    cells = ["import torch\nfrom course_utils import check",
             _rope_helpers_cell(),
             ROPE_ANSWER,
             "check.rope(rope)",
             "big = torch.ones(16, 16, dtype=torch.bool).tril()",
             "def causal_mask(T):\n    return big[:T, :T]",
             "check.causal_mask(causal_mask)"]
    script = ("import json, sys\n"
              "from IPython.core.interactiveshell import InteractiveShell\n"
              "shell = InteractiveShell.instance()\n"
              "for cell in json.loads(sys.stdin.read()):\n"
              "    assert shell.run_cell(cell, store_history=True).success, cell\n")
    argv, env = _command()
    done = subprocess.run([sys.executable, "-c", script], input=json.dumps(cells), env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith(("rope:", "causal"))]
    because = scope.explain({"big": "big = torch.ones(16, 16, dtype=torch.bool).tril()"})
    assert lines == ["rope: passed", f"causal_mask: right here, but {because}"]


def test_an_answer_that_reads_a_computed_variable_fails_the_same_way_everywhere(tmp_path, capsys):
    cells = ["import torch\nfrom course_utils import check",
             "big = torch.ones(16, 16, dtype=torch.bool).tril()  # computed",
             "def causal_mask(T):\n    return big[:T, :T]",
             "check.causal_mask(causal_mask)"]
    because = scope.explain({"big": "big = torch.ones(16, 16, dtype=torch.bool).tril()"})
    assert "pass it in as an argument" in because

    status, message = check.run("causal_mask", _in_a_notebook(cells[:-1])["causal_mask"])
    assert status == FAILED and message == f"right here, but {because}"

    path = _notebook(tmp_path / "04_attention.ipynb", _code(cells))
    code, rows, out, err = exercises([str(path)], capsys)
    assert code == 0 and err == "" and "Traceback" not in out
    assert rows["causal_mask"].endswith(
        f"failed: causal_mask(4) raised NameError: name 'big' is not defined; {because}")


@pytest.mark.parametrize("helper", [
    "def lower(T):\n    return torch.ones(n, n, dtype=torch.bool).tril()[:T, :T]",
    "def lower(T, m=torch.ones(n, n, dtype=torch.bool)):\n    return m.tril()[:T, :T]",
], ids=["in-its-body", "in-its-default-value"])
def test_a_helper_that_reads_a_computed_variable_fails_the_answer_that_calls_it(
        helper, tmp_path, capsys):
    cells = ["import torch\nfrom course_utils import check",
             "n = int(torch.tensor(16))",
             helper,
             "def causal_mask(T):\n    return lower(T)",
             "check.causal_mask(causal_mask)"]
    because = scope.explain({"n": "n = int(torch.tensor(16))"})
    status, message = check.run("causal_mask", _in_a_notebook(cells[:-1])["causal_mask"])
    assert (status, message) == (FAILED, f"right here, but {because}")

    path = _notebook(tmp_path / "04_attention.ipynb", _code(cells))
    code, rows, _, err = exercises([str(path)], capsys)
    assert code == 0 and err == ""
    assert "failed: causal_mask(4) raised NameError: name " in rows["causal_mask"]
    assert rows["causal_mask"].endswith(because)


def test_literal_constants_are_in_scope_until_a_computation_sets_them_again(tmp_path):
    mask = "def causal_mask(T):\n    return torch.ones(T_MAX, T_MAX).tril()[:T, :T].bool()"
    literal = _notebook(tmp_path / "04_attention.ipynb", _code(
        ["import torch\nT_MAX = 9", mask, "check.causal_mask(causal_mask)"]))
    (name, status, _), *_ = check.grade_notebook(literal)
    assert (name, status) == ("causal_mask", PASSED)

    recomputed = _notebook(tmp_path / "04_attention.ipynb", _code(
        ["import torch\nT_MAX = 9", "T_MAX = len(range(9))", mask,
         "check.causal_mask(causal_mask)"]))
    (name, status, message), *_ = check.grade_notebook(recomputed)
    assert status == FAILED and "it reads `T_MAX`, computed by an earlier cell" in message
    assert "`T_MAX = len(range(9))`" in message


def test_the_scope_rule_on_single_statements():
    def kinds(source):
        return [(s.names, s.definition) for s in scope.statements(source)]

    assert kinds("import torch.nn as nn\nfrom math import pi, tau") == [
        (["nn"], True), (["pi", "tau"], True)]
    assert kinds("T, (a, b) = 8, (1.5, 'x')\nC: int = -3\npairs = [(1, 2)]") == [
        (["T", "a", "b"], True), (["C"], True), (["pairs"], True)]
    assert kinds("x = torch.randn(3)\nfor i in range(3):\n    y = [j for j in range(i)]") == [
        (["x"], False), (["i", "y"], False)]
    assert kinds("%time z = 1\nclass A:\n    k = 1\n\ndef f(x=big):\n    w = 2") == [
        (["A"], True), (["f"], True)]
    assert kinds("if True:\n    import os\nelse:\n    v = 1") == [(["os", "v"], False)]


# ------------------------------------------------------------------ robustness


def test_sys_exit_keyboard_interrupt_and_an_endless_loop_are_graded_failed(tmp_path, capsys):
    path = _notebook(tmp_path / "04_attention.ipynb", _code([
        "import sys\nimport torch",
        "def causal_mask(T):\n    sys.exit(3)",
        "check.causal_mask(causal_mask)",
        "def softmax(x):\n    raise KeyboardInterrupt",
        "check.softmax(softmax)",
        "def causal_attention(q, k, v):\n    while True:\n        try:\n            pass\n"
        "        except Exception:\n            pass",
        "check.causal_attention(causal_attention)",
        "sys.exit('a computation: never run')\n\n"
        + inspect.getsource(solutions.module_for("04").split_heads),
        "check.split_heads(split_heads)",
    ]))
    start = time.monotonic()
    code, rows, out, err = exercises([str(path), "--time-limit", SMALL_TIME_LIMIT], capsys)
    assert time.monotonic() - start < 30
    assert code == 0 and err == ""
    assert "failed: causal_mask(4) called sys.exit(3)" in rows["causal_mask"]
    assert "failed: the answer raised KeyboardInterrupt" in rows["softmax"]
    assert ("failed: the answer was stopped after 1 s, still running (an endless loop?)"
            in rows["causal_attention"])
    assert rows["split_heads"].endswith(" passed")
    assert "1 of 4 exercises passed" in out


def test_an_endless_definition_in_an_earlier_cell_is_stopped(tmp_path):
    path = _notebook(tmp_path / "04_attention.ipynb", _code([
        "import torch",
        "class Forever:\n    while True:\n        pass",
        "def causal_mask(T):\n    Forever\n    return torch.ones(T, T, dtype=torch.bool).tril()",
        "check.causal_mask(causal_mask)",
    ]))
    (name, status, message), *_ = check.grade_notebook(path, time_limit=0.5)
    assert status == FAILED
    assert "an earlier cell defines `Forever`, but here `class Forever`" in message
    assert "was stopped after 0.5 s" in message
    with pytest.raises(ValueError, match="positive number of seconds"):
        check.grade_notebook(path, time_limit=0)


def test_a_real_ctrl_c_stops_the_command(tmp_path, capsys):
    path = _notebook(tmp_path / "04_attention.ipynb", _code([
        "import os\nimport signal",
        "def causal_mask(T):\n    os.kill(os.getpid(), signal.SIGINT)",
        "check.causal_mask(causal_mask)",
    ]))
    code, rows, _, err = exercises([str(path)], capsys)
    assert code == 130 and "interrupted" in err and not rows
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


BAD_NOTEBOOKS = {
    "05_list.ipynb": ("[]", "the file holds a JSON list, not an object with a list of 'cells'"),
    "06_broken.ipynb": ('{"cells": [', "invalid JSON at line 1, column 12"),
    "07_no_cells.ipynb": ('{"metadata": {}}', "it has no list of 'cells'"),
    "08_empty.ipynb": ("", "the file is empty"),
    "09_bad_cell.ipynb": ('{"cells": [3]}', "cell 1 is not a notebook cell"),
}


def test_unreadable_notebooks_are_named_and_the_others_graded(tmp_path, capsys):
    _notebook(tmp_path / "04_attention.ipynb", _code([
        "import torch", inspect.getsource(solutions.module_for("04").causal_mask),
        "check.causal_mask(causal_mask)"]))
    for name, (text, _) in BAD_NOTEBOOKS.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    code, rows, out, err = exercises(["--notebooks-dir", str(tmp_path)], capsys)
    assert code == 2
    assert rows["causal_mask"].endswith(" passed") and "1 of 4 exercises passed" in out
    lines = err.splitlines()
    assert len(lines) == len(BAD_NOTEBOOKS)
    for line, (name, (_, reason)) in zip(lines, BAD_NOTEBOOKS.items()):
        assert line.startswith(f"error: {tmp_path / name}: ") and reason in line, line

    for name in BAD_NOTEBOOKS:  # named on the command line: the same line, code 2
        code, rows, _, err = exercises([str(tmp_path / name)], capsys)
        assert code == 2 and not rows and len(err.splitlines()) == 1
        with pytest.raises(check.NotebookError, match=name):
            check.grade_notebook(tmp_path / name)


def test_a_bad_argument_is_one_line_with_a_short_usage(capsys):
    from course_utils.cli import main

    for argv, reason in ((["--time-limit", "abc"], "expected a number of seconds > 0, got 'abc'"),
                         (["--time-limit", "0"], "got '0'"),
                         (["--time-limit"], "expected one argument"),
                         (["04", "05"], "unrecognized arguments: 05"),
                         (["--bogus"], "unrecognized arguments: --bogus")):
        with pytest.raises(SystemExit) as stop:
            main(["exercises", *argv])
        err = capsys.readouterr().err
        assert stop.value.code == 2 and len(err.splitlines()) == 1, err
        assert err.startswith("error: ") and reason in err
        assert "(usage: python -m course_utils exercises [-h] [--notebooks-dir DIR]" in err


def _command(*argv):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(NOTEBOOK_DIR.parent), os.environ.get("PYTHONPATH", "")])}
    return [sys.executable, "-m", "course_utils", "exercises", *argv], env


def test_printing_into_a_closed_pipe_exits_quietly(tmp_path):
    _notebook(tmp_path / "04_attention.ipynb", _code(["import torch"]))
    argv, env = _command("--notebooks-dir", str(tmp_path))
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the command prints its first line
    try:
        done = subprocess.run(argv, stdout=write, stderr=subprocess.PIPE, text=True, env=env,
                              timeout=300)
    finally:
        os.close(write)
    assert done.returncode == 0 and done.stderr == ""

    done = subprocess.run(f"{shlex.join(argv)} | head -1", shell=True, capture_output=True,
                          text=True, env=env, timeout=300)
    assert done.stdout.split() == ["notebook", "exercise", "status"] and done.stderr == ""
