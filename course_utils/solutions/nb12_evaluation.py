"""Solutions to the exercises of notebook 12 (evaluation): bits per byte from a sum of nats,
the final number of a reply (the GSM8K grader), and the Wilson score interval."""

import math
import re


def bits_per_byte(token_nats, text):
    """The text's bits per UTF-8 byte: the tokens' negative log-likelihoods (nats, a 1-D
    tensor) added up, turned into bits (divided by ln 2), divided by the text's bytes."""
    return token_nats.sum().item() / math.log(2) / len(text.encode("utf-8"))


def final_number(text):
    """The final answer of a reply: the first number after its last ``####`` when there is
    one, else its last number; ``None`` when there is none. Thousands commas, a ``$``, a minus
    sign (not one right after a digit, which is an operator) and a decimal part are read;
    whole numbers come back as ``int``."""
    number = r"(?<![\d.])-?\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?!\d)"
    found = []
    if "####" in text:
        found = re.findall(number, text.rsplit("####", 1)[1])[:1]
    if not found:
        found = re.findall(number, text)[-1:]
    if not found:
        return None
    value = float(found[0].replace(",", "").replace("$", ""))
    return int(value) if value.is_integer() else value


def wilson_interval(successes, n):
    """The 95% Wilson score interval ``(low, high)`` of the proportion ``successes / n``."""
    z = 1.959963984540054  # the normal quantile of 0.975
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half
