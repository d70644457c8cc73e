"""Preference tuning (notebook 13): reply log-probabilities against a hand computation, the DPO
loss against TRL's DPOTrainer and the paper's gradient, the Bradley-Terry loss against
PyTorch's logistic loss, the reward model's head, the frozen reference, and short training
runs that must move the margins the right way."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from course_utils.model import GPT, GPTConfig
from course_utils.preference import (
    RewardModel,
    bradley_terry_loss,
    dpo_loss,
    frozen_copy,
    sequence_logprobs,
    token_logprobs,
)

TINY = dict(vocab_size=16, block_size=16, n_layer=2, n_head=2, n_embd=32)


def tiny_gpt(seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(**TINY))


def reply_mask(prompt_lens, reply_lens, T):
    """(B, T) bool: True on positions prompt_len .. prompt_len + reply_len - 1 of each row."""
    pos = torch.arange(T)
    start = torch.tensor(prompt_lens)[:, None]
    end = start + torch.tensor(reply_lens)[:, None]
    return (pos >= start) & (pos < end)


def test_sequence_logprobs_match_log_softmax_and_gather():
    model = tiny_gpt()
    torch.manual_seed(1)
    idx = torch.randint(0, 16, (3, 10))
    mask = reply_mask([2, 4, 1], [5, 6, 3], 10)
    got = sequence_logprobs(model, idx, mask)
    logits, _ = model(idx)
    by_hand = torch.zeros(3)
    for b in range(3):
        logp = F.log_softmax(logits[b], dim=-1)  # (T, vocab_size)
        for t in range(1, 10):  # token t is predicted by the logits at t - 1
            if mask[b, t]:
                by_hand[b] += logp[t - 1].gather(0, idx[b, t:t + 1])[0]
    torch.testing.assert_close(got, by_hand, rtol=0, atol=1e-5)
    # per-token values line up with idx: position t holds log p(idx[t] | idx[:t])
    per_token = token_logprobs(model, idx)
    assert per_token.shape == idx.shape and (per_token[:, 0] == 0).all()
    torch.testing.assert_close(per_token[1, 5], F.log_softmax(logits[1, 4], -1)[idx[1, 5]])


def test_masked_out_tokens_contribute_nothing():
    """Changing the padding after the reply leaves the reply's log-probability as it was; a
    token inside the reply changes it."""
    model = tiny_gpt()
    torch.manual_seed(2)
    idx = torch.randint(0, 16, (2, 12))
    mask = reply_mask([3, 3], [4, 6], 12)
    before = sequence_logprobs(model, idx, mask)
    padded = idx.clone()
    padded[0, 7:] = (padded[0, 7:] + 5) % 16  # row 0's reply ends at position 6
    torch.testing.assert_close(sequence_logprobs(model, padded, mask), before, rtol=0, atol=0)
    changed = idx.clone()
    changed[0, 5] = (changed[0, 5] + 1) % 16
    assert sequence_logprobs(model, changed, mask)[0] != before[0]


def test_sequence_logprobs_rejects_bad_masks():
    model = tiny_gpt()
    idx = torch.randint(0, 16, (2, 6))
    with pytest.raises(ValueError, match="bool tensor"):
        sequence_logprobs(model, idx, torch.ones(2, 6, dtype=torch.long))
    with pytest.raises(ValueError, match="bool tensor"):
        sequence_logprobs(model, idx, torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="first token has no context"):
        sequence_logprobs(model, idx, torch.ones(2, 6, dtype=torch.bool))


class HFAsCourseModel(nn.Module):
    """A Hugging Face causal LM called the course's way: ``model(idx) -> (logits, None)``."""

    def __init__(self, hf_model):
        super().__init__()
        self.hf_model = hf_model

    def forward(self, idx):
        return self.hf_model(input_ids=idx).logits, None


