"""GRPO (notebook 15): group advantages against the statistics module, the k3 KL estimate
against the closed-form KL of torch.distributions, the loss's gradient against its closed
form, rollouts against the course's generate, and short runs that must raise the reward.
The task: the addition problems, the answer parser and reward, and the accuracy evaluation
against a model rigged to give known answers."""

import math
import random
import re
import statistics

import pytest
import torch

from course_utils.logprobs import token_logprobs
from course_utils.model import GPT, GPTConfig
from course_utils.preference import frozen_copy
from course_utils.rl import (
    ADDITION_QUESTION,
    GRPOTask,
    Problem,
    addition_problems,
    answer_reward,
    evaluate,
    format_reward,
    group_advantages,
    grpo_loss,
    k3_kl,
    parse_answer,
    prompt_ids,
    reasoning_reward,
)
from course_utils.sampling import Rollout, generate, rollout

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


def test_clipped_loss_equals_a_hand_computation():
    """Known numbers, worked by hand. Ratios pi/pi_old [[1.5, 0.9], [0.7, 1.0]], advantages
    [1, -2], clip_eps 0.2, row 1's second token masked out. Per token min(r A, clip(r) A):
    row 0: min(1.5, 1.2) = 1.2 and 0.9; row 1: min(-1.4, 0.8 * -2 = -1.6) = -1.6.
    With beta 0.1 and pi_ref = 2 pi on row 0's first token only: k3 = 2 - ln 2 - 1 = 0.30685,
    so that token's objective is 1.2 - 0.030685 = 1.169315.
    Per completion then over completions: ((1.169315 + 0.9) / 2 + (-1.6)) / 2 = -0.282671.
    Over all counted tokens (token_level): (1.169315 + 0.9 - 1.6) / 3 = 0.156438.
    The loss is minus the objective; kl is the mean k3 over the 3 counted tokens, 0.102284."""
    old = torch.log(torch.tensor([[0.2, 0.5], [0.5, 0.3]], dtype=torch.float64))
    logprobs = old + torch.log(torch.tensor([[1.5, 0.9], [0.7, 1.0]], dtype=torch.float64))
    ref = logprobs.clone()
    ref[0, 0] += math.log(2.0)
    mask = torch.tensor([[True, True], [True, False]])
    adv = torch.tensor([1.0, -2.0], dtype=torch.float64)
    loss, kl = grpo_loss(logprobs, ref, adv, mask, old, beta=0.1, clip_eps=0.2)
    assert loss.item() == pytest.approx(0.282671, abs=1e-6)
    assert kl.item() == pytest.approx(0.102284, abs=1e-6)
    loss, _ = grpo_loss(logprobs, ref, adv, mask, old, beta=0.1, clip_eps=0.2,
                        token_level=True)
    assert loss.item() == pytest.approx(-0.156438, abs=1e-6)
    loss, kl = grpo_loss(logprobs, None, adv, mask, old, beta=0.0, clip_eps=0.2)
    assert loss.item() == pytest.approx(-((1.2 + 0.9) / 2 - 1.6) / 2) and kl.item() == 0.0


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


def fives_task(fmt, **kw):
    """GRPO on a toy verifiable reward: the share of a reply's characters that are digits."""
    problems = {"train": addition_problems(20, digits=1, seed=0),
                "val": addition_problems(4, digits=1, seed=1)}
    settings = dict(group_size=8, batch_size=2, max_new_tokens=4, beta=0.0)
    return GRPOTask(fmt, problems,
                    lambda p, text: sum(c.isdigit() for c in text) / max(1, len(text)),
                    **{**settings, **kw})


def grpo_config(tmp_path, name="grpo", **kw):
    from course_utils.config import TrainConfig

    settings = dict(out_dir=str(tmp_path / name), block_size=64, n_layer=1, n_embd=32,
                    max_iters=12, learning_rate=2e-2, min_lr=2e-2, warmup_iters=0,
                    weight_decay=0.0, eval_interval=6, eval_iters=1)
    return TrainConfig.from_preset("smoke", **{**settings, **kw})


