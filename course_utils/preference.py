"""Tuning a chat model with preferences: a reward model and DPO (notebook 14).

The data are pairs of replies to one prompt, one ``chosen`` and one ``rejected`` by a judge.
Two ways to learn from them:

- A reward model (Ouyang et al., 2022, "Training language models to follow instructions with
  human feedback", InstructGPT): the SFT model with a scalar head, trained with the
  Bradley-Terry loss so that the chosen reply scores higher than the rejected one.
- Direct Preference Optimization (Rafailov et al., 2023, "Direct Preference Optimization: Your
  Language Model is Secretly a Reward Model"): no reward model and no sampling; the policy is
  trained directly on the pairs, against a frozen copy of the SFT model (the reference).

Sequences are token ids ``idx`` ``(B, T)`` with a boolean ``mask`` ``(B, T)`` that is True on
the reply's tokens, the same mask that restricts the SFT loss to the assistant's tokens.

Where the pairs come from (notebook 14), also in this module:

- :class:`ReplyReward`: a score of a reply that a program computes and a person can read (the
  share of its words that are words of the corpus, a length in a target range, ending with
  ``<|im_end|>``). It stands in for the human raters of InstructGPT.
- :func:`preference_pairs`: replies sampled from the chat model itself for prompts of the
  Shakespeare conversations (batched, with the KV cache), scored, and the best and the worst
  reply of each prompt kept as a pair when their rewards differ by a clear margin.
- :class:`PreferenceData`: the pairs as batches for the training loop, with the reference
  model's log-probabilities computed once (TRL's ``precompute_ref_log_probs``); and
  :func:`dpo_batch_loss`, the DPO loss of such a batch. The training loop
  (:func:`course_utils.train.train`) runs DPO when the dataset is a preference dataset
  (:data:`PREFERENCE_DATASETS`).
"""

from __future__ import annotations

import copy
import functools
import re
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .bpe import tokenizer_from_dict
from .chat import IM_END, IM_START, ChatFormat
from .checkpoint import build_model, init_sha256, start_model
from .corpora import load_text
from .datasets import VAL_FRACTION, pad_right
from .logprobs import check_mask, masked_mean, sequence_logprobs
from .model import GPTConfig
from .sampling import rollout
from .sft import shakespeare_conversations
from .tasks import Task, data_sha256, device_of
from .utils import eval_mode, progress_bar, resolve_device

