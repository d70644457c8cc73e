"""The checks of notebook 15 (reasoning: LoRA, RL, sampling more, a calculator):
``lora_forward``, ``parse_answer``, ``group_advantages``, ``majority_vote``, ``safe_value``.

Each check is registered with :func:`~course_utils.check.core._exercise`, which puts in its
place a function that prints one line; the learner calls it as ``check.NAME(NAME)``. Solutions:
``course_utils/solutions/nb15_reasoning.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .core import NotAttempted, Wrong, _exercise, _tensor


@_exercise("15", (
    "Two paths added together: the frozen layer, x @ weight.T + bias (when bias is not None), "
    "and the low-rank update x @ lora_A.T @ lora_B.T, scaled by alpha / r where r is "
    "lora_A.shape[0].",
    "r = lora_A.shape[0]; y = x @ weight.T + (0 if bias is None else bias); "
    "return y + (x @ lora_A.T @ lora_B.T) * (alpha / r)",
))
def lora_forward(fn):
    """``lora_forward(x, weight, bias, lora_A, lora_B, alpha)``: a linear layer plus LoRA."""
    g = torch.Generator().manual_seed(14)
    for x_shape, n_in, n_out, r, alpha, with_bias in (((2, 5, 8), 8, 6, 2, 4.0, True),
                                                       ((3, 8), 8, 4, 4, 8.0, False),
                                                       ((1, 7), 7, 5, 1, 3.0, True)):
        x = torch.randn(x_shape, generator=g)
        weight = torch.randn(n_out, n_in, generator=g)
        bias = torch.randn(n_out, generator=g) if with_bias else None
        A, B = torch.randn(r, n_in, generator=g), torch.randn(n_out, r, generator=g)
        call = (f"lora_forward(x {x_shape}, weight {(n_out, n_in)}, "
                f"{'bias' if with_bias else 'None'}, lora_A {(r, n_in)}, lora_B {(n_out, r)}, "
                f"alpha={alpha:g})")
        got = fn(x.clone(), weight.clone(), None if bias is None else bias.clone(), A.clone(),
                 B.clone(), alpha)
        # the reference: PyTorch's linear layer with the update merged into its weight
        expected = F.linear(x, weight + (alpha / r) * B @ A, bias)
        base = F.linear(x, weight, bias)
        update = x @ A.T @ B.T
        mistakes = [
            (base + update, f"{call}: the update is not scaled; multiply it by alpha / r"),
            (base + alpha * update, f"{call}: scaled by alpha; LoRA scales by alpha / r"),
            (base + (r / alpha) * update, f"{call}: scaled by r / alpha; it is alpha / r"),
            ((alpha / r) * update, f"{call}: only the update; add the frozen layer's output "
             f"x @ weight.T + bias"),
            (base, f"{call}: only the frozen layer; add the update x @ lora_A.T @ lora_B.T"),
        ]
        if bias is not None:
            mistakes.append((F.linear(x, weight + (alpha / r) * B @ A),
                             f"{call}: the bias is missing"))
        _tensor(got, expected, call, "F.linear with weight + (alpha / r) * lora_B @ lora_A",
                mistakes, atol=1e-4)


_ANSWERS = (("68", 68), ("The answer is 68.", 68), ("23 + 45 = 68", 68),
            ("I do not know.", None), ("", None), ("-7", -7), ("It is 12, not 21", 21),
            ("15 + 990 = 1,005", 1005), ("That makes 1,234,567!", 1234567))


@_exercise("15", (
    "Find every integer in the text with a regular expression (re.findall) and keep the last "
    "one; an optional '-' goes before the digits, and groups of three digits may follow a "
    "comma. No integer at all: return None.",
    r"found = re.findall(r'(?<!\d)-?(?:\d{1,3}(?:,\d{3})+|\d+)(?!\d)', text); "
    "return int(found[-1].replace(',', '')) if found else None",
), in_place=True, stand_in="rl:parse_answer")  # in_place: None is a right answer here; the
# check tells a stub by its first reply
def parse_answer(fn):
    """``parse_answer(text) -> int | None``: the last integer in the text."""
    for text, expected in _ANSWERS:
        call = f"parse_answer({text!r})"
        got = fn(text)
        if got is None and text == _ANSWERS[0][0]:
            raise NotAttempted
        if isinstance(got, bool) or not (got is None or isinstance(got, int)):
            raise Wrong(f"{call} returned {got!r}, a {type(got).__name__}; return an int "
                        f"(int(...)) or None")
        if got == expected:
            continue
        if expected is None:
            raise Wrong(f"{call} returned {got!r}; with no number in the text return None "
                        f"(a reward of 0), not a number")
        if got is None:
            raise Wrong(f"{call} returned None; the text ends with the number {expected}")
        if text == "23 + 45 = 68" and got == 23:
            raise Wrong(f"{call} returned 23, the first number; the final answer is the last")
        if got == -expected:
            raise Wrong(f"{call} returned {got}: the minus sign belongs to the number")
        if expected >= 1000 and got in (expected % 1000, expected // 1000):
            raise Wrong(f"{call} returned {got}: thousands are written with commas; "
                        f"'1,005' is the number 1005")
        raise Wrong(f"{call} returned {got!r}, expected {expected!r}")


@_exercise("15", (
    "Each row is one group, the completions of one prompt: subtract the row's mean and divide "
    "by the row's standard deviation plus eps (mean and std over dim=-1, keepdim=True).",
    "mean = rewards.mean(dim=-1, keepdim=True); std = rewards.std(dim=-1, keepdim=True); "
    "return (rewards - mean) / (std + eps)",
), stand_in="rl:group_advantages")
def group_advantages(fn):
    """``group_advantages(rewards (N, G), eps=1e-4) -> (N, G)``, standardised per group."""
    g = torch.Generator().manual_seed(14)
    equal = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 1.0, 0.0, 0.0]])
    for rewards in (equal, (torch.rand(3, 6, generator=g) > 0.5).float(),
                    torch.rand(2, 8, generator=g) * 3):
        eps = 1e-4
        call = f"group_advantages(rewards {tuple(rewards.shape)}, eps=1e-4)"
        got = fn(rewards.clone(), eps)
        mean = rewards.mean(-1, keepdim=True)
        expected = (rewards - mean) / (torch.std(rewards, -1, keepdim=True) + eps)
        if isinstance(got, torch.Tensor) and got.shape == expected.shape and torch.isnan(
                got).any() and not torch.isnan(expected).any():
            raise Wrong(f"{call}: nan where a group's rewards are all equal (0 / 0): add eps "
                        f"to the standard deviation")
        _tensor(got, expected, call, "(r - mean) / (torch.std + eps) per row", [
            ((rewards - mean) / (rewards.std(-1, correction=0, keepdim=True) + eps),
             f"{call}: that std divides by G; use the sample standard deviation (G - 1, "
             f"torch.std's default), as DeepSeekMath does"),
            ((rewards - rewards.mean()) / (rewards.std() + eps),
             f"{call}: standardised over the whole batch; each group (row) on its own: "
             f"dim=-1, keepdim=True"),
            ((rewards - rewards.mean(0, keepdim=True)) / (rewards.std(0, keepdim=True) + eps),
             f"{call}: standardised down the columns (dim=0); a group is a row (dim=-1)"),
            (rewards - mean, f"{call}: only the mean is subtracted; divide by the group's "
             f"standard deviation plus eps too"),
        ], atol=1e-4)


_VOTES = (([7, 7, 3], 7), ([4, 4, 6], 4), ([3, 5, 5, 3, 5], 5), ([9, 12, 9, 12, 3], 9),
          ([None, None, 4], 4), ([None, 8, None, 8, 2], 8), ([21, 20, 21, None, None, None], 21),
          ([5], 5))


@_exercise("15", (
    "Leave out the replies without an answer (None), count the others (collections.Counter), "
    "and return the answer with the highest count; on a tie, the one that came first. With no "
    "answer at all, return None.",
    "counts = Counter(a for a in answers if a is not None); "
    "return counts.most_common(1)[0][0] if counts else None  "
    "(most_common keeps the first-seen order among equal counts)",
))
def majority_vote(fn):
    """``majority_vote(answers: list) -> answer | None``: self-consistency's pick."""
    fn(list(_VOTES[0][0]))  # a stub returns None here: not attempted
    for answers, expected in _VOTES:
        call = f"majority_vote({answers})"
        try:
            got = fn.raw(list(answers))  # None may be a (wrong) answer here
        except Exception as e:
            raise Wrong(f"{call} raised {type(e).__name__}: {e}") from None
        if got == expected and type(got) is type(expected):
            continue
        counts = {a: answers.count(a) for a in answers}
        if got is None and None in answers and counts[None] >= counts[expected]:
            raise Wrong(f"{call} returned None: a reply without an answer is not a vote; "
                        f"leave the Nones out before counting")
        if isinstance(got, int) and not isinstance(got, bool) and got == counts.get(expected) \
                and got not in answers:
            raise Wrong(f"{call} returned {got}, the count; return the answer itself")
        if got in answers and counts.get(got) == counts[expected]:
            raise Wrong(f"{call} returned {got!r}: a tie; keep the answer that came first "
                        f"({expected!r})")
        if isinstance(got, (list, tuple)):
            raise Wrong(f"{call} returned a {type(got).__name__}; return one answer")
        raise Wrong(f"{call} returned {got!r}, expected {expected!r}, the most common answer")
    call = "majority_vote([None, None])"
    try:
        got = fn.raw([None, None])
    except Exception as e:
        raise Wrong(f"{call} raised {type(e).__name__}: with no answer at all return None "
                    f"(no vote to count)") from None
    if got is not None:
        raise Wrong(f"{call} returned {got!r}: with no answer at all return None")


