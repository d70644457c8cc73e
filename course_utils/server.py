"""Your chat model as a web service: OpenAI's chat completions API and a chat page (notebook 12).

``python -m course_utils serve --model smollm2-135m-instruct`` (or ``--checkpoint RUN_DIR``)
serves the model at ``http://127.0.0.1:8000/``: the chat page at ``/`` and the API at ``/v1``,
the API that OpenAI's clients, LM Studio, llama.cpp's server, vLLM and ollama all speak. Other
programs use it through the official ``openai`` package, unchanged::

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="none")
    client.chat.completions.create(model="smollm2-135m-instruct", messages=[...])

What is notable here:

- **The course's generation loop.** One worker thread owns the model and runs
  :func:`~course_utils.sampling.generate_tokens` with the KV cache; the web server's event loop
  never waits on the model. Requests wait in a **bounded queue**: when it is full the answer
  is 503 with a ``Retry-After`` header. Requests are served one at a time (no batching).
- **The KV cache is kept from one request to the next**, as the ``chat`` command keeps it
  across turns: the chat page sends the whole conversation every turn, and a request that
  starts with the tokens of the previous one feeds only the tokens that differ.
- **Streaming** as server-sent events in OpenAI's format; a client that disconnects stops its
  generation at the next token.
- ``stop`` strings, a per-request ``seed`` (a sampled reply is reproducible), usage counts,
  ``finish_reason`` (``stop``: ``<|im_end|>`` or a stop string; ``length``: the cap).
- **Text is text**: messages are encoded by :class:`~course_utils.chat.ChatFormat`, so a
  ``<|im_end|>`` typed by a user is plain characters, never the special token.
- **Context policy** (as the ``chat`` command's): a conversation that does not fit the context
  with room for the reply loses its oldest turns (a turn: a user message and what follows it;
  the system message stays), and the response says how many messages it left out in the
  header ``x-dropped-messages``. When the last turn alone does not fit: 400
  ``context_length_exceeded``.
- **Bad requests get OpenAI-style JSON errors** (``{"error": {"message", "type", "param",
  "code"}}``): 400 malformed JSON or an unusable conversation (empty, unknown role, too
  long, an unsupported option), 404 unknown model or path, 405 wrong method, 413 body over
  :data:`MAX_BODY_BYTES`, 422 a field of the wrong type or out of range; never a traceback.
- **Safe defaults**: it listens on 127.0.0.1 only, and then refuses requests whose ``Host``
  header is not a loopback name (a web page cannot reach it through DNS rebinding); no CORS
  unless ``--cors-origin`` asks for it; the page loads nothing from elsewhere (a
  Content-Security-Policy header says so to the browser).

Framework: FastAPI on uvicorn (Starlette underneath). The standard library's ``http.server``
is "not recommended for production" (its own documentation) and would need a thread per
client, hand-written chunked streaming and disconnect detection; uvicorn is an event-loop
server with a tested HTTP parser, and Starlette streams a response, notices a client that
leaves (it cancels the stream) and turns an unexpected error into a plain 500. Both are well
kept and imported only inside this module's functions (the ``serve`` extra:
``pip install -e ".[serve]"``), so ``import course_utils`` and the other commands do not need
them. Requests are validated by hand here (:func:`parse_chat_request`), so that every message
names the field, what it must be and what it got.

:func:`start_server` runs a server in a background thread (notebooks, tests, benchmarks);
:func:`open_chat_page`, :func:`ask_page` and :func:`screenshot_page` drive the page in a
headless Chromium with Playwright.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import logging
import math
import queue
import random
import shutil
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

from . import chat
from .chat import ChatFormat, add_chat_model_arguments, check_chat_args, stream_text
from .sampling import generate_tokens

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


# ----------------------------------------------------------------------------- the engine
class ServerBusy(Exception):
    """The queue is full: ``retry_after`` seconds is a guess of when a place frees up."""

    def __init__(self, waiting: int, retry_after: int):
        super().__init__(f"the server is busy: {waiting} request(s) are waiting; "
                         f"retry in {retry_after} s")
        self.waiting, self.retry_after = waiting, retry_after


class Job:
    """One request's generation: its prompt and settings, the events the worker sends back
    (``("text", str)``, then ``("end", finish_reason, prompt_tokens, completion_tokens)`` or
    ``("error", message)``), and a flag that cancels it."""

    def __init__(self, prompt: list[int], max_tokens: int, temperature: float,
                 top_k: int | None, top_p: float | None, seed: int, stop: tuple[str, ...] = ()):
        self.prompt, self.max_tokens, self.seed, self.stop = prompt, max_tokens, seed, stop
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.cancelled = threading.Event()
        self._events: asyncio.Queue | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def cancel(self) -> None:
        """Stop the generation (the worker notices before its next token)."""
        self.cancelled.set()

    def emit(self, event: tuple) -> None:
        """Called by the worker thread: hand ``event`` to the request's event loop."""
        if self._loop is None:
            return
        try:
            self._loop.call_soon_threadsafe(self._events.put_nowait, event)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            self.cancel()

    async def events(self) -> AsyncIterator[tuple]:
        """The worker's events, up to and including the last one. Leaving the loop early (the
        client went away, the request was cancelled) cancels the generation."""
        try:
            while True:
                event = await self._events.get()
                yield event
                if event[0] in ("end", "error"):
                    return
        finally:
            self.cancel()  # no effect once the generation has ended