def test_dpo_loss_matches_trl_dpo_trainer(tmp_path):
    """TRL's DPOTrainer computes its sigmoid loss inside ``_compute_loss`` (no standalone loss
    function in trl 1.x), so a real trainer is built around a tiny random GPT-2 and given a
    batch from TRL's own collator, with precomputed reference log-probabilities. Our
    sequence_logprobs + dpo_loss on the same model and batch must give the same loss, the
    same rewards and the same gradients."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("trl")
    from datasets import Dataset
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from trl import DPOConfig, DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    words = ["<pad>", "<eos>"] + [f"w{i}" for i in range(30)]
    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="<pad>"))
    tok.pre_tokenizer = WhitespaceSplit()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>",
                                                     pad_token="<pad>")
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=32, n_positions=16, n_embd=32, n_layer=2,
                                     n_head=2, bos_token_id=1, eos_token_id=1)
    hf_model = transformers.GPT2LMHeadModel(config)
    beta = 0.3
    args = DPOConfig(output_dir=str(tmp_path), beta=beta, precompute_ref_log_probs=True,
                     report_to="none", use_cpu=True, disable_tqdm=True)
    train = Dataset.from_dict({"prompt": ["w1 w2"], "chosen": [" w3"], "rejected": [" w4"]})
    trainer = DPOTrainer(model=hf_model, args=args, train_dataset=train,
                         processing_class=tokenizer)

    ref_chosen, ref_rejected = torch.tensor([-3.0, -1.5, -9.0]), torch.tensor([-2.0, -4.0, -6.5])
    pairs = [([2, 3, 4], [5, 6], [7]), ([8, 9], [10], [11, 12, 13]), ([14], [15, 16, 1], [17, 1])]
    examples = [{"prompt_ids": p, "chosen_ids": c, "rejected_ids": r, "ref_chosen_logps": rc,
                 "ref_rejected_logps": rr}
                for (p, c, r), rc, rr in zip(pairs, ref_chosen.tolist(), ref_rejected.tolist())]
    batch = DataCollatorForPreference(pad_token_id=0)(examples)  # rows: chosen..., rejected...

    trl_loss = trainer._compute_loss(trainer.model, batch, return_outputs=False)
    trl_grads = torch.autograd.grad(trl_loss, list(hf_model.parameters()))
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}

    logps = sequence_logprobs(HFAsCourseModel(hf_model), batch["input_ids"],
                              batch["completion_mask"].bool())
    chosen, rejected = logps.chunk(2)
    loss, r_chosen, r_rejected = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta)
    grads = torch.autograd.grad(loss, list(hf_model.parameters()))

    torch.testing.assert_close(loss, trl_loss, rtol=0, atol=1e-6)
    assert r_chosen.mean().item() == pytest.approx(metrics["rewards/chosen"], abs=1e-6)
    assert r_rejected.mean().item() == pytest.approx(metrics["rewards/rejected"], abs=1e-6)
    assert chosen.mean().item() == pytest.approx(metrics["logps/chosen"], abs=1e-5)
    for g, trl_g in zip(grads, trl_grads):
        torch.testing.assert_close(g, trl_g, rtol=1e-4, atol=1e-7)


def test_dpo_gradient_matches_the_paper():
    """Rafailov et al. (2023), section 4: d loss / d log pi(y_w) = -beta * sigmoid(-beta * m)
    per pair, m the margin of log-ratios; d / d log pi(y_l) is its negative (mean over B)."""
    torch.manual_seed(3)
    B, beta = 5, 0.25
    pc, pr, rc, rr = (torch.randn(B, dtype=torch.float64) * 4 for _ in range(4))
    pc.requires_grad_(True)
    pr.requires_grad_(True)
    loss, _, _ = dpo_loss(pc, pr, rc, rr, beta)
    loss.backward()
    margin = (pc - rc) - (pr - rr)
    expected = -beta * torch.sigmoid(-beta * margin.detach()) / B
    torch.testing.assert_close(pc.grad, expected)
    torch.testing.assert_close(pr.grad, -expected)
    # and the value: -log sigmoid(beta * margin) through PyTorch's logistic loss
    bce = F.binary_cross_entropy_with_logits(beta * margin, torch.ones(B))
    torch.testing.assert_close(loss, bce.to(loss.dtype))


@pytest.mark.parametrize("beta", [0.0, -0.1])
def test_dpo_loss_rejects_non_positive_beta(beta):
    x = torch.zeros(2)
    with pytest.raises(ValueError, match="beta must be > 0"):
        dpo_loss(x, x, x, x, beta)


def test_bradley_terry_loss_matches_logistic_loss():
    torch.manual_seed(4)
    rc, rr = torch.randn(7) * 3, torch.randn(7) * 3
    expected = F.binary_cross_entropy_with_logits(rc - rr, torch.ones(7))
    torch.testing.assert_close(bradley_terry_loss(rc, rr), expected)
    # swapping chosen and rejected is predicting the opposite label
    flipped = F.binary_cross_entropy_with_logits(rc - rr, torch.zeros(7))
    torch.testing.assert_close(bradley_terry_loss(rr, rc), flipped)


def test_reward_model_scores_the_last_reply_token():
    gpt = tiny_gpt()
    before = {k: v.clone() for k, v in gpt.state_dict().items()}
    rm = RewardModel(gpt)
    torch.manual_seed(5)
    idx = torch.randint(0, 16, (3, 9))
    mask = reply_mask([2, 3, 1], [3, 6, 2], 9)  # last reply tokens at 4, 8, 2
    scores = rm(idx, mask)
    assert scores.shape == (3,)
    # the head applied to the hidden state there, with the hidden states read from a copy
    # whose head is the identity
    body = RewardModel(gpt).gpt
    body.load_state_dict(rm.gpt.state_dict())
    body.lm_head = nn.Identity()
    hidden, _ = body(idx)  # (B, T, n_embd)
    expected = torch.stack([rm.gpt.lm_head(hidden[b, t]) for b, t in enumerate([4, 8, 2])])
    torch.testing.assert_close(scores, expected[:, 0])
    padded = idx.clone()
    padded[0, 5:] = 0
    torch.testing.assert_close(rm(padded, mask)[0], scores[0], rtol=0, atol=0)
    # the SFT model it came from is untouched: still tied, same weights
    assert gpt.lm_head.weight is gpt.transformer.wte.weight
    for k, v in gpt.state_dict().items():
        assert torch.equal(v, before[k])
    with pytest.raises(ValueError, match="at least one True"):
        rm(idx, torch.zeros(3, 9, dtype=torch.bool))


def test_reward_model_learns_the_preference():
    """A few AdamW steps of Bradley-Terry training rank replies holding token 5 over replies
    holding token 6, on a fresh batch of prompts."""
    rm = RewardModel(tiny_gpt())
    opt = torch.optim.AdamW(rm.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(6)

    def pairs(n):
        prompt = torch.randint(7, 16, (n, 4), generator=gen)
        chosen = torch.cat([prompt, torch.full((n, 3), 5)], dim=1)
        rejected = torch.cat([prompt, torch.full((n, 3), 6)], dim=1)
        return chosen, rejected, reply_mask([4] * n, [3] * n, 7)

    held_out = pairs(32)

    def accuracy():
        chosen, rejected, mask = held_out
        with torch.no_grad():
            return (rm(chosen, mask) > rm(rejected, mask)).float().mean().item()

    start = accuracy()
    for _ in range(15):
        chosen, rejected, mask = pairs(16)
        loss = bradley_terry_loss(rm(chosen, mask), rm(rejected, mask))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert start < 0.5  # the untrained head does not already rank them right
    assert accuracy() == 1.0


def test_frozen_copy_takes_no_gradient_and_stays_put():
    policy = tiny_gpt()
    ref = frozen_copy(policy)
    assert not ref.training and not any(p.requires_grad for p in ref.parameters())
    torch.manual_seed(7)
    idx = torch.randint(0, 16, (2, 8))
    mask = reply_mask([3, 3], [5, 4], 8)
    ref_logps = sequence_logprobs(ref, idx, mask)  # deliberately not under no_grad
    loss = -(sequence_logprobs(policy, idx, mask) - ref_logps).sum()
    loss.backward()
    assert all(p.grad is None for p in ref.parameters())
    assert all(p.grad is not None for p in policy.parameters())
    ref_before = {k: v.clone() for k, v in ref.state_dict().items()}
    torch.optim.SGD(policy.parameters(), lr=0.1).step()
    for k, v in ref.state_dict().items():
        assert torch.equal(v, ref_before[k]), f"{k} moved with the policy"
    assert not torch.equal(policy.state_dict()["transformer.h.0.attn.c_attn.weight"],
                           ref_before["transformer.h.0.attn.c_attn.weight"])


def test_tiny_dpo_run_increases_the_margin():
    """Synthetic pairs: after any prompt, the reply 3 3 3 is chosen over 4 4 4. A few AdamW
    steps of DPO against the frozen start must raise the implicit reward margin on new
    prompts and make the chosen reply more likely than at the start."""
    policy = tiny_gpt()
    ref = frozen_copy(policy)
    opt = torch.optim.AdamW(policy.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(8)

    def batch(n):
        prompt = torch.randint(5, 16, (n, 4), generator=gen)
        chosen = torch.cat([prompt, torch.full((n, 3), 3)], dim=1)
        rejected = torch.cat([prompt, torch.full((n, 3), 4)], dim=1)
        return chosen, rejected, reply_mask([4] * n, [3] * n, 7)

    def logps(model, chosen, rejected, mask):
        return sequence_logprobs(model, chosen, mask), sequence_logprobs(model, rejected, mask)

    def margin_and_chosen(chosen, rejected, mask):
        with torch.no_grad():
            pc, pr = logps(policy, chosen, rejected, mask)
            rc, rr = logps(ref, chosen, rejected, mask)
        _, r_chosen, r_rejected = dpo_loss(pc, pr, rc, rr, beta=0.1)
        return (r_chosen - r_rejected).mean().item(), (pc - rc).mean().item()

    held_out = batch(32)
    start_margin, _ = margin_and_chosen(*held_out)
    for _ in range(10):
        chosen, rejected, mask = batch(16)
        with torch.no_grad():
            rc, rr = logps(ref, chosen, rejected, mask)
        pc, pr = logps(policy, chosen, rejected, mask)
        loss, _, _ = dpo_loss(pc, pr, rc, rr, beta=0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    end_margin, chosen_gain = margin_and_chosen(*held_out)
    assert start_margin == 0.0  # the policy starts as the reference
    assert end_margin > 0.5, end_margin
    assert chosen_gain > 0, chosen_gain
