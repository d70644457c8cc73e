"""A calculator tool for a chat model: a safe evaluator and a generation loop that calls it
(notebook 15).

A small model adds badly and copies well, so it is taught to write the sum as a *tool call*
and to copy the result. SmolLM2's tokenizer has no tool tokens, so the call is plain text:

- the model writes ``<tool>983+969</tool>`` (:data:`TOOL_OPEN`, :data:`TOOL_CLOSE`);
- the loop (:func:`generate_with_tools`) sees the closing marker, evaluates the expression with
  :func:`calculate`, and feeds ``<result>1952</result>`` (:data:`RESULT_OPEN`,
  :data:`RESULT_CLOSE`) into the model as if it had written it, through the same KV cache;
- the model goes on, usually to copy the result as its answer.

**The evaluator never runs the text.** :func:`calculate` parses the expression with ``ast``
(``mode="eval"``) and walks the tree itself, allowing only numeric literals, ``+ - * /`` and
unary signs (parentheses are just the tree's shape); a name, a call, an attribute, ``**``, a
string, anything else is refused. Sizes are bounded before and during the work: the text's
length, the tree's depth and size, the digits of every number read and of every intermediate
result (so ``9**9**9`` and ``10**10**10`` cannot even be written, and ``99999...*99999...``
repeated cannot grow past the bound). Arithmetic is exact (``fractions.Fraction``); a result
that is not whole is written as a decimal rounded to :data:`DECIMALS` places. Every refusal is
a :class:`ToolError` with a one-line reason, which the loop feeds back as ``<result>error:
...</result>``. No ``eval``, ``exec`` or ``compile`` of text anywhere.

**Who may write a result.** Only the loop: results are fed right after a tool call the model
itself wrote, and :func:`tool_conversation` refuses a user message that holds a tool or result
marker, so a user cannot plant a fake ``<result>`` for the model to trust.

nanochat's engine (Karpathy, 2025) gives its model a calculator the same way, with special
tokens; Toolformer (Schick et al., 2023) taught models to insert calls from plain-text markers.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from fractions import Fraction

import torch

from .rl import prompt_ids
from .sampling import generate_tokens

TOOL_OPEN, TOOL_CLOSE = "<tool>", "</tool>"  # the model writes the expression between these
RESULT_OPEN, RESULT_CLOSE = "<result>", "</result>"  # the loop writes the value between these
MARKERS = (TOOL_OPEN, TOOL_CLOSE, RESULT_OPEN, RESULT_CLOSE)

MAX_CHARS = 200  # longest expression accepted, in characters
MAX_DEPTH = 32  # deepest tree accepted: nested operations (a chain a+b+c+... nests too)
MAX_NODES = 64  # most numbers, operations and signs in one expression
MAX_DIGITS = 40  # most digits of any number: a literal, an intermediate result, the result
DECIMALS = 6  # places of a result that is not a whole number

_OPERATORS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b,
              ast.Mult: lambda a, b: a * b, ast.Div: lambda a, b: a / b}
_SIGNS = {ast.UAdd: lambda a: a, ast.USub: lambda a: -a}
_NAMES = {ast.Pow: "'**' (powers)", ast.FloorDiv: "'//'", ast.Mod: "'%'",
          ast.MatMult: "'@'", ast.BitAnd: "'&'", ast.BitOr: "'|'", ast.BitXor: "'^'",
          ast.LShift: "'<<'", ast.RShift: "'>>'", ast.Invert: "'~'", ast.Not: "'not'"}


class ToolError(ValueError):
    """An expression the calculator refuses; the message says why in one line."""


def _digits(x: Fraction) -> int:
    """Digits of the larger of a fraction's numerator and denominator."""
    return max(len(str(abs(x.numerator))), len(str(x.denominator)))


def _checked(x: Fraction, what: str) -> Fraction:
    if _digits(x) > MAX_DIGITS:
        raise ToolError(f"{what} has more than {MAX_DIGITS} digits; the calculator works "
                        f"with numbers up to {MAX_DIGITS} digits")
    return x