@dataclass
class Finished:
    """What the worker did for one request (kept in :attr:`Engine.finished`)."""

    finish_reason: str  # stop | length | cancelled | error
    prompt_tokens: int
    completion_tokens: int
    fed_tokens: int  # prompt tokens that were not in the KV cache already
    seconds: float


class Engine:
    """The model, its one worker thread, and the bounded queue in front of it.

    The worker takes one :class:`Job` at a time and runs the course's generation loop
    (:func:`~course_utils.sampling.generate_tokens`) with a KV cache it keeps between jobs:
    the ids the cache holds are remembered, and a prompt that starts with them feeds only the
    rest (at least one token, whose logits give the first reply token). Text goes back piece by
    piece (:func:`~course_utils.chat.stream_text`: whole UTF-8 characters), cut at ``stop``
    strings (:class:`StopText`).

    Args:
        model: a :class:`~course_utils.model.GPT` (or anything with its ``config``,
            ``new_kv_caches`` and call signature).
        fmt: the model's :class:`~course_utils.chat.ChatFormat`.
        max_queue: how many jobs may wait while one runs (>= 0); :meth:`submit` raises
            :class:`ServerBusy` beyond that.
        seed: seeds the seeds of the jobs that bring none.
    """

    def __init__(self, model, fmt: ChatFormat, max_queue: int = DEFAULT_MAX_QUEUE,
                 seed: int = 1337):
        if max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {max_queue}")
        self.model, self.fmt, self.max_queue = model, fmt, max_queue
        self.block_size = model.config.block_size
        self.device = next(model.parameters()).device
        self.finished: collections.deque[Finished] = collections.deque(maxlen=1000)
        self._seeds = random.Random(seed)
        self._caches = model.new_kv_caches(1)
        self._cached: list[int] = []  # the ids whose keys and values self._caches hold
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._admitted: set[Job] = set()  # waiting or running
        self._seconds_per_job = 1.0  # moving average, for Retry-After
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="course-utils-generation",
                                        daemon=True)
        self._thread.start()

    def new_seed(self) -> int:
        return self._seeds.getrandbits(63)

    def submit(self, job: Job, loop: asyncio.AbstractEventLoop | None = None) -> Job:
        """Queue ``job``; its events go to ``loop`` (the running one by default).

        Raises:
            ServerBusy: ``max_queue`` jobs are waiting already (or the engine is closed).
        """
        job._loop = loop or asyncio.get_running_loop()
        job._events = asyncio.Queue()
        with self._lock:
            if self._closed or len(self._admitted) > self.max_queue:
                raise ServerBusy(max(0, len(self._admitted) - 1),
                                 max(1, math.ceil(self._seconds_per_job)))
            self._admitted.add(job)
        self._jobs.put(job)
        return job

    @property
    def pending(self) -> int:
        """Jobs admitted and not finished: the one running and those waiting."""
        return len(self._admitted)

    def close(self, timeout: float = 10.0) -> None:
        """Cancel every job, stop the worker thread and wait for it (``timeout`` seconds)."""
        with self._lock:
            self._closed = True
            for job in self._admitted:
                job.cancel()
        self._jobs.put(None)
        self._thread.join(timeout)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            t0 = time.perf_counter()
            try:
                if job.cancelled.is_set():  # its client left while it waited
                    self.finished.append(Finished("cancelled", len(job.prompt), 0, 0, 0.0))
                    job.emit(("error", "cancelled"))
                else:
                    self._generate(job, t0)
                    with self._lock:
                        self._seconds_per_job += 0.2 * (time.perf_counter() - t0
                                                        - self._seconds_per_job)
            except Exception:  # keep serving; the client gets a message, the log the details
                log.exception("generation failed")
                self._cached = []  # the cache may be half-written
                self.finished.append(Finished("error", len(job.prompt), 0, 0,
                                              time.perf_counter() - t0))
                job.emit(("error", "generation failed; the server's log has the details"))
            finally:
                with self._lock:
                    self._admitted.discard(job)

    def _reuse_cache(self, prompt: list[int]) -> list[int]:
        """Keep the cached positions that ``prompt`` starts with; return the ids to feed."""
        n, limit = 0, min(len(self._cached), len(prompt) - 1)
        while n < limit and self._cached[n] == prompt[n]:
            n += 1
        for cache in self._caches:
            cache.length = n  # positions past it are overwritten as the new tokens come
        return prompt[n:]

    def _generate(self, job: Job, t0: float) -> None:
        im_end = self.fmt.im_end
        new = self._reuse_cache(job.prompt)
        idx = torch.tensor([new], dtype=torch.long, device=self.device)
        generator = torch.Generator(device=self.device).manual_seed(job.seed)
        steps = generate_tokens(self.model, idx, job.max_tokens, job.temperature, job.top_k,
                                job.top_p, generator, kv_caches=self._caches, stop_ids=(im_end,))
        out: list[int] = []  # every token generated, a final <|im_end|> included
        finish = "length"

        def reply_ids() -> Iterator[int]:
            nonlocal finish
            for next_id in steps:  # ends after <|im_end|> or max_tokens tokens
                out.append(int(next_id[0, 0]))
                if out[-1] == im_end:
                    finish = "stop"
                    return
                yield out[-1]

        stopper = StopText(job.stop)
        try:
            for piece in stream_text(self.fmt.tokenizer, reply_ids()):
                if job.cancelled.is_set():
                    finish = "cancelled"
                    break
                text = stopper.feed(piece)
                if text:
                    job.emit(("text", text))
                if stopper.stopped:
                    finish = "stop"
                    break
            else:
                if text := stopper.flush():
                    job.emit(("text", text))
        finally:
            steps.close()
            # the cache holds everything fed: the prompt and all generated tokens but the last
            self._cached = (job.prompt + out)[:self._caches[0].length]
        completion = len(out) - (out[-1:] == [im_end])
        self.finished.append(Finished(finish, len(job.prompt), completion, len(new),
                                      time.perf_counter() - t0))
        job.emit(("end", finish, len(job.prompt), completion))


