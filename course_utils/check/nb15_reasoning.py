"""The checks of notebook 15 (LoRA and RL): ``lora_forward``, ``parse_answer``,
``group_advantages``.

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