def _value(node: ast.AST, depth: int) -> Fraction:
    if depth > MAX_DEPTH:
        raise ToolError(f"the expression is nested more than {MAX_DEPTH} operations deep")
    if isinstance(node, ast.Constant):
        if type(node.value) not in (int, float):  # bool is an int subclass: refused too
            raise ToolError(f"only numbers are allowed, not {type(node.value).__name__} "
                            f"{node.value!r:.30}")
        if isinstance(node.value, float) and len(repr(node.value)) > MAX_DIGITS + 8:
            raise ToolError(f"a number has more than {MAX_DIGITS} digits")
        # repr: the decimal the user wrote (0.1 stays 1/10), not the binary float's exact value
        return _checked(Fraction(repr(node.value)), "a number")
    if isinstance(node, ast.BinOp):
        op = _OPERATORS.get(type(node.op))
        if op is None:
            raise ToolError(f"{_NAMES.get(type(node.op), type(node.op).__name__)} is not "
                            f"allowed; use + - * / and parentheses")
        a, b = _value(node.left, depth + 1), _value(node.right, depth + 1)
        if isinstance(node.op, ast.Div) and b == 0:
            raise ToolError("division by zero")
        return _checked(op(a, b), "an intermediate result")
    if isinstance(node, ast.UnaryOp):
        sign = _SIGNS.get(type(node.op))
        if sign is None:
            raise ToolError(f"{_NAMES.get(type(node.op), type(node.op).__name__)} is not "
                            f"allowed; use + - * / and parentheses")
        return sign(_value(node.operand, depth + 1))
    kinds = {ast.Name: "a name", ast.Call: "a function call", ast.Attribute: "an attribute",
             ast.Lambda: "a lambda", ast.Subscript: "indexing", ast.Compare: "a comparison",
             ast.BoolOp: "'and'/'or'"}
    raise ToolError(f"{kinds.get(type(node), type(node).__name__)} is not allowed; only "
                    f"numbers, + - * / and parentheses")


def calculate(expression: str) -> Fraction:
    """The exact value of an arithmetic expression, or :class:`ToolError`.

    Allowed: integer and decimal literals (``12``, ``2.5``), ``+ - * /``, unary ``-``/``+``,
    parentheses. The text is parsed by ``ast.parse(..., mode="eval")`` and the tree walked
    here; nothing is executed. Refused, each with a one-line reason: text longer than
    :data:`MAX_CHARS`, a syntax error, any other kind of node (names, calls, attributes,
    ``**``, ``//``, ``%``, strings, lambdas ...), more than :data:`MAX_NODES` nodes, nesting
    deeper than :data:`MAX_DEPTH`, any number or intermediate result of more than
    :data:`MAX_DIGITS` digits (numerator or denominator), division by zero.
    """
    if not isinstance(expression, str):
        raise ToolError(f"an expression is text, got {type(expression).__name__}")
    text = expression.strip()
    if not text:
        raise ToolError("the expression is empty")
    if len(text) > MAX_CHARS:
        raise ToolError(f"the expression is {len(text)} characters long; at most {MAX_CHARS}")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        reason = getattr(e, "msg", None) or type(e).__name__
        raise ToolError(f"not an arithmetic expression ({reason})") from None
    if sum(isinstance(node, ast.expr) for node in ast.walk(tree)) > MAX_NODES:
        raise ToolError(f"the expression has more than {MAX_NODES} numbers and operations")
    return _value(tree.body, 0)


def format_number(x: Fraction) -> str:
    """A result as the model reads it: ``1952``, ``-7``, ``0.333333`` (rounded to
    :data:`DECIMALS` places, trailing zeros dropped)."""
    if x.denominator == 1:
        return str(x.numerator)
    scaled = round(x * 10 ** DECIMALS)  # exact rounding of the fraction (half to even)
    sign = "-" if scaled < 0 else ""
    whole, frac = divmod(abs(scaled), 10 ** DECIMALS)
    frac_text = f"{frac:0{DECIMALS}d}".rstrip("0")
    return f"{sign}{whole}" + (f".{frac_text}" if frac_text else "")


def run_tool(expression: str) -> str:
    """What the loop feeds back for one call: the value (:func:`format_number`) or
    ``"error: <reason>"``."""
    try:
        return format_number(calculate(expression))
    except ToolError as e:
        return f"error: {e}"


def result_text(expression: str) -> str:
    """The text the loop inserts after a call: ``<result>VALUE</result>``."""
    return f"{RESULT_OPEN}{run_tool(expression)}{RESULT_CLOSE}"


def check_user_text(text: str) -> str:
    """``text`` unchanged, or ``ValueError`` when it holds a tool or result marker: only the
    model writes tool calls and only the loop writes results."""
    found = [m for m in MARKERS if m in text]
    if found:
        raise ValueError(f"a user message may not contain the tool markers {found}: only the "
                         f"model calls the tool and only the loop writes results")
    return text


def tool_conversation(fmt, question: str, expression: str, answer: str,
                      system: str | None = None) -> tuple[list[int], list[bool]]:
    """One training conversation of a tool call -> ``(ids, trained)``, like
    :func:`course_utils.sft.encode_conversation`.

    The reply is the call ``<tool>EXPRESSION</tool>``, the loop's ``<result>...</result>``
    (computed here by :func:`result_text`), ``\\n`` and ``answer``, then ``<|im_end|>``. Its
    tokens are built piece by piece exactly as :func:`generate_with_tools` produces them
    (the call as the model writes it, the result as the loop feeds it), and ``trained`` is
    ``False`` on the result: the model is taught to call and to copy, never to write a result.
    Raises ``ValueError`` when the question holds a tool marker (:func:`check_user_text`).
    """
    prompt = prompt_ids(fmt, check_user_text(question), system)
    call = fmt.text_ids(f"{TOOL_OPEN}{expression}{TOOL_CLOSE}")
    result = fmt.text_ids(result_text(expression))
    tail = [*fmt.text_ids(f"\n{answer}"), fmt.im_end]
    ids = prompt + call + result + tail
    trained = [False] * len(prompt) + [True] * len(call) + [False] * len(result) + \
        [True] * len(tail)
    return ids, trained


