"""Solutions to the exercises of notebook 15 (reasoning): the forward pass of a LoRA layer,
the reward's answer parser, GRPO's group advantages, self-consistency's majority vote, and the
calculator's safe evaluator."""

import re


def lora_forward(x, weight, bias, lora_A, lora_B, alpha):
    """A linear layer ``x @ weight.T + bias`` plus its low-rank update ``(x @ A.T @ B.T)``
    scaled by ``alpha / r``, with ``r`` the rank (``lora_A`` is ``(r, in_features)``, ``lora_B``
    ``(out_features, r)``); ``bias`` may be ``None``."""
    r = lora_A.shape[0]
    y = x @ weight.T + (0 if bias is None else bias)
    return y + (x @ lora_A.T @ lora_B.T) * (alpha / r)


def parse_answer(text):
    """The last integer in ``text`` (minus sign and thousands commas included) as an int, or
    ``None`` when there is none."""
    found = re.findall(r"(?<!\d)-?(?:\d{1,3}(?:,\d{3})+|\d+)(?!\d)", text)
    return int(found[-1].replace(",", "")) if found else None


def group_advantages(rewards, eps=1e-4):
    """Rewards ``(N, G)`` standardised within each group (row): ``(r - mean) / (std + eps)``,
    with the sample standard deviation (dividing by ``G - 1``)."""
    mean = rewards.mean(dim=-1, keepdim=True)
    std = rewards.std(dim=-1, keepdim=True)
    return (rewards - mean) / (std + eps)



def majority_vote(answers):
    """Self-consistency's pick: the most common answer that is not ``None`` (on a tie, the
    first seen), or ``None`` when no reply had an answer."""
    from collections import Counter

    counts = Counter(a for a in answers if a is not None)
    return counts.most_common(1)[0][0] if counts else None


def safe_value(node):
    """The value of an expression's tree (``ast.parse(text, mode="eval").body``): numbers,
    ``+ - * /`` and unary signs only; any other node raises ``ValueError``."""
    import ast

    binary = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b,
              ast.Mult: lambda a, b: a * b, ast.Div: lambda a, b: a / b}
    unary = {ast.UAdd: lambda a: a, ast.USub: lambda a: -a}
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in binary:
        return binary[type(node.op)](safe_value(node.left), safe_value(node.right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in unary:
        return unary[type(node.op)](safe_value(node.operand))
    raise ValueError(f"{type(node).__name__} is not allowed: only numbers, + - * / and signs")
