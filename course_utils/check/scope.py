"""What an exercise's answer may use: the same names in the notebook and in the grader.

``python -m course_utils exercises`` grades the answers saved in a notebook file without
running the notebook's computations (training loops, downloads, plots). For each exercise it
runs, in notebook order, the *definitions* of the code cells before the check cell (the
exercise's own cell included), and nothing else. A definition is a statement at the top
level of a cell that is

- an ``import`` or ``from ... import``;
- a ``def``, ``async def`` or ``class`` (its decorators, default values and class body run,
  as Python runs them whenever it defines a function or class);
- an assignment of a literal value to names: ``T = 8``, ``base = 10000.0``,
  ``n_head, hs = 4, 16``, ``pairs = [(1, 2), (3, 4)]`` (a value ``ast.literal_eval``
  accepts: numbers, strings, bytes, booleans, ``None``, and tuples, lists, sets and dicts of
  them).

Every other statement is a *computation*: ``x = torch.randn(4, 8)``, ``model = GPT(cfg)``, a
``for`` loop, anything inside ``if``, ``with`` or ``try``. A name that a computation sets is
not there for the answer (a computation that sets a name defined before takes it away too).
So an answer may call a helper function an earlier cell defined (``rope`` may use ``rotate``),
but not read a tensor an earlier cell computed.

The notebook applies the same rule: :func:`computed_reads` finds the global names an answer
reads (and the notebook functions and classes it uses read in turn, their ``def`` and
``class`` statements included: a default value ``def f(x=model)``) that the cells the kernel
ran (IPython's ``In``) set by a computation. A check that passes such an answer reports it
failed with :func:`explain`, the message the grader gives, so the notebook and the grader
agree.
"""

from __future__ import annotations

import ast
import dis
import functools
import inspect
import types
from dataclasses import dataclass

DEFINITIONS = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
RULE = ("an answer may use the imports, functions, classes and literal constants (like T = 8) "
        "of the cells before its check, not the variables those cells compute")
_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
_NEW_SCOPE = (ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)


@dataclass
class Statement:
    """A top-level statement of a cell: its syntax tree, a short text for messages, the names
    it binds, and whether it is a definition (the grader runs it) or a computation (it does
    not)."""

    node: ast.stmt
    text: str
    names: list[str]
    definition: bool


def parse_cell(source: str) -> ast.Module:
    """The syntax tree of a code cell; IPython's magics and shell escapes (lines that start
    with ``%`` or ``!``) count as comments. Raises ``SyntaxError``."""
    lines = ["# " + line if line.lstrip().startswith(("%", "!")) else line
             for line in source.splitlines()]
    return ast.parse("\n".join(lines))


def statements(source: str) -> list[Statement]:
    """The top-level statements of a code cell, in order. Raises ``SyntaxError``."""
    out = []
    for node in parse_cell(source).body:
        text = ast.unparse(node).splitlines()[0]
        if isinstance(node, _DEFS):
            text = text.removesuffix(":")
        out.append(Statement(node, text if len(text) <= 70 else text[:66] + " ...",
                             bound_names(node), is_definition(node)))
    return out


def is_definition(node: ast.stmt) -> bool:
    """Whether the grader runs this top-level statement (see the module's docstring)."""
    if isinstance(node, DEFINITIONS):
        return True
    if isinstance(node, ast.Assign):
        targets, value = node.targets, node.value
    elif isinstance(node, ast.AnnAssign) and node.value is not None:
        targets, value = [node.target], node.value
    else:
        return False
    return all(_plain_names(t) for t in targets) and _literal(value)


def _plain_names(target: ast.expr) -> bool:
    if isinstance(target, ast.Name):
        return True
    return isinstance(target, (ast.Tuple, ast.List)) and all(map(_plain_names, target.elts))


def _literal(node: ast.expr) -> bool:
    try:
        ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False
    return True


def bound_names(node: ast.stmt) -> list[str]:
    """The names a top-level statement binds in the notebook's namespace (those bound inside
    its functions, classes, lambdas and comprehensions are theirs, not the notebook's)."""
    names: list[str] = []

    def visit(n: ast.AST) -> None:
        if isinstance(n, _DEFS):
            names.append(n.name)
            return
        if isinstance(n, _NEW_SCOPE):
            return
        if isinstance(n, ast.Name) and isinstance(n.ctx, (ast.Store, ast.Del)):
            names.append(n.id)
        elif isinstance(n, (ast.Import, ast.ImportFrom)):
            names.extend(a.asname or a.name.split(".")[0] for a in n.names if a.name != "*")
        elif isinstance(n, (ast.ExceptHandler, ast.MatchAs, ast.MatchStar)) and n.name:
            names.append(n.name)
        for child in ast.iter_child_nodes(n):
            visit(child)

    visit(node)
    return names


