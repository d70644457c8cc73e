"""Solutions to the exercises of notebook 13 (instruction tuning): the loss mask of
supervised fine-tuning, and the cross-entropy that leaves the masked positions out."""

import torch


def reply_targets(ids, header, im_end):
    """Next-token targets of a ChatML conversation ``ids`` (a list of ints) for ``x =
    ids[:-1]``: ``y[t] = ids[t + 1]`` when that token is part of an assistant's reply (after
    a ``header``, ``<|im_start|>assistant\\n``, up to and including the next ``im_end``),
    else -1."""
    y = [-1] * (len(ids) - 1)
    i = 0
    while i < len(ids):
        if ids[i:i + len(header)] == header:  # an assistant turn starts at i
            j = i + len(header)  # its reply's first token
            while j < len(ids):
                y[j - 1] = ids[j]  # position j - 1 predicts token j
                if ids[j] == im_end:  # the closing <|im_end|> is trained too
                    break
                j += 1
            i = j
        i += 1
    return y


def masked_cross_entropy(logits, targets):
    """Mean cross-entropy of ``logits`` ``(B, T, V)`` against ``targets`` ``(B, T)`` over the
    positions whose target is not -1: what ``F.cross_entropy(..., ignore_index=-1)`` does."""
    logits, targets = logits.flatten(0, 1), targets.flatten()  # (B*T, V), (B*T,)
    keep = targets != -1
    logp = torch.log_softmax(logits[keep], dim=-1)  # (N, V), N = targets kept
    return -logp.gather(1, targets[keep][:, None]).mean()
