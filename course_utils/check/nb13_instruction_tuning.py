"""The checks of notebook 13 (instruction tuning): ``reply_targets``, ``masked_cross_entropy``.

Each check is registered with :func:`~course_utils.check.core._exercise`, which puts in its
place a function that prints one line; the learner calls it as ``check.NAME(NAME)``. Solutions:
``course_utils/solutions/nb13_instruction_tuning.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .core import Wrong, _exercise, _number


def _chat_cases():
    """``(ids, header, im_end, trained)`` for a few ChatML conversations, encoded by the
    course's chat format (:func:`course_utils.sft.encode_conversation`, the finished piece):
    ``trained[i]`` says whether token ``i`` belongs to a reply or its closing ``<|im_end|>``."""
    from ..chat import ChatFormat
    from ..sft import chat_tokenizer, encode_conversation
    from ..tokenization import CharTokenizer

    fmt = ChatFormat(chat_tokenizer(CharTokenizer.from_text("abcdefghijklmnopqrstuvwxyz !?\n")))
    conversations = [
        [("user", "hi"), ("assistant", "hello!")],
        [("user", "how are you?"), ("assistant", "well"), ("user", "and now?"),
         ("assistant", "fine")],
        [("system", "be brief"), ("user", "say assistant\nno"), ("assistant", "no")],
        [("user", "speak"), ("assistant", "")],
    ]
    for turns in conversations:
        ids, trained = encode_conversation(fmt, [{"role": r, "content": c} for r, c in turns])
        yield ids, fmt.generation_prompt(), fmt.im_end, trained


def course_masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The course's masked loss in the exercise's signature: the mean cross-entropy of
    ``logits`` ``(B, T, V)`` against ``targets`` ``(B, T)`` over the targets that are not -1,
    exactly as :meth:`course_utils.model.GPT.forward` computes its loss (and so the loss of
    :class:`course_utils.sft.ChatTask`)."""
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                           ignore_index=-1)


def _shifted(ids, trained, fill=-1):
    """The targets of ``ids[:-1]``: ``ids[t + 1]`` where ``trained[t + 1]``, else ``fill``."""
    return [i if keep else fill for i, keep in zip(ids[1:], trained[1:])]


@_exercise("13", (
    "Walk through ids; where the header <|im_start|>assistant\\n starts (compare the slice "
    "ids[i:i + len(header)] with it), the reply begins right after it and ends with the first "
    "im_end, which is trained too. The target of position t is ids[t + 1].",
    "y = [-1] * (len(ids) - 1); at each header found at i, for j from i + len(header) on: "
    "y[j - 1] = ids[j], stop after ids[j] == im_end",
))
def reply_targets(fn):
    """``reply_targets(ids, header, im_end) -> list``: next-token targets, -1 outside replies."""
    for ids, header, im_end, trained in _chat_cases():
        call = f"reply_targets(ids of {len(ids)} tokens, header {header}, im_end={im_end})"
        got = fn(list(ids), list(header), im_end)
        if isinstance(got, torch.Tensor):
            got = got.tolist()
        if not isinstance(got, (list, tuple)) or any(isinstance(v, (list, tuple)) for v in got):
            raise Wrong(f"{call} returned a {type(got).__name__}; return a flat list of ints")
        got = list(got)
        expected = _shifted(ids, trained)
        if got == expected:
            continue
        if len(got) == len(ids):
            raise Wrong(f"{call} returned {len(got)} targets, one per token; x is ids[:-1], so "
                        f"there are len(ids) - 1 = {len(ids) - 1}, and y[t] is ids[t + 1]")
        if len(got) != len(expected):
            raise Wrong(f"{call} returned {len(got)} targets; expected len(ids) - 1 = "
                        f"{len(expected)}")
        starts = [i for i in range(len(ids)) if ids[i:i + len(header)] == header]
        in_header = [any(s <= i < s + len(header) for s in starts) for i in range(len(ids))]
        first_end = next(i for i in range(starts[0], len(ids)) if ids[i] == im_end)
        mistakes = [
            ([i if k else -1 for i, k in zip(ids[:-1], trained[:-1])],
             "the targets are not shifted: y[t] is the token after x[t], ids[t + 1]"),
            (_shifted(ids, [k and i != im_end for i, k in zip(ids, trained)]),
             "the closing <|im_end|> of each reply must be a target too: it is how the model "
             "learns to stop"),
            (_shifted(ids, [k or h for k, h in zip(trained, in_header)]),
             "the header <|im_start|>assistant\\n is part of the prompt (the chat writes it), "
             "not of the reply: do not train on it"),
            (_shifted(ids, [not k for k in trained]),
             "the mask is inverted: train on the replies, not on everything else"),
            (_shifted(ids, trained, fill=0),
             "positions outside the replies must be -1 (the ignore_index of the loss), not 0"),
            (_shifted(ids, [k and i <= first_end for i, k in enumerate(trained)]),
             "only the first reply is a target; every assistant turn is"),
        ]
        for wrong, message in mistakes:
            if got == wrong:
                raise Wrong(f"{call}: {message}")
        t = next(t for t in range(len(expected)) if got[t] != expected[t])
        raise Wrong(f"{call}: y[{t}] is {got[t]}, expected {expected[t]}")


@_exercise("13", (
    "Keep only the positions whose target is not -1 (a boolean mask, targets != -1), then take "
    "the cross-entropy of those: -log_softmax(logits)[target], averaged over them all.",
    "logits, targets = logits.flatten(0, 1), targets.flatten(); keep = targets != -1; "
    "logp = torch.log_softmax(logits[keep], dim=-1); "
    "return -logp.gather(1, targets[keep][:, None]).mean()",
), stand_in=course_masked_cross_entropy)
def masked_cross_entropy(fn):
    """``masked_cross_entropy(logits, targets)``: mean cross-entropy over targets != -1."""
    g = torch.Generator().manual_seed(12)
    for B, T, V, scale in ((2, 6, 7, 1.0), (3, 5, 11, 30.0), (1, 4, 5, 1.0)):
        logits = torch.randn(B, T, V, generator=g, dtype=torch.float64) * scale
        targets = torch.randint(0, V, (B, T), generator=g)
        targets[0, : T // 2] = -1  # the user's turn of the first row, say
        if B > 1:
            targets[1, -1] = -1  # padding
        call = f"masked_cross_entropy(logits {(B, T, V)}, targets with -1)"
        got = fn(logits.clone(), targets.clone())
        if isinstance(got, torch.Tensor) and got.dim() > 0 and got.numel() > 1:
            raise Wrong(f"{call}: returned shape {tuple(got.shape)}; return one number, the mean")
        expected = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1)
        per_token = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1,
                                    reduction="none").view(B, T)
        keep = targets != -1
        per_row = per_token.sum(1) / keep.sum(1)
        _number(got, expected.item(), call, [
            (per_token.sum().item() / (B * T), f"{call}: averaged over all B*T = {B * T} "
             f"positions, the masked ones included; average over the {int(keep.sum())} "
             f"targets that are not -1 only"),
            (per_row.mean().item(), f"{call}: averaged row by row; every target counts the "
             f"same: average over all targets of the batch at once"),
            (per_token.sum().item(), f"{call}: that is the sum; return the mean"),
            (F.cross_entropy(logits.flatten(0, 1), targets.clamp(min=0).flatten()).item(),
             f"{call}: the positions with target -1 were counted (as token 0); leave them out"),
        ], rel=1e-6)