def read_history(history: list[str]) -> tuple[dict[str, str], dict[str, set[str]]]:
    """What the cells in ``history`` (in the order they ran) leave behind, by the rule above:
    ``{name: statement}`` for each name last set by a computation, and ``{name: names}`` for
    each function or class with the names its ``def`` or ``class`` statement read as it ran
    (:func:`definition_reads`). Cells that do not parse are skipped."""
    last: dict[str, str | None] = {}
    reads: dict[str, set[str]] = {}
    for source in history:
        try:
            cell = statements(source)
        except SyntaxError:
            continue
        for statement in cell:
            for name in statement.names:
                last[name] = None if statement.definition else statement.text
                reads.pop(name, None)
            if isinstance(statement.node, _DEFS) and statement.definition:
                reads[statement.node.name] = definition_reads(statement.node)
    return {name: text for name, text in last.items() if text is not None}, reads


def definition_reads(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> set[str]:
    """The names a ``def`` or ``class`` statement reads as it runs: its decorators, default
    values and annotations, a class's bases and body (not what its functions read when they
    are called)."""
    names: set[str] = set()

    def load(expr: ast.AST | None) -> None:
        if expr is not None:
            names.update(n.id for n in ast.walk(expr)
                         if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load))

    def visit(n: ast.AST) -> None:
        if isinstance(n, _DEFS):
            for expr in n.decorator_list:
                load(expr)
        if isinstance(n, ast.ClassDef):
            for expr in (*n.bases, *n.keywords):
                load(expr)
            for statement in n.body:
                visit(statement)
        elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
            a = n.args
            for arg in (*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg):
                load(arg and arg.annotation)
            for expr in (*a.defaults, *a.kw_defaults, n.returns):
                load(expr)
        else:  # a statement of a class body
            for child in ast.iter_child_nodes(n):
                if isinstance(child, ast.stmt):
                    visit(child)
                else:
                    load(child)

    visit(node)
    return names


def global_reads(fn, definition: dict[str, set[str]] | None = None) -> set[str]:
    """The global names ``fn`` reads, and the functions and classes of its own namespace
    (the notebook's helpers) read in turn, found in their byte code (``LOAD_GLOBAL``);
    ``definition`` adds, for such a function or class, the names its ``def`` or ``class``
    statement read (:func:`read_history`)."""
    fn = _unwrap(fn)
    namespace = getattr(fn, "__globals__", None)
    definition = definition or {}
    names: set[str] = set(definition.get(getattr(fn, "__name__", None), ()))
    todo, seen = [fn], set()
    while todo:
        obj = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        for code in _code_of(obj):
            for name in _loaded_globals(code):
                names.add(name)
                value = namespace.get(name) if isinstance(namespace, dict) else None
                if _defined_in(value, namespace):
                    names.update(definition.get(name, ()))
                    todo.append(value)
    return names


def _unwrap(fn):
    while True:
        if isinstance(fn, functools.partial):
            fn = fn.func
        elif isinstance(fn, types.MethodType):
            fn = fn.__func__
        else:
            return inspect.unwrap(fn) if isinstance(fn, types.FunctionType) else fn


def _code_of(obj) -> list[types.CodeType]:
    if isinstance(obj, types.FunctionType):
        return [obj.__code__]
    if isinstance(obj, type):
        out = []
        for member in vars(obj).values():
            member = getattr(member, "__func__", member)  # staticmethod, classmethod
            parts = ((member.fget, member.fset, member.fdel) if isinstance(member, property)
                     else (member,))
            out += [p.__code__ for p in parts if isinstance(p, types.FunctionType)]
        return out
    return []


def _loaded_globals(code: types.CodeType) -> set[str]:
    names = {ins.argval for ins in dis.get_instructions(code)
             if ins.opname in ("LOAD_GLOBAL", "LOAD_NAME") and isinstance(ins.argval, str)}
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _loaded_globals(const)
    return names


def _defined_in(value, namespace) -> bool:
    """Whether ``value`` is a function or class defined in ``namespace`` (the notebook)."""
    if isinstance(value, types.FunctionType):
        return value.__globals__ is namespace
    if isinstance(value, type):
        return any(getattr(getattr(f, "__func__", f), "__globals__", None) is namespace
                   for f in vars(value).values())
    return False


def computed_reads(fn, computed: dict[str, str] | None = None) -> dict[str, str]:
    """``{name: statement}`` for the global names ``fn`` reads (see :func:`global_reads`)
    that a computation sets. ``computed`` maps such names to their statement; by default it
    comes from IPython's history of ``fn``'s namespace (``In``), so outside a notebook, and
    for functions defined in modules, the answer is ``{}``."""
    definition = None
    if computed is None:
        namespace = getattr(_unwrap(fn), "__globals__", None)
        history = namespace.get("In") if isinstance(namespace, dict) else None
        if not (isinstance(history, list) and all(isinstance(s, str) for s in history)):
            return {}
        computed, definition = read_history(history)
    if not computed:
        return {}
    return {name: computed[name] for name in sorted(global_reads(fn, definition))
            if name in computed}


def explain(reads: dict[str, str]) -> str:
    """The message for an answer that reads variables an earlier cell computes."""
    names = ", ".join(f"`{name}`" for name in reads)
    where = "; ".join(f"`{text}`" for text in dict.fromkeys(reads.values()))
    them = "it" if len(reads) == 1 else "them"
    return (f"it reads {names}, computed by an earlier cell ({where}), which "
            f"`python -m course_utils exercises` does not run: {RULE}; pass {them} in as an "
            f"argument or compute {them} inside the function")
