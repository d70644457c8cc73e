"""Supervised fine-tuning (SFT) for chat (notebook 13): conversations built from Tiny
Shakespeare, their ChatML encoding with the loss mask, and the batches the training loop draws.

Notable features:

- The data comes from the pretraining corpus itself. A *speech* is a block of the text that
  starts with a speaker's line (``ROMEO:``); a *conversation* is a run of consecutive speeches
  that alternate between two speakers. The first speaker plays the user, the other one the
  assistant; the names only split the turns and are not part of the messages. The corpus marks
  no scenes, so a run ends where a third speaker speaks, where a speaker speaks twice in a row,
  and at an empty or overlong speech.
- Train/val split by position, as for pretraining: a conversation that ends in the first 90% of
  the text is a training conversation, one that starts after that point a validation one, and
  the one that straddles the cut is dropped. No conversation is in both splits, and the
  validation conversations are text the pretrained model never saw either.
- The chat format is ChatML (:class:`course_utils.chat.ChatFormat`, the same code that chats
  with SmolLM2 and with the course's models). The tokenizer gets ``<|im_start|>`` and
  ``<|im_end|>`` as special tokens; message contents are always encoded as plain text.
- The loss mask: the targets of every token that is not part of an assistant's reply (its
  text and its closing ``<|im_end|>``) are -1, which :meth:`course_utils.model.GPT.forward`
  (``F.cross_entropy(ignore_index=-1)``) leaves out of the loss. With ``loss_mask=False`` every
  token is a target (the ablation of notebook 13).
- Padding, not packing: a batch holds whole conversations, padded on the right to its longest
  one, and padded positions have target -1. Attention is causal, so the padding after a
  conversation cannot change any of its positions: a padded batch gives the loss of its
  conversations taken one at a time (tested).

Supervised fine-tuning on demonstrations is the first step of InstructGPT (Ouyang et al.,
2022, "Training language models to follow instructions with human feedback"); a loss on the
assistant's tokens only is what TRL's ``SFTTrainer`` does with ``assistant_only_loss=True``;
the format is OpenAI's ChatML (2023), as SmolLM2-Instruct uses it.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

import torch

from .chat import IM_END, IM_START, ChatFormat
from .corpora import load_text
from .datasets import VAL_FRACTION, pad_right
from .logprobs import target_nll
from .tasks import Task, data_sha256, device_of
from .utils import eval_mode

# The chat datasets the training loop knows, and the corpus each one is built from.
CHAT_DATASETS = {"tinyshakespeare-chat": "tinyshakespeare"}
# The chat template of the course's chat models in Hugging Face's form (Jinja source, as
# `tokenizer.apply_chat_template(messages, chat_template=...)` takes it): plain ChatML with no
# default system message. SmolLM2-Instruct's template is this one plus a default system message.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
MAX_CHARS = 250  # longest speech kept in a conversation, in characters


@dataclass(frozen=True)
class Speech:
    """One speech of a play: who speaks, what they say (speaker line removed), and where the
    speech lies in the corpus (``text[start:end]``, speaker line included)."""

    speaker: str
    text: str
    start: int
    end: int


@dataclass(frozen=True)
class Conversation:
    """A run of speeches between two speakers, as chat messages.

    ``messages`` alternate ``{"role": "user", ...}`` and ``{"role": "assistant", ...}``, always
    in pairs (an *exchange*: a user turn and its reply). ``speakers`` are the user's and the
    assistant's names; ``start``/``end`` the corpus offsets of the first and last speech."""

    messages: tuple[dict, ...]
    speakers: tuple[str, str]
    start: int
    end: int

    @property
    def exchanges(self) -> int:
        """Number of (user, assistant) turn pairs."""
        return len(self.messages) // 2


# A block of non-empty lines: blocks are separated by blank lines.
_BLOCK = re.compile(r"(?:[^\n]+\n?)+")


def parse_speeches(text: str) -> list[Speech]:
    """The speeches of a play in Tiny Shakespeare's layout, in order.

    A speech is a block of lines between blank lines whose first line is ``NAME:``; its text
    is the block's other lines (``""`` for a name alone, where the corpus dropped a stage
    direction). Blocks that do not start with such a line are skipped.
    """
    speeches = []
    for m in _BLOCK.finditer(text):
        head, _, body = m.group().rstrip("\n").partition("\n")
        if head.endswith(":") and len(head) > 1:
            speeches.append(Speech(head[:-1], body.strip(), m.start(), m.end()))
    return speeches


