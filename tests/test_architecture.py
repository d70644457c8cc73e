"""The shape of course_utils, read from its source (the AST): no import cycles, and the pieces
the notebooks build never import the pieces of a later notebook.

Three layers:
- the pieces, one module per notebook topic, in course order (:data:`PIECES`): a piece may
  import pieces of its own notebook or of earlier ones only;
- the training machinery (settings, checkpoints, tasks: notebook 07 on), which builds on the
  pieces (the model, LoRA, a pretrained model) and which the later pieces build on (their
  tasks);
- the front doors (the loop, command line, server, exercises), which may import anything and
  which no piece imports;
and nothing imports in a circle.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "course_utils"

# module -> its place in the course (the notebook whose piece it holds; 0: used by all)
PIECES = {
    "utils": 0, "diagram": 0,
    "tokenization": 1, "bpe": 1,
    "corpora": 1, "datasets": 2,  # notebook 01 downloads its books through the registry
    "positions": 3, "bigram": 3,
    "attention": 4,
    "block": 5,
    "model": 6, "gpt2": 6,
    "optim": 7,
    "sampling": 8, "linear": 8,
    "scaling": 10, "tinystories": 10,
    "pretrained": 11,
    "chat": 11,  # the ChatML format: SmolLM2's chat in 11, the course's chat models in 13
    # evaluation: log-likelihoods, statistics, benchmarks
    "logprobs": 12, "stats": 12, "answers": 12, "ifeval": 12, "mmlu": 12, "evaluation": 12,
    "sft": 13,
    "preference": 14, "instructions": 14,
    "lora": 15, "rl": 15, "reasoning": 15, "tools": 15,
}
# the training machinery: settings, checkpoints, tasks; the pieces of notebook 13 on build on it
# (their tasks), and it builds on the pieces (the model, LoRA, pretrained models)
MACHINERY = {"config", "checkpoint", "runs", "tasks", "presets"}
# the front doors: the loop, the command line, the server, the exercises; nothing they hold is
# imported by a piece
FRONT_DOORS = {"train", "cli", "server", "report", "eval_tasks", "distributed", "__init__",
               "__main__", "check", "solutions"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1]) if parts[-1] == "__init__" and len(parts) > 1 else \
        ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """The course_utils modules ``path`` imports (at any depth of the file), as names
    relative to the package (``"model"``, ``"check.core"``)."""
    name = module_name(path)
    package = name.split(".")[:-1] if path.name != "__init__.py" else name.split(".")
    if name == "__init__":
        package = []
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
                target = base + (node.module.split(".") if node.module else [])
            elif node.module and node.module.startswith("course_utils"):
                target = node.module.split(".")[1:]
            else:
                continue
            subs = {".".join([*target, alias.name]) for alias in node.names}
            modules = {s for s in subs if (PACKAGE / Path(*s.split("."))).with_suffix(".py")
                       .exists() or (PACKAGE / Path(*s.split("."))).is_dir()}
            # `from . import core` imports the module core; `from .model import GPT` the module
            found |= modules or {".".join(target)}
        elif isinstance(node, ast.Import):
            found.update(".".join(a.name.split(".")[1:]) for a in node.names
                         if a.name.startswith("course_utils."))
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {m: {t for t in imports_of(p) if t in modules and t != m and t}
            for m, p in modules.items()}


def top(module: str) -> str:
    return module.split(".")[0]


def test_every_module_has_a_place():
    unplaced = sorted({top(m) for m in graph()} - set(PIECES) - MACHINERY - FRONT_DOORS)
    assert not unplaced, (f"add {unplaced} to PIECES (with its notebook) or MACHINERY in "
                          f"tests/test_architecture.py")


def test_no_import_cycles():
    g = graph()
    state: dict[str, int] = {}  # 1 visiting, 2 done
    cycles = []

    def visit(m, path):
        state[m] = 1
        for t in sorted(g[m]):
            if state.get(t) == 1:
                cycles.append(" -> ".join(path[path.index(t):] + [t]))
            elif t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    assert not cycles, f"import cycles: {cycles}"


def test_pieces_import_only_earlier_pieces():
    wrong = []
    for m, targets in graph().items():
        if top(m) not in PIECES:
            continue
        for t in targets:
            if top(t) in FRONT_DOORS:
                wrong.append(f"{m} (a piece) imports {t} (a front door)")
            elif top(t) in MACHINERY:
                if PIECES[top(m)] < 7:  # the training machinery comes with notebook 07
                    wrong.append(f"{m} (notebook {PIECES[top(m)]}) imports {t} (training)")
            elif PIECES[top(t)] > PIECES[top(m)]:
                wrong.append(f"{m} (notebook {PIECES[top(m)]}) imports {t} (notebook "
                             f"{PIECES[top(t)]})")
    assert not wrong, "; ".join(sorted(wrong))


def test_the_checker_finds_what_it_should(tmp_path):
    """The AST reader sees relative, absolute and function-level imports."""
    f = tmp_path / "x.py"
    f.write_text("from .model import GPT\nimport course_utils.sampling\n"
                 "def g():\n    from ..check import core\n")
    global PACKAGE
    saved, PACKAGE = PACKAGE, tmp_path
    try:
        (tmp_path / "sub").mkdir()
        g_file = tmp_path / "sub" / "y.py"
        g_file.write_text(f.read_text())
        assert imports_of(f) == {"model", "sampling", "check"}
        assert imports_of(g_file) == {"sub.model", "sampling", "check"}
    finally:
        PACKAGE = saved


@pytest.mark.parametrize("module", ["train", "checkpoint", "runs", "config", "tasks", "cli"])
def test_the_machinery_stays_small(module):
    lines = (PACKAGE / f"{module}.py").read_text(encoding="utf-8").count("\n")
    assert lines <= 400, f"course_utils/{module}.py has {lines} lines; split it"
