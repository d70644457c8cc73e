"""GRPO (notebook 14): group advantages against the statistics module, the k3 KL estimate
against the closed-form KL of torch.distributions, the loss's gradient against its closed
form, rollouts against the course's generate, and a short run that must raise the reward."""

import statistics

import pytest
import torch

from course_utils.model import GPT, GPTConfig
from course_utils.preference import frozen_copy, token_logprobs
from course_utils.rl import Rollout, group_advantages, grpo_loss, k3_kl, rollout
from course_utils.sampling import generate

TINY = dict(vocab_size=8, block_size=16, n_layer=2, n_head=2, n_embd=32)


def tiny_gpt(seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(**TINY))


def test_group_advantages_match_a_hand_computation():
    torch.manual_seed(0)
    rewards = torch.rand(3, 6)
    eps = 1e-4
    got = group_advantages(rewards, eps)
    for row, adv in zip(rewards.tolist(), got):
        mean, std = statistics.mean(row), statistics.stdev(row)  # stdev: sample std, n - 1
        expected = torch.tensor([(r - mean) / (std + eps) for r in row])
        torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(group_advantages(rewards[1]), got[1])  # one group: (G,)
    with pytest.raises(ValueError, match="groups of G >= 2"):
        group_advantages(torch.ones(4, 1))
    with pytest.raises(ValueError, match="groups of G >= 2"):
        group_advantages(torch.ones(2, 2, 2))


def test_equal_rewards_give_zero_advantage_loss_and_gradient():
    """A group whose completions all score the same teaches nothing: advantage 0, and then
    the policy term of the loss and its gradient are 0 (beta=0: the policy term alone; with
    beta > 0 and the policy equal to the reference the KL term adds nothing either)."""
    adv = group_advantages(torch.full((2, 4), 0.7)).flatten()
    assert torch.equal(adv, torch.zeros(8))
    torch.manual_seed(1)
    logprobs = torch.randn(8, 5).log_softmax(-1).requires_grad_(True)
    mask = torch.rand(8, 5) > 0.3
    loss, _ = grpo_loss(logprobs, torch.randn(8, 5), adv, mask, beta=0.0)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logprobs.grad, torch.zeros(8, 5))
    logprobs.grad = None
    loss, kl = grpo_loss(logprobs, logprobs.detach().clone(), adv, mask, beta=0.1)
    loss.backward()
    assert loss.item() == 0.0 and kl.item() == 0.0
    assert torch.equal(logprobs.grad, torch.zeros(8, 5))


def test_k3_estimates_the_kl_divergence_exactly_in_expectation():
    """Averaged over tokens drawn from pi (here: all tokens weighted by pi's probabilities),
    k3 is KL(pi || pi_ref) as torch.distributions computes it in closed form."""
    torch.manual_seed(2)
    for _ in range(5):
        logp = torch.randn(11, dtype=torch.float64).mul(2).log_softmax(0)
        logq = torch.randn(11, dtype=torch.float64).mul(2).log_softmax(0)
        k3 = k3_kl(logp, logq)
        assert (k3 >= 0).all()
        expected = torch.distributions.kl_divergence(
            torch.distributions.Categorical(logits=logp),
            torch.distributions.Categorical(logits=logq))
        torch.testing.assert_close((logp.exp() * k3).sum(), expected)


def test_grpo_gradient_matches_its_closed_form():
    """With pi_old = pi (one update per batch of samples) the ratio is 1 and, per completion
    i of length |o_i| among B, d loss / d log pi(token) = (-A_i + beta * (1 - pi_ref / pi))
    / (|o_i| B) on completion tokens and 0 elsewhere."""
    torch.manual_seed(3)
    B, T, beta = 4, 7, 0.2
    logprobs = (torch.rand(B, T, dtype=torch.float64) * -3).requires_grad_(True)
    ref = torch.rand(B, T, dtype=torch.float64) * -3
    adv = torch.randn(B, dtype=torch.float64)
    mask = torch.zeros(B, T, dtype=torch.bool)
    for i, (start, end) in enumerate([(2, 7), (3, 5), (1, 2), (4, 7)]):
        mask[i, start:end] = True
    loss, _ = grpo_loss(logprobs, ref, adv, mask, beta=beta)
    loss.backward()
    lengths = mask.sum(1, keepdim=True)
    expected = (-adv[:, None] + beta * (1 - torch.exp(ref - logprobs.detach()))) / (lengths * B)
    torch.testing.assert_close(logprobs.grad, torch.where(mask, expected, 0.0))


def test_clipped_tokens_get_no_gradient():
    """PPO's clip: once pi/pi_old leaves [1 - eps, 1 + eps] in the direction the advantage
    pushes, the token's term is the constant (1 +- eps) * A."""
    logprobs = torch.log(torch.tensor([[0.5, 0.5, 0.5, 0.5]])).requires_grad_(True)
    old = torch.log(torch.tensor([[0.5, 0.3, 0.45, 0.8]]))  # ratios 1, 1.67, 1.11, 0.625
    mask = torch.ones(1, 4, dtype=torch.bool)
    loss, _ = grpo_loss(logprobs, logprobs.detach(), torch.tensor([2.0]), mask, old, beta=0.0)
    loss.backward()
    ratio = torch.exp(logprobs.detach() - old)[0]
    # A > 0: clipped where ratio > 1.2; below 1 - eps the unclipped (smaller) term is kept
    torch.testing.assert_close(logprobs.grad[0], torch.tensor([-2.0, 0.0, -2.0, -2.0]) * ratio / 4)
    expected_loss = -(2.0 * torch.minimum(ratio, torch.tensor(1.2))).mean()
    torch.testing.assert_close(loss, expected_loss)


