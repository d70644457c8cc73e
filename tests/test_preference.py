"""Preference tuning (notebook 14): reply log-probabilities against a hand computation, the DPO
loss against TRL's DPOTrainer and the paper's gradient, the Bradley-Terry loss against
PyTorch's logistic loss, the reward model's head, the frozen reference, and short training
runs that must move the margins the right way."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from course_utils.logprobs import sequence_logprobs, token_logprobs
from course_utils.model import GPT, GPTConfig
from course_utils.preference import (
    RewardModel,
    bradley_terry_loss,
    dpo_loss,
    frozen_copy,
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


def test_reward_model_loss_equals_a_hand_computation():
    """The Bradley-Terry loss of a reward model's scores, written out with math.exp and
    math.log: the mean over pairs of -log(1 / (1 + exp(-(r_chosen - r_rejected))))."""
    import math

    rm = RewardModel(tiny_gpt())
    torch.manual_seed(9)
    chosen, rejected = torch.randint(0, 16, (3, 8)), torch.randint(0, 16, (3, 8))
    mask = reply_mask([2, 3, 4], [4, 5, 2], 8)
    r_chosen, r_rejected = rm(chosen, mask), rm(rejected, mask)
    loss = bradley_terry_loss(r_chosen, r_rejected)
    by_hand = sum(-math.log(1 / (1 + math.exp(-(c - r))))
                  for c, r in zip(r_chosen.tolist(), r_rejected.tolist())) / 3
    assert loss.item() == pytest.approx(by_hand, rel=1e-6)
    loss.backward()  # the gradient reaches the scalar head and the body
    assert rm.gpt.lm_head.weight.grad.abs().sum() > 0
    assert rm.gpt.transformer.h[0].attn.c_attn.weight.grad.abs().sum() > 0


# ------------------------------------------------------------------ the reward and the pairs
def test_reply_reward_reads_words_length_and_stop():
    from course_utils.preference import ReplyReward

    reward = ReplyReward(frozenset({"good", "morrow", "my", "lord", "o'er"}), min_words=2,
                         max_words=4)
    assert reward.parts("Good morrow, my lord!", True) == {"real words": 1.0, "length": 1.0,
                                                           "stops": 1.0}
    parts = reward.parts("Good morrow, prisonerable lord shileep o'er", False)
    assert parts == {"real words": pytest.approx(4 / 6), "length": pytest.approx(4 / 6),
                     "stops": 0.0}
    assert reward("Good morrow, prisonerable lord shileep o'er", False) == pytest.approx(
        (4 / 6 + 4 / 6 + 0) / 3)
    assert reward.parts("lord", True)["length"] == 0.5  # 1 word of at least 2
    assert reward("", True) == pytest.approx(1 / 3)  # no words: only the stop counts
    corpus = ReplyReward.from_corpus("tinyshakespeare")
    assert {"romeo", "thou", "o'er"} <= corpus.vocabulary
    assert "prisonerable" not in corpus.vocabulary


def chat_model(seed=0, block_size=96):
    """A tiny untrained chat model on Tiny Shakespeare's characters plus the ChatML tokens."""
    from course_utils.corpora import load_text
    from course_utils.sft import chat_tokenizer
    from course_utils.tokenization import CharTokenizer

    tok = chat_tokenizer(CharTokenizer.from_text(load_text("tinyshakespeare")))
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=block_size, n_layer=1,
                          n_head=2, n_embd=16))
    return model, tok


