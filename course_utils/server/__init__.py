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

The package: :mod:`~course_utils.server.requests` (a request checked field by field, the
conversation fitted into the context, stop strings), :mod:`~course_utils.server.engine` (the
worker thread, the queue, the kept KV cache), :mod:`~course_utils.server.app` (the routes,
the page, the errors, a server in a thread), :mod:`~course_utils.server.browser` (the page
in Chromium), and here the ``serve`` command.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import chat
from ..chat import add_chat_model_arguments, check_chat_args
from .app import (
    RunningServer,
    ServeSettings,
    base_url,
    bind,
    create_app,
    is_loopback,
    make_server,
    max_tokens_cap,
    start_server,
)
from .browser import ask_page, find_chromium, open_chat_page, screenshot_page
from .engine import Engine
from .requests import (
    DEFAULT_MAX_QUEUE,
    MAX_BODY_BYTES,
    TEMPERATURE_MAX,
    WEB_PACKAGES_MISSING,
    ChatRequest,
    RequestError,
    StopText,
    fit_conversation,
    parse_chat_request,
)

__all__ = ["DEFAULT_MAX_QUEUE", "MAX_BODY_BYTES", "ChatRequest", "Engine", "RequestError",
           "RunningServer", "ServeSettings", "StopText", "add_serve_parser", "ask_page",
           "create_app", "find_chromium", "fit_conversation", "make_server", "open_chat_page",
           "parse_chat_request", "run_serve", "screenshot_page", "start_server"]


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


