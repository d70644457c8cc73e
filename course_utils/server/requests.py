"""The server's requests (:mod:`course_utils.server`): OpenAI's chat completions request
checked field by field, the conversation fitted into the context, stop strings."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass

from ..chat import ChatFormat

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 256 * 1024  # a request body, in bytes: ~30 times SmolLM2's 2,048-token context
DEFAULT_MAX_QUEUE = 8  # requests that may wait while one is generated; more get 503
MAX_STOP_STRINGS = 4  # as OpenAI's API
TEMPERATURE_MAX = 2.0  # OpenAI's range is [0, 2]
ROLES = ("system", "user", "assistant", "developer")  # developer: OpenAI's newer "system"
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]", "::1")
WEB_PACKAGES_MISSING = ('the serve command needs FastAPI and uvicorn: pip install -e ".[serve]" '
                        '(or pip install fastapi uvicorn)')


# ----------------------------------------------------------------------------- requests
class RequestError(Exception):
    """A request the server refuses: the HTTP ``status`` and OpenAI's error fields."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None, type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = (status, message, param,
                                                                       code, type)

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


@dataclass
class ChatRequest:
    """A checked ``POST /v1/chat/completions`` body. ``None`` means: the server's default."""

    messages: list[dict]  # {"role": "system" | "user" | "assistant", "content": str}
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None  # not in OpenAI's API; vLLM and llama.cpp's server take it too
    stop: tuple[str, ...] = ()
    seed: int | None = None
    stream: bool = False
    include_usage: bool = False  # stream_options.include_usage: a last chunk with the usage