def build_conversations(speeches: list[Speech], max_chars: int = MAX_CHARS
                        ) -> list[Conversation]:
    """Split a play's speeches into conversations (see the module docstring).

    A conversation is a maximal run of consecutive speeches that alternate between two
    speakers, each speech non-empty and at most ``max_chars`` characters long. A new speaker
    starts a new run with the speech they answer, so consecutive runs may share that speech. A
    run's last speech is dropped when it has no reply (the user cannot have the last word);
    runs of fewer than two speeches give no conversation.

    Raises ``ValueError`` for ``max_chars < 1``.
    """
    if max_chars < 1:
        raise ValueError(f"max_chars must be >= 1, got {max_chars}")
    conversations: list[Conversation] = []

    def close(run: list[Speech]) -> None:
        run = run[: len(run) // 2 * 2]
        if run:
            roles = ("user", "assistant")
            messages = tuple({"role": roles[i % 2], "content": s.text}
                             for i, s in enumerate(run))
            conversations.append(Conversation(messages, (run[0].speaker, run[1].speaker),
                                              run[0].start, run[-1].end))

    run: list[Speech] = []
    for s in speeches:
        usable = 0 < len(s.text) <= max_chars
        if usable and run and s.speaker != run[-1].speaker and (
                len(run) == 1 or s.speaker == run[-2].speaker):
            run.append(s)  # the same two speakers go on alternating
            continue
        close(run)
        if not usable:
            run = []
        elif run and s.speaker != run[-1].speaker:
            run = [run[-1], s]  # a third speaker answers the last speech
        else:
            run = [s]
    close(run)
    return conversations


def split_by_position(conversations: list[Conversation], text_length: int,
                      val_fraction: float = VAL_FRACTION):
    """``(train, val)``: the conversations that end before the cut at
    ``int(text_length * (1 - val_fraction))`` and those that start at or after it (the split
    of :func:`course_utils.datasets.train_val_split`, in characters). A conversation that
    straddles the cut is in neither. Raises ``ValueError`` when ``val_fraction`` is not in
    ``(0, 1)``."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    cut = int(text_length * (1 - val_fraction))
    return ([c for c in conversations if c.end <= cut],
            [c for c in conversations if c.start >= cut])


def chat_tokenizer(tokenizer):
    """``tokenizer`` ready for ChatML: the same tokenizer with ``<|im_start|>`` and
    ``<|im_end|>`` appended as special tokens (ids ``vocab_size`` and ``vocab_size + 1``), or
    ``tokenizer`` itself when it has them already.

    Raises ``ValueError`` when the tokenizer cannot write the format's text: the role lines
    ``user\\n`` and ``assistant\\n`` must encode and decode back unchanged (a word-level
    tokenizer drops the newline; a character-level one may lack a letter).
    """
    for text in ("user\n", "assistant\n"):
        try:
            ok = tokenizer.decode(tokenizer.encode_ordinary(text)) == text
        except ValueError as e:
            raise ValueError(f"this tokenizer cannot write the chat format's {text!r}: "
                             f"{e}") from None
        if not ok:
            raise ValueError(f"this tokenizer cannot write the chat format: {text!r} does not "
                             f"decode back to itself (a {tokenizer.kind}-level tokenizer); "
                             f"fine-tune a character-level or BPE model")
    missing = [s for s in (IM_START, IM_END) if s not in tokenizer.special_tokens]
    return tokenizer.with_special_tokens(missing) if missing else tokenizer


def encode_conversation(fmt: ChatFormat, messages) -> tuple[list[int], list[bool]]:
    """A conversation's token ids and, for each token, whether the model is trained to
    predict it: ``(ids, trained)``, two lists of equal length.

    The ids equal ``fmt.encode(messages, add_generation_prompt=False)`` (the ChatML text
    tokenized; contents as plain text) and are built the way a chat produces them: a user
    message, then ``<|im_start|>assistant\\n``, the reply's text and ``<|im_end|>``, then
    ``\\n``. ``trained`` is ``True`` exactly on each reply's text and its closing
    ``<|im_end|>``: what the model must write when it is the assistant.

    Raises ``ValueError`` for a role other than user/assistant/system, or text the tokenizer
    cannot encode.
    """
    ids: list[int] = []
    trained: list[bool] = []
    for m in messages:
        role, content = m["role"], m["content"]
        if role == "assistant":
            header, reply = fmt.generation_prompt(), [*fmt.text_ids(content), fmt.im_end]
            ids += header + reply + fmt.newline
            trained += [False] * len(header) + [True] * len(reply) + [False] * len(fmt.newline)
        elif role in ("user", "system"):
            message = fmt.message(role, content)
            ids += message
            trained += [False] * len(message)
        else:
            raise ValueError(f"unknown role {role!r}: use system, user or assistant")
    return ids, trained


def targets(ids: list[int], trained: list[bool], loss_mask: bool = True):
    """``(x, y)`` for next-token training on one conversation, each ``(T,)`` with
    ``T = len(ids) - 1``: ``x = ids[:-1]`` and ``y[t] = ids[t + 1]`` where that token is
    trained, else -1. With ``loss_mask=False`` every ``y[t]`` is ``ids[t + 1]``."""
    x = torch.tensor(ids[:-1], dtype=torch.long)
    y = torch.tensor(ids[1:], dtype=torch.long)
    if loss_mask:
        y = y.masked_fill(~torch.tensor(trained[1:]), -1)
    return x, y


class ChatData:
    """Encoded conversations as training examples, and the padded batches of them.

    ``examples`` is a list of ``(x, y)`` pairs of 1-D tensors (:func:`targets`). A batch
    stacks ``batch_size`` of them, padded on the right to the longest: ``x`` with
    ``pad_id``, ``y`` with -1, so the padding is never a target. ``exchanges``: how many
    exchanges (a user turn and its reply) the examples hold, when known. Raises
    ``ValueError`` for an empty list.
    """

    def __init__(self, examples: list[tuple[torch.Tensor, torch.Tensor]], pad_id: int,
                 exchanges: int | None = None):
        if not examples:
            raise ValueError("no conversations to train on: every one was too long for the "
                             "context (block_size) or the split is empty")
        self.examples, self.pad_id, self.exchanges = examples, pad_id, exchanges

    def __len__(self) -> int:
        return len(self.examples)

    def collate(self, items) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)``, each ``(B, T)`` with ``T`` the longest example's length."""
        return (pad_right([x for x, _ in items], self.pad_id),
                pad_right([y for _, y in items], -1))

    def batch(self, batch_size: int, generator: torch.Generator | None = None,
              device: str | torch.device = "cpu"):
        """``batch_size`` examples drawn at random (with replacement, like
        :func:`course_utils.datasets.get_batch`) -> ``(x, y)``, each ``(B, T)``."""
        ix = torch.randint(len(self.examples), (batch_size,), generator=generator)
        x, y = self.collate([self.examples[i] for i in ix.tolist()])
        return x.to(device), y.to(device)

    def batches(self, batch_size: int, device: str | torch.device = "cpu"):
        """Every example once, in order, ``batch_size`` at a time -> ``(x, y)`` batches."""
        for i in range(0, len(self.examples), batch_size):
            x, y = self.collate(self.examples[i:i + batch_size])
            yield x.to(device), y.to(device)


def fit_to_context(fmt: ChatFormat, conversation: Conversation, block_size: int):
    """The conversation's exchanges grouped into pieces of at most ``block_size + 1``
    tokens (a training example of ``block_size`` positions), in order: a list of message
    lists. An exchange that does not fit on its own is left out."""
    pieces, current, length = [], [], 0
    for k in range(conversation.exchanges):
        exchange = list(conversation.messages[2 * k: 2 * k + 2])
        n = len(encode_conversation(fmt, exchange)[0])
        if current and length + n > block_size + 1:
            pieces.append(current)
            current, length = [], 0
        if n <= block_size + 1:
            current, length = current + exchange, length + n
    return pieces + ([current] if current else [])


def encode_conversations(fmt: ChatFormat, conversations: list[Conversation], block_size: int,
                         loss_mask: bool = True) -> ChatData:
    """:class:`ChatData` of ``conversations`` for a model with context ``block_size``: each
    one split by :func:`fit_to_context`, encoded by :func:`encode_conversation`, its targets
    masked (:func:`targets`). The pad id is ``<|im_end|>``'s (any id would do: padding is
    never attended to by real tokens, nor a target)."""
    pieces = [piece for c in conversations for piece in fit_to_context(fmt, c, block_size)]
    examples = [targets(*encode_conversation(fmt, piece), loss_mask=loss_mask)
                for piece in pieces]
    return ChatData(examples, pad_id=fmt.im_end, exchanges=sum(map(len, pieces)) // 2)


def shakespeare_conversations(name: str = "tinyshakespeare", max_chars: int = MAX_CHARS):
    """``(train, val)`` conversations of a corpus in Tiny Shakespeare's layout
    (:func:`parse_speeches`, :func:`build_conversations`, :func:`split_by_position`)."""
    text = load_text(name)
    return split_by_position(build_conversations(parse_speeches(text), max_chars), len(text))


def load_chat_data(name: str, tokenizer, block_size: int, loss_mask: bool = True):
    """A chat dataset for the training loop: ``(tokenizer, train, val)``, the tokenizer with
    the ChatML tokens (:func:`chat_tokenizer`) and two :class:`ChatData`.

    Warns (``UserWarning``) when fewer than half of the training exchanges fit in
    ``block_size`` (the others are left out). Raises ``KeyError`` for a name not in
    :data:`CHAT_DATASETS` and ``ValueError`` for a tokenizer that cannot write the format or
    a context that fits no exchange."""
    if name not in CHAT_DATASETS:
        raise KeyError(f"unknown chat dataset {name!r}; the chat datasets are: "
                       f"{', '.join(CHAT_DATASETS)}")
    tok = chat_tokenizer(tokenizer)
    fmt = ChatFormat(tok)
    train, val = shakespeare_conversations(CHAT_DATASETS[name])
    train_data = encode_conversations(fmt, train, block_size, loss_mask)
    total = sum(c.exchanges for c in train)
    if train_data.exchanges < total / 2:
        warnings.warn(f"only {train_data.exchanges:,} of the {total:,} training exchanges (a "
                      f"user turn and its reply) fit in the context of {block_size} tokens; "
                      f"the others are left out. Fine-tune a model with a longer context "
                      f"(block_size) or a tokenizer of more characters per token (BPE, e.g. "
                      f"the shakespeare-bpe preset)", stacklevel=2)
    return tok, train_data, encode_conversations(fmt, val, block_size, loss_mask)


def reply_loss(model, data: ChatData, batch_size: int = 32) -> float:
    """The mean cross-entropy (nats/token) over every target of ``data`` (every position
    whose target is not -1), all examples once: with the loss mask, the loss on the replies.
    Runs in eval mode and puts the model's mode back.

    (:func:`course_utils.logprobs.target_nll` of each batch)."""
    device = device_of(model)
    total, count = 0.0, 0
    with eval_mode(model):
        for x, y in data.batches(batch_size, device):
            nll, n = target_nll(model, x, y)
            total, count = total + nll, count + n
    return total / count


class ChatTask(Task):
    """Chat SFT (notebook 13): padded ChatML conversations (:class:`ChatData`), the model's
    next-token cross-entropy on the targets that are not -1 (with the loss mask: the
    assistant's replies only)."""

    chat = True

    def __init__(self, tokenizer, train: ChatData, val: ChatData, batch_size: int):
        self.tokenizer, self.batch_size = tokenizer, batch_size
        self.data = {"train": train, "val": val}

    @classmethod
    def build(cls, cfg, tokenizer=None, device: str = "cpu") -> ChatTask:
        """The chat dataset ``cfg.dataset`` (:data:`CHAT_DATASETS`) encoded for the model
        being fine-tuned (``tokenizer`` plus the ChatML tokens, ``cfg.model.block_size``,
        ``cfg.loss_mask``). Raises ``ValueError`` without a model to start from, with
        ``bpe_vocab_size``, or for an unknown dataset."""
        if cfg.dataset not in CHAT_DATASETS:
            raise ValueError(f"unknown chat dataset {cfg.dataset!r}; the chat datasets are: "
                             f"{', '.join(CHAT_DATASETS)}")
        if tokenizer is None:
            raise ValueError(f"dataset {cfg.dataset} fine-tunes a pretrained model for chat: "
                             f"give the model to start from with --init-from RUN_DIR "
                             f"(init_from=...)")
        if cfg.bpe_vocab_size:
            raise ValueError(f"dataset {cfg.dataset} uses the --init-from model's tokenizer: "
                             f"drop --bpe-vocab-size")
        try:
            tok, train, val = load_chat_data(cfg.dataset, tokenizer, cfg.model.block_size,
                                             cfg.loss_mask)
        except ValueError as e:
            raise ValueError(f"--init-from {cfg.init_from}: {e}") from None
        return cls(tok, train, val, cfg.batch_size)

    def fingerprint(self):
        return data_sha256({s: (d.examples, d.pad_id) for s, d in self.data.items()},
                           self.batch_size)

    def batch(self, split, generator, model):
        return self.data[split].batch(self.batch_size, generator, device_of(model))

    def loss(self, model, batch):
        x, y = batch
        return model(x, y)[1], {}
