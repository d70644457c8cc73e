"""Chatting with a model: the ChatML format, a multi-turn conversation with a KV cache kept
across turns, and the ``chat`` command (notebook 13).

ChatML (OpenAI, 2023; the format SmolLM2-Instruct and the course's chat models use) writes each
message as ``<|im_start|>role\\ncontent<|im_end|>\\n``; the model's turn begins with
``<|im_start|>assistant\\n`` and ends when it writes ``<|im_end|>``. The two markers are special
tokens, so text typed by a user can never produce them: message contents are encoded as plain
text, where ``<|im_end|>`` is just the characters ``<``, ``|``, ``im`` ...

What is here:

- :class:`ChatFormat`: a conversation -> token ids, equal to what the model's chat template
  gives (SmolLM2's adds a default system prompt when there is none; it is read from the
  template).
- :class:`ChatSession`: the conversation state. Each turn feeds only its new tokens: the KV
  cache keeps the earlier ones. When the conversation outgrows the context, the oldest turns are
  dropped (with a notice) and the cache is rebuilt.
- :func:`add_chat_parser`, :func:`run_chat`: ``python -m course_utils chat ...``, interactive or
  one message per line from a pipe; :func:`add_chat_model_arguments`, :func:`check_chat_args`
  and :func:`load_chat_model` are shared with ``serve`` (:mod:`course_utils.server`).
"""

from __future__ import annotations

import argparse
import codecs
import re
import sys
from collections.abc import Iterable, Iterator

import torch

from .checkpoint import load_checkpoint, model_from_checkpoint
from .sampling import check_settings, generate_tokens
from .utils import resolve_device

IM_START, IM_END = "<|im_start|>", "<|im_end|>"


def default_system_prompt(template: str) -> str | None:
    """The system message a ChatML chat template (Jinja source) inserts when the conversation
    does not start with one, or ``None`` when it inserts none.

    SmolLM2's template, for instance, writes ``<|im_start|>system\\nYou are a helpful AI
    assistant named SmolLM, trained by Hugging Face<|im_end|>\\n`` first in that case.

    Raises:
        ValueError: the template is not ChatML (has no ``<|im_start|>``).
    """
    if IM_START not in template:
        raise ValueError("the chat template is not ChatML (it never writes <|im_start|>)")
    # Jinja string literals hold the newline either as a real one or as the escape "\n"
    m = re.search(r"<\|im_start\|>system(?:\n|\\n)(.*?)<\|im_end\|>", template, re.S)
    return m.group(1) if m else None