# ----------------------------------------------------------------------------- the web app
@dataclass
class ServeSettings:
    """What the server answers with when a request does not say."""

    model_id: str = "course-model"  # the name in GET /v1/models and in responses
    system: str | None = None  # system message when the conversation has none (None: model's)
    temperature: float = 0.7
    top_k: int | None = None
    top_p: float | None = None
    max_tokens: int | None = None  # default reply length (None: min(256, the cap))
    max_queue: int = DEFAULT_MAX_QUEUE
    max_body_bytes: int = MAX_BODY_BYTES
    cors_origins: tuple[str, ...] = ()  # origins whose pages may call the API (CORS)
    seed: int = 1337


def max_tokens_cap(block_size: int) -> int:
    """The longest reply a request may ask for: half the context, so that a conversation
    always has room."""
    return max(1, block_size // 2)


def _error(status: int, message: str, type: str = "invalid_request_error",
           code: str | None = None, headers: dict | None = None):
    from fastapi.responses import JSONResponse

    return JSONResponse(RequestError(status, message, code=code, type=type).body(),
                        status_code=status, headers=headers)


class LoopbackHostOnly:
    """ASGI middleware: refuse (400) a request whose ``Host`` header is not a loopback name.

    A server on 127.0.0.1 is out of reach of other machines, but a web page in the user's
    browser can still send it requests under a domain name that resolves to 127.0.0.1 (DNS
    rebinding); the browser then sends that name as ``Host``. ``also`` adds allowed names.
    """

    def __init__(self, app, also: tuple[str, ...] = ()):
        self.app, self.allowed = app, {*LOOPBACK_NAMES, *also}

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1").lower()
            name = host.split("]")[0] + "]" if host.startswith("[") else host.split(":")[0]
            if name not in self.allowed:
                body = json.dumps(RequestError(400, f"Host {host!r} is not this machine: the "
                                                    f"server answers only at 127.0.0.1 or "
                                                    f"localhost").body()).encode()
                await send({"type": "http.response.start", "status": 400,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


PAGE_HEADERS = {
    # the page is self-contained: inline script and style, requests to this server only
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; "
                               "style-src 'unsafe-inline'; connect-src 'self'; img-src data:; "
                               "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


def chat_page_html() -> str:
    """The chat page (``course_utils/static/chat.html``)."""
    return resources.files("course_utils").joinpath("static/chat.html").read_text("utf-8")


def create_app(engine: Engine, settings: ServeSettings, local_only: bool = True,
               local_names: tuple[str, ...] = ()):
    """The FastAPI application: ``GET /`` (the page), ``GET /v1/models``,
    ``GET /v1/models/{id}``, ``POST /v1/chat/completions``.

    ``local_only`` adds :class:`LoopbackHostOnly` (with ``local_names`` also allowed);
    ``settings.cors_origins`` adds CORS for those origins. Raises ``ImportError`` (naming the
    extra to install) when FastAPI is missing.
    """
    try:
        from fastapi import FastAPI
        from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
        from starlette.exceptions import HTTPException
    except ImportError:
        raise ImportError(WEB_PACKAGES_MISSING) from None

    cap = max_tokens_cap(engine.block_size)
    default_max_tokens = settings.max_tokens or min(256, cap)
    if default_max_tokens > cap:
        raise ValueError(f"--max-new-tokens must be at most {cap} (half the model's context of "
                         f"{engine.block_size} tokens), got {default_max_tokens}")
    created = int(time.time())
    page = chat_page_html()
    app = FastAPI(title="course_utils serve", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(HTTPException)
    async def http_error(request, exc):  # unknown path (404), wrong method (405) ...
        what = {404: f"no such endpoint: {request.method} {request.url.path}; this server has "
                     f"GET /, GET /v1/models and POST /v1/chat/completions",
                405: f"{request.method} is not allowed on {request.url.path}"}
        return _error(exc.status_code, what.get(exc.status_code, str(exc.detail)),
                      code={404: "not_found", 405: "method_not_allowed"}.get(exc.status_code),
                      headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestError)
    async def request_error(request, exc: RequestError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(Exception)
    async def server_error(request, exc):  # details go to the log, never to the client
        log.exception("unexpected error")
        return _error(500, "internal server error; the server's log has the details",
                      type="server_error")

    @app.get("/", response_class=HTMLResponse)
    async def index():
        return HTMLResponse(page, headers=PAGE_HEADERS)

    def model_card() -> dict:
        return {"id": settings.model_id, "object": "model", "created": created,
                "owned_by": "course_utils", "context_length": engine.block_size,
                "max_tokens_cap": cap,
                "defaults": {"temperature": settings.temperature,
                             "max_tokens": default_max_tokens, "system": settings.system}}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str):
        if model_id != settings.model_id:
            raise RequestError(404, f"model {model_id!r} is not served here; this server has "
                                    f"{settings.model_id!r}", param="model",
                               code="model_not_found")
        return model_card()

    async def chat_completions(request):  # a plain Starlette route: the request as it came
        req = parse_chat_request(await _read_json(request, settings.max_body_bytes),
                                 settings.model_id, cap)
        messages = req.messages
        if settings.system is not None and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": settings.system}, *messages]
        max_tokens = req.max_tokens or default_max_tokens
        # tokenizing a long conversation takes a while: not on the event loop
        prompt, budget, dropped = await asyncio.to_thread(
            fit_conversation, engine.fmt, messages, engine.block_size, max_tokens)
        job = Job(prompt, budget,
                  settings.temperature if req.temperature is None else req.temperature,
                  req.top_k or settings.top_k, req.top_p or settings.top_p,
                  engine.new_seed() if req.seed is None else req.seed, req.stop)
        try:
            engine.submit(job)
        except ServerBusy as e:
            return _error(503, str(e), type="server_error", code="server_busy",
                          headers={"Retry-After": str(e.retry_after)})
        info = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()),
                "model": settings.model_id}
        headers = {"x-dropped-messages": str(dropped)} if dropped else {}
        if req.stream:
            return StreamingResponse(
                _sse(job, info, req.include_usage), media_type="text/event-stream",
                headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        # not streamed: wait for the whole reply, and cancel it if the client goes away
        watch = asyncio.create_task(_cancel_on_disconnect(request, job))
        try:
            texts, end = [], None
            async for event in job.events():
                if event[0] == "text":
                    texts.append(event[1])
                elif event[0] == "error":
                    return _error(500, event[1], type="server_error")
                else:
                    end = event
        finally:
            watch.cancel()
        _, finish, prompt_tokens, completion_tokens = end
        return JSONResponse({
            "object": "chat.completion", **info,
            "choices": [{"index": 0, "finish_reason": finish, "logprobs": None,
                         "message": {"role": "assistant", "content": "".join(texts)}}],
            "usage": _usage(prompt_tokens, completion_tokens)}, headers=headers)

    app.add_route("/v1/chat/completions", chat_completions, methods=["POST"])
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins),
                           allow_methods=["GET", "POST"], allow_headers=["*"])
    if local_only:
        app.add_middleware(LoopbackHostOnly, also=local_names)
    return app


async def _read_json(request, limit: int):
    """The request's body as JSON. Raises RequestError: 413 over ``limit`` bytes (by its
    Content-Length or, without one, as it arrives), 400 not JSON."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"the request body has {int(declared):,} bytes; the limit is "
                                f"{limit:,}", code="request_too_large")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise RequestError(413, f"the request body is over the limit of {limit:,} bytes",
                               code="request_too_large")

    def no_constants(name):  # NaN and Infinity are not JSON
        raise ValueError(f"{name} is not valid JSON")

    try:
        return json.loads(bytes(body), parse_constant=no_constants)
    except (ValueError, UnicodeDecodeError) as e:
        raise RequestError(400, f"the request body is not valid JSON: {e}") from None


async def _cancel_on_disconnect(request, job: Job) -> None:
    """Cancel ``job`` when the client disconnects (the body has been read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    job.cancel()


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


async def _sse(job: Job, info: dict, include_usage: bool) -> AsyncIterator[str]:
    """The reply as server-sent events in OpenAI's format: a chunk with the role, one per
    piece of text, one with the finish_reason, (the usage), then ``data: [DONE]``. If the
    client disconnects, the server stops iterating and :meth:`Job.events` cancels the job."""

    def chunk(delta: dict, finish: str | None = None) -> str:
        body = {"object": "chat.completion.chunk", **info,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish,
                             "logprobs": None}]}
        return f"data: {json.dumps(body)}\n\n"

    yield chunk({"role": "assistant", "content": ""})
    async for event in job.events():
        if event[0] == "text":
            yield chunk({"content": event[1]})
        elif event[0] == "error":
            error = RequestError(500, event[1], type="server_error").body()
            yield f"data: {json.dumps(error)}\n\n"
            return
        else:
            _, finish, prompt_tokens, completion_tokens = event
            yield chunk({}, finish)
            if include_usage:
                usage = {"object": "chat.completion.chunk", **info, "choices": [],
                         "usage": _usage(prompt_tokens, completion_tokens)}
                yield f"data: {json.dumps(usage)}\n\n"
    yield "data: [DONE]\n\n"


# ----------------------------------------------------------------------------- running it
def is_loopback(host: str) -> bool:
    return host in LOOPBACK_NAMES or host.startswith("127.")


def base_url(host: str, port: int) -> str:
    """``http://host:port`` to open from this machine (0.0.0.0 and :: are opened locally)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one).

    Raises:
        ValueError: the address is in use or not this machine's (one line, how to fix it).
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, _, _, address = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as e:
        raise ValueError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as e:
        sock.close()
        hint = "; pick another --port" if e.errno == 98 else ""
        raise ValueError(f"cannot listen on {host}:{port}: {e.strerror or e}{hint}") from None
    sock.set_inheritable(True)
    return sock


def make_server(model, fmt: ChatFormat, settings: ServeSettings, host: str = "127.0.0.1",
                port: int = 0, log_level: str | None = None):
    """``(uvicorn.Server, Engine)`` for ``model``: not started, nothing bound yet.

    ``log_level`` (e.g. ``"info"``: every request) sets up uvicorn's own logging on stderr;
    ``None`` leaves logging alone (warnings and errors still show), as a notebook wants."""
    try:
        import uvicorn
    except ImportError:
        raise ImportError(WEB_PACKAGES_MISSING) from None
    engine = Engine(model, fmt, settings.max_queue, settings.seed)
    try:
        app = create_app(engine, settings, local_only=is_loopback(host), local_names=(host,))
    except Exception:
        engine.close()
        raise
    logs = {"log_level": log_level} if log_level else {"log_config": None}
    config = uvicorn.Config(app, host=host, port=port, **logs, lifespan="off",
                            timeout_graceful_shutdown=3, limit_concurrency=128,
                            server_header=False)
    return uvicorn.Server(config), engine


class RunningServer:
    """A server running in a background thread (:func:`start_server`); a context manager
    that stops it. ``url`` is the chat page, ``api_url`` the base URL for OpenAI's clients."""

    def __init__(self, server, engine: Engine, sock: socket.socket, thread: threading.Thread):
        self.server, self.engine, self._sock, self._thread = server, engine, sock, thread
        host, port = sock.getsockname()[:2]
        self.port = port
        self.url = base_url(host, port) + "/"
        self.api_url = self.url + "v1"

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving (open streams are closed), stop the worker, free the port."""
        self.server.should_exit = True
        self._thread.join(timeout)
        self.engine.close()
        self._sock.close()

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_server(model, fmt: ChatFormat, model_id: str = "course-model",
                 host: str = "127.0.0.1", port: int = 0, timeout: float = 30.0,
                 **settings) -> RunningServer:
    """Serve ``model`` from a background thread of this process; return once it answers.

    For notebooks, tests and benchmarks: ``port=0`` takes a free port (see ``.url`` and
    ``.api_url``). ``settings`` are :class:`ServeSettings` fields (``temperature``,
    ``max_queue`` ...). Stop it with ``.stop()`` or a ``with`` block.

    Raises:
        ValueError: the address is in use, or a setting is out of range.
        ImportError: FastAPI or uvicorn is missing (the message names the extra).
        RuntimeError: the server did not start within ``timeout`` seconds.
    """
    server, engine = make_server(model, fmt, ServeSettings(model_id=model_id, **settings), host,
                                 port)
    try:
        sock = bind(host, port)
    except ValueError:
        engine.close()
        raise
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                              name="course-utils-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            engine.close()
            sock.close()
            raise RuntimeError("the server did not start; see the messages above")
        time.sleep(0.02)
    return RunningServer(server, engine, sock, thread)


# ----------------------------------------------------------------------------- the command
def add_serve_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``serve`` subcommand to an ``argparse`` subparsers object; return its parser."""
    p = subparsers.add_parser(
        "serve", help="serve a chat model: a chat page and OpenAI's chat completions API",
        description="Serve SmolLM2-135M-Instruct or a course chat model over HTTP: a chat page "
                    "at / and OpenAI's chat completions API at /v1 (for the openai client and "
                    "other OpenAI-compatible tools). The flags below set the defaults of "
                    "requests that do not say.")
    add_chat_model_arguments(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 "
                        "opens it to the network, without authentication)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (0: a free one)")
    p.add_argument("--max-queue", type=int, default=DEFAULT_MAX_QUEUE,
                   help="requests that may wait while one is generated; more are refused "
                        "with 503 and Retry-After")
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="let web pages from ORIGIN (e.g. http://localhost:3000) call the API "
                        "from a browser; repeatable (default: none)")
    return p


