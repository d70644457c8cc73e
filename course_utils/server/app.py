"""The server's web app (:mod:`course_utils.server`): the FastAPI routes, the page, errors in
OpenAI's shape, and running a server in a thread for notebooks, tests and benchmarks."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import resources

from ..chat import ChatFormat
from .engine import Engine, Job, ServerBusy
from .requests import (
    DEFAULT_MAX_QUEUE,
    LOOPBACK_NAMES,
    MAX_BODY_BYTES,
    WEB_PACKAGES_MISSING,
    RequestError,
    fit_conversation,
    parse_chat_request,
)

log = logging.getLogger(__name__)

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