def test_rollout_pads_and_masks_each_completion_up_to_its_stop_token():
    model = tiny_gpt()
    stop, G, max_new = 7, 6, 5
    prompts = [[1, 2], [3], [4, 5], [6, 1, 2]]  # lengths 2, 1, 2, 3: three batches
    out = rollout(model, prompts, G, max_new, stop, generator=torch.Generator().manual_seed(4),
                  pad_id=0)
    assert isinstance(out, Rollout) and out.idx.shape[0] == len(prompts) * G
    lengths = [len(c) for c in out.completions]
    assert any(n < max_new for n in lengths) and max_new in lengths  # both cases are covered
    for r, completion in enumerate(out.completions):
        prompt = prompts[r // G]
        assert stop not in completion[:-1]  # the first stop ends the completion
        assert len(completion) == max_new or completion[-1] == stop
        row = prompt + completion
        assert out.idx[r, :len(row)].tolist() == row
        assert (out.idx[r, len(row):] == 0).all()  # padding
        assert out.mask[r].nonzero().flatten().tolist() == list(range(len(prompt), len(row)))


def test_rollout_samples_what_the_course_generate_samples():
    """Same seed, same tokens: each completion is the start of what sampling.generate draws
    for the same batch (prompts repeated G times), cut after the first stop token."""
    model = tiny_gpt()
    stop, G, max_new = 7, 5, 6
    prompts = [[1, 2], [4, 5]]
    out = rollout(model, prompts, G, max_new, stop, generator=torch.Generator().manual_seed(5))
    batch = torch.tensor(prompts).repeat_interleave(G, dim=0)
    sampled = generate(model, batch, max_new, generator=torch.Generator().manual_seed(5))
    for r, tokens in enumerate(sampled[:, 2:].tolist()):
        if stop in tokens:
            tokens = tokens[:tokens.index(stop) + 1]
        assert out.completions[r] == tokens


def test_rollout_stops_once_every_completion_has_ended():
    """Rigged logits: at step s, row s says the stop token and the other rows say token 1, so
    the rows end one after another; sampling must stop after the last one, not run on to
    max_new_tokens."""
    model, stop, G = tiny_gpt(), 7, 4
    calls = []

    def rig(module, args, logits):
        step = len(calls)
        calls.append(step)
        forced = torch.full_like(logits, -100.0)
        forced[:, -1, 1] = 100.0
        forced[min(step, G - 1), -1, [1, stop]] = torch.tensor([-100.0, 100.0])
        return forced

    model.lm_head.register_forward_hook(rig)
    model.train()
    out = rollout(model, [[1, 2]], G, 10, stop, pad_id=0)
    assert out.completions == [[1] * r + [stop] for r in range(G)]
    assert len(calls) == G  # G model calls, not 10
    assert out.mask.sum(dim=1).tolist() == [1, 2, 3, 4]
    assert model.training  # generation's eval mode was undone


def test_rollout_rejects_bad_input():
    model = tiny_gpt()
    with pytest.raises(ValueError, match="at least one prompt"):
        rollout(model, [], 2, 3, 7)
    with pytest.raises(ValueError, match="at least one prompt"):
        rollout(model, [[1], []], 2, 3, 7)
    with pytest.raises(ValueError, match="group_size and max_new_tokens must be >= 1"):
        rollout(model, [[1]], 0, 3, 7)
    with pytest.raises(ValueError, match="group_size and max_new_tokens must be >= 1"):
        rollout(model, [[1]], 2, 0, 7)
    with pytest.raises(ValueError, match="longer than block_size 16"):
        rollout(model, [[1] * 10], 2, 7, 7)


def test_grpo_loss_rejects_mismatched_shapes():
    x, mask = torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="must match"):
        grpo_loss(x, torch.zeros(2, 4), torch.zeros(2), mask)
    with pytest.raises(ValueError, match="one per completion"):
        grpo_loss(x, x, torch.zeros(2, 3), mask)
    with pytest.raises(ValueError, match="beta and clip_eps must be >= 0"):
        grpo_loss(x, x, torch.zeros(2), mask, beta=-1.0)


def test_tiny_grpo_run_increases_the_reward():
    """Toy verifiable reward: the share of a completion's tokens (stop token included) that
    are token 5. Ten GRPO steps on a tiny random GPT must raise the mean reward of fresh samples
    well above where it started (about 0.12 -> 0.9; a second or two on a laptop CPU)."""
    policy = tiny_gpt()
    ref = frozen_copy(policy)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(5)
    prompts, G, stop = [[1], [2, 3]], 16, 7

    def rewards_of(out):
        return torch.tensor([sum(t == 5 for t in c) / len(c) for c in out.completions])

    def mean_reward():
        return rewards_of(rollout(policy, prompts, 64, 4, stop, generator=gen)).mean().item()

    start = mean_reward()
    for _ in range(10):
        out = rollout(policy, prompts, G, 4, stop, generator=gen)
        adv = group_advantages(rewards_of(out).view(len(prompts), G)).flatten()
        logprobs = token_logprobs(policy, out.idx)
        with torch.no_grad():
            ref_logprobs = token_logprobs(ref, out.idx)
        loss, _ = grpo_loss(logprobs, ref_logprobs, adv, out.mask, beta=0.04)
        opt.zero_grad()
        loss.backward()
        opt.step()
    end = mean_reward()
    assert end > start + 0.3, (start, end)