def _check_serve_args(args) -> None:
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be from 0 to 65535, got {args.port}")
    if args.max_queue < 0:
        raise ValueError(f"--max-queue must be >= 0, got {args.max_queue}")
    if args.temperature > TEMPERATURE_MAX:
        raise ValueError(f"--temperature must be at most {TEMPERATURE_MAX:g} (OpenAI's range), "
                         f"got {args.temperature}")
    for origin in args.cors_origin:
        if origin != "*" and not origin.startswith(("http://", "https://")):
            raise ValueError(f"--cors-origin must be like http://host:port, got {origin!r}")


def _model_id(args) -> str:
    if args.model is not None:
        return args.model.lower()
    path = Path(args.checkpoint)
    return (path.parent if path.suffix == ".pt" else path).resolve().name or "course-model"


def run_serve(args) -> int:
    """Run the ``serve`` command with parsed ``args``: check every flag, bind the port, load
    the model, serve until Ctrl-C. Returns the exit code; bad input raises ``ValueError`` or
    ``FileNotFoundError`` (the CLI prints one line and exits with 2)."""
    check_chat_args(args)
    _check_serve_args(args)
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise ValueError(WEB_PACKAGES_MISSING) from None
    if not is_loopback(args.host):
        print(f"warning: --host {args.host} listens on the network: anyone who can reach this "
              f"machine can use the model (there is no password); the default 127.0.0.1 keeps "
              f"it to this machine", file=sys.stderr, flush=True)
    if "*" in args.cors_origin:
        print("warning: --cors-origin '*' lets any web page you visit use the model",
              file=sys.stderr, flush=True)
    sock = bind(args.host, args.port)  # before the model loads: a busy port fails at once
    try:
        model, fmt = chat.load_chat_model(args)
        settings = ServeSettings(model_id=_model_id(args), system=args.system,
                                 temperature=args.temperature, top_k=args.top_k,
                                 top_p=args.top_p, max_tokens=args.max_new_tokens,
                                 max_queue=args.max_queue, seed=args.seed,
                                 cors_origins=tuple(args.cors_origin))
        server, engine = make_server(model, fmt, settings, args.host, args.port, "info")
        url = base_url(*sock.getsockname()[:2])
        cap = max_tokens_cap(engine.block_size)
        print(f"serving {settings.model_id}: context {engine.block_size} tokens, replies up to "
              f"{cap} tokens, {args.max_queue} request(s) may wait\n"
              f"chat page: {url}/\n"
              f"API:       {url}/v1  (OpenAI's chat completions: "
              f"OpenAI(base_url=\"{url}/v1\", api_key=\"none\"))\n"
              f"press Ctrl-C to stop", flush=True)
        try:
            server.run(sockets=[sock])
        except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after its graceful shutdown
            pass
        finally:
            engine.close()
    finally:
        sock.close()
    return 0