_VALUES = (("1 + 2 * 3", 7), ("(10 - 4) / 4", 1.5), ("-(4 - 10)", 6), ("2.5 * 2", 5.0),
           ("+7 - -2", 9), ("983 + 969", 1952))
_REFUSE = (("2 ** 3", "'**' must be refused: 9**9**9 has 369 million digits and would never "
            "finish"),
           ("x + 1", "a name (ast.Name) must be refused: names reach variables and functions"),
           ("abs(-3)", "a call (ast.Call) must be refused"),
           ("(1).real", "an attribute (ast.Attribute) must be refused: '().__class__' starts "
            "the classic escapes"),
           ("'ab' * 3", "a string constant must be refused: only int and float are numbers"),
           ("True + 1", "True must be refused: bool is a subclass of int, so check "
            "type(node.value) in (int, float), not isinstance"),
           ("7 // 2", "'//' (ast.FloorDiv) must be refused: only + - * /"),
           ("7 % 2", "'%' (ast.Mod) must be refused: only + - * /"),
           ("~7", "'~' (ast.Invert) must be refused: only unary + and -"),
           ("[1, 2][0]", "indexing (ast.Subscript) must be refused"))


@_exercise("15", (
    "Recursion over the tree: an ast.Constant whose value's type is int or float gives its "
    "value; an ast.BinOp gives op(left, right) for the four operators (ast.Add, ast.Sub, "
    "ast.Mult, ast.Div); an ast.UnaryOp with ast.USub or ast.UAdd gives -x or x; anything "
    "else: raise ValueError.",
    "if isinstance(node, ast.Constant) and type(node.value) in (int, float): return node.value; "
    "if isinstance(node, ast.BinOp) and type(node.op) in OPS: return OPS[type(node.op)]("
    "safe_value(node.left), safe_value(node.right)); the same for UnaryOp; else raise "
    "ValueError(f'{type(node).__name__} is not allowed')",
))
def safe_value(fn):
    """``safe_value(node: ast.AST) -> number``: the calculator's evaluator, refusing every node
    but numbers, + - * / and unary signs with a ``ValueError``."""
    import ast

    for text, expected in _VALUES:
        node = ast.parse(text, mode="eval").body
        call = f"safe_value(ast.parse({text!r}, mode='eval').body)"
        got = fn(node)
        if isinstance(got, bool) or not isinstance(got, (int, float)):
            raise Wrong(f"{call} returned {got!r}; expected the number {expected}")
        if got == expected:
            continue
        if text.startswith("(10") and got == 1:
            raise Wrong(f"{call} returned 1: that is '//'; ast.Div is true division, a / b")
        if text.startswith("-(") and got == -6:
            raise Wrong(f"{call} returned -6: ast.USub negates its operand, -x")
        if text.startswith("+7") and got == 5:
            raise Wrong(f"{call} returned 5: -2 is a UnaryOp(USub) inside the BinOp; the "
                        f"operand of unary minus is negated")
        raise Wrong(f"{call} returned {got!r}, expected {expected}")
    for text, why in _REFUSE:
        node = ast.parse(text, mode="eval").body
        call = f"safe_value(ast.parse({text!r}, mode='eval').body)"
        try:
            got = fn.raw(node)
        except ValueError:
            continue
        except Exception as e:
            raise Wrong(f"{call} raised {type(e).__name__}; refuse with ValueError (a clear "
                        f"message the loop can feed back): {why}") from None
        raise Wrong(f"{call} returned {got!r}: {why}")