def test_preference_pairs_pair_the_best_with_the_worst_reply():
    from course_utils.chat import ChatFormat
    from course_utils.preference import MAX_REPLY_TOKENS, preference_pairs

    model, tok = chat_model(block_size=64)
    fmt = ChatFormat(tok)
    train, val = preference_pairs(model, tok, n_prompts=3, samples=4, margin=0.05, seed=3)
    assert len(train.prompts) == 3 and len(val.prompts) == 1
    budget = min(MAX_REPLY_TOKENS, model.config.block_size // 2)
    for prefs in (train, val):
        assert prefs.pairs
        for i, c, r in prefs.pairs:
            scores = prefs.rewards[i]
            assert scores[c] == max(scores) and scores[r] == min(scores)
            assert scores[c] - scores[r] >= 0.05
        for prompt, group in zip(prefs.prompts, prefs.replies):
            assert prompt[-len(fmt.generation_prompt()):] == fmt.generation_prompt()
            assert len(group) == 4
            assert all(0 < len(ids) <= budget and fmt.im_end not in ids[:-1] for ids in group)
    again, _ = preference_pairs(model, tok, n_prompts=3, samples=4, margin=0.05, seed=3)
    assert again.replies == train.replies and again.pairs == train.pairs  # seeded
    other, _ = preference_pairs(model, tok, n_prompts=3, samples=4, margin=0.05, seed=4)
    assert other.replies != train.replies


def test_tied_replies_give_a_clear_error():
    from course_utils.chat import ChatFormat
    from course_utils.preference import sample_preferences

    model, tok = chat_model()
    fmt = ChatFormat(tok)
    prompts = [fmt.encode([{"role": "user", "content": "Good morrow."}])]
    with pytest.raises(ValueError, match=r"no preference pairs: .* \(all tied\)"):
        sample_preferences(model, fmt, prompts, lambda text, stopped: 0.5, samples=3,
                           margin=0.1, max_new_tokens=8)
    with pytest.raises(ValueError, match="not fine-tuned for chat"):
        from course_utils.preference import preference_pairs
        from course_utils.tokenization import CharTokenizer

        preference_pairs(model, CharTokenizer.from_text("abc"), n_prompts=1)


def test_preference_batches_hold_pairs_and_the_references_logprobs():
    """A batch is the chosen rows, then the rejected rows of the same pairs; the mask covers
    exactly each reply; ref_logps equal the reference's sequence_logprobs of those rows, and
    the DPO loss of the reference itself is log 2."""
    import math

    from course_utils.preference import PreferenceData, Preferences, dpo_batch_loss

    model, tok = chat_model()
    prefs = Preferences(prompts=[[1, 2, 3], [4, 5]],
                        replies=[[[6, 7], [8, 9, 10, 11], [12]], [[13, 14, 15], [16]]],
                        rewards=[[0.9, 0.1, 0.5], [0.2, 0.8]], pairs=[(0, 0, 1), (1, 1, 0)])
    data = PreferenceData(prefs, pad_id=0, reference=model)
    idx, mask = data.collate([0, 1])
    assert idx.tolist() == [[1, 2, 3, 6, 7, 0, 0], [4, 5, 16, 0, 0, 0, 0],
                            [1, 2, 3, 8, 9, 10, 11], [4, 5, 13, 14, 15, 0, 0]]
    assert mask.sum(1).tolist() == [2, 1, 4, 3] and mask[0, 3] and not mask[0, 2]
    idx, mask, ref = data.batch(5, torch.Generator().manual_seed(0))
    assert idx.shape[0] == 10 and ref.shape == (10,)
    with torch.no_grad():
        torch.testing.assert_close(ref, sequence_logprobs(model, idx, mask))
        loss = dpo_batch_loss(model, idx, mask, ref, beta=0.1)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-5)


def test_mean_token_kl_equals_torch_distributions():
    """The per-token KL over the masked positions, against torch.distributions'
    kl_divergence of the two models' next-token Categoricals; 0 for a model and its copy."""
    from torch.distributions import Categorical, kl_divergence

    from course_utils.preference import mean_token_kl

    p, q = tiny_gpt(0), tiny_gpt(1)
    torch.manual_seed(10)
    idx = torch.randint(0, 16, (2, 9))
    mask = reply_mask([3, 5], [4, 2], 9)
    with torch.no_grad():
        kl = kl_divergence(Categorical(logits=p(idx)[0][:, :-1]),
                           Categorical(logits=q(idx)[0][:, :-1]))  # (B, T - 1): predicts 1..
    expected = kl[mask[:, 1:]].mean().item()
    assert mean_token_kl(p, q, idx, mask) == pytest.approx(expected, rel=1e-5)
    assert expected > 0
    assert mean_token_kl(p, frozen_copy(p), idx, mask) == pytest.approx(0.0, abs=1e-7)


def test_the_dpo_task_trains_with_the_loss_function_it_is_given():
    """DPOTask.loss is the course's dpo_loss by default, and a given loss_fn (the learner's,
    through check.use_mine) otherwise: it receives the policy's and the reference's chosen and
    rejected log-probabilities and beta, and what it returns is the loss."""
    from course_utils.preference import DPOTask, PreferenceData, Preferences, dpo_loss

    model, tok = chat_model()
    prefs = Preferences(prompts=[[1, 2, 3], [4, 5]],
                        replies=[[[6, 7], [8, 9, 10, 11]], [[13, 14, 15], [16]]],
                        rewards=[[0.9, 0.1], [0.2, 0.8]], pairs=[(0, 0, 1), (1, 1, 0)])
    data = PreferenceData(prefs, pad_id=0, reference=model)
    seen = []

    def mine(pc, pr, rc, rr, beta):
        seen.append((pc.detach(), pr.detach(), rc, rr, beta))
        return 3.0 * dpo_loss(pc, pr, rc, rr, beta)[0]

    task = DPOTask(tok, data, data, batch_size=2, beta=0.25)
    batch = data.batch(2, torch.Generator().manual_seed(0))
    course, _ = task.loss(model, batch)
    task.loss_fn = mine
    loss, _ = task.loss(model, batch)
    torch.testing.assert_close(loss, 3.0 * course)
    pc, pr = sequence_logprobs(model, batch[0], batch[1]).detach().chunk(2)
    torch.testing.assert_close(seen[0][0], pc)
    torch.testing.assert_close(seen[0][1], pr)
    torch.testing.assert_close(seen[0][2], batch[2][:2])
    assert seen[0][4] == 0.25
    loss.backward()  # the gradient flows through the given function into the policy
    assert any(p.grad is not None for p in model.parameters())