# ----------------------------------------------------------------------------- in a browser
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def find_chromium() -> str:
    """The path of a Chromium (or Chrome) executable.

    Raises:
        FileNotFoundError: none found (how to install one).
    """
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    raise FileNotFoundError("no Chromium found: install it with your system's packages (Debian "
                            "and Ubuntu: apt-get install chromium)")


@contextmanager
def open_chat_page(url: str, width: int = 900, height: int = 720):
    """Open the chat page at ``url`` in a headless Chromium (Playwright's sync API with the
    system's Chromium and a fresh profile); yield the Playwright ``Page`` once the page has
    shown the model's name.

    Raises:
        ImportError: the ``playwright`` package is missing.
        FileNotFoundError: no Chromium (:func:`find_chromium`).
    """
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise ImportError("the browser needs Playwright's Python package: pip install "
                          "playwright (with the system's Chromium; no playwright install)"
                          ) from None
    chromium = find_chromium()
    with tempfile.TemporaryDirectory() as profile, sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            profile, executable_path=chromium, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": width, "height": height})
        try:
            page = browser.pages[0] if browser.pages else browser.new_page()
            page.goto(url)
            # (selectors, not JavaScript: the page's Content-Security-Policy forbids eval)
            page.wait_for_selector("body[data-state=ready]")
            yield page
        finally:
            browser.close()