def _show(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _field(data: dict, name: str, kinds: tuple, what: str):
    """``data[name]`` (``None`` when absent or null), or 422 when it is not of ``kinds``."""
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise RequestError(422, f"{name} must be {what}, got {_show(value)}", param=name)
    return value


def _number(data: dict, name: str, lo: float, hi: float, what: str, integer: bool = False,
            lo_open: bool = False):
    kinds = (int,) if integer else (int, float)
    value = _field(data, name, kinds, what)
    if value is not None and not (lo < value <= hi if lo_open else lo <= value <= hi):
        raise RequestError(422, f"{name} must be {what}, got {_show(value)}", param=name)
    return value


def _content(m: dict, i: int) -> str:
    """The text of message ``i``: a string, or OpenAI's list of ``{"type": "text"}`` parts."""
    content = m.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(
                    part.get("text"), str):
                raise RequestError(400, f"messages[{i}].content: only text parts "
                                        f'({{"type": "text", "text": ...}}) are supported, got '
                                        f"{_show(part)}", param=f"messages[{i}].content")
            texts.append(part["text"])
        return "".join(texts)
    raise RequestError(422, f"messages[{i}].content must be a string, got {_show(content)}",
                       param=f"messages[{i}].content")


# options of OpenAI's API this server does not implement, and their "off" values
UNSUPPORTED = {"n": (1,), "presence_penalty": (0,), "frequency_penalty": (0,),
               "logprobs": (False,), "top_logprobs": (0,), "logit_bias": ({},),
               "tools": ([],), "functions": ([],), "response_format": ({"type": "text"},)}


def parse_chat_request(data, model_id: str, max_tokens_cap: int) -> ChatRequest:
    """Check a decoded JSON body of ``POST /v1/chat/completions``.

    Fields read (OpenAI's names): ``messages`` (required), ``model`` (optional; when given it
    must be ``model_id``), ``max_tokens`` or ``max_completion_tokens`` (1 to
    ``max_tokens_cap``), ``temperature`` ([0, 2]), ``top_p`` ((0, 1]), ``top_k`` (>= 1),
    ``stop`` (a string or up to 4), ``seed``, ``stream``, ``stream_options``. Unknown fields
    are ignored, as OpenAI's clients send some (``user``, ``metadata`` ...); the options in
    :data:`UNSUPPORTED` are refused unless they have their "off" value.

    Raises:
        RequestError: 400 not an object, empty ``messages``, an unknown role, an unsupported
            option; 404 another model; 422 a field of the wrong type or out of range.
    """
    if not isinstance(data, dict):
        raise RequestError(400, f"the request body must be a JSON object, got {_show(data)}")
    model = _field(data, "model", (str,), "a string")
    if model is not None and model != model_id:
        raise RequestError(404, f"model {model!r} is not served here; this server has "
                                f"{model_id!r} (GET /v1/models)", param="model",
                           code="model_not_found")
    for name, off in UNSUPPORTED.items():
        if data.get(name) is not None and data[name] not in off:
            raise RequestError(400, f"{name}={_show(data[name])} is not supported by this "
                                    f"server; leave it out", param=name,
                               code="unsupported_parameter")
    raw = data.get("messages")
    if raw is None:
        raise RequestError(400, "messages is required: a list of {\"role\", \"content\"}",
                           param="messages")
    if not isinstance(raw, list):
        raise RequestError(422, f"messages must be a list, got {_show(raw)}", param="messages")
    if not raw:
        raise RequestError(400, "messages is empty: send at least one message",
                           param="messages")
    messages = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            raise RequestError(422, f"messages[{i}] must be an object with role and content, "
                                    f"got {_show(m)}", param=f"messages[{i}]")
        role = m.get("role")
        if role not in ROLES:
            raise RequestError(400, f"messages[{i}].role {_show(role)} is unknown: use "
                                    f"{', '.join(ROLES[:3])}", param=f"messages[{i}].role")
        messages.append({"role": "system" if role == "developer" else role,
                         "content": _content(m, i)})

    cap = f"an integer from 1 to {max_tokens_cap} (this server's cap: half the context)"
    max_tokens = _number(data, "max_tokens", 1, max_tokens_cap, cap, integer=True)
    newer = _number(data, "max_completion_tokens", 1, max_tokens_cap, cap, integer=True)
    if None not in (max_tokens, newer) and max_tokens != newer:
        raise RequestError(422, "max_tokens and max_completion_tokens differ: give one",
                           param="max_completion_tokens")
    stop = data.get("stop")
    stop = [stop] if isinstance(stop, str) else stop
    if stop is not None and not (isinstance(stop, list) and len(stop) <= MAX_STOP_STRINGS
                                 and all(isinstance(s, str) and s for s in stop)):
        raise RequestError(422, f"stop must be a non-empty string or a list of up to "
                                f"{MAX_STOP_STRINGS} of them, got {_show(data['stop'])}",
                           param="stop")
    options = _field(data, "stream_options", (dict,), "an object") or {}
    return ChatRequest(
        messages=messages,
        max_tokens=newer if newer is not None else max_tokens,
        temperature=_number(data, "temperature", 0, TEMPERATURE_MAX,
                            f"a number from 0 to {TEMPERATURE_MAX:g} (0: greedy)"),
        top_p=_number(data, "top_p", 0, 1, "a number in (0, 1]", lo_open=True),
        top_k=_number(data, "top_k", 1, math.inf, "an integer >= 1", integer=True),
        stop=tuple(stop or ()),
        seed=_number(data, "seed", -2**63, 2**64 - 1, "an integer (64 bits)", integer=True),
        stream=bool(_field(data, "stream", (bool,), "true or false")),
        include_usage=bool(_field(options, "include_usage", (bool,), "true or false")),
    )


def fit_conversation(fmt: ChatFormat, messages: list[dict], block_size: int,
                     max_tokens: int) -> tuple[list[int], int, int]:
    """``(prompt ids, reply budget, messages dropped)``: ``messages`` as ids ready for the
    reply, the oldest turns dropped until the prompt and ``max_tokens`` fit in ``block_size``.

    A turn begins with a user message; a leading system message is always kept. As in
    :class:`~course_utils.chat.ChatSession`, when even the last turn leaves less room than
    ``max_tokens`` the budget shrinks to the room left (the reply may end with
    ``finish_reason="length"``).

    Raises:
        RequestError: 400 when the last turn alone fills the context, or a message has text
            the model's tokenizer cannot encode (a character-level model's unknown character).
    """
    head = 1 if messages[0]["role"] == "system" else 0
    rest = messages[head:]
    try:
        ids = fmt.encode(messages)
        # each message's ids are its own, so a turn's share of the prompt adds up
        sizes = [len(fmt.message(m["role"], m["content"])) for m in rest]
    except ValueError as e:
        raise RequestError(400, f"the model's tokenizer cannot encode the messages: {e}",
                           param="messages") from None
    length, k = len(ids), 0
    starts = [i for i, m in enumerate(rest) if m["role"] == "user" and i > 0]
    while length + max_tokens > block_size and starts:
        nxt = starts.pop(0)
        length -= sum(sizes[k:nxt])
        k = nxt
    if k:
        ids = fmt.encode(messages[:head] + rest[k:])
    if len(ids) >= block_size:
        raise RequestError(400, f"the conversation's last turn takes {len(ids)} tokens and the "
                                f"context holds {block_size}: send a shorter message",
                           param="messages", code="context_length_exceeded")
    return ids, min(max_tokens, block_size - len(ids)), k


class StopText:
    """Cuts streamed text at the first occurrence of any of the ``stops`` strings.

    :meth:`feed` takes the next piece of text and returns what can be shown now: text that
    could still turn out to be the start of a stop string is held back until the next piece
    tells. The text ends where a stop string is first complete, reading character by character
    (so how the text is cut into pieces does not matter): :attr:`stopped` becomes true and the
    text before that stop string is the last returned. :meth:`flush` returns what is held back
    when the text ends without one.
    """

    def __init__(self, stops=()):
        self.stops = tuple(stops)
        self.held = ""
        self.stopped = False

    def feed(self, piece: str) -> str:
        text = self.held + piece
        # (end, start) of each stop string's first occurrence: the one that ends first wins
        # (of two that end together, the longer); all end inside `piece`, none did before
        hits = [(i + len(s), i) for s in self.stops if (i := text.find(s)) >= 0]
        if hits:
            self.held, self.stopped = "", True
            return text[:min(hits)[1]]
        # hold back the longest end of the text that begins some stop string
        keep = max((n for s in self.stops for n in range(1, len(s))
                    if text.endswith(s[:n])), default=0)
        self.held = text[len(text) - keep:]
        return text[:len(text) - keep]

    def flush(self) -> str:
        text, self.held = self.held, ""
        return text