def test_grpo_through_the_training_loop_raises_the_reward_and_resumes_exactly(tmp_path):
    """GRPO is a task of the one training loop: on the toy reward the mean sampled reward it
    logs climbs, the share of mixed groups and the lengths are logged, and a run stopped and
    resumed samples and trains exactly as a straight one (sampling uses the global generator,
    whose state the checkpoint keeps)."""
    from course_utils.train import train

    fmt = chat_format()
    r = train(grpo_config(tmp_path), progress=False, task=fives_task(fmt))
    rewards = r["history"]["metrics"]["reward"]
    assert set(r["history"]["metrics"]) == {"reward", "mixed", "kl", "length"}
    assert len(rewards) == 12 and all(1 <= n <= 4 for n in r["history"]["metrics"]["length"])
    assert statistics.mean(rewards[-4:]) > statistics.mean(rewards[:4]) + 0.2, rewards
    train(grpo_config(tmp_path, "cut"), stop_at=6, progress=False, task=fives_task(fmt))
    resumed = train(grpo_config(tmp_path, "cut"), resume=True, progress=False,
                    task=fives_task(fmt))
    assert resumed["history"]["loss"] == r["history"]["loss"]
    assert resumed["history"]["metrics"]["reward"] == rewards


def test_grpo_groups_whose_rewards_tie_teach_nothing():
    """Every reply scores the same: the groups are left out of the loss (advantage 0), so the
    loss and every gradient are 0."""
    fmt = chat_format()
    task = fives_task(fmt)
    task.reward = lambda p, text: 0.5
    policy = GPT(GPTConfig(vocab_size=fmt.tokenizer.vocab_size, block_size=64, n_layer=1,
                           n_head=2, n_embd=16))
    batch = task.batch("train", torch.Generator().manual_seed(0), policy)
    # left out before the forward pass: one group of 8 stays, fully masked, for an exact 0
    assert not batch.mask.any() and torch.equal(batch.advantages, torch.zeros(8))
    assert batch.idx.shape[0] == 8 and batch.rewards.shape == (2, 8)
    loss, metrics = task.loss(policy, batch)
    loss.backward()
    assert loss.item() == 0.0 and metrics["mixed"] == 0.0 and metrics["reward"] == 0.5
    assert all(p.grad is None or not p.grad.any() for p in policy.parameters())


