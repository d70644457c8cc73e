"""Solutions to the exercises of notebook 14 (preference tuning): the log-probability of a
reply read from the logits, the DPO loss of a batch of pairs, and the rule that pairs replies
to an instruction (one that follows it all against one that does not)."""

import torch
import torch.nn.functional as F


def reply_logprobs(logits, idx, mask):
    """``(B,)``: for each row, the sum of ``log p(idx[b, t] | idx[b, :t])`` over the reply's
    positions ``t`` (where ``mask`` ``(B, T)`` is True). ``logits`` ``(B, T, V)``: position
    ``t - 1`` predicts token ``t``."""
    logp = torch.log_softmax(logits[:, :-1], dim=-1)  # (B, T - 1, V): predicts 1 .. T - 1
    picked = logp.gather(2, idx[:, 1:, None])[..., 0]  # (B, T - 1): log p of the actual token
    return (picked * mask[:, 1:]).sum(dim=1)


def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta):
    """The DPO loss (Rafailov et al., 2023): the mean over pairs of
    ``-log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r)))``, inputs ``(B,)``
    log-probabilities of the chosen and rejected replies."""
    margin = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    return -F.logsigmoid(beta * margin).mean()


def pick_pair(rewards, lengths, stopped):
    """``(chosen, rejected)`` indices of one prompt's replies, or ``None``: among the finished
    replies (``stopped``), one that follows every instruction (reward 1) against one that
    does not (reward below 1), the pair whose lengths in tokens are closest (the first on a
    tie)."""
    done = [i for i in range(len(rewards)) if stopped[i]]
    good = [i for i in done if rewards[i] >= 1.0]
    bad = [i for i in done if rewards[i] < 1.0]
    if not good or not bad:
        return None
    pairs = [(c, r) for c in good for r in bad]
    return min(pairs, key=lambda p: abs(lengths[p[0]] - lengths[p[1]]))