# The preference datasets the training loop knows, and the corpus of conversations whose
# prompts each one samples replies for (from the --init-from chat model, see preference_pairs).
PREFERENCE_DATASETS = {"tinyshakespeare-prefs": "tinyshakespeare"}
MAX_REPLY_TOKENS = 64  # longest sampled reply, in tokens (at most half the model's context)


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
             ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, beta: float = 0.1):
    """The DPO loss (Rafailov et al., 2023, eq. 7) -> ``(loss, chosen_rewards, rejected_rewards)``.

    Inputs are ``(B,)`` sequence log-probabilities (:func:`sequence_logprobs`) of the chosen
    and rejected replies under the policy and under the frozen reference model. The implicit
    reward of a reply is ``beta * (log pi(y|x) - log pi_ref(y|x))``; the loss is the mean over
    the batch of ``-log sigmoid(reward_chosen - reward_rejected)``, the Bradley-Terry loss of
    the implicit rewards. ``beta`` sets how far the policy may move from the reference (small:
    far). The rewards are returned detached, ``(B,)`` each, for logging.

    Raises ``ValueError`` for ``beta <= 0``.
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0 (typically 0.1 to 0.5), got {beta}")
    chosen_rewards = beta * (policy_chosen - ref_chosen)
    rejected_rewards = beta * (policy_rejected - ref_rejected)
    loss = -F.logsigmoid(chosen_rewards - rejected_rewards).mean()
    return loss, chosen_rewards.detach(), rejected_rewards.detach()


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """Reward-model loss: mean of ``-log sigmoid(r_chosen - r_rejected)`` over ``(B,)`` scores.

    Under the Bradley-Terry model (Bradley & Terry, 1952) the chosen reply wins with
    probability ``sigmoid(r_chosen - r_rejected)``; this is its negative log-likelihood, as in
    InstructGPT (Ouyang et al., 2022, eq. 1). Only differences of scores matter.
    """
    return -F.logsigmoid(r_chosen - r_rejected).mean()


class RewardModel(nn.Module):
    """A copy of a GPT whose LM head is replaced by a scalar head ``nn.Linear(n_embd, 1)``.

    ``forward(idx (B, T), mask (B, T) bool) -> (B,)`` scores: the head reads the final hidden
    state at the last position where ``mask`` is True (the reply's last token, which has seen
    the whole prompt and reply). Tokens after it (padding) do not change the score. The given
    model is not changed; the copy starts from its weights (InstructGPT starts the reward model
    from the SFT model).

    Raises ``ValueError`` for a mask without a True position in some row.
    """

    def __init__(self, gpt: nn.Module):
        super().__init__()
        self.gpt = copy.deepcopy(gpt)
        self.gpt.lm_head = nn.Linear(gpt.config.n_embd, 1)  # also unties it from wte

    def forward(self, idx: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if not mask.any(dim=1).all():
            raise ValueError("every row of mask needs at least one True position (the reply)")
        scores, _ = self.gpt(idx)  # (B, T, 1)
        positions = torch.arange(idx.size(1), device=idx.device)
        last = torch.where(mask, positions, -1).amax(dim=1)  # (B,) last reply position
        return scores[torch.arange(idx.size(0), device=idx.device), last, 0]


def frozen_copy(model: nn.Module) -> nn.Module:
    """A reference model: a deep copy of ``model`` in eval mode that takes no gradients.

    Its parameters have ``requires_grad=False`` and share no storage with ``model``, so
    training the policy leaves the reference where it started, as DPO and GRPO need.
    """
    ref = copy.deepcopy(model).eval()
    ref.requires_grad_(False)
    return ref


def dpo_batch_loss(policy: nn.Module, idx: torch.Tensor, mask: torch.Tensor,
                   ref_logps: torch.Tensor, beta: float, loss_fn=None) -> torch.Tensor:
    """The DPO loss of one batch of :class:`PreferenceData` (what the training loop calls).

    ``idx``, ``mask`` ``(2B, T)``: the ``B`` chosen sequences, then the ``B`` rejected ones of
    the same pairs; ``ref_logps`` ``(2B,)`` their log-probabilities under the reference, in
    the same order. Returns the scalar :func:`dpo_loss` (gradients flow into ``policy``), or
    ``loss_fn(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)`` (a scalar
    tensor, e.g. the learner's ``dpo_loss`` of notebook 14) when it is given.
    """
    chosen, rejected = sequence_logprobs(policy, idx, mask).chunk(2)
    ref_chosen, ref_rejected = ref_logps.chunk(2)
    if loss_fn is not None:
        return loss_fn(chosen, rejected, ref_chosen, ref_rejected, beta)
    return dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta)[0]


@torch.no_grad()
def mean_token_kl(policy: nn.Module, reference: nn.Module, idx: torch.Tensor,
                  mask: torch.Tensor) -> float:
    """``KL(policy || reference)`` per reply token, in nats, averaged over the masked tokens.

    At each position ``t`` where ``mask`` is True, the two models' next-token distributions
    given ``idx[:, :t]`` are compared in full (a sum over the vocabulary, not an estimate from
    the sampled token). Sample ``idx`` from ``policy`` to measure how far it has moved from
    ``reference`` where it actually goes. Raises ``ValueError`` for a bad ``mask`` (see
    :func:`sequence_logprobs`).
    """
    check_mask(idx, mask)
    logp = F.log_softmax(policy(idx)[0][:, :-1].float(), dim=-1)  # predicts positions 1..T-1
    logq = F.log_softmax(reference(idx)[0][:, :-1].float(), dim=-1)
    kl = (logp.exp() * (logp - logq)).sum(dim=-1)  # (B, T - 1)
    return masked_mean(kl, mask[:, 1:]).item()


# ------------------------------------------------------------------ a reward you can read
_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)*")  # a word: letters, inner apostrophes (o'er)


def words(text: str) -> list[str]:
    """The words of ``text``, lower-cased: runs of letters with inner apostrophes."""
    return [w.lower() for w in _WORD.findall(text)]


@dataclass(frozen=True)
class ReplyReward:
    """A reward a program computes and a person can read: ``reward(text, stopped) -> [0, 1]``.

    The mean of three scores, each from 0 to 1 (:meth:`parts`):

    - ``real words``: the share of the reply's words that are words of the corpus's training
      text (``vocabulary``); a small model makes up words ("prisonerable"), and this counts
      them against it. A reply without words scores 0.
    - ``length``: 1 for ``min_words`` to ``max_words`` words, else ``n / min_words`` below
      and ``max_words / n`` above the range.
    - ``stops``: 1 when the reply ended with ``<|im_end|>`` (``stopped``), else 0.

    It stands in for the human raters who compared replies for InstructGPT (Ouyang et al.,
    2022): cheap, exact and repeatable, and, like any reward, it rewards exactly what it
    measures and nothing else (sense, for one, it cannot see).
    """

    vocabulary: frozenset
    min_words: int = 5
    max_words: int = 25

    @classmethod
    def from_corpus(cls, name: str = "tinyshakespeare", **kwargs) -> ReplyReward:
        """The words of the training text (the first 90%) of a registry corpus; ``kwargs``
        set ``min_words``/``max_words``."""
        text = load_text(name)
        return cls(frozenset(words(text[: int(len(text) * (1 - VAL_FRACTION))])), **kwargs)

    def parts(self, text: str, stopped: bool) -> dict[str, float]:
        """The three scores of a reply: ``{"real words", "length", "stops"}``."""
        found = words(text)
        n = len(found)
        real = sum(w in self.vocabulary for w in found) / n if n else 0.0
        length = (n / self.min_words if n < self.min_words
                  else self.max_words / n if n > self.max_words else 1.0)
        return {"real words": real, "length": length, "stops": float(stopped)}

    def __call__(self, text: str, stopped: bool) -> float:
        parts = self.parts(text, stopped)
        return sum(parts.values()) / len(parts)


# ------------------------------------------------------------------ pairs from the model itself
@dataclass
class Preferences:
    """Sampled replies to ``N`` prompts and the pairs made of them, for one split.

    - ``prompts``: ``N`` lists of ids, each a user message and ``<|im_start|>assistant\\n``;
    - ``replies``: ``N x G`` lists of reply ids, ending with ``<|im_end|>`` where the reply
      stopped; ``rewards``: ``N x G`` their rewards;
    - ``pairs``: ``(prompt, chosen, rejected)`` indices: per prompt the best and the worst
      reply, where their rewards differ by at least the margin (or the pair another rule
      chose, see :func:`sample_preferences`);
    - ``stopped``: ``N x G``: did the reply end with ``<|im_end|>`` before the token limit
      (``None`` when not recorded).
    """

    prompts: list
    replies: list
    rewards: list
    pairs: list
    stopped: list | None = None


def chat_prompts(fmt: ChatFormat, conversations, n: int, max_len: int, seed: int) -> list:
    """``n`` prompts (ids, fewer if there are not enough): the first user turn of each
    conversation, in a random order seeded by ``seed``, as a ChatML user message followed by
    ``<|im_start|>assistant\n``; prompts longer than ``max_len`` tokens are skipped."""
    order = torch.randperm(len(conversations), generator=torch.Generator().manual_seed(seed))
    prompts = []
    for i in order.tolist():
        ids = fmt.encode([{"role": "user", "content": conversations[i].messages[0]["content"]}])
        if len(ids) <= max_len:
            prompts.append(ids)
        if len(prompts) == n:
            break
    return prompts


def best_and_worst(margin: float):
    """The pairing rule of :func:`sample_preferences` by default: ``rule(rewards, lengths,
    stopped) -> (chosen, rejected) | None``, the best and the worst reply of a prompt (the
    first of equals), or ``None`` when their rewards differ by less than ``margin``."""
    def rule(rewards, lengths, stopped):
        best = max(range(len(rewards)), key=rewards.__getitem__)
        worst = min(range(len(rewards)), key=rewards.__getitem__)
        return (best, worst) if rewards[best] - rewards[worst] >= margin else None

    return rule


def sample_preferences(model: nn.Module, fmt: ChatFormat, prompts: list, reward,
                       samples: int, margin: float, max_new_tokens: int,
                       temperature: float = 1.0, generator: torch.Generator | None = None,
                       split: str = "train", pair=None, chunk_size: int | None = None,
                       progress: bool = False) -> Preferences:
    """Sample ``samples`` replies per prompt, score them with ``reward(text, stopped)``, and
    pair the best with the worst reply of each prompt when they differ by ``margin`` or more.

    ``reward`` is one function for every prompt, or a list of them, one per prompt (a reward
    that depends on the prompt, such as the instructions it gives). ``pair``, when given,
    replaces the best-and-worst rule (:func:`best_and_worst`): ``pair(rewards, lengths,
    stopped) -> (chosen, rejected) | None`` per prompt, with its replies' rewards, lengths in
    tokens and whether each ended with ``<|im_end|>``.

    Sampling is :func:`course_utils.sampling.rollout` (prompts of any lengths in one
    left-padded batch, the KV cache, each reply up to ``<|im_end|>`` or ``max_new_tokens``),
    ``chunk_size`` prompts per batch (all at once when ``None``), at ``temperature`` 1: the
    replies come from the model's own distribution, the one DPO's reference stands for.
    ``progress`` shows a bar over the batches.

    Raises ``ValueError`` when no prompt gives a pair (for the default rule: all its replies
    tied, within ``margin``), naming what to change, or for a list of rewards of another
    length than ``prompts``.
    """
    if not prompts:
        raise ValueError(f"no {split} prompt leaves room for a reply of {max_new_tokens} tokens "
                         f"in the model's context: the model's block_size is too small")
    rewards_of = list(reward) if isinstance(reward, (list, tuple)) else [reward] * len(prompts)
    if len(rewards_of) != len(prompts):
        raise ValueError(f"one reward function per prompt needed: {len(rewards_of)} for "
                         f"{len(prompts)} prompts")
    rule = best_and_worst(margin) if pair is None else pair
    chunk = chunk_size or len(prompts)
    replies, rewards, stops, pairs = [], [], [], []
    bar = progress_bar(total=len(prompts), desc=f"{split} prompts", unit="prompt",
                       disable=not progress)
    for k in range(0, len(prompts), chunk):
        out = rollout(model, prompts[k:k + chunk], samples, max_new_tokens, fmt.im_end,
                      temperature=temperature, generator=generator)
        for j in range(len(out.completions) // samples):
            i = k + j
            group = out.completions[j * samples:(j + 1) * samples]
            stopped = [bool(ids) and ids[-1] == fmt.im_end for ids in group]
            scores = [float(rewards_of[i](fmt.tokenizer.decode(ids[:-1] if s else ids), s))
                      for ids, s in zip(group, stopped)]
            chosen = rule(scores, [len(ids) for ids in group], stopped)
            if chosen is not None:
                pairs.append((i, *chosen))
            replies.append(group)
            rewards.append(scores)
            stops.append(stopped)
        bar.update(min(chunk, len(prompts) - k))
    bar.close()
    if not pairs:
        why = (f"the best and the worst of its {samples} sampled replies differ in reward by "
               f"less than the margin {margin} (all tied); lower --pref-margin, sample more "
               f"replies (--pref-samples), or start from a chat model whose replies differ"
               if pair is None else
               f"the pairing rule found no pair among its {samples} sampled replies; sample "
               f"more replies (--pref-samples) or longer ones (--pref-max-tokens)")
        raise ValueError(f"no preference pairs: for each of the {len(prompts)} {split} "
                         f"prompts, {why}")
    return Preferences(prompts, replies, rewards, pairs, stops)


def preference_pairs(model: nn.Module, tokenizer, n_prompts: int = 512, samples: int = 8,
                     margin: float = 0.1, seed: int = 1337, corpus: str = "tinyshakespeare",
                     reward=None, max_tokens: int = MAX_REPLY_TOKENS,
                     temperature: float = 1.0) -> tuple[Preferences, Preferences]:
    """``(train, val)`` :class:`Preferences` sampled from the chat ``model``.

    Prompts are the first user turns of the conversations of ``corpus`` (notebook 13's
    :func:`course_utils.sft.shakespeare_conversations`): ``n_prompts`` from the training
    conversations and ``max(1, n_prompts // 4)`` from the validation ones, drawn in a random
    order seeded by ``seed``, as is the sampling (at ``temperature``). Replies are at most
    ``max_tokens`` tokens (and at most half the context). ``reward`` defaults to
    :meth:`ReplyReward.from_corpus` of ``corpus``.

    Raises ``ValueError`` for a tokenizer without the ChatML tokens (not a chat model) and
    when a split gets no pair (see :func:`sample_preferences`).
    """
    fmt = ChatFormat(tokenizer)
    reward = reward if reward is not None else ReplyReward.from_corpus(corpus)
    budget = min(max_tokens, model.config.block_size // 2)
    train_conv, val_conv = shakespeare_conversations(corpus)
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    out = []
    for split, convs, n in (("train", train_conv, n_prompts),
                            ("val", val_conv, max(1, n_prompts // 4))):
        prompts = chat_prompts(fmt, convs, n, model.config.block_size - budget, seed)
        out.append(sample_preferences(model, fmt, prompts, reward, samples, margin, budget,
                                      temperature=temperature, generator=gen, split=split))
    return out[0], out[1]


class PreferenceData:
    """Preference pairs as batches for the training loop (:func:`course_utils.train.train`).

    Each pair is two sequences, prompt + chosen reply and prompt + rejected reply, with a mask
    that is True on the reply's tokens (``<|im_end|>`` included). ``ref_logps`` ``(2, P)``
    holds their log-probabilities under ``reference`` (row 0 chosen, row 1 rejected),
    computed once here, in batches, without gradients: the reference never changes, so the
    loop needs no second model (TRL's ``precompute_ref_log_probs``).

    :meth:`batch` draws pairs at random (with replacement) and returns ``(idx, mask,
    ref_logps)``: ``idx``/``mask`` ``(2B, T)``, the ``B`` chosen rows first, padded on the
    right with ``pad_id`` (mask False there); ``ref_logps`` ``(2B,)`` in the same order, as
    :func:`dpo_batch_loss` takes them. Raises ``ValueError`` for no pairs.
    """

    def __init__(self, prefs: Preferences, pad_id: int, reference: nn.Module,
                 batch_size: int = 64):
        if not prefs.pairs:
            raise ValueError("no preference pairs to train on")
        self.prefs, self.pad_id = prefs, pad_id
        self.sequences = []  # (chosen ids, rejected ids, prompt length) per pair
        for i, c, r in prefs.pairs:
            prompt = prefs.prompts[i]
            self.sequences.append((prompt + prefs.replies[i][c], prompt + prefs.replies[i][r],
                                   len(prompt)))
        logps = []
        with torch.no_grad(), eval_mode(reference):
            for k in range(0, len(self), batch_size):
                idx, mask = self.collate(range(k, min(k + batch_size, len(self))))
                device = device_of(reference)
                logps.append(sequence_logprobs(reference, idx.to(device), mask.to(device))
                             .cpu().view(2, -1))
        self.ref_logps = torch.cat(logps, dim=1)  # (2, P)

    def __len__(self) -> int:
        return len(self.sequences)

    def collate(self, items) -> tuple[torch.Tensor, torch.Tensor]:
        """``(idx, mask)`` ``(2B, T)`` of pairs ``items``: chosen rows, then rejected rows."""
        items = list(items)
        rows = ([(self.sequences[k][0], self.sequences[k][2]) for k in items]
                + [(self.sequences[k][1], self.sequences[k][2]) for k in items])
        idx = pad_right([ids for ids, _ in rows], self.pad_id)
        mask = pad_right([[False] * start + [True] * (len(ids) - start) for ids, start in rows],
                         False, dtype=torch.bool)
        return idx, mask

    def batch(self, batch_size: int, generator: torch.Generator | None = None,
              device: str | torch.device = "cpu"):
        """``batch_size`` pairs drawn at random -> ``(idx, mask, ref_logps)`` on ``device``."""
        ix = torch.randint(len(self), (batch_size,), generator=generator)
        idx, mask = self.collate(ix.tolist())
        ref = torch.cat([self.ref_logps[0, ix], self.ref_logps[1, ix]])
        return idx.to(device), mask.to(device), ref.to(device)


# ------------------------------------------------------------------ DPO in the training loop
class DPOTask(Task):
    """DPO as a task of the training loop (:mod:`course_utils.tasks`): batches of preference
    pairs (:class:`PreferenceData`, the reference's log-probabilities computed once) and the
    DPO loss with ``beta`` (:func:`dpo_batch_loss`). The reported losses are DPO losses
    (log 2 = 0.693 at the start, when the policy equals the reference).

    ``loss_fn``: another function of :func:`dpo_loss`'s inputs that returns the scalar loss
    (``loss_fn(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)``), such as the
    learner's of notebook 14; ``None`` (the default) is the course's. It can also be set on a
    built task (``task.loss_fn = fn``)."""

    chat = True

    def __init__(self, tokenizer, train: PreferenceData, val: PreferenceData, batch_size: int,
                 beta: float, loss_fn=None):
        self.tokenizer, self.batch_size, self.beta = tokenizer, batch_size, beta
        self.data = {"train": train, "val": val}
        self.loss_fn = loss_fn

    @classmethod
    def build(cls, cfg, tokenizer=None, device: str = "cpu") -> DPOTask:
        """Pairs sampled from the chat model ``cfg.init_from`` (the reference) for prompts of
        the Shakespeare conversations (:func:`preference_pairs` with ``cfg.pref_prompts``,
        ``pref_samples``, ``pref_margin``, ``pref_max_tokens``, ``pref_temperature`` and
        ``seed``, on ``device``).
        Sampling takes a while, so the pairs are kept for the process: the command line's
        check before training, a resumed run and the runs of a beta sweep from the same model
        (same sha256) and settings sample once.

        Raises ``ValueError`` without ``init_from``, with ``bpe_vocab_size``, for a start
        model that is not a chat model or when no pair has the margin; ``FileNotFoundError``
        and :class:`~course_utils.checkpoint.CheckpointError` for the start model."""
        if cfg.dataset not in PREFERENCE_DATASETS:
            raise ValueError(f"unknown preference dataset {cfg.dataset!r}; the preference "
                             f"datasets are: {', '.join(PREFERENCE_DATASETS)}")
        if not cfg.init_from:
            raise ValueError(f"dataset {cfg.dataset} holds pairs of replies sampled from a chat "
                             f"model, the start of the run: give it with --init-from RUN_DIR "
                             f"(init_from=...)")
        if cfg.bpe_vocab_size:
            raise ValueError(f"dataset {cfg.dataset} uses the --init-from model's tokenizer: "
                             f"drop --bpe-vocab-size")
        tok, train, val = _sampled_pairs(cfg.init_from, init_sha256(cfg.init_from),
                                         cfg.dataset, cfg.pref_prompts, cfg.pref_samples,
                                         cfg.pref_margin, cfg.pref_max_tokens,
                                         cfg.pref_temperature, cfg.seed, resolve_device(device))
        return cls(tok, train, val, cfg.batch_size, cfg.beta)

    def fingerprint(self):
        # the pairs, not the reference's log-probabilities: those follow from the reference
        # model, which the run pins, and their last bits vary with the number of threads
        return data_sha256({s: (d.sequences, d.pad_id) for s, d in self.data.items()},
                           self.batch_size, self.beta, self.loss_fn)

    def batch(self, split, generator, model):
        return self.data[split].batch(self.batch_size, generator, device_of(model))

    def loss(self, model, batch):
        idx, mask, ref_logps = batch
        return dpo_batch_loss(model, idx, mask, ref_logps, self.beta, self.loss_fn), {}

    def tokens(self, batch):
        return batch[0].numel()


@functools.lru_cache(maxsize=4)
def _sampled_pairs(init_from: str, sha256: str, dataset: str, n_prompts: int, samples: int,
                   margin: float, max_tokens: int, temperature: float, seed: int, device: str):
    start = start_model(init_from, expect_sha256=sha256)
    tok = tokenizer_from_dict(start["tokenizer"])
    missing = [t for t in (IM_START, IM_END) if t not in tok.special_tokens]
    if missing:
        raise ValueError(f"--init-from {init_from} is not a chat model: its tokenizer has no "
                         f"{' and no '.join(missing)} token; preference tuning starts from a "
                         f"chat fine-tuned run (e.g. python -m course_utils train --preset "
                         f"shakespeare-chat)")
    config = GPTConfig(**{**start["config"]["model"], "dropout": 0.0})
    reference = build_model(config, start["model"], device, f"--init-from {init_from}").eval()
    train, val = preference_pairs(reference, tok, n_prompts, samples, margin, seed,
                                  corpus=PREFERENCE_DATASETS[dataset], max_tokens=max_tokens,
                                  temperature=temperature)
    pad = tok.special_tokens[IM_END]
    return tok, PreferenceData(train, pad, reference), PreferenceData(val, pad, reference)