def test_grpo_drops_tied_groups_and_loses_nothing_by_it():
    """Only the groups with mixed rewards go through the forward and backward passes; the loss
    and its gradient equal grpo_loss on the whole rollout with the tied groups masked out
    (sampled again here from the same seed)."""
    fmt = chat_format()
    task = fives_task(fmt, batch_size=4)
    tied = {p.question for p in task.problems["train"][::2]}
    digits = task.reward
    task.reward = lambda p, text: 0.25 if p.question in tied else digits(p, text)
    policy = GPT(GPTConfig(vocab_size=fmt.tokenizer.vocab_size, block_size=64, n_layer=1,
                           n_head=2, n_embd=16))
    torch.manual_seed(7)
    batch = task.batch("train", torch.Generator().manual_seed(3), policy)
    pick = torch.randint(20, (4,), generator=torch.Generator().manual_seed(3)).tolist()
    torch.manual_seed(7)
    out = rollout(policy, [task.prompts["train"][i] for i in pick], 8, 4, fmt.im_end)
    rewards = torch.tensor([task.reward(task.problems["train"][pick[r // 8]], task._text(c))
                            for r, c in enumerate(out.completions)]).view(4, 8)
    assert torch.equal(rewards, batch.rewards)
    mixed = (rewards != rewards[:, :1]).any(dim=1)
    assert 0 < int(mixed.sum()) < 4  # both kinds of group are in this batch
    assert batch.idx.shape[0] == 8 * int(mixed.sum())
    full_mask = out.mask & mixed.repeat_interleave(8)[:, None]
    expected, _ = grpo_loss(token_logprobs(policy, out.idx), None,
                            group_advantages(rewards).flatten(), full_mask, beta=0.0,
                            token_level=True)
    expected.backward()
    grads = [p.grad.clone() for p in policy.parameters()]
    policy.zero_grad()
    loss, _ = task.loss(policy, batch)
    loss.backward()
    torch.testing.assert_close(loss, expected)
    for p, g in zip(policy.parameters(), grads):
        torch.testing.assert_close(p.grad, g)


def test_grpo_iterations_reuse_a_batch_and_the_clipped_ratio_acts():
    """With iterations=2 the second step trains on the first step's samples, whose
    old_logprobs are those of the policy before the first update: the ratio moves off 1."""
    fmt = chat_format()
    task = fives_task(fmt, iterations=2)
    policy = GPT(GPTConfig(vocab_size=fmt.tokenizer.vocab_size, block_size=64, n_layer=1,
                           n_head=2, n_embd=16))
    opt = torch.optim.SGD(policy.parameters(), lr=0.5)
    g = torch.Generator().manual_seed(0)
    first = task.batch("train", g, policy)
    task.loss(policy, first)[0].backward()
    opt.step()
    again = task.batch("train", g, policy)
    assert again is first
    ratio = torch.exp(token_logprobs(policy, again.idx) - again.old_logprobs)[again.mask]
    assert (ratio - 1).abs().max() > 1e-3
    task.loss(policy, again)
    assert task.batch("train", g, policy) is not first  # used twice: a new batch


# ----------------------------------------------------------------------------- the task


def operands(problem):
    a, b = map(int, re.fullmatch(r"What is (\d+) \+ (\d+)\?", problem.question).groups())
    return a, b


def test_addition_problems_are_seeded_distinct_and_right():
    problems = addition_problems(300, digits=2, seed=7)
    assert problems == addition_problems(300, digits=2, seed=7)
    assert problems[:40] == addition_problems(40, digits=2, seed=7)  # a prefix, whatever n
    assert problems != addition_problems(300, digits=2, seed=8)
    assert len({p.question for p in problems}) == 300
    for p in problems:
        a, b = operands(p)
        assert 10 <= a <= 99 and 10 <= b <= 99 and p.answer == a + b
        assert p.question == ADDITION_QUESTION.format(a=a, b=b)
    pairs = [operands(p) for p in problems]
    assert len({a for a, _ in pairs}) > 60  # spread over the range, not stuck
    three = addition_problems(50, digits=3, seed=7)
    assert all(100 <= x <= 999 for p in three for x in operands(p))
    assert {operands(p) for p in addition_problems(100, digits=1, seed=0)} == {
        (a, b) for a in range(10) for b in range(10)}  # every 1-digit pair once


def test_addition_problems_leave_out_the_held_out_set():
    test = addition_problems(200, seed=1)
    train = addition_problems(3000, seed=2, exclude=test)
    assert not {p.question for p in train} & {p.question for p in test}
    # without the exclusion, the same seed draws some of the test problems
    assert {p.question for p in addition_problems(3000, seed=2)} & {p.question for p in test}
    nearly_all = addition_problems(95, digits=1, seed=3, exclude=addition_problems(5, 1, 4))
    assert len(nearly_all) == 95
    with pytest.raises(ValueError, match="only 100 pairs and 5 of them are excluded"):
        addition_problems(96, digits=1, exclude=addition_problems(5, 1, 4))
    with pytest.raises(ValueError, match="digits must be >= 1"):
        addition_problems(3, digits=0)


@pytest.mark.parametrize("text,expected", [
    ("68", 68), (" 68\n", 68), ("The answer is 68.", 68), ("23 + 45 = 68", 68),
    ("68 is the sum of 23 and 45", 45), ("no idea", None), ("", None), ("-7", -7),
    ("5-3", 3), ("1,098", 1098), ("It is 1,234,567!", 1234567), ("12, 345", 345),
    ("12,3456", 3456), ("68.5", None), ("68.0", 68), ("68.", 68), ("x2", 2),
])
def test_parse_answer_reads_the_last_integer(text, expected):
    assert parse_answer(text) == expected


@pytest.mark.parametrize("text,expected", [
    ("<think>\n2+4+0=6 -> 6\n1+3+0=4 -> 46\n</think>\n46", 46),
    ("<think>\n1+2=3\n</think>\nThe answer is 5.", 5),
    ("<think>\n2+4+0=6 -> 6\n1+3+0=4 -> 46", None),  # cut off while thinking
    ("<think>\n9\n</think>\n", None), ("no think 12", 12),
    ("<think>a</think> 1 <think>b</think> 2", 2),
])
def test_parse_answer_reads_after_the_reasoning(text, expected):
    assert parse_answer(text) == expected


@pytest.mark.parametrize("text,expected", [
    ("<think>\n2+4+0=6 -> 6\n1+3+0=4 -> 46\n</think>\n46", 1.0),
    ("<think>\nanything at all\n</think>\n-3", 1.0),
    ("<think>\n</think>\n46", 0.0),  # no reasoning line
    ("<think>\n2+4=6\n</think>\n46 is the answer", 0.0),  # words after the number
    ("<think>\n2+4=6\n</think>\n", 0.0),  # no answer
    ("<think>\n2+4=6\n</think>46", 0.0),  # no newline before it
    ("46", 0.0), ("The answer is 46", 0.0), ("<think>\n2+4=6\n", 0.0),
    ("\n<think>\n2+4=6\n</think>\n46", 0.0),  # something before <think>
])
def test_format_reward_checks_the_shape_only(text, expected):
    assert format_reward(text) == expected


def test_reasoning_reward_adds_the_format_to_the_answer():
    p = Problem("What is 12 + 34?", 46)
    good = "<think>\n2+4+0=6 -> 6\n1+3+0=4 -> 46\n</think>\n46"
    assert reasoning_reward(p, good) == pytest.approx(1.1)
    assert reasoning_reward(p, "46") == 1.0  # right, another shape
    assert reasoning_reward(p, good.replace("\n46", "\n47").replace("-> 47", "-> 46")) \
        == pytest.approx(0.1)  # well formed, wrong
    assert reasoning_reward(p, "no idea") == 0.0
    assert reasoning_reward(p, good, format_weight=0.5) == pytest.approx(1.5)


def test_prompt_ids_put_the_shots_before_the_question():
    fmt = chat_format()
    ids = prompt_ids(fmt, "What is 2 + 3?", shots=(("What is 1 + 1?", "2"),
                                                    ("What is 4 + 4?", "8")))
    assert fmt.tokenizer.decode(ids) == (
        "<|im_start|>user\nWhat is 1 + 1?<|im_end|>\n<|im_start|>assistant\n2<|im_end|>\n"
        "<|im_start|>user\nWhat is 4 + 4?<|im_end|>\n<|im_start|>assistant\n8<|im_end|>\n"
        "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n")


def test_answer_reward_is_exact_match_of_the_final_answer():
    assert answer_reward("68", 68) == 1.0
    assert answer_reward("23 + 45 = 68", 68) == 1.0
    assert answer_reward("68 + 1 = 69", 68) == 0.0  # the final answer counts
    assert answer_reward("The sum of 23 and 45 is", 68) == 0.0  # cut off before the answer
    assert answer_reward("sixty-eight", 68) == 0.0
    assert answer_reward("1,098", 1098) == 1.0


# A model rigged to answer: at its first call (the prompt) it reads each row's question and
# picks a reply by rule; then it says that reply token by token, then <|im_end|>.
TEXT = "abcdefghijklmnopqrstuvwxyzW ?+-=,.0123456789\n"


def chat_format(system=None):
    from course_utils.chat import ChatFormat
    from course_utils.sft import chat_tokenizer
    from course_utils.tokenization import CharTokenizer

    return ChatFormat(chat_tokenizer(CharTokenizer.from_text(TEXT)), default_system=system)


def rigged_model(fmt, reply_for):
    tok = fmt.tokenizer
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=128, n_layer=1, n_head=2,
                          n_embd=16))
    scripts, calls = [], []

    def hook(module, args, kwargs, output):
        idx = args[0]
        if idx.size(1) > 1:  # the prompt: choose each row's reply
            scripts.clear()
            for row in idx.tolist():
                question = re.findall(r"What is \d+ \+ \d+\?", tok.decode(row))[-1]
                scripts.append(tok.encode(reply_for(question)) + [fmt.im_end])
            calls.clear()
        step = len(calls)
        calls.append(step)
        logits = torch.full((idx.size(0), idx.size(1), tok.vocab_size), -50.0)
        for r, script in enumerate(scripts):
            logits[r, -1, script[min(step, len(script) - 1)]] = 50.0
        return logits, output[1]

    model.register_forward_hook(hook, with_kwargs=True)
    return model


def test_evaluate_scores_each_reply_whatever_the_batching():
    fmt = chat_format()
    problems = addition_problems(5, digits=1, seed=0) + addition_problems(6, digits=2, seed=0)
    answers = {p.question: p.answer for p in problems}
    rng = random.Random(0)
    kinds = {p.question: rng.choice(["right", "wrong", "chatty", "long"]) for p in problems}

    def reply_for(question):
        a = answers[question]
        return {"right": f"{a}", "wrong": f"{a + 1}", "chatty": f"it is {a}.",
                "long": f"the sum of the two is {a}"}[kinds[question]]  # cut before its answer

    expected_correct = [kinds[p.question] in ("right", "chatty") for p in problems]
    assert 0 < sum(expected_correct) < len(problems)
    for batch_size in (4, 50):  # prompts of two lengths, in chunks of two sizes
        ev = evaluate(rigged_model(fmt, reply_for), fmt, problems, max_new_tokens=12,
                      batch_size=batch_size)
        assert ev.correct == expected_correct
        assert ev.accuracy == pytest.approx(sum(expected_correct) / len(problems))
        for p, reply, stopped in zip(problems, ev.replies, ev.stopped):
            full = reply_for(p.question)
            assert stopped == (len(full) < 12)  # a reply and its <|im_end|> in 12 tokens
            assert reply == (full if stopped else full[:12])


def test_evaluate_prompts_through_the_chat_template():
    fmt = chat_format(system="be brief")
    p = Problem("What is 2 + 3?", 5)
    assert prompt_ids(fmt, p.question) == fmt.encode([{"role": "user", "content": p.question}])
    text = fmt.tokenizer.decode(prompt_ids(fmt, p.question, system="add"))
    assert text == ("<|im_start|>system\nadd<|im_end|>\n<|im_start|>user\nWhat is 2 + 3?"
                    "<|im_end|>\n<|im_start|>assistant\n")
    seen = []
    ev = evaluate(rigged_model(fmt, lambda q: seen.append(q) or "5"), fmt, [p],
                  system="add")
    assert ev.accuracy == 1.0 and ev.replies == ["5"] and seen == [p.question]
    with pytest.raises(ValueError, match="needs problems"):
        evaluate(rigged_model(fmt, str), fmt, [])


def test_a_grpo_task_fingerprint_follows_its_problems_and_its_own_settings():
    """finished_or_train reuses a GRPO run only for the same task: the problems, the reward
    and the settings the task keeps itself (beta, group size ...) are in its fingerprint."""
    fmt = chat_format()
    same = fives_task(fmt).fingerprint()
    assert fives_task(fmt).fingerprint() == same  # a task built again: the same digest
    assert fives_task(fmt, beta=0.04).fingerprint() != same
    assert fives_task(fmt, group_size=4).fingerprint() != same
    other = fives_task(fmt)
    other.problems = {**other.problems, "train": other.problems["train"][1:]}
    assert other.fingerprint() != same
