"""Instructions a program can check: training requests written by the course, preference pairs
from a model's own replies scored by IFEval's checkers, and IFEval measured with batched
generation (notebook 14, part B).

The recipe of today's open chat models (Tulu 3: Lambert et al., 2024, "Tulu 3: Pushing
Frontiers in Open Language Model Post-Training"; SmolLM2 itself) follows SFT with preference
tuning on replies whose quality a program can verify. Here that is done for the verifiable
instructions of IFEval (Zhou et al., 2023; :mod:`course_utils.ifeval`):

- :func:`make_requests`: a seeded generator of requests, a task (:data:`TOPICS`) followed by
  one or two constraints (all lowercase, no commas, exactly N bullet points, at most N words,
  end with a given phrase, include or avoid a word, JSON, a title in ``<< >>`` ...). Every
  sentence is written here; none comes from IFEval's prompts (the tests compare them). Each
  request is an :class:`~course_utils.ifeval.IFEvalPrompt`, so IFEval's checkers score the
  replies to it, with the instruction ids and keyword arguments of IFEval's data. The types
  in :data:`HELD_OUT` are never generated: whatever the model gets better at there, it
  learned from the others.
- :func:`pick_pair`, :func:`instruction_pairs`: ``k`` replies sampled per request
  (:func:`course_utils.preference.sample_preferences`, batched), each scored by the share of
  its instructions it follows (:func:`followed_share`), and per request one pair: a reply
  that follows every instruction against one that does not, both finished, as close in
  length as there are (so that the pair differs in compliance, not in length).
- :class:`InstructionDPOTask`: DPO on those pairs through the course's training loop (the
  dataset ``ifeval-prefs``, with LoRA when ``lora_rank`` is set), a fifth of the pairs held
  out (their requests are not trained on); the pairs are cached in the run folder
  (``pairs.json``), so a resumed or repeated run samples once.
- :func:`ifeval_replies`: one greedy reply per IFEval prompt, many prompts per batch
  (:func:`course_utils.sampling.rollout`), prompts sorted by length so a batch pads little.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from . import ifeval
from .bpe import tokenizer_from_dict
from .chat import ChatFormat
from .checkpoint import build_model, start_model
from .ifeval import IFEvalPrompt
from .model import GPTConfig
from .preference import DPOTask, PreferenceData, Preferences, sample_preferences
from .sampling import rollout
from .utils import atomic_write, progress_bar, resolve_device

DATASET = "ifeval-prefs"  # the dataset name of the training loop and the command line
PAIRS_FILE = "pairs.json"  # the cache of sampled pairs in the run folder

# The tasks of the requests, written for the course: short, everyday, none of them IFEval's.
TOPICS = (
    "Describe your favourite season.",
    "Explain why the sky looks blue during the day.",
    "Give advice to someone going to their first job interview.",
    "Write a short poem about the sea.",
    "Describe a busy train station early in the morning.",
    "Explain how to make a good cup of tea.",
    "Tell a short story about a cat that gets lost.",
    "Give advice to someone who is learning to cook.",
    "Describe a walk through a forest in autumn.",
    "Explain what a volcano is.",
    "Describe a reusable water bottle for the website of a shop.",
    "Describe a city you would like to visit one day.",
    "Explain how bees make honey.",
    "Write a note thanking a neighbour for watering your plants.",
    "Explain how a rainbow forms.",
    "Describe a quiet library on a Sunday afternoon.",
    "Suggest a plan for a rainy weekend at home.",
    "Explain why sleep matters for students.",
    "Describe the smell of fresh bread in a bakery.",
    "Write a message inviting your friends to a picnic.",
    "Explain what recycling is and why people do it.",
    "Describe a mountain at sunrise.",
    "Give advice for keeping a house plant alive.",
    "Explain how a bicycle works.",
    "Describe an old family photograph.",
    "Write a short review of an imaginary cafe.",
    "Explain how the moon causes the tides.",
    "Describe a street after a heavy snowfall.",
    "Explain how someone can start learning a new language.",
    "Write a short letter to yourself ten years from now.",
    "Describe a football match as seen from the stands.",
    "Explain what a computer does, for a child.",
    "Describe a summer market in a small town.",
    "Give advice for staying comfortable on a long flight.",
    "Explain why many people like to keep dogs.",
    "Describe the sound of rain on a roof.",
    "Write a short speech for a friend's birthday party.",
    "Explain why bread dough rises.",
    "Describe a lighthouse on a stormy night.",
    "Explain how to save money on groceries.",
    "Describe your ideal breakfast.",
    "Explain what clouds are made of.",
    "Write a short advertisement for a bicycle repair shop.",
    "Describe a garden in the middle of spring.",
    "Explain how to prepare for a long hike.",
    "Tell a short story about a robot that learns to paint.",
    "Explain why exercise is good for the heart.",
    "Describe the view from a high window in a city.",
)
END_PHRASES = ("That is all.", "Hope this helps!", "Thanks for asking.", "Have a nice day!",
               "Let me know what you think.", "Enjoy!")
KEYWORDS = ("river", "window", "music", "garden", "coffee", "friend", "winter", "paper",
            "light", "market", "morning", "bridge")
AVOIDED = ("very", "really", "good", "important", "thing", "just", "also", "many", "great",
           "nice")

# What each instruction type of the generator asks, in two wordings each; ``{}`` fields are
# filled from the keyword arguments drawn by _draw_kwargs.
WORDINGS = {
    "punctuation:no_comma": (
        "Do not put a single comma anywhere in your reply.",
        "Avoid commas completely: the answer must not contain even one."),
    "change_case:english_lowercase": (
        "Use only small letters in the whole answer, with no capital letters at all.",
        "Every letter you write must be lowercase, including the first word."),
    "detectable_format:number_bullet_lists": (
        "Format the reply as {num_bullets} markdown bullet points, no more and no fewer, "
        "each on its own line starting with '* '.",
        "Give exactly {num_bullets} points, as lines that begin with '* ' (markdown "
        "bullets), and no other list."),
    "length_constraints:number_words": (
        "Keep the reply to at most {at_most} words.",
        "The answer may use no more than {at_most} words in total."),
    "length_constraints:number_sentences": (
        "Answer in at most {sentences}.",
        "Write no more than {sentences}."),
    "startend:end_checker": (
        'Finish the reply with the exact words "{end_phrase}" and write nothing after them.',
        'The very last words of the answer must be "{end_phrase}".'),
    "keywords:existence": (
        'Use the word "{keyword}" somewhere in the answer.',
        'Make sure the word "{keyword}" appears in the reply.'),
    "keywords:forbidden_words": (
        'Do not use the word "{avoided}" anywhere.',
        'Never write the word "{avoided}" in the reply.'),
    "detectable_format:json_format": (
        "Write the whole reply as one JSON object, with nothing before or after it.",
        "Return the answer as valid JSON only."),
    "detectable_format:title": (
        "Start with a title written between double angle brackets, like <<A Title>>.",
        "Give the answer a title, put between << and >>."),
    "detectable_format:number_highlighted_sections": (
        "Highlight at least {phrases} with markdown asterisks, like *this*.",
        "Mark at least {parts} of the text as *highlighted* with single asterisks."),
}
TRAINED = tuple(WORDINGS)
"""The IFEval instruction types the generator asks for (11 of IFEval's 25)."""
HELD_OUT = ("change_case:english_capital", "startend:quotation", "detectable_content:postscript")
"""Types never generated though they resemble trained ones (capitals vs lowercase, a reply in
quotation marks vs a given ending, a P.S. vs an end phrase): they show what transfers. The
other 11 untrained types of IFEval are never generated either."""

# Pairs of types that contradict or crowd each other, never asked together.
CONFLICTS = {frozenset(p) for p in (
    ("detectable_format:json_format", "detectable_format:number_bullet_lists"),
    ("detectable_format:json_format", "detectable_format:title"),
    ("detectable_format:json_format", "startend:end_checker"),
    ("detectable_format:json_format", "detectable_format:number_highlighted_sections"),
    ("detectable_format:json_format", "length_constraints:number_sentences"),
    ("detectable_format:number_bullet_lists", "length_constraints:number_sentences"),
    ("length_constraints:number_words", "length_constraints:number_sentences"),
    ("keywords:existence", "keywords:forbidden_words"),
)}


def _draw_kwargs(rng: random.Random, instruction_id: str) -> tuple[dict, dict]:
    """``(kwargs, fields)``: IFEval's keyword arguments of one instruction (as its data
    writes them) and the fields its wording shows."""
    if instruction_id == "detectable_format:number_bullet_lists":
        n = rng.randint(2, 5)
        return {"num_bullets": n}, {"num_bullets": n}
    if instruction_id == "length_constraints:number_words":
        n = rng.choice((15, 20, 30, 40, 50))  # "at most n" is IFEval's "less than n + 1"
        return {"relation": "less than", "num_words": n + 1}, {"at_most": n}
    if instruction_id == "length_constraints:number_sentences":
        n = rng.randint(1, 3)
        return {"relation": "less than", "num_sentences": n + 1}, {
            "sentences": _count(n, "sentence")}
    if instruction_id == "startend:end_checker":
        phrase = rng.choice(END_PHRASES)
        return {"end_phrase": phrase}, {"end_phrase": phrase}
    if instruction_id == "keywords:existence":
        word = rng.choice(KEYWORDS)
        return {"keywords": [word]}, {"keyword": word}
    if instruction_id == "keywords:forbidden_words":
        word = rng.choice(AVOIDED)
        return {"forbidden_words": [word]}, {"avoided": word}
    if instruction_id == "detectable_format:number_highlighted_sections":
        n = rng.randint(1, 3)
        return {"num_highlights": n}, {"phrases": _count(n, "phrase"),
                                       "parts": _count(n, "part")}
    return {}, {}


def _count(n: int, noun: str) -> str:
    """``"1 sentence"``, ``"2 sentences"``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def make_requests(n: int, seed: int = 0, max_instructions: int = 2,
                  exclude: Sequence[IFEvalPrompt] = ()) -> list[IFEvalPrompt]:
    """``n`` different requests, each a topic of :data:`TOPICS` and 1 to ``max_instructions``
    instructions of :data:`TRAINED` (no two that conflict), drawn by ``random.Random(seed)``.

    A request is an :class:`~course_utils.ifeval.IFEvalPrompt` (``key`` is its index): its
    ``prompt`` is the topic, then one wording of each instruction; its ``instruction_ids`` and
    ``kwargs`` are what :func:`course_utils.ifeval.check` needs to score a reply, so the
    checkers of the evaluation score the training replies too. A prompt drawn before or
    among ``exclude`` (e.g. the training requests, when drawing held-out ones) is drawn again,
    so a seed always gives the same list. Types in :data:`HELD_OUT` never appear.

    Raises ``ValueError`` for ``n < 0``, ``max_instructions`` outside 1..3, or when 1,000
    draws in a row find no new request (there are not ``n`` of them).
    """
    if n < 0 or not 1 <= max_instructions <= 3:
        raise ValueError(f"need n >= 0 and max_instructions in 1..3, got n={n}, "
                         f"max_instructions={max_instructions}")
    rng = random.Random(seed)
    taken = {p.prompt for p in exclude}
    requests: list[IFEvalPrompt] = []
    misses = 0  # draws in a row that gave a prompt already taken
    while len(requests) < n and misses < 1000:
        topic = rng.choice(TOPICS)
        count = rng.randint(1, max_instructions)
        ids: list[str] = []
        while len(ids) < count:
            pick = rng.choice(TRAINED)
            if pick not in ids and all(frozenset((pick, i)) not in CONFLICTS for i in ids):
                ids.append(pick)
        kwargs, sentences = [], [topic]
        for i in ids:
            kw, fields = _draw_kwargs(rng, i)
            kwargs.append(kw)
            sentences.append(rng.choice(WORDINGS[i]).format(**fields))
        prompt = " ".join(sentences)
        if prompt in taken:
            misses += 1
            continue
        misses = 0
        taken.add(prompt)
        requests.append(IFEvalPrompt(len(requests), prompt, tuple(ids), tuple(kwargs)))
    if len(requests) < n:
        raise ValueError(f"found only {len(requests)} different requests of the {n} asked "
                         f"for (1,000 draws in a row gave none that was new); ask for fewer "
                         f"or allow more instructions per request")
    return requests


# ------------------------------------------------------------------------ pairs
def followed_share(request: IFEvalPrompt, response: str) -> float:
    """The share of ``request``'s instructions that ``response`` follows (strict,
    :func:`course_utils.ifeval.check`): 1.0 when it follows all of them."""
    verdicts = [ifeval.check(i, response, kw)
                for i, kw in zip(request.instruction_ids, request.kwargs)]
    return sum(verdicts) / len(verdicts)


def instruction_reward(request: IFEvalPrompt) -> Callable[[str, bool], float]:
    """``reward(text, stopped)`` of one request, as :func:`sample_preferences` takes it: the
    :func:`followed_share` of the text (``stopped`` is left to :func:`pick_pair`)."""
    return lambda text, stopped: followed_share(request, text)


def pick_pair(rewards: Sequence[float], lengths: Sequence[int],
              stopped: Sequence[bool]) -> tuple[int, int] | None:
    """The pair ``(chosen, rejected)`` of one prompt's replies, or ``None`` when there is none.

    ``rewards``: each reply's :func:`followed_share`; ``lengths``: its length in tokens;
    ``stopped``: whether it ended (``<|im_end|>``) before the token limit. Only finished
    replies count (a reply cut off might have gone either way). Chosen: a finished reply that
    follows every instruction (reward 1); rejected: a finished one that does not (reward
    below 1). Of all such pairs, the one whose lengths are closest (the first on a tie), so
    that the two differ in following the instructions rather than in length.
    """
    done = [i for i, s in enumerate(stopped) if s]
    good = [i for i in done if rewards[i] >= 1.0]
    bad = [i for i in done if rewards[i] < 1.0]
    if not good or not bad:
        return None
    return min(((c, r) for c in good for r in bad),
               key=lambda p: abs(lengths[p[0]] - lengths[p[1]]))


def instruction_pairs(model: nn.Module, fmt: ChatFormat, requests: Sequence[IFEvalPrompt],
                      samples: int, max_new_tokens: int, chunk_size: int = 16,
                      generator: torch.Generator | None = None, split: str = "train",
                      progress: bool = True, pair=pick_pair, temperature: float = 1.0
                      ) -> Preferences:
    """Sample ``samples`` replies to each request from ``model`` (at ``temperature``,
    ``chunk_size`` requests per batch), score them by :func:`followed_share` and keep per
    request the pair :func:`pick_pair` (or ``pair``) chooses -> :class:`Preferences`.

    Raises ``ValueError`` when no request gives a pair (see :func:`sample_preferences`), or
    a request plus ``max_new_tokens`` does not fit the model's context.
    """
    prompts = [request_ids(fmt, r) for r in requests]
    return sample_preferences(model, fmt, prompts, [instruction_reward(r) for r in requests],
                              samples, 0.0, max_new_tokens, temperature=temperature,
                              generator=generator, split=split, pair=pair,
                              chunk_size=chunk_size, progress=progress)


def request_ids(fmt: ChatFormat, request: IFEvalPrompt) -> list[int]:
    """The prompt of a request or an IFEval prompt: its text as the user's message, then
    ``<|im_start|>assistant\\n`` (``fmt``'s default system message, if any, first)."""
    return fmt.encode([{"role": "user", "content": request.prompt}])


def pair_yield(prefs: Preferences) -> dict[str, float]:
    """How the pairs came about: ``prompts``, ``pairs``, and of all sampled replies the share
    that ``finished`` (ended before the token limit) and that ``followed`` every
    instruction."""
    stopped = [x for group in prefs.stopped for x in group]
    rewards = [x for group in prefs.rewards for x in group]
    return {"prompts": len(prefs.prompts), "pairs": len(prefs.pairs),
            "finished": sum(stopped) / len(stopped),
            "followed": sum(x >= 1.0 for x in rewards) / len(rewards)}


# ------------------------------------------------------------------------ IFEval replies
@dataclass
class Replies:
    """Greedy replies to prompts: per prompt its ``texts`` (without ``<|im_end|>``), whether
    it ``stopped`` before the limit, its ``tokens``; the ``seconds`` generating them took,
    and whether they were ``reused`` from a cache file (``seconds`` is then the original
    run's)."""

    texts: list[str]
    stopped: list[bool]
    tokens: list[int]
    seconds: float
    reused: bool = False


def weights_sha256(model: nn.Module) -> str:
    """A fingerprint of a model's weights: the sha256 of every tensor of its state dict (name,
    shape, dtype and bytes, in order). Equal models give equal fingerprints; a changed
    weight changes it."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@torch.no_grad()
def ifeval_replies(model: nn.Module, fmt: ChatFormat, prompts: Sequence[IFEvalPrompt],
                   max_new_tokens: int, batch_size: int = 32, progress: bool = True,
                   cache: str | Path | None = None) -> Replies:
    """One greedy reply (temperature 0) to each prompt, at most ``max_new_tokens`` tokens ->
    :class:`Replies`, in the order of ``prompts``.

    Prompts are sorted by length and answered ``batch_size`` at a time by
    :func:`course_utils.sampling.rollout` (left-padded, each row stopping at its own
    ``<|im_end|>``; greedy rows equal one-prompt-at-a-time generation). A reply cut off at the
    limit is scored as it stands: report how many ``stopped``.

    ``cache``: a JSON file that keeps the replies with what made them (the weights'
    :func:`weights_sha256`, the prompts, ``max_new_tokens``); a later call with the same reads
    them back instead of generating (``reused``), anything else generates and replaces it.

    Raises ``ValueError`` for no prompts, ``batch_size < 1``, or a prompt plus
    ``max_new_tokens`` longer than the model's ``block_size``.
    """
    if not prompts or batch_size < 1:
        raise ValueError(f"need prompts and batch_size >= 1, got {len(prompts)} prompts and "
                         f"batch_size {batch_size}")
    key = None
    if cache is not None:
        key = {"weights": weights_sha256(model), "max_new_tokens": max_new_tokens,
               "prompts": hashlib.sha256(json.dumps([p.prompt for p in prompts])
                                         .encode()).hexdigest()}
        try:
            saved = json.loads(Path(cache).read_text(encoding="utf-8"))
            if saved["key"] == key:
                return Replies(saved["texts"], saved["stopped"], saved["tokens"],
                               float(saved["seconds"]), reused=True)
        except (OSError, ValueError, KeyError, TypeError):
            pass  # no cache yet, or another one: generate
    start = time.perf_counter()
    ids = [request_ids(fmt, p) for p in prompts]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    texts, stopped, tokens = [""] * len(ids), [False] * len(ids), [0] * len(ids)
    bar = progress_bar(total=len(ids), desc="replies", unit="prompt", disable=not progress)
    for k in range(0, len(order), batch_size):
        chunk = order[k:k + batch_size]
        out = rollout(model, [ids[i] for i in chunk], 1, max_new_tokens, fmt.im_end,
                      temperature=0.0)
        for i, c in zip(chunk, out.completions):
            ended = bool(c) and c[-1] == fmt.im_end
            texts[i] = fmt.tokenizer.decode(c[:-1] if ended else c)
            stopped[i], tokens[i] = ended, len(c)
        bar.update(len(chunk))
    bar.close()
    replies = Replies(texts, stopped, tokens, time.perf_counter() - start)
    if cache is not None:
        with atomic_write(cache) as tmp:
            tmp.write_text(json.dumps({"key": key, "texts": texts, "stopped": stopped,
                                       "tokens": tokens, "seconds": replies.seconds}),
                           encoding="utf-8")
    return replies


# ------------------------------------------------------------------------ the task
VAL_FRACTION = 0.2  # the share of the pairs (each of another request) held out from training


@dataclass
class SampledPairs:
    """Replies sampled for ``requests`` and the pairs made of them: ``prefs`` (a
    :class:`Preferences` of all requests; ``prefs.prompts[i]`` is ``requests[i]``'s prompt,
    ``prefs.pairs`` every pair, at most one per request), ``val`` (the positions in
    ``prefs.pairs`` of the held-out pairs), ``temperature`` and ``seconds`` of the sampling.
    :meth:`split` gives the training or the held-out pairs."""

    requests: list[IFEvalPrompt]
    prefs: Preferences
    val: list[int]
    temperature: float
    seconds: float

    def split(self, name: str) -> Preferences:
        """The :class:`Preferences` of split ``"train"`` or ``"val"``: all replies, the pairs
        of that split. Raises ``ValueError`` for another name."""
        if name not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {name!r}")
        held = set(self.val)
        pairs = [x for k, x in enumerate(self.prefs.pairs) if (k in held) == (name == "val")]
        p = self.prefs
        return Preferences(p.prompts, p.replies, p.rewards, pairs, p.stopped)


class InstructionDPOTask(DPOTask):
    """DPO on pairs of replies to the course's requests (:func:`make_requests`), sampled from
    the ``init_from`` model and scored by IFEval's checkers: the dataset ``ifeval-prefs``.

    :meth:`build` draws ``cfg.pref_prompts`` requests, samples ``cfg.pref_samples`` replies of
    at most ``cfg.pref_max_tokens`` tokens to each at ``cfg.pref_temperature``, keeps the
    pairs of :func:`pick_pair` and holds out a fifth of them (:func:`sample_instruction_pairs`:
    a held-out pair's request is not trained on). The pairs are written to ``pairs.json`` in
    ``cfg.out_dir`` with what made them (the start model's sha256 and these settings) and
    read back by a later build with the same, so a run that is resumed, repeated or started
    from the command line after the notebook samples once. ``sampled`` holds the
    :class:`SampledPairs`, ``reused`` says whether they were read back. The loss is
    :class:`~course_utils.preference.DPOTask`'s.
    """

    @classmethod
    def build(cls, cfg, tokenizer=None, device: str = "cpu") -> InstructionDPOTask:
        """The task of ``cfg`` (see the class). Raises ``ValueError`` for another dataset,
        without ``init_from``, with ``bpe_vocab_size``, for a start model that is not a chat
        model, or with fewer than two pairs; and the errors of
        :func:`~course_utils.checkpoint.start_model`."""
        if cfg.dataset != DATASET:
            raise ValueError(f"{cls.__name__} trains on the dataset {DATASET}, not "
                             f"{cfg.dataset!r}")
        if not cfg.init_from:
            raise ValueError(f"dataset {DATASET} holds pairs of replies sampled from a chat "
                             f"model, the start of the run: give it with --init-from (e.g. "
                             f"--init-from smollm2-135m-instruct)")
        if cfg.bpe_vocab_size:
            raise ValueError(f"dataset {DATASET} uses the --init-from model's tokenizer: drop "
                             f"--bpe-vocab-size")
        device = resolve_device(device)
        start = start_model(cfg.init_from)
        tok = tokenizer_from_dict(start["tokenizer"])
        fmt = ChatFormat(tok)  # raises ValueError for a tokenizer without ChatML's tokens
        shape = start["config"]["model"]
        config = GPTConfig(**{**shape, "dropout": 0.0,
                              "block_size": min(shape["block_size"], cfg.model.block_size)})
        reference = build_model(config, start["model"], device,
                                f"--init-from {cfg.init_from}").eval()
        key = {"init_sha256": start["sha256"], "prompts": cfg.pref_prompts,
               "samples": cfg.pref_samples, "max_tokens": cfg.pref_max_tokens,
               "temperature": cfg.pref_temperature, "seed": cfg.seed}
        del start
        path = Path(cfg.out_dir) / PAIRS_FILE
        sampled = load_pairs(path, key)
        reused = sampled is not None
        if sampled is None:
            sampled = sample_instruction_pairs(reference, fmt, cfg.pref_prompts,
                                               cfg.pref_samples, cfg.pref_max_tokens, cfg.seed,
                                               temperature=cfg.pref_temperature)
            save_pairs(path, key, sampled)
        task = cls(tok, PreferenceData(sampled.split("train"), fmt.im_end, reference),
                   PreferenceData(sampled.split("val"), fmt.im_end, reference),
                   cfg.batch_size, cfg.beta)
        task.sampled, task.reused = sampled, reused
        return task


def sample_instruction_pairs(model: nn.Module, fmt: ChatFormat, n_prompts: int, samples: int,
                             max_tokens: int, seed: int, temperature: float = 1.0,
                             progress: bool = True) -> SampledPairs:
    """``n_prompts`` requests (:func:`make_requests` with ``seed``), ``samples`` replies of at
    most ``max_tokens`` tokens to each at ``temperature`` (:func:`instruction_pairs`, a
    generator seeded by ``seed``), and the pairs :func:`pick_pair` keeps, of which
    ``max(1, round(VAL_FRACTION * pairs))`` (drawn by ``random.Random(seed)``) are held out.
    Each request gives at most one pair, so the held-out pairs' requests are never trained
    on. Raises ``ValueError`` with fewer than two pairs (none left for one of the splits)."""
    requests = make_requests(n_prompts, seed)
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    t0 = time.perf_counter()
    prefs = instruction_pairs(model, fmt, requests, samples, max_tokens, generator=gen,
                              split="all", progress=progress, temperature=temperature)
    if len(prefs.pairs) < 2:
        raise ValueError(f"only {len(prefs.pairs)} of {n_prompts} requests gave a pair; two "
                         f"at least are needed (one to train on, one held out): sample more "
                         f"requests (--pref-prompts) or more replies (--pref-samples)")
    n_val = max(1, round(VAL_FRACTION * len(prefs.pairs)))
    val = sorted(random.Random(seed).sample(range(len(prefs.pairs)), n_val))
    return SampledPairs(requests, prefs, val, temperature, time.perf_counter() - t0)


def save_pairs(path: Path, key: dict, sampled: SampledPairs) -> None:
    """Write :func:`sample_instruction_pairs`'s result and its ``key`` to ``path`` (JSON,
    atomically)."""
    p = sampled.prefs
    data = {"key": key,
            "requests": [[r.prompt, list(r.instruction_ids), list(r.kwargs)]
                         for r in sampled.requests],
            "prompts": p.prompts, "replies": p.replies, "rewards": p.rewards,
            "pairs": [list(x) for x in p.pairs], "stopped": p.stopped, "val": sampled.val,
            "temperature": sampled.temperature, "seconds": sampled.seconds}
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(data), encoding="utf-8")


def load_pairs(path: Path, key: dict) -> SampledPairs | None:
    """The :class:`SampledPairs` :func:`save_pairs` wrote to ``path`` when its key equals
    ``key``; ``None`` when there is no such file, it was made otherwise, or it cannot be read
    (the pairs are then sampled again and the file replaced). Plain JSON: nothing in it is
    run."""
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        if d["key"] != key:
            return None
        requests = [IFEvalPrompt(i, text, tuple(ids), tuple(kw))
                    for i, (text, ids, kw) in enumerate(d["requests"])]
        prefs = Preferences(d["prompts"], d["replies"], d["rewards"],
                            [tuple(x) for x in d["pairs"]], d["stopped"])
        return SampledPairs(requests, prefs, list(d["val"]), float(d["temperature"]),
                            float(d["seconds"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
