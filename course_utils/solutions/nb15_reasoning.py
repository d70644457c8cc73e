"""Solutions to the exercises of notebook 15 (LoRA and RL with a verifiable reward): the
forward pass of a LoRA layer, the reward's answer parser, and GRPO's group advantages."""

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

