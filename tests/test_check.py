"""The exercise checks (course_utils.check): every check passes the course's solution, calls a
stub "not attempted", and rejects plausible wrong answers with the message each deserves
(mutation tests). The solutions themselves are compared with outside references."""

import inspect
import math
import signal
import sys
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from course_utils import check, solutions
from course_utils.check import FAILED, NOT_ATTEMPTED, PASSED, core, limits, nb11_modern_architecture


def solution_of(name):
    return getattr(solutions.module_for(check.EXERCISES[name].notebook), name)


# ------------------------------------------------------------------ wrong answers, as a learner
# might write them. Each entry: (wrong function, a phrase the diagnosis must contain).


def _counts(ids):
    counts = {}
    for pair in zip(ids, ids[1:]):
        counts[pair] = counts.get(pair, 0) + 1
    return counts


def merge_drops_last(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids) - 1:  # never looks at the last id on its own
        if (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def merge_in_place(ids, pair, new_id):
    i = 0
    while i < len(ids) - 1:
        if (ids[i], ids[i + 1]) == pair:
            ids[i:i + 2] = [new_id]
        i += 1
    return ids


def merge_overlapping(ids, pair, new_id):
    out = []
    for i, a in enumerate(ids):
        if i + 1 < len(ids) and (a, ids[i + 1]) == pair:
            out.append(new_id)  # every start of the pair, even inside a merged one
        elif i > 0 and (ids[i - 1], a) == pair:
            continue
        else:
            out.append(a)
    return out


def apply_leftmost(ids, merges):
    i = 0
    while i < len(ids) - 1:
        pair = (ids[i], ids[i + 1])
        if pair in merges:
            ids, i = ids[:i] + [merges[pair]] + ids[i + 2:], 0
        else:
            i += 1
    return ids


def apply_once(ids, merges):
    ranks = {pair: r for r, pair in enumerate(merges)}
    if len(ids) >= 2:
        pair = min(zip(ids, ids[1:]), key=lambda p: ranks.get(p, math.inf))
        if pair in ranks:
            ids = solutions.module_for("01").merge(ids, pair, merges[pair])
    return ids


def batch_no_shift(data, block_size, batch_size, generator=None):
    ix = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
    x = torch.stack([data[i:i + block_size] for i in ix])
    return x, x.clone()


def batch_wrong_range(data, block_size, batch_size, generator=None):
    ix = torch.randint(len(data) - block_size - 1, (batch_size,), generator=generator)
    x = torch.stack([data[i:i + block_size] for i in ix])
    y = torch.stack([data[i + 1:i + block_size + 1] for i in ix])
    return x, y


def batch_transposed(data, block_size, batch_size, generator=None):
    x, y = solution_of("random_batch")(data, block_size, batch_size, generator)
    return x.T, y.T


def uint16_int64(ids):
    arr = np.asarray(ids, dtype=np.int64)
    if ((arr < 0) | (arr > 65535)).any():
        raise ValueError("does not fit")
    return arr


def probs_no_smoothing(data, V):
    counts = torch.zeros(V, V)
    counts.index_put_((data[:-1], data[1:]), torch.ones(len(data) - 1), accumulate=True)
    return counts / counts.sum(dim=1, keepdim=True)


def probs_columns(data, V):
    counts = torch.ones(V, V)
    counts.index_put_((data[:-1], data[1:]), torch.ones(len(data) - 1), accumulate=True)
    return counts / counts.sum(dim=0, keepdim=True)


def probs_transposed(data, V):
    counts = torch.ones(V, V)
    counts.index_put_((data[1:], data[:-1]), torch.ones(len(data) - 1), accumulate=True)
    return counts / counts.sum(dim=1, keepdim=True)


def softmax_global_max(x):
    e = torch.exp(x - x.max())
    return e / e.sum(dim=-1, keepdim=True)


def attention_with(scale=None, mask="causal", after=False):
    def attention(q, k, v):
        T, hs = q.shape[-2], q.shape[-1]
        scores = q @ k.transpose(-2, -1) * (1 / math.sqrt(hs) if scale is None else scale(hs))
        tril = torch.ones(T, T, dtype=torch.bool).tril()
        if after:
            return torch.softmax(scores, dim=-1) * tril @ v
        if mask == "causal":
            scores = scores.masked_fill(~tril, float("-inf"))
        elif mask == "transposed":
            scores = scores.masked_fill(~tril.T, float("-inf"))
        return torch.softmax(scores, dim=-1) @ v
    return attention


def layer_norm_with(unbiased=False, eps_outside=False, affine=True):
    def layer_norm(x, weight, bias, eps=1e-5):
        mean = x.mean(-1, keepdim=True)
        var = x.var(-1, unbiased=unbiased, keepdim=True)
        y = (x - mean) / (var.sqrt() + eps if eps_outside else torch.sqrt(var + eps))
        return y * weight + bias if affine else y
    return layer_norm


def block_post_norm(x, ln_1, attn, ln_2, mlp):
    x = ln_1(x + attn(x))
    return ln_2(x + mlp(x))


def block_no_residual(x, ln_1, attn, ln_2, mlp):
    return mlp(ln_2(attn(ln_1(x))))


def block_stale(x, ln_1, attn, ln_2, mlp):
    return x + attn(ln_1(x)) + mlp(ln_2(x))


def block_swapped(x, ln_1, attn, ln_2, mlp):
    x = x + mlp(ln_2(x))
    return x + attn(ln_1(x))


def convert_without(*names):
    def convert(sd):
        return {k: v.t() if k.endswith(names) else v for k, v in sd.items()}
    return convert


def cross_entropy_naive(logits, targets):
    probs = torch.exp(logits) / torch.exp(logits).sum(-1, keepdim=True)
    return -probs.log().gather(-1, targets[..., None]).mean()


def adamw_with(bias_correction=True, l2=False, eps_inside=False, decay=True):
    def adamw_step(p, grad, m, v, t, lr, beta1, beta2, eps, weight_decay):
        if l2:
            grad = grad + weight_decay * p
        elif decay:
            p = p * (1 - lr * weight_decay)
        m = beta1 * m + (1 - beta1) * grad
        v = beta2 * v + (1 - beta2) * grad**2
        m_hat, v_hat = (m / (1 - beta1**t), v / (1 - beta2**t)) if bias_correction else (m, v)
        denom = torch.sqrt(v_hat + eps) if eps_inside else torch.sqrt(v_hat) + eps
        return p - lr * m_hat / denom, m, v
    return adamw_step


def lr_with(warmup_from_zero=False, cosine_from_zero=False, clamp=True, floor=True):
    def lr(step, max_lr, min_lr, warmup_iters, max_iters):
        if step < warmup_iters:
            return max_lr * (step if warmup_from_zero else step + 1) / warmup_iters
        if clamp and step >= max_iters:
            return min_lr
        start = 0 if cosine_from_zero else warmup_iters
        cos = 0.5 * (1 + math.cos(math.pi * (step - start) / (max_iters - start)))
        return min_lr + (max_lr - min_lr) * cos if floor else max_lr * cos
    return lr


def top_k_with(fill=float("-inf"), kth_index=None, one_row=False, largest=True):
    def top_k(logits, k):
        ordered = torch.sort(logits, dim=-1, descending=True).values
        if one_row:
            kth = ordered[k - 1]  # written for one row of logits
        else:
            i = k - 1 if kth_index is None else kth_index(k)
            kth = ordered[:, i:i + 1]
        if not largest:
            kth = torch.topk(logits, k, dim=-1, largest=False).values[:, -1:]
            return logits.masked_fill(logits > kth, fill)
        return logits.masked_fill(logits < kth, fill)
    return top_k


def top_p_with(fill=float("-inf"), keep_crossing=True, sort=True):
    def top_p(logits, p):
        probs = F.softmax(logits, dim=-1)
        if not sort:
            drop = (probs.cumsum(-1) - probs) >= p
            return logits.masked_fill(drop, fill)
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
        cum = sorted_probs.cumsum(-1)
        drop_sorted = (cum - sorted_probs >= p) if keep_crossing else (cum >= p)
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        return logits.masked_fill(drop, fill)
    return top_p


def kv_with(append=True, prepend=False, causal=False, past_only=False):
    def step(q, k_new, v_new, k_cache, v_cache):
        old_k, old_v = k_cache, v_cache
        if prepend:
            k_cache, v_cache = torch.cat([k_new, k_cache], 2), torch.cat([v_new, v_cache], 2)
        else:
            k_cache, v_cache = torch.cat([k_cache, k_new], 2), torch.cat([v_cache, v_new], 2)
        keys, values = (old_k, old_v) if past_only else (k_cache, v_cache)
        y = F.scaled_dot_product_attention(q, keys, values, is_causal=causal)
        return (y, k_cache, v_cache) if append else (y, old_k, old_v)
    return step


def linear_backward_with(dW_T=False, db_rows=False, db_mean=False, dx_no_T=False):
    def backward(x, W, dy):
        dx = dy @ W if dx_no_T else dy @ W.T
        dW = dy.T @ x if dW_T else x.T @ dy
        db = dy if db_rows else (dy.mean(0) if db_mean else dy.sum(0))
        return dx, dW, db
    return backward


def gelu_grad_with(part):
    def gelu_grad(x):
        c = math.sqrt(2 / math.pi)
        th = torch.tanh(c * (x + 0.044715 * x**3))
        if part == "first term":
            return 0.5 * (1 + th)
        if part == "no inner":
            return 0.5 * (1 + th) + 0.5 * x * (1 - th**2) * c
        if part == "erf":
            return 0.5 * (1 + torch.erf(x / math.sqrt(2))) + x * torch.exp(-x**2 / 2) / math.sqrt(
                2 * math.pi)
        return 0.5 * x * (1 + th)  # GELU itself
    return gelu_grad


def sgd_with(sign=-1, clear=True, no_grad=True, replace=False):
    def sgd_step(params, lr):
        with torch.no_grad() if no_grad else torch.enable_grad():
            for name, p in params.items():
                if replace:
                    params[name] = (p + sign * lr * p.grad).detach().requires_grad_()
                    continue
                p += sign * lr * p.grad
                if clear:
                    p.grad = None
    return sgd_step


def stories_with(before=False, last=True, nested=False):
    def join(stories, encode, eot_id):
        if nested:
            return [encode(s) + [eot_id] for s in stories]
        ids = []
        for s in stories:
            ids += [eot_id, *encode(s)] if before else [*encode(s), eot_id]
        return ids if last or not ids else ids[:-1]
    return join


def rms_with(center=False, eps_outside=False, weight=True):
    def rms_norm(x, w, eps=1e-5):
        if center:
            x = x - x.mean(-1, keepdim=True)
        ms = (x * x).mean(-1, keepdim=True)
        y = x / (ms.sqrt() + eps if eps_outside else torch.sqrt(ms + eps))
        return y * w if weight else y
    return rms_norm


def rope_with(interleaved=False, sign=1.0, start=0, fixed_base=None, exponent=-1.0):
    def rope(x, base=10000.0):
        base = fixed_base or base
        T, hs = x.shape[-2], x.shape[-1]
        inv_freq = base ** (exponent * torch.arange(0, hs, 2).float() / hs)
        angles = (torch.arange(T).float()[:, None] + start) * inv_freq
        cos, sin = angles.cos(), sign * angles.sin()
        if interleaved:
            a, b = x[..., 0::2], x[..., 1::2]
            return torch.stack([a * cos - b * sin, a * sin + b * cos], -1).flatten(-2)
        x1, x2 = x[..., : hs // 2], x[..., hs // 2:]
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
    return rope


def rope_tables_as(layout):
    """A rotate-half rope whose cos/sin tables have the wrong layout: "interleaved" (each angle
    twice in a row, as for adjacent pairs) or "half" ((T, hs/2): one angle per pair only)."""
    def rope(x, base=10000.0):
        T, hs = x.shape[-2], x.shape[-1]
        angles = torch.arange(T).float()[:, None] * base ** (-torch.arange(0, hs, 2).float() / hs)
        if layout == "interleaved":
            angles = angles.repeat_interleave(2, dim=-1)
        x1, x2 = x[..., : hs // 2], x[..., hs // 2:]
        return x * angles.cos() + torch.cat([-x2, x1], dim=-1) * angles.sin()
    return rope


def targets_with(shift=True, im_end=True, header=False, fill=-1, first_only=False):
    """A reply_targets with one mistake, written as a learner might (a flag per token)."""

    def reply_targets(ids, head, end):
        trained, replies, i = [False] * len(ids), 0, 0
        while i < len(ids):
            if ids[i:i + len(head)] == head and not (first_only and replies):
                replies += 1
                if header:
                    trained[i:i + len(head)] = [True] * len(head)
                j = i + len(head)
                while j < len(ids):
                    trained[j] = im_end or ids[j] != end
                    if ids[j] == end:
                        break
                    j += 1
                i = j
            i += 1
        if not shift:
            return [t if k else fill for t, k in zip(ids[:-1], trained[:-1])]
        return [t if k else fill for t, k in zip(ids[1:], trained[1:])]

    return reply_targets


def lora_with(scale="alpha/r", base=True, bias=True, update=True):
    """A lora_forward with one mistake, as a learner might write it."""

    def lora_forward(x, weight, b, A, B, alpha):
        r = A.shape[0]
        s = {"alpha/r": alpha / r, "none": 1.0, "alpha": alpha, "r/alpha": r / alpha}[scale]
        y = x @ weight.T if base else 0
        if base and bias and b is not None:
            y = y + b
        return y + (x @ A.T @ B.T) * s if update else y
    return lora_forward


def parse_with(first=False, as_str=False, zero=False, sign=True, commas=True):
    """A parse_answer with one mistake."""
    import re

    def parse_answer(text):
        number = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?!\d)" if commas else r"\d+"
        pattern = ("-?" if sign else "") + number
        found = re.findall(pattern, text)
        if not found:
            return 0 if zero else None
        value = found[0] if first else found[-1]
        return value if as_str else int(value.replace(",", ""))
    return parse_answer


def advantages_with(correction=1, dim=-1, std=True, eps=True):
    """A group_advantages with one mistake."""

    def group_advantages(rewards, e=1e-4):
        if dim is None:
            mean, sd = rewards.mean(), rewards.std(correction=correction)
        else:
            mean = rewards.mean(dim, keepdim=True)
            sd = rewards.std(dim, correction=correction, keepdim=True)
        if not std:
            return rewards - mean
        return (rewards - mean) / (sd + (e if eps else 0.0))
    return group_advantages


def vote_with(nones=True, ties="first", returns="answer", empty=True):
    """A majority_vote with one mistake."""
    from collections import Counter

    def majority_vote(answers):
        kept = [a for a in answers if a is not None] if nones else list(answers)
        if not kept and not empty:
            return kept[0]  # IndexError
        if not kept:
            return None
        counts = Counter(kept)
        best = max(counts.values())
        tied = [a for a in kept if counts[a] == best]
        pick = max(reversed(kept), key=counts.get) if ties == "last" else (
            max(tied) if ties == "max" else tied[0])
        return counts[pick] if returns == "count" else pick
    return majority_vote


def safe_value_with(allow=(), unary_sign=-1, div="true", bools=False):
    """A safe_value with one mistake: extra node kinds allowed, or an operator wrong."""
    import ast

    def safe_value(node):
        if isinstance(node, ast.Constant) and (type(node.value) in (int, float) or (
                bools and isinstance(node.value, int)) or "str" in allow):
            return node.value
        ops = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b,
               ast.Mult: lambda a, b: a * b,
               ast.Div: (lambda a, b: a / b) if div == "true" else (lambda a, b: a // b)}
        if "pow" in allow:
            ops[ast.Pow] = lambda a, b: a ** b
        if "floordiv" in allow:
            ops[ast.FloorDiv] = lambda a, b: a // b
        if isinstance(node, ast.BinOp) and type(node.op) in ops:
            return ops[type(node.op)](safe_value(node.left), safe_value(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            x = safe_value(node.operand)
            return unary_sign * x if isinstance(node.op, ast.USub) else x
        if "name" in allow and isinstance(node, ast.Name):
            return 0
        if "attribute" in allow and isinstance(node, ast.Attribute):
            return getattr(safe_value(node.value), node.attr)
        if "anything" in allow:
            raise KeyError(type(node).__name__)
        raise ValueError(f"{type(node).__name__} is not allowed")
    return safe_value


def ns_with(norm="fro", steps=None, coefficients=None, swap=False, back=True, dtype=None):
    """Newton-Schulz as in the solution, or with one mistake."""
    def newton_schulz(G, n=5, coeffs=(3.4445, -4.7750, 2.0315), eps=1e-7):
        a, b, c = coefficients or coeffs
        X = G.to(dtype or torch.float32)
        tall = X.shape[0] > X.shape[1]
        if tall:
            X = X.T
        if norm == "fro":
            X = X / (X.norm() + eps)
        elif norm == "spectral":
            X = X / torch.linalg.matrix_norm(X.float(), ord=2).to(X.dtype)
        for _ in range(steps or n):
            A = X @ X.T
            X = a * X + ((c * A + b * A @ A) if swap else (b * A + c * A @ A)) @ X
        return X.T if tall and back else X
    return newton_schulz


def momentum_with(buffer="mean", ahead=True, pair=True):
    def muon_momentum(grad, buf, momentum=0.95, nesterov=True):
        if buffer == "sum":
            new = momentum * buf + grad
        elif buffer == "swapped":
            new = (1 - momentum) * buf + momentum * grad
        else:
            new = momentum * buf + (1 - momentum) * grad
        if nesterov and ahead:  # (with the old buffer it would equal new: no look-ahead)
            update = (1 - momentum) * grad + momentum * new
        else:
            update = new
        return (update, new) if pair else update
    return muon_momentum


def verdict_with(spread="both", mean=True, strict=True, words=("better", "worse")):
    def verdict(base, new):
        ranges = {"both": max(max(base) - min(base), max(new) - min(new)),
                  "base": max(base) - min(base), "none": 0.0}
        s = ranges[spread]
        change = (sum(new) / len(new) - sum(base) / len(base)) if mean else new[0] - base[0]
        if (change < -s) if strict else (change <= -s):
            return words[0]
        if (change > s) if strict else (change >= s):
            return words[1]
        return "no change" if words != ("better", "worse") else "no measurable difference"
    return verdict


LN2 = math.log(2)


def bpb_with(log=LN2, per="bytes", mean=False):
    """A bits_per_byte with one mistake."""

    def bits_per_byte(token_nats, text):
        total = token_nats.mean().item() if mean else token_nats.sum().item()
        size = {"bytes": len(text.encode("utf-8")), "chars": len(text),
                "tokens": len(token_nats)}[per]
        return total / log / size
    return bits_per_byte


def final_with(first=False, commas=True, decimals=True, sign="not-after-digit", marker=True,
               as_str=False):
    """A final_number with one mistake."""
    import re

    def final_number(text):
        minus = {"not-after-digit": r"(?<![\d.])-?", "always": "-?", "never": ""}[sign]
        digits = r"(?:\d{1,3}(?:,\d{3})+|\d+)" if commas else r"\d+"
        number = minus + r"\$?" + digits + (r"(?:\.\d+)?" if decimals else "") + r"(?!\d)"
        found = []
        if marker and "####" in text:
            found = re.findall(number, text.rsplit("####", 1)[1])[:1]
        if not found:
            found = re.findall(number, text)
            found = found[:1] if first else found[-1:]
        if not found:
            return None
        if as_str:
            return found[0]
        value = float(found[0].replace(",", "").replace("$", ""))
        return int(value) if value.is_integer() else value
    return final_number


def wilson_with(z=1.959963984540054, kind="wilson", order="low-high", scale=1.0):
    """A wilson_interval with one mistake."""

    def wilson_interval(k, n):
        p = k / n
        if kind == "wald":
            half = z * math.sqrt(p * (1 - p) / n)
            low, high = p - half, p + half
        else:
            d = 1 + z * z / n
            centre = (p + z * z / (2 * n)) / d if kind != "no-shift" else p
            quarter = z * z / (4 * n * n) if kind != "no-quarter" else 0.0
            half = z / d * math.sqrt(p * (1 - p) / n + quarter)
            low, high = centre - half, centre + half
        low, high = low * scale, high * scale
        return (low, high) if order == "low-high" else (high, low)
    return wilson_interval


MUTATIONS = {
    "most_frequent_pair": [
        (lambda ids: max(_counts(ids), key=_counts(ids).get), "a tie goes to the greater pair"),
        (lambda ids: min(_counts(ids), key=lambda p: (-_counts(ids)[p], p)),
         "a tie goes to the greater pair"),
        (lambda ids: min(_counts(ids), key=_counts(ids).get), "is seen 4 times"),
        (lambda ids: list(solution_of("most_frequent_pair")(ids)), "as a tuple"),
    ],
    "merge": [
        (merge_drops_last, "the last id is missing"),
        (merge_in_place, "changed the list it was given"),
        (merge_overlapping, "both of its ids are used up"),
    ],
    "apply_merges": [
        (apply_leftmost, "lowest rank"),
        (apply_once, "keep merging"),
        (lambda ids, merges: tuple(solution_of("apply_merges")(ids, merges)), "return a list"),
    ],
    "random_batch": [
        (batch_no_shift, "y equals x"),
        (batch_wrong_range, "start elsewhere"),
        (batch_transposed, "one row per window"),
    ],
    "to_uint16": [
        (lambda ids: np.array(ids).astype(np.uint16), "into 4,464 without a word"),
        (lambda ids: np.array(ids, dtype=np.uint16), "raised OverflowError"),
        (uint16_int64, "dtype int64 but expected uint16"),
    ],
    "embed": [
        (lambda idx, wte, wpe: wte[idx], "the position embedding is missing"),
        (lambda idx, wte, wpe: wte[idx] + wpe[idx], "indexed with the token ids"),
        (lambda idx, wte, wpe: wte[idx] + wpe, "use the first T rows of wpe"),
    ],
    "bigram_probs": [
        (probs_no_smoothing, "add 1 to every count"),
        (probs_columns, "normalise along dim=1"),
        (probs_transposed, "the table is transposed"),
        (lambda data, V: torch.ones(V, V).index_put_(
            (data[:-1], data[1:]), torch.ones(len(data) - 1), accumulate=True),
         "these are counts; divide each row by its sum"),
    ],
    "causal_mask": [
        (lambda T: torch.ones(T, T, dtype=torch.bool).triu(), "the mask is transposed"),
        (lambda T: torch.ones(T, T, dtype=torch.bool).tril(-1),
         "off by one on the diagonal: the diagonal is False"),
        (lambda T: torch.ones(T, T, dtype=torch.bool).triu(1), "the mask is inverted"),
        (lambda T: torch.tril(torch.ones(T, T)), "return a bool tensor"),
        (lambda T: torch.ones(T, T, dtype=torch.bool).tril(1),
         "off by one on the diagonal: position i also sees i + 1"),
        (lambda T: torch.ones(T, T, dtype=torch.bool).tril().logical_and(
            torch.arange(T)[None, :] > 0), "position 0 cannot see itself"),
        (lambda T: torch.ones(T, T, dtype=torch.bool).tril(2),
         "position 0 can see position 1; the mask lets the future in"),
    ],
    "softmax": [
        (lambda x: torch.exp(x) / torch.exp(x).sum(-1, keepdim=True), "exp overflows"),
        (lambda x: torch.softmax(x, dim=0), "softmax over the wrong dimension"),
        (softmax_global_max, "subtract each row's own max"),
    ],
    "causal_attention": [
        (attention_with(scale=lambda hs: 1.0), "scores not scaled by 1/sqrt(head_size)"),
        (attention_with(scale=lambda hs: 1 / hs), "scores scaled by 1/hs"),
        (attention_with(mask=None), "attend to later positions"),
        (attention_with(mask="transposed"), "the mask is transposed"),
        (attention_with(after=True), "mask the scores with -inf before the softmax"),
    ],
    "split_heads": [
        (lambda x, n: x.view(x.shape[0], n, x.shape[1], -1), "mixes positions into heads"),
        (lambda x, n: x.view(*x.shape[:2], n, -1), "move the head dimension before T"),
        (lambda x, n: x.view(*x.shape[:2], -1, n).permute(0, 3, 1, 2), "every n_head-th"),
    ],
    "layer_norm": [
        (layer_norm_with(unbiased=True), "unbiased variance"),
        (layer_norm_with(eps_outside=True), "eps goes inside the square root"),
        (layer_norm_with(affine=False), "weight and bias are not applied"),
    ],
    "dropout": [
        (lambda x, p, training=True: x * (torch.rand_like(x) >= p) if training else x,
         "scale them by 1/(1 - p)"),
        (lambda x, p, training=True: x * (torch.rand_like(x) < p) / (1 - p) if training else x,
         "p is the probability to drop"),
        (lambda x, p, training=True: x * (torch.rand_like(x) >= p) * (1 - p) if training else x,
         "multiplied by 1 - p"),
        (lambda x, p, training=True: x * (torch.rand_like(x) >= p) / (1 - p),
         "nothing may be dropped"),
    ],
    "pre_norm_block": [
        (block_post_norm, "that is post-norm"),
        (block_no_residual, "the residual connections are missing"),
        (block_stale, "after attention's output was added"),
        (block_swapped, "attention comes first, then the MLP"),
    ],
    "param_count": [
        (lambda V, T, L, C: solution_of("param_count")(V, T, L, C) + V * C,
         "the LM head was counted separately"),
        (lambda V, T, L, C: solution_of("param_count")(V, T, L, C) - 9 * C * L,
         "biases of the four linear layers"),
        (lambda V, T, L, C: solution_of("param_count")(V, T, L, C) - T * C,
         "the position embedding wpe"),
        (lambda V, T, L, C: solution_of("param_count")(V, T, L, C) - 4 * C * L - 2 * C,
         "the LayerNorms (weight and bias"),
        (lambda V, T, L, C: solution_of("param_count")(V, T, L, C) - 2 * C,
         "the final LayerNorm ln_f"),
    ],
    "convert_hf_state_dict": [
        (lambda sd: dict(sd), "transpose the Conv1D weights"),
        (lambda sd: {k: v.t() if v.dim() == 2 else v for k, v in sd.items()},
         "only the four Conv1D weights per block are transposed"),
        (convert_without("attn.c_attn.weight", "mlp.c_fc.weight", "mlp.c_proj.weight"),
         "attn.c_proj.weight is square"),
        (lambda sd: {k.removeprefix("transformer."): v for k, v in
                     solution_of("convert_hf_state_dict")(sd).items()},
         "'transformer.wte.weight' is missing"),
    ],
    "cross_entropy": [
        (lambda lg, y: solution_of("cross_entropy")(lg, y) * y.numel(), "times too large"),
        (lambda lg, y: F.cross_entropy(lg.transpose(1, 2), y, reduction="none"),
         "one loss per position"),
        (cross_entropy_naive, "exp overflows"),
        (lambda lg, y: -solution_of("cross_entropy")(lg, y), "the sign is flipped"),
    ],
    "adamw_step": [
        (adamw_with(bias_correction=False), "no bias correction"),
        (adamw_with(l2=True), "Adam with L2 regularisation"),
        (adamw_with(eps_inside=True), "eps goes outside the square root"),
        (adamw_with(decay=False), "the weights were not decayed"),
    ],
    "warmup_cosine_lr": [
        (lr_with(warmup_from_zero=True), "already give step 0 a rate"),
        (lr_with(cosine_from_zero=True), "start at the end of warmup"),
        (lr_with(clamp=False), "after max_iters the rate stays at min_lr"),
        (lr_with(floor=False), "must end at min_lr, not 0"),
    ],
    "top_k_logits": [
        (top_k_with(fill=0.0), "must be -inf"),
        (top_k_with(kth_index=lambda k: k), "row 0 keeps 4 logits instead of k = 3"),
        (top_k_with(one_row=True), "each row's k-th largest"),
        (top_k_with(largest=False), "kept the k smallest logits"),
    ],
    "top_p_logits": [
        (top_p_with(keep_crossing=False), "makes the sum reach p"),
        (top_p_with(fill=0.0), "must be -inf"),
        (top_p_with(sort=False), "sorted in descending order"),
    ],
    "kv_attention_step": [
        (kv_with(append=False), "still holds 5 positions"),
        (kv_with(prepend=True), "must go at the end of k_cache"),
        (kv_with(causal=True), "sees only position 0"),
        (kv_with(past_only=True), "y ignores the new token"),
    ],
    "linear_backward": [
        (linear_backward_with(dW_T=True), "dW is transposed"),
        (linear_backward_with(db_rows=True), "db has one row per example"),
        (linear_backward_with(db_mean=True), "times too small"),
        (linear_backward_with(dx_no_T=True), "dx = dy @ W.T"),
    ],
    "gelu_grad": [
        (gelu_grad_with("erf"), "exact (erf) GELU"),
        (gelu_grad_with("first term"), "only the first term of the product rule"),
        (gelu_grad_with("no inner"), "the inner derivative"),
        (gelu_grad_with("gelu"), "that is GELU itself"),
    ],
    "sgd_step": [
        (sgd_with(sign=+1), "went up the gradient"),
        (sgd_with(clear=False), "was not cleared"),
        (sgd_with(no_grad=False), "inside `with torch.no_grad():`"),
        (sgd_with(replace=True), "put a new tensor"),
    ],
    "join_stories": [
        (stories_with(before=True), "the separator goes after each story"),
        (stories_with(last=False), "the last story needs its separator"),
        (stories_with(nested=True), "one flat list"),
    ],
    "train_flops_per_token": [
        (lambda N, L, C, T: 2 * N + 4 * L * C * T, "the forward pass alone"),
        (lambda N, L, C, T: 6 * N, "attention products q k^T and att v are missing"),
        (lambda N, L, C, T: 6 * N + 4 * L * C * T, "must count the backward pass too"),
    ],
    "rms_norm": [
        (rms_with(center=True), "that is LayerNorm"),
        (rms_with(eps_outside=True), "eps goes inside the square root"),
        (rms_with(weight=False), "weight is not applied"),
    ],
    "rope": [
        (rope_with(interleaved=True), "you rotated adjacent pairs (2i, 2i+1)"),
        (rope_with(exponent=1.0), "the exponent's sign is flipped"),
        (rope_tables_as("interleaved"), "the cos/sin tables are laid out for adjacent pairs"),
        (rope_tables_as("half"), "the cos/sin tables do not fit x; make them (T, hs)"),
        (rope_with(sign=-1.0), "rotated the wrong way"),
        (rope_with(start=1), "position 0 must stay unchanged"),
        (rope_with(fixed_base=10000.0), "the base argument is ignored"),
    ],
    "repeat_kv": [
        (lambda x, n: x.repeat(1, n, 1, 1), "heads tiled (0, 1, 0, 1, ...)"),
        (lambda x, n: torch.repeat_interleave(x, n, dim=2), "repeated along T"),
        (lambda x, n: torch.repeat_interleave(x, n, dim=3), "repeated the features of each head"),
        (lambda x, n: x[:, :, None].expand(-1, -1, n, -1, -1), "the copies are a new axis"),
    ],
    "reply_targets": [
        (targets_with(shift=False), "the targets are not shifted"),
        (targets_with(im_end=False), "closing <|im_end|> of each reply must be a target"),
        (targets_with(header=True), "the header <|im_start|>assistant\\n is part of the prompt"),
        (targets_with(fill=0), "must be -1 (the ignore_index of the loss), not 0"),
        (targets_with(first_only=True), "only the first reply is a target"),
        (lambda ids, header, im_end: [-1] * len(ids), "one per token"),
    ],
    "masked_cross_entropy": [
        (lambda lg, y: F.cross_entropy(lg.flatten(0, 1), y.flatten(), ignore_index=-1,
                                       reduction="sum") / y.numel(),
         "averaged over all B*T = 12 positions, the masked ones included"),
        (lambda lg, y: torch.stack([F.cross_entropy(lg[b], y[b], ignore_index=-1)
                                    for b in range(len(y))]).mean(), "averaged row by row"),
        (lambda lg, y: F.cross_entropy(lg.flatten(0, 1), y.clamp(min=0).flatten()),
         "counted (as token 0)"),
        (lambda lg, y: F.cross_entropy(lg.flatten(0, 1), y.flatten(), ignore_index=-1,
                                       reduction="none"), "return one number"),
        (lambda lg, y: F.cross_entropy(lg.flatten(0, 1), y.flatten(), ignore_index=-1,
                                       reduction="sum"), "that is the sum; return the mean"),
    ],
    # 13 preference tuning
    "reply_logprobs": [
        (lambda lg, idx, m: (torch.log_softmax(lg, -1).gather(2, idx[..., None])[..., 0]
                             * m).sum(1), "not shifted"),
        (lambda lg, idx, m: torch.log_softmax(lg[:, :-1], -1).gather(
            2, idx[:, 1:, None])[..., 0].sum(1), "the prompt and padding were counted"),
        (lambda lg, idx, m: (torch.log_softmax(lg[:, :-1], -1).gather(
            2, idx[:, 1:, None])[..., 0] * m[:, 1:]).sum(1) / m.sum(1), "the mean per token"),
        (lambda lg, idx, m: (torch.softmax(lg[:, :-1], -1).gather(
            2, idx[:, 1:, None])[..., 0] * m[:, 1:]).sum(1), "those are probabilities"),
        (lambda lg, idx, m: (lg[:, :-1].gather(2, idx[:, 1:, None])[..., 0]
                             * m[:, 1:]).sum(1), "those are raw logits"),
    ],
    "dpo_loss": [
        (lambda pc, pr, rc, rr, beta: -F.logsigmoid((pc - rc) - (pr - rr)).mean(),
         "beta is missing"),
        (lambda pc, pr, rc, rr, beta: -beta * F.logsigmoid((pc - rc) - (pr - rr)).mean(),
         "not the loss"),
        (lambda pc, pr, rc, rr, beta: -F.logsigmoid(beta * ((rc - pc) - (rr - pr))).mean(),
         "the sign is flipped"),
        (lambda pc, pr, rc, rr, beta: -F.logsigmoid(beta * (pc - pr)).mean(),
         "the reference is missing"),
        (lambda pc, pr, rc, rr, beta: -F.logsigmoid(beta * ((pc - rc) - (pr - rr))).sum(),
         "the sum over the pairs"),
        (lambda pc, pr, rc, rr, beta: -torch.log(torch.sigmoid(
            beta * ((pc - rc) - (pr - rr)))).mean(), "use F.logsigmoid(x)"),
        (lambda pc, pr, rc, rr, beta: -F.logsigmoid(beta * ((pc - rc) - (pr - rr))),
         "return one number"),
    ],
    "pick_pair": [
        (lambda rw, ln, st: _pair_with(rw, ln, st, swap=True), "the order is (chosen, rejected)"),
        (lambda rw, ln, st: _pair_with(rw, ln, st, finished=False), "cut off at the token limit"),
        (lambda rw, ln, st: _pair_with(rw, ln, st, good=0.5), "must follow every instruction"),
        (lambda rw, ln, st: _pair_with(rw, ln, st, bad=0.0), "not only one with reward 0"),
        (lambda rw, ln, st: _pair_with(rw, ln, st, closest=False), "lengths are closest"),
        (lambda rw, ln, st: _pair_with(rw, ln, st) or (0, 1), "there is no pair: return None"),
        (lambda rw, ln, st: [max(range(len(rw)), key=rw.__getitem__),
                             min(range(len(rw)), key=rw.__getitem__)], "best and the worst"),
        (lambda rw, ln, st: _pair_with(rw, ln, st) if rw[0] < 1 else (0, 0), "expected (0, 3)"),
    ],
    "lora_forward": [
        (lora_with(scale="none"), "the update is not scaled"),
        (lora_with(scale="alpha"), "scaled by alpha; LoRA scales by alpha / r"),
        (lora_with(scale="r/alpha"), "scaled by r / alpha"),
        (lora_with(base=False), "only the update"),
        (lora_with(update=False), "only the frozen layer"),
        (lora_with(bias=False), "the bias is missing"),
        (lambda x, W, b, A, B, alpha: x @ W.T + b + x @ B.T @ A.T * alpha, "raised"),
    ],
    "bits_per_byte": [
        (bpb_with(log=1.0), "that is nats per byte"),
        (bpb_with(log=1 / math.log(2)), "multiplied by ln 2"),
        (bpb_with(log=math.log(10)), "divided by ln 10"),
        (bpb_with(per="tokens"), "that is bits per token"),
        (bpb_with(mean=True), "the mean of the nats"),
        (bpb_with(per="chars"), "the text has 27 bytes in UTF-8"),
    ],
    "final_number": [
        (final_with(first=True), "the first number; the final answer is the last"),
        (final_with(commas=False), "written with a thousands comma"),
        (final_with(decimals=False), "'1.5' is one number with a decimal part"),
        (final_with(sign="never"), "the minus sign belongs to the number"),
        (final_with(sign="always"), "a '-' right after a digit is a dash or a minus"),
        (final_with(marker=False), "after GSM8K's '####' marker"),
        (final_with(as_str=True), "return a number"),
    ],
    "wilson_interval": [
        (wilson_with(kind="wald"), "the textbook (Wald) interval"),
        (wilson_with(z=1.6448536269514722), "z = 1.645 gives a 90% interval"),
        (wilson_with(kind="no-quarter"), "misses the z^2 / (4 n^2) term"),
        (wilson_with(kind="no-shift"), "the centre is (p + z^2 / 2n) / (1 + z^2 / n)"),
        (wilson_with(order="high-low"), "return (low, high)"),
        (wilson_with(scale=100.0), "in percent"),
    ],
    "parse_answer": [
        (parse_with(first=True), "the first number; the final answer is the last"),
        (parse_with(as_str=True), "return an int"),
        (parse_with(zero=True), "with no number in the text return None"),
        (parse_with(sign=False), "the minus sign belongs to the number"),
        (parse_with(commas=False), "thousands are written with commas"),
    ],
    # 16 speedrun
    "newton_schulz": [
        (ns_with(norm="none"), "divide G by its Frobenius norm"),
        (ns_with(steps=5), "the steps argument is ignored"),
        (ns_with(coefficients=(3.4445, -4.7750, 2.0315)), "the coefficients argument is ignored"),
        (ns_with(swap=True), "b multiplies A = X X^T and c multiplies A @ A"),
        (ns_with(norm="spectral"), "normalise by the Frobenius norm"),
        (ns_with(back=False), "must be transposed back"),
    ],
    "muon_momentum": [
        (momentum_with(buffer="sum"), "that is SGD's momentum buffer"),
        (momentum_with(buffer="swapped"), "momentum weights the old buffer"),
        (momentum_with(ahead=False), "the update looks ahead"),
        (momentum_with(pair=False), "return the pair (update, new_buf)"),
    ],
    "verdict": [
        (verdict_with(spread="none"), "within the seed spread"),
        (verdict_with(spread="base"), "the larger of the two ranges"),
        (verdict_with(mean=False), "compare the means over the seeds"),
        (verdict_with(strict=False), "it must be larger"),
        (verdict_with(words=("worse", "better")), "a lower mean loss by more than the spread"),
        (verdict_with(words=("better ", "worse ")), "return exactly"),
    ],
    "group_advantages": [
        (advantages_with(correction=0), "use the sample standard deviation"),
        (advantages_with(dim=None), "standardised over the whole batch"),
        (advantages_with(dim=0), "standardised down the columns"),
        (advantages_with(std=False), "only the mean is subtracted"),
        (advantages_with(eps=False), "nan where a group's rewards are all equal"),
    ],
    "majority_vote": [
        (vote_with(nones=False), "a reply without an answer is not a vote"),
        (vote_with(ties="last"), "a tie; keep the answer that came first"),
        (vote_with(ties="max"), "a tie; keep the answer that came first"),
        (vote_with(returns="count"), "the count; return the answer itself"),
        (vote_with(empty=False), "with no answer at all return None"),
        (lambda answers: sorted(a for a in answers if a is not None)[-1],
         "expected 4, the most common answer"),
    ],
    "safe_value": [
        (safe_value_with(allow=("pow",)), "'**' must be refused"),
        (safe_value_with(allow=("name",)), "a name (ast.Name) must be refused"),
        (safe_value_with(allow=("attribute",)), "an attribute (ast.Attribute) must be refused"),
        (safe_value_with(allow=("str",)), "a string constant must be refused"),
        (safe_value_with(bools=True), "bool is a subclass of int"),
        (safe_value_with(allow=("floordiv",)), "'//' (ast.FloorDiv) must be refused"),
        (safe_value_with(div="floor"), "that is '//'; ast.Div is true division"),
        (safe_value_with(unary_sign=1), "ast.USub negates its operand"),
        (safe_value_with(allow=("anything",)), "refuse with ValueError"),
    ],
}

def _pair_with(rewards, lengths, stopped, swap=False, finished=True, good=1.0, bad=1.0,
               closest=True):
    """A learner's pair rule for replies to instructions, with one mistake (or none)."""
    done = [i for i in range(len(rewards)) if stopped[i] or not finished]
    chosen = [i for i in done if rewards[i] >= good]
    rejected = [i for i in done if (rewards[i] <= bad if bad < 1 else rewards[i] < 1)
                and i not in chosen]
    pairs = [(c, r) for c in chosen for r in rejected]
    if not pairs:
        return None
    c, r = min(pairs, key=lambda p: abs(lengths[p[0]] - lengths[p[1]])) if closest else pairs[0]
    return (r, c) if swap else (c, r)


CASES = [(name, i) for name, wrongs in MUTATIONS.items() for i in range(len(wrongs))]


def test_every_check_diagnoses_at_least_three_typical_mistakes_by_name():
    """Each check names at least three different mistakes, each one mutation-tested below."""
    assert set(MUTATIONS) == set(check.EXERCISES)
    few = {name: len({phrase for _, phrase in wrongs}) for name, wrongs in MUTATIONS.items()}
    assert all(n >= 3 for n in few.values()), {name: n for name, n in few.items() if n < 3}
    assert len(check.EXERCISES) >= 30


@pytest.mark.parametrize("name", list(check.EXERCISES))
def test_solution_passes(name):
    fn = solution_of(name)
    if name == "apply_merges":  # in the notebook, merge is the learner's from the exercise above
        fn = _with_globals(fn, merge=solutions.module_for("01").merge)
    assert check.run(name, fn) == (PASSED, PASSED)


def _with_globals(fn, **names):
    import types

    return types.FunctionType(fn.__code__, {**fn.__globals__, **names}, fn.__name__)


@pytest.mark.parametrize("name", list(check.EXERCISES))
def test_stub_is_not_attempted(name):
    def stub(*args):
        ...  # your code

    def raises(*args):
        raise NotImplementedError

    for fn in (stub, raises, None):
        status, message = check.run(name, fn)
        assert status == NOT_ATTEMPTED and message.startswith("not attempted yet")


@pytest.mark.parametrize("name,i", CASES, ids=[f"{n}-{i}" for n, i in CASES])
def test_mutation_is_rejected_with_its_diagnosis(name, i):
    wrong, phrase = MUTATIONS[name][i]
    status, message = check.run(name, wrong)
    assert status == FAILED
    assert phrase in message, message
    assert "\n" not in message


@pytest.mark.parametrize("name", list(check.EXERCISES))
def test_never_raises_on_nonsense(name):
    def crashes(*args):
        return 1 / 0

    for fn in (lambda *a: "nonsense", lambda *a: (1, 2, 3), crashes, 42):
        status, message = check.run(name, fn)
        assert status in (FAILED, NOT_ATTEMPTED), message
    assert "ZeroDivisionError" in check.run(name, crashes)[1]


def test_check_prints_one_line_and_returns_nothing(capsys):
    assert check.causal_mask(solution_of("causal_mask")) is None
    assert capsys.readouterr().out == "causal_mask: passed\n"
    check.causal_mask(lambda T: torch.ones(T, T, dtype=torch.bool).triu())
    out = capsys.readouterr().out
    assert out.startswith("causal_mask: causal_mask(4): the mask is transposed")
    assert out.count("\n") == 1


def test_checks_leave_the_global_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    check.run("dropout", solution_of("dropout"))  # draws many random numbers
    check.run("causal_attention", solution_of("causal_attention"))
    torch.testing.assert_close(torch.rand(3), expected)


def test_a_function_that_returns_none_later_is_not_called_unattempted():
    def forgets_a_return(T):
        if T > 1:
            return torch.ones(T, T, dtype=torch.bool).tril()

    status, message = check.run("causal_mask", forgets_a_return)
    assert status == FAILED and "causal_mask(1) returned None" in message


def test_hints_get_stronger_then_stay(capsys):
    core._hints_shown.pop("softmax", None)
    for _ in range(3):
        check.hint("softmax")
    first, second, third = capsys.readouterr().out.splitlines()
    hints = check.EXERCISES["softmax"].hints
    assert first == f"hint 1 of 2: {hints[0]}" and second == f"hint 2 of 2: {hints[1]}"
    assert third == second
    assert all(len(e.hints) == 2 and e.hints[0] != e.hints[1] for e in check.EXERCISES.values())


def test_solution_prints_the_source(capsys):
    check.solution("causal_mask")
    out = capsys.readouterr().out
    assert out.startswith("# course_utils/solutions/nb04_attention.py\n")
    assert inspect.getsource(solution_of("causal_mask")) in out


def test_unknown_names_are_refused_with_a_suggestion():
    with pytest.raises(ValueError, match="did you mean 'causal_mask'"):
        check.hint("casual_mask")
    with pytest.raises(ValueError, match="no exercise named"):
        check.run("nope", print)


def test_not_a_function():
    status, message = check.run("softmax", torch.zeros(3))
    assert status == FAILED and "pass the function itself" in message


# ------------------------------------------------------------------ the switch: use_mine


def test_use_mine_returns_the_learner_function_when_its_check_passes(capsys):
    def causal_mask(T):
        return torch.ones(T, T, dtype=torch.bool).tril()

    assert check.use_mine(causal_mask) is causal_mask
    assert capsys.readouterr().out == "using your causal_mask (its check passes)\n"
    fn = solution_of("top_p_logits")
    assert check.use_mine(lambda logits, p: fn(logits, p), name="top_p_logits") is not fn
    assert capsys.readouterr().out == "using your top_p_logits (its check passes)\n"


def test_use_mine_falls_back_to_the_course_for_a_stub(capsys):
    def causal_mask(T):
        ...  # your code

    chosen = check.use_mine(causal_mask)
    assert chosen is check.stand_in("causal_mask") and chosen is not causal_mask
    assert capsys.readouterr().out == ("using the course's causal_mask: yours is not attempted "
                                       "yet\n")
    torch.testing.assert_close(chosen(5), torch.ones(5, 5, dtype=torch.bool).tril())


@pytest.mark.parametrize("wrong,why", [
    (lambda T: torch.ones(T, T, dtype=torch.bool).tril(-1), "off by one on the diagonal"),
    (lambda T: 1 / 0, "raised ZeroDivisionError"),
    (lambda T: sys.exit(2), "called sys.exit(2)"),
], ids=["wrong", "raises", "exits"])
def test_use_mine_falls_back_to_the_course_for_a_failing_answer(wrong, why, capsys):
    chosen = check.use_mine(wrong, name="causal_mask")
    assert chosen is check.stand_in("causal_mask")
    out = capsys.readouterr().out
    assert out.startswith("using the course's causal_mask: yours fails (") and why in out
    assert out.endswith(")\n") and out.count("\n") == 1


def _endless(T):
    while True:
        pass


def test_use_mine_stops_an_endless_loop_and_falls_back(monkeypatch, capsys):
    """In a notebook (no grader around) the default time limit applies, as in the grader."""
    monkeypatch.setattr(limits, "DEFAULT_SECONDS", 0.3)
    start = time.monotonic()
    chosen = check.use_mine(_endless, name="causal_mask")
    assert time.monotonic() - start < 10
    assert chosen is check.stand_in("causal_mask")
    assert capsys.readouterr().out.startswith(
        "using the course's causal_mask: yours fails (the answer was stopped after 0.3 s, "
        "still running (an endless loop?)")
    assert limits.seconds() is None  # nothing left armed
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    check.causal_mask(_endless)  # the check cell stops it the same way
    assert capsys.readouterr().out.startswith("causal_mask: the answer was stopped after 0.3 s")


def test_use_mine_under_the_grader_keeps_the_grader_s_time_limit(capsys):
    with limits.grading(0.2):
        chosen = check.use_mine(_endless, name="causal_mask")
        assert limits.seconds() == 0.2
    assert chosen is check.stand_in("causal_mask")
    assert "stopped after 0.2 s" in capsys.readouterr().out


def test_use_mine_in_a_notebook_refuses_an_answer_that_reads_a_computed_variable(capsys):
    namespace = {"__name__": "__main__", "In": ["", "import torch",
                                                "big = torch.ones(9, 9, dtype=torch.bool)"]}
    exec("import torch\nbig = torch.ones(9, 9, dtype=torch.bool)", namespace)
    exec("def causal_mask(T):\n    return big[:T, :T].tril()", namespace)
    namespace["In"].append("def causal_mask(T):\n    return big[:T, :T].tril()")
    chosen = check.use_mine(namespace["causal_mask"])
    assert chosen is check.stand_in("causal_mask")
    out = capsys.readouterr().out
    assert out.startswith("using the course's causal_mask: yours fails (right here, but it reads "
                          "`big`, computed by an earlier cell")


def test_use_mine_needs_a_function_with_the_name_of_an_exercise():
    with pytest.raises(TypeError, match="check.use_mine needs your function"):
        check.use_mine(None)
    with pytest.raises(ValueError, match="cannot tell which exercise a lambda answers"):
        check.use_mine(lambda T: T)
    with pytest.raises(ValueError, match="did you mean 'causal_mask'.*name='causal_mask'"):
        check.use_mine(lambda T: T, name="casual_mask")


@pytest.mark.parametrize("name", list(check.EXERCISES))
def test_every_stand_in_passes_its_check_and_drops_in(name):
    """The course's version that runs until the learner's passes: it passes the check, takes
    the exercise's arguments (extra ones have defaults), and is the registered course piece
    where there is one."""
    fn = check.stand_in(name)
    assert check.run(name, fn) == (PASSED, PASSED)
    ours = inspect.signature(fn).parameters.values()
    theirs = inspect.signature(solution_of(name)).parameters.values()
    assert len(ours) >= len(theirs), name
    assert all(p.default is not p.empty for p in list(ours)[len(theirs):]), name
    assert sum(p.default is p.empty for p in ours) <= len(theirs), name
    registered = check.EXERCISES[name].stand_in
    if registered is None:
        assert fn is solution_of(name)


def test_stand_ins_are_the_course_pieces_the_models_use():
    from course_utils import block, bpe, datasets, optim, rl

    assert check.stand_in("merge") is bpe.merge
    assert check.stand_in("random_batch") is datasets.get_batch
    assert check.stand_in("warmup_cosine_lr") is optim.get_lr
    assert check.stand_in("rms_norm") is block.rms_norm
    assert check.stand_in("group_advantages") is rl.group_advantages
    x, w = torch.randn(2, 3, 8), torch.randn(8)
    norm = block.RMSNorm(8)
    with torch.no_grad():
        norm.weight.copy_(w)
    assert torch.equal(check.stand_in("rms_norm")(x, w, 1e-5), norm(x))  # bit for bit
    logits, targets = torch.randn(2, 5, 7), torch.randint(-1, 7, (2, 5))
    from course_utils.model import GPT, GPTConfig

    model = GPT(GPTConfig(vocab_size=7, block_size=5, n_layer=1, n_head=1, n_embd=4))
    idx = torch.randint(0, 7, (2, 5))
    out, loss = model(idx, targets)
    assert torch.equal(check.stand_in("masked_cross_entropy")(out, targets), loss)
    from course_utils.sampling import filter_logits

    assert torch.equal(check.stand_in("top_p_logits")(logits[0], 0.8),
                       filter_logits(logits[0], top_p=0.8))


# ------------------------------------------------------------------ the solutions against
# outside references (the checks compare against PyTorch and the course's pieces already)


def test_apply_merges_with_gpt2_merges_equals_tiktoken():
    import regex

    from course_utils.bpe import GPT2_SPLIT_PATTERN, gpt2_tokenizer, tiktoken_gpt2

    gpt2, enc = gpt2_tokenizer(), tiktoken_gpt2()
    fn = _with_globals(solution_of("apply_merges"), merge=solutions.module_for("01").merge)
    text = "Hello world's 123 tokenizers, naïve café 🙂 and Schrödinger."
    for chunk in regex.findall(GPT2_SPLIT_PATTERN, text):
        ids = [gpt2.byte_ids[b] for b in chunk.encode("utf-8")]
        assert fn(ids, gpt2.merges) == enc.encode_ordinary(chunk), chunk


def test_param_count_equals_hugging_face_gpt2():
    transformers = pytest.importorskip("transformers")
    with torch.device("meta"):
        hf = transformers.GPT2LMHeadModel(transformers.GPT2Config())
    n = sum(p.numel() for p in hf.parameters())
    assert solution_of("param_count")(50257, 1024, 12, 768) == n


def test_rope_solution_and_check_reference_equal_hugging_face_llama():
    pytest.importorskip("transformers")
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import (
        LlamaRotaryEmbedding,
        apply_rotary_pos_emb,
    )

    B, nh, T, hs, base = 2, 3, 7, 8, 500.0
    config = LlamaConfig(hidden_size=nh * hs, num_attention_heads=nh, head_dim=hs,
                         rope_theta=base, max_position_embeddings=32)
    q, k = torch.randn(2, B, nh, T, hs)
    cos, sin = LlamaRotaryEmbedding(config)(q, torch.arange(T)[None].expand(B, T))
    hf_q, hf_k = apply_rotary_pos_emb(q, k, cos, sin)
    torch.testing.assert_close(solution_of("rope")(q, base), hf_q)
    torch.testing.assert_close(nb11_modern_architecture._rope_reference(k, base), hf_k)


def test_repeat_kv_equals_hugging_face_llama():
    pytest.importorskip("transformers")
    from transformers.models.llama.modeling_llama import repeat_kv

    x = torch.randn(2, 3, 5, 4)
    torch.testing.assert_close(solution_of("repeat_kv")(x, 4), repeat_kv(x, 4))


def test_top_p_solution_equals_the_course_sampler_and_keeps_the_nucleus():
    from course_utils.sampling import filter_logits

    logits = torch.randn(5, 50) * 3
    for p in (0.1, 0.5, 0.9, 0.99):
        got = solution_of("top_p_logits")(logits, p)
        torch.testing.assert_close(got, filter_logits(logits, top_p=p))
        probs = torch.softmax(logits, -1)
        kept = torch.where(torch.isfinite(got), probs, torch.zeros_like(probs))
        assert (kept.sum(-1) >= p - 1e-6).all()
        assert (kept.sum(-1) - kept.masked_fill(kept == 0, 2).min(-1).values < p).all()



def test_newton_schulz_in_bfloat16_passes_as_muon_computes_it():
    """Muon computes in bfloat16: an answer that does the same is within the tolerance."""
    assert check.run("newton_schulz", ns_with(dtype=torch.bfloat16)) == (PASSED, PASSED)


def test_verdict_solution_equals_the_course_rule_on_random_cases():
    from course_utils.stats import seed_verdict

    g = np.random.default_rng(0)
    for _ in range(500):
        base, new = (list(g.normal(1.8, 0.05, size=g.integers(2, 5))) for _ in range(2))
        assert solution_of("verdict")(base, new) == seed_verdict(base, new)