def ask_page(page, text: str, timeout_s: float = 120.0) -> str:
    """Type ``text`` into the chat page, send it with Enter, wait until the reply is complete;
    return the reply's text."""
    n = page.locator(".msg.assistant").count()
    page.fill("#input", text)
    page.press("#input", "Enter")
    reply = page.locator(".msg.assistant").nth(n)
    reply.wait_for(timeout=timeout_s * 1000)
    page.wait_for_selector("body[data-state=ready]", timeout=timeout_s * 1000)
    return reply.locator(".text").inner_text()


def screenshot_page(url: str, path: str | Path | None = None, prompts=(), width: int = 900,
                    height: int = 720, temperature: float | None = None) -> bytes:
    """A PNG screenshot of the chat page at ``url`` after sending ``prompts`` one by one (each
    reply awaited); written to ``path`` too when given. ``temperature`` sets the page's field.

    Runs in a thread of its own, so it works under Jupyter (whose event loop would stop
    Playwright's sync API). Raises what :func:`open_chat_page` raises.
    """
    result: dict = {}

    def shoot():
        try:
            with open_chat_page(url, width, height) as page:
                if temperature is not None:  # in the settings, closed again after
                    page.click("#settings summary")
                    page.fill("#temperature", str(temperature))
                    page.click("#settings summary")
                for prompt in prompts:
                    ask_page(page, prompt)
                result["png"] = page.screenshot(path=None if path is None else str(path))
        except BaseException as e:  # noqa: B036 - handed to the calling thread
            result["error"] = e

    thread = threading.Thread(target=shoot, name="course-utils-screenshot")
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["png"]