@dataclass
class ToolReply:
    """One reply of :func:`generate_with_tools`: its ``tokens`` (model's and loop's, up to and
    including ``<|im_end|>`` when it ended), ``text`` (decoded, without ``<|im_end|>``),
    ``calls`` (``(expression, what the loop fed back)`` per call) and ``stopped`` (it ended
    with ``<|im_end|>`` within the token budget)."""

    tokens: list[int]
    text: str
    calls: list[tuple[str, str]] = field(default_factory=list)
    stopped: bool = False


_CALL = re.compile(re.escape(TOOL_OPEN) + r"(.*?)" + re.escape(TOOL_CLOSE) + r"$", re.DOTALL)


@torch.no_grad()
def generate_with_tools(model, fmt, prompts: list[list[int]], max_new_tokens: int,
                        temperature: float = 0.0, max_calls: int = 4,
                        generator: torch.Generator | None = None) -> list[ToolReply]:
    """Replies to ``prompts`` (token ids, any lengths) with calculator calls, in one batch.

    Built on the course's generation loop, :func:`course_utils.sampling.generate_tokens`, with
    one KV cache for the whole batch (prompts padded on the left as
    :func:`course_utils.sampling.rollout` pads them). After each step every row's text is
    checked: when it ends with ``</tool>`` (and the row has made fewer than ``max_calls``
    calls), the expression since its last ``<tool>`` is evaluated (:func:`run_tool`) and the
    tokens of ``<result>VALUE</result>`` become that row's next tokens: written into the
    step's token tensor, they are what the loop feeds next (the tokens the model picked at
    those steps are dropped), so they enter the same KV cache as the model's own tokens.
    Other rows go on generating meanwhile. A row ends at its ``<|im_end|>``; the batch ends
    when all have, or after ``max_new_tokens`` steps (result tokens count too). Greedy
    (``temperature=0``) gives each row what it gives alone (tested).

    Cost: one model step per token, result tokens included, for the whole batch; a row that
    ended early keeps its slot until the batch ends. Raises ``ValueError`` as
    :func:`course_utils.sampling.rollout` (no prompts, an empty prompt, a prompt plus
    ``max_new_tokens`` past ``block_size``) or for ``max_calls < 0``.
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("generate_with_tools needs at least one prompt, each of at least "
                         "one token")
    if max_calls < 0 or max_new_tokens < 1:
        raise ValueError(f"max_calls must be >= 0 and max_new_tokens >= 1, got {max_calls} "
                         f"and {max_new_tokens}")
    longest = max(len(p) for p in prompts)
    if longest + max_new_tokens > model.config.block_size:
        raise ValueError(f"a prompt plus max_new_tokens is {longest + max_new_tokens} tokens, "
                         f"longer than block_size {model.config.block_size}")
    device = next(model.parameters()).device
    stop, tok = fmt.im_end, fmt.tokenizer
    batch = torch.tensor([[stop] * (longest - len(p)) + p for p in prompts], device=device)
    pad = torch.tensor([longest - len(p) for p in prompts], device=device)
    caches = model.new_kv_caches(len(prompts), length=longest + max_new_tokens, pad=pad)
    replies = [ToolReply([], "") for _ in prompts]
    forced: list[list[int]] = [[] for _ in prompts]  # result tokens still to feed, per row
    done = [False] * len(prompts)
    steps = generate_tokens(model, batch, max_new_tokens, temperature, generator=generator,
                            kv_caches=caches)
    for next_ids in steps:  # (B, 1): fed to the model at the next step
        for r, reply in enumerate(replies):
            if done[r]:
                continue
            if forced[r]:
                next_ids[r, 0] = forced[r].pop(0)  # the loop's token replaces the model's
            token = int(next_ids[r, 0])
            reply.tokens.append(token)
            if token == stop and not forced[r]:
                done[r], reply.stopped = True, True
                continue
            tail = tok.decode(reply.tokens[-12:])  # a closing marker is a few tokens long
            if not forced[r] and tail.endswith(TOOL_CLOSE) and len(reply.calls) < max_calls:
                text = tok.decode(reply.tokens)
                found = _CALL.search(text[text.rfind(TOOL_OPEN):])
                if found:
                    fed = run_tool(found.group(1))
                    reply.calls.append((found.group(1), fed))
                    forced[r] = fmt.text_ids(f"{RESULT_OPEN}{fed}{RESULT_CLOSE}")
        if all(done):
            break
    steps.close()
    for reply in replies:
        body = reply.tokens[:-1] if reply.stopped else reply.tokens
        reply.text = tok.decode(body)
    return replies
