"""Section ``serve``: the chat server under load, on the loopback.

In full mode (quick and tiny modes are smaller): SmolLM2-135M-Instruct is served by
:func:`course_utils.server.start_server` in this process. First one client asks each of 8
questions in turn: the sequential baseline, and the reference replies (greedy). Then two
phases, each with a fresh server: 16 clients (threads, each with its own HTTP connection) send
100 streamed requests in all, each a question in turn, as fast as they are answered, within a
time limit; the server's queue holds 16 (every client fits) in the first, and 8 (the
default: the others are refused with 503) in the second. A refused client waits the
``Retry-After`` it was given before its next request; a refused request is not retried.

Measured per request: latency (send to the end of the stream), time to first token (send to
the first piece of text), decoding speed (tokens after the first / the time after the first);
for the run: throughput (reply tokens / wall time). Checked: every request is answered (200 and
a whole stream) or refused with 503 and Retry-After, none lost; every reply equals the
sequential reply to its question (none cut, none mixed with another request's); the server
answers afterwards.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from dataclasses import dataclass

from .harness import Context, SectionResult, Stat, Table, Target

TITLE = "8. Serving: the chat server under load (loopback)"

QUESTIONS = (
    "What is the capital of France?",
    "Name three primary colours.",
    "What is 12 times 12?",
    "Give me a synonym for happy.",
    "What does a bee make?",
    "Which planet is closest to the sun?",
    "Say hello in Spanish.",
    "What is the boiling point of water in Celsius?",
)


@dataclass
class Load:
    """One load phase: ``clients`` threads send ``requests`` requests in all to a server whose
    queue holds ``max_queue`` waiting requests."""

    label: str
    clients: int
    requests: int
    max_queue: int


@dataclass
class Plan:
    model: str  # "smollm2" or "tiny" (a random course GPT: checks the harness only)
    max_tokens: int
    time_limit_s: float  # per phase
    phases: list[Load]


@dataclass
class Outcome:
    """One request: ``status`` 200 (answered), 503 (refused), or 0 (lost: no answer)."""

    question: int
    status: int
    reply: str = ""
    finish: str | None = None
    tokens: int = 0
    latency_s: float = 0.0
    first_token_s: float | None = None
    retry_after: int | None = None
    error: str = ""


def ask(http, question: int, max_tokens: int) -> Outcome:
    """Send one streamed greedy request for ``QUESTIONS[question]``; never raises."""
    body = {"messages": [{"role": "user", "content": QUESTIONS[question]}], "temperature": 0,
            "max_tokens": max_tokens, "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    out = Outcome(question, 0)
    try:
        with http.stream("POST", "/chat/completions", json=body) as r:
            if r.status_code != 200:
                r.read()
                out.status, out.error = r.status_code, r.json()["error"]["message"]
                out.retry_after = int(r.headers.get("retry-after", 0)) or None
                return out
            pieces, ids, done = [], set(), False
            for line in r.iter_lines():
                if not line:
                    continue
                if line == "data: [DONE]":
                    done = True
                    break
                event = json.loads(line.removeprefix("data: "))
                ids.add(event["id"])
                if event.get("usage"):
                    out.tokens = event["usage"]["completion_tokens"]
                for choice in event["choices"]:
                    if choice["delta"].get("content"):
                        if out.first_token_s is None:
                            out.first_token_s = time.perf_counter() - t0
                        pieces.append(choice["delta"]["content"])
                    out.finish = choice["finish_reason"] or out.finish
            out.latency_s = time.perf_counter() - t0
            if done and len(ids) == 1:
                out.status, out.reply = 200, "".join(pieces)
            else:
                out.error = "the stream ended early" if not done else f"{len(ids)} ids"
    except Exception as e:  # a lost request: recorded, never raised
        out.error = f"{type(e).__name__}: {e}"
    return out


def load_test(api_url: str, load: Load, max_tokens: int, time_limit_s: float, log
              ) -> tuple[list[Outcome], float]:
    """``load.clients`` threads send ``load.requests`` requests in all; returns the outcomes
    and the wall time. Stops sending after ``time_limit_s``."""
    import httpx

    lock, outcomes = threading.Lock(), []
    sent = iter(range(load.requests))
    deadline = time.monotonic() + time_limit_s

    def client():
        with httpx.Client(base_url=api_url, timeout=time_limit_s) as http:
            while time.monotonic() < deadline:
                with lock:
                    i = next(sent, None)
                if i is None:
                    return
                out = ask(http, i % len(QUESTIONS), max_tokens)
                with lock:
                    outcomes.append(out)
                    if len(outcomes) % 20 == 0:
                        log(f"serve: {load.label}: {len(outcomes)} of {load.requests} done")
                if out.status == 503:
                    time.sleep(min(out.retry_after or 1, 10))

    threads = [threading.Thread(target=client) for _ in range(load.clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outcomes, time.perf_counter() - t0


def _p95(xs: list[float]) -> float:
    return statistics.quantiles(xs, n=20, method="inclusive")[-1] if len(xs) > 1 else xs[0]


def _summary(outcomes: list[Outcome], wall_s: float) -> dict:
    ok = [o for o in outcomes if o.status == 200]
    latency = [o.latency_s for o in ok]
    first = [o.first_token_s for o in ok if o.first_token_s is not None]
    decode = [(o.tokens - 1) / (o.latency_s - o.first_token_s) for o in ok
              if o.first_token_s is not None and o.tokens > 1 and o.latency_s > o.first_token_s]
    return {"requests": len(outcomes), "answered": len(ok),
            "refused": sum(o.status == 503 for o in outcomes),
            "lost": sum(o.status not in (200, 503) for o in outcomes),
            "latency_s": Stat(latency, "s") if latency else None,
            "first_token_s": Stat(first, "s") if first else None,
            "decode_tokens_per_s": Stat(decode, "tokens/s") if decode else None,
            "throughput_tokens_per_s": sum(o.tokens for o in ok) / wall_s, "wall_s": wall_s}


def _model(plan: Plan):
    """``(model, ChatFormat, name)`` for the load test."""
    if plan.model == "smollm2":
        import argparse

        from course_utils.chat import load_chat_model

        model, fmt = load_chat_model(argparse.Namespace(
            model="smollm2-135m-instruct", checkpoint=None, block_size=1024, device="cpu"))
        return model, fmt, "smollm2-135m-instruct"
    import torch

    from course_utils.bpe import train_bpe
    from course_utils.chat import IM_END, IM_START, ChatFormat
    from course_utils.model import GPT, GPTConfig

    tok = train_bpe(" ".join(QUESTIONS) * 4, 300, special_tokens=[IM_START, IM_END])
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=128, n_layer=2, n_head=2,
                          n_embd=32))
    return model.eval(), ChatFormat(tok), "tiny-random-gpt"


def run(ctx: Context) -> SectionResult:
    import httpx

    from course_utils.server import DEFAULT_MAX_QUEUE, start_server

    res = SectionResult("serve", TITLE)
    q = DEFAULT_MAX_QUEUE
    plan = ctx.pick(
        full=Plan("smollm2", 32, 900.0, [Load("fits", 16, 100, 16), Load("default", 16, 100, q)]),
        quick=Plan("smollm2", 16, 300.0, [Load("fits", 8, 24, 8), Load("default", 8, 24, 4)]),
        tiny=Plan("tiny", 8, 60.0, [Load("fits", 4, 12, 4), Load("default", 4, 12, 1)]))
    model, fmt, name = _model(plan)
    with start_server(model, fmt, model_id=name) as server:
        ctx.log(f"serve: {name} at {server.url}; sequential baseline")
        with httpx.Client(base_url=server.api_url, timeout=plan.time_limit_s) as http:
            ask(http, 0, 2)  # warm-up
            t0 = time.perf_counter()
            baseline = [ask(http, q, plan.max_tokens) for q in range(len(QUESTIONS))]
            base_wall = time.perf_counter() - t0
    if any(o.status != 200 for o in baseline):
        raise RuntimeError(f"the sequential baseline failed: {baseline}")
    reference = [o.reply for o in baseline]

    table = Table(f"{name}, greedy, replies up to {plan.max_tokens} tokens",
                  ["clients", "queue", "requests", "answered", "refused (503)", "lost",
                   "latency p50 / p95 (s)", "first token p50 / p95 (s)",
                   "decoding tokens/s per request", "throughput tokens/s", "wall (s)"])

    def add_row(key: str, clients: int, queue, s: dict) -> None:
        lat, first, dec = s["latency_s"], s["first_token_s"], s["decode_tokens_per_s"]
        table.add(clients, queue, s["requests"], s["answered"], s["refused"], s["lost"],
                  f"{lat.median:.2f} / {_p95(lat.samples):.2f}" if lat else "-",
                  f"{first.median:.2f} / {_p95(first.samples):.2f}" if first else "-",
                  f"{dec.median:.1f}" if dec else "-",
                  f"{s['throughput_tokens_per_s']:.1f}", f"{s['wall_s']:.1f}")
        for k, v in s.items():
            res.figure(f"{key}/{k}", v if v is not None else "none")
        if lat:
            res.figure(f"{key}/latency_p95_s", _p95(lat.samples))
        if first:
            res.figure(f"{key}/first_token_p95_s", _p95(first.samples))

    add_row("sequential", "1 (one question after another)", "-", _summary(baseline, base_wall))
    fed = []
    for load in plan.phases:
        with start_server(model, fmt, model_id=name, max_queue=load.max_queue) as server:
            ctx.log(f"serve: {load.label}: {load.clients} clients, {load.requests} requests, "
                    f"queue {load.max_queue}")
            outcomes, wall = load_test(server.api_url, load, plan.max_tokens,
                                       plan.time_limit_s, ctx.log)
            with httpx.Client(base_url=server.api_url, timeout=60) as http:
                after = ask(http, 0, plan.max_tokens)
                models = http.get("/models").status_code
            fed += [(f.fed_tokens, f.prompt_tokens) for f in server.engine.finished]
        s = _summary(outcomes, wall)
        add_row(load.label, load.clients, load.max_queue, s)
        mixed = [o for o in outcomes if o.status == 200 and o.reply != reference[o.question]]
        refused_ok = all(o.retry_after for o in outcomes if o.status == 503)
        res.figure(f"{load.label}/mixed_up", len(mixed))
        what = f"{load.clients} clients, queue {load.max_queue}"
        res.targets += [
            Target(f"{what}: each of {load.requests} requests answered or refused with 503 + "
                   f"Retry-After, none lost",
                   f"{s['answered']} answered, {s['refused']} refused, {s['lost']} lost",
                   s["lost"] == 0 and refused_ok and s["requests"] == load.requests, check=True),
            Target(f"{what}: every reply equals the sequential reply to its question (none "
                   f"mixed up)", f"{len(mixed)} differ of {s['answered']}", not mixed,
                   check=True),
            Target(f"{what}: the server answers after the load",
                   f"GET /v1/models {models}, chat {after.status}",
                   models == 200 and after.status == 200 and after.reply == reference[0],
                   check=True),
        ]
        if mixed:
            res.notes.append(f"ERROR: question {mixed[0].question}: {mixed[0].reply!r} "
                             f"instead of {reference[mixed[0].question]!r}")
        lost = [o for o in outcomes if o.status not in (200, 503)]
        if lost:
            res.notes.append(f"ERROR: lost: {lost[0].error}")
    res.tables.append(table)
    fed_tokens = statistics.mean(f for f, _ in fed)
    prompt_tokens = statistics.mean(p for _, p in fed)
    res.figure("mean_prompt_tokens", prompt_tokens)
    res.figure("mean_fed_tokens", fed_tokens)
    fits, default = plan.phases
    res.notes += [
        f"Each phase has a server of its own (`course_utils.server.start_server` in this "
        f"process: uvicorn in a thread, the model in one worker thread) and {fits.clients} "
        f"clients, threads with an `httpx.Client` each, all on 127.0.0.1; every request is "
        f"streamed (server-sent events), greedy, one of {len(QUESTIONS)} questions in turn; "
        f"a phase stops sending after {plan.time_limit_s:.0f} s. With a queue of "
        f"{fits.max_queue} every client fits (one request generating, the others waiting); "
        f"with {default.max_queue} (the default) the rest are refused with 503, and a refused "
        f"client waits the Retry-After it got before its next request (a refused request is "
        f"not retried).",
        "Latency: from sending the request to the end of the stream; first token: to the first "
        "piece of text (waiting in the queue and reading the prompt included); decoding "
        "tokens/s: reply tokens after the first over the time after the first; throughput: "
        "all reply tokens over the wall time.",
        f"Requests are served one at a time: under load a request waits for those before it, "
        f"so latency and time to first token grow with the queue while the throughput stays "
        f"that of one stream. The KV cache kept between requests: on average {fed_tokens:.0f} "
        f"of {prompt_tokens:.0f} prompt tokens were fed; the rest, the start that the prompts "
        f"share (the system prompt), was in the cache already.",
    ]
    return res
