"""The server's engine (:mod:`course_utils.server`): one worker thread owns the model and
answers queued requests with the course's generation loop and a KV cache kept between them."""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import queue
import random
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import torch

from ..chat import ChatFormat, stream_text
from ..sampling import generate_tokens
from .requests import DEFAULT_MAX_QUEUE, StopText

log = logging.getLogger(__name__)

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