class ChatFormat:
    """Turns conversations into token ids the ChatML way.

    A conversation is a list of ``{"role": ..., "content": ...}`` dicts (roles ``system``,
    ``user``, ``assistant``), as in Hugging Face's ``apply_chat_template``. Each message becomes
    ``<|im_start|>`` + ``role\\ncontent`` + ``<|im_end|>`` + ``\\n``; the two markers are their
    special ids, everything else plain text. When ``default_system`` is given and the
    conversation does not start with a system message, that one goes first.

    Raises ``ValueError`` when the tokenizer lacks the ``<|im_start|>``/``<|im_end|>`` special
    tokens (it was not made for chat).
    """

    def __init__(self, tokenizer, default_system: str | None = None):
        specials = getattr(tokenizer, "special_tokens", {})
        if IM_START not in specials or IM_END not in specials:
            raise ValueError(f"the tokenizer has no {IM_START} and {IM_END} special tokens: it "
                             f"belongs to a model that was not fine-tuned for chat")
        self.tokenizer = tokenizer
        self.default_system = default_system
        self.im_start, self.im_end = specials[IM_START], specials[IM_END]
        self.newline = tokenizer.encode("\n", allowed_special="none")

    @classmethod
    def from_template(cls, tokenizer, template: str) -> ChatFormat:
        """The format a ChatML chat template describes (its default system prompt included)."""
        return cls(tokenizer, default_system_prompt(template))

    def text_ids(self, text: str) -> list[int]:
        """``text`` as plain text: special-token strings in it are ordinary characters."""
        return self.tokenizer.encode(text, allowed_special="none")

    def message(self, role: str, content: str) -> list[int]:
        """Ids of one whole message, ``<|im_start|>role\\ncontent<|im_end|>\\n``."""
        return [self.im_start, *self.text_ids(f"{role}\n{content}"), self.im_end, *self.newline]

    def generation_prompt(self) -> list[int]:
        """Ids of ``<|im_start|>assistant\\n``: what the model's reply follows."""
        return [self.im_start, *self.text_ids("assistant\n")]

    def system(self, content: str | None = None) -> list[int]:
        """Ids of the system message: ``content``, else the default one, else nothing."""
        content = self.default_system if content is None else content
        return [] if content is None else self.message("system", content)

    def encode(self, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
        """Ids of a whole conversation, equal to the chat template's rendering tokenized
        (``apply_chat_template(messages, add_generation_prompt=...)``) except that contents
        never yield special tokens."""
        ids = []
        if messages and messages[0]["role"] != "system":
            ids += self.system()
        for m in messages:
            ids += self.message(m["role"], m["content"])
        return ids + (self.generation_prompt() if add_generation_prompt else [])


class ChatSession:
    """A multi-turn conversation with a model, the KV cache kept across turns.

    ``tokens`` is the conversation so far as ids; the cache holds ``tokens[:cached]``. A turn
    appends the user message and ``<|im_start|>assistant\\n``, feeds only what the cache lacks,
    and generates until ``<|im_end|>`` or ``max_new_tokens``
    (:func:`~course_utils.sampling.generate_tokens`); the reply, closed with ``<|im_end|>\\n``,
    joins ``tokens``. The last generated token is not in the cache yet, so the next turn feeds
    it first.

    When a turn (its prompt plus ``max_new_tokens``) does not fit in ``block_size``, the oldest
    turns are dropped, a notice is added to :attr:`notices`, and the cache is rebuilt from the
    remaining conversation. The system message is always kept.

    Args:
        model: a :class:`~course_utils.model.GPT` (eval mode is set here).
        fmt: the :class:`ChatFormat` of the model's tokenizer.
        system: the system message (``None``: the format's default, if any).
        max_new_tokens: the longest reply, in tokens (>= 1).
        temperature, top_k, top_p: sampling settings (``temperature=0``: greedy).
        seed: seed of the sampling generator.

    Raises ``ValueError`` for a bad setting or a system message that fills the context.
    """

    def __init__(self, model, fmt: ChatFormat, system: str | None = None,
                 max_new_tokens: int = 256, temperature: float = 0.7, top_k: int | None = None,
                 top_p: float | None = None, seed: int = 1337):
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        check_settings(temperature, top_k, top_p)
        self.model, self.fmt = model.eval(), fmt
        self.block_size = model.config.block_size
        self.system_ids = fmt.system(system)
        if len(self.system_ids) >= self.block_size:
            raise ValueError(f"the system message takes {len(self.system_ids)} tokens, the "
                             f"context holds {self.block_size}: shorten it")
        self.max_new_tokens, self.temperature = max_new_tokens, temperature
        self.top_k, self.top_p = top_k, top_p
        self.device = next(model.parameters()).device
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.notices: list[str] = []
        self.reset()

    def reset(self) -> None:
        """Forget the conversation (the system message stays) and empty the cache."""
        self.turns: list[tuple[list[int], list[int]]] = []  # (user message ids, reply ids)
        self.tokens = list(self.system_ids)
        self._new_cache()

    def _new_cache(self) -> None:
        self.caches = self.model.new_kv_caches(1)
        self.cached = 0

    def _closed(self, reply: list[int]) -> list[int]:
        return [*reply, self.fmt.im_end, *self.fmt.newline]

    def _rebuild(self, turns) -> list[int]:
        tokens = list(self.system_ids)
        for user, reply in turns:
            tokens += user + self.fmt.generation_prompt() + self._closed(reply)
        return tokens

    def send(self, text: str) -> Iterator[int]:
        """Add the user message ``text``; return an iterator over the reply's token ids, yielded
        as they are generated (the closing ``<|im_end|>`` is not yielded).

        The message is added and old turns dropped (see :attr:`notices`) right away; the reply
        is generated while the iterator is consumed. Consume it fully before the next
        :meth:`send`.

        Raises:
            ValueError: the message alone does not fit in the context (nothing changes then).
        """
        user = self.fmt.message("user", text)
        prompt = user + self.fmt.generation_prompt()
        turns, tokens = self.turns, self.tokens + prompt
        dropped = 0
        while len(tokens) + self.max_new_tokens > self.block_size and turns:
            turns, dropped = turns[1:], dropped + 1
            tokens = self._rebuild(turns) + prompt
        if len(tokens) >= self.block_size:
            raise ValueError(f"the message is too long: {len(tokens)} tokens with the system "
                             f"message, the context holds {self.block_size}; send a shorter one")
        if dropped:
            self.notices.append(f"[the conversation outgrew the context of {self.block_size} "
                                f"tokens: dropped the oldest {dropped} turn(s)]")
            self._new_cache()
        self.turns, self.tokens = turns, tokens
        budget = min(self.max_new_tokens, self.block_size - len(tokens))
        if budget < self.max_new_tokens:
            self.notices.append(f"[only room for a reply of {budget} tokens]")
        return self._reply(user, budget)

    def _reply(self, user: list[int], budget: int) -> Iterator[int]:
        idx = torch.tensor([self.tokens[self.cached:]], dtype=torch.long, device=self.device)
        start = len(self.tokens)
        reply: list[int] = []
        steps = generate_tokens(self.model, idx, budget, self.temperature, self.top_k,
                                self.top_p, self.generator, kv_caches=self.caches,
                                stop_ids=(self.fmt.im_end,))
        for next_id in steps:  # the loop ends after <|im_end|> (a stop id) or the budget
            reply.append(int(next_id[0, 0]))
            if reply[-1] != self.fmt.im_end:
                yield reply[-1]
        # the cache now holds everything but the last token generated
        self.cached = start + len(reply) - 1
        if reply and reply[-1] == self.fmt.im_end:
            reply.pop()
        self.turns = [*self.turns, (user, reply)]
        self.tokens = self.tokens + self._closed(reply)


# ----------------------------------------------------------------------------- the command
def add_chat_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``chat`` subcommand to an ``argparse`` subparsers object; return its parser."""
    p = subparsers.add_parser(
        "chat", help="chat with SmolLM2-135M-Instruct or a course model fine-tuned for chat",
        description="Multi-turn chat in the terminal (or one message per line from a pipe). "
                    "Commands: /reset starts over, /quit ends.")
    add_chat_model_arguments(p)
    return p


def add_chat_model_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of every command that talks with a chat model (``chat``, ``serve``): which
    model, the system message, the sampling defaults, the device. Check them with
    :func:`check_chat_args`; load the model with :func:`load_chat_model`."""
    p.add_argument("--model", default=None,
                   help="a released chat model: smollm2-135m-instruct")
    p.add_argument("--checkpoint", default=None,
                   help="run folder or ckpt.pt of a course model fine-tuned for chat (nb 12)")
    p.add_argument("--system", default=None, help="system message (default: the model's own)")
    p.add_argument("--temperature", type=float, default=0.7, help="0 means greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="longest reply, in tokens (default: 256, at most half the context)")
    p.add_argument("--block-size", type=int, default=2048,
                   help="context of --model in tokens: at most the model's own (8192 for "
                        "SmolLM2); the KV cache grows with it")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--device", default="auto")


def check_chat_args(args) -> None:
    """Check the flags of :func:`add_chat_model_arguments` (``chat``, ``serve``) before any
    model is loaded: the sampling settings through :func:`course_utils.sampling.
    check_settings`, the device through :func:`course_utils.utils.resolve_device`. Raises
    ``ValueError`` (one line, naming the flag)."""
    if (args.model is None) == (args.checkpoint is None):
        raise ValueError("give exactly one of --model NAME and --checkpoint RUN_DIR")
    check_settings(args.temperature, args.top_k, args.top_p, args.max_new_tokens, args.seed,
                   flags=True)
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.block_size < 1:
        raise ValueError(f"--block-size must be >= 1, got {args.block_size}")
    resolve_device(args.device)


def load_chat_model(args):
    """``(model, ChatFormat)`` for the ``--model`` or ``--checkpoint`` of the ``chat`` and
    ``serve`` commands (:func:`add_chat_model_arguments`).

    Raises:
        ValueError: unknown model name, or a checkpoint that is not a chat model.
        FileNotFoundError: the model is not installed (how to install it) or no checkpoint.
    """
    device = resolve_device(args.device)
    if args.model is not None:
        from .pretrained import load_pretrained

        p = load_pretrained(args.model.lower(), block_size=args.block_size)
        return p.model.to(device), ChatFormat.from_template(p.tokenizer, p.chat_template)
    model, tokenizer = model_from_checkpoint(load_checkpoint(args.checkpoint), device,
                                             f"the checkpoint {args.checkpoint}")
    try:
        return model, ChatFormat(tokenizer)
    except ValueError:
        raise ValueError(f"{args.checkpoint} is not a chat model: its tokenizer has no "
                         f"{IM_START}/{IM_END} tokens; fine-tune it on ChatML conversations "
                         f"first (notebook 13)") from None


def run_chat(args) -> int:
    """Run the ``chat`` command with parsed ``args``; returns the exit code (2: bad input)."""
    try:
        check_chat_args(args)
        model, fmt = load_chat_model(args)
        # a reply may fill half the context: the course's models have only 256 tokens or so
        max_new_tokens = args.max_new_tokens or min(256, model.config.block_size // 2)
        session = ChatSession(model, fmt, args.system, max_new_tokens, args.temperature,
                              args.top_k, args.top_p, args.seed)
    except (ValueError, FileNotFoundError) as e:
        print("error: " + " ".join(str(e).split()), file=sys.stderr)
        return 2
    try:
        _chat_loop(session, fmt.tokenizer, interactive=sys.stdin.isatty())
    except KeyboardInterrupt:  # Ctrl-C ends the chat like /quit
        print(flush=True)
    return 0


def _chat_loop(session: ChatSession, tokenizer, interactive: bool) -> None:
    """Read user messages from stdin until end of input or /quit; stream the replies."""
    if interactive:
        print("chat: /reset starts over, /quit ends", flush=True)
    while True:
        if interactive:
            print("you> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line or line.strip() == "/quit":
            return
        text = line.rstrip("\n")
        if not text.strip():
            continue
        if text.strip() == "/reset":
            session.reset()
            print("[conversation reset]", flush=True)
            continue
        try:
            reply = session.send(text)
        except ValueError as e:  # the message alone is longer than the context
            print(f"[{e}]", flush=True)
            continue
        for notice in session.notices:
            print(notice, flush=True)
        session.notices.clear()
        if interactive:
            print("assistant> ", end="", flush=True)
        for piece in stream_text(tokenizer, reply):
            print(piece, end="", flush=True)
        print(flush=True)


def stream_text(tokenizer, tokens: Iterable[int]) -> Iterator[str]:
    """The text of ``tokens``, piece by piece as they arrive (for printing a reply while it is
    generated). A byte-level BPE token may end inside a multi-byte UTF-8 character (an emoji
    spans several tokens): its bytes wait until the character is complete. A character-level
    token is text on its own."""
    if not hasattr(tokenizer, "decode_bytes"):
        for token in tokens:
            yield tokenizer.decode([token])
        return
    utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for token in tokens:
        yield utf8.decode(tokenizer.decode_bytes([token]))
    yield utf8.decode(b"", final=True)
