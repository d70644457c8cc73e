"""The chat page in a real browser: headless Chromium from the system's packages (Debian's
``chromium``; ``.ci/run`` installs it), driven by Playwright's Python package.

SmolLM2-135M-Instruct answers a question typed into the page; a scripted echo model
(``chat_fakes.EchoModel``) serves the tests of streaming, stop, new chat, the settings, and
the messages for a busy or a stopped server.
"""

import argparse
import threading
import time

import pytest

pytest.importorskip("fastapi", reason="the serve extra: pip install -e '.[serve]'")
pytest.importorskip("playwright.sync_api",
                    reason="Playwright's Python package: pip install -e '.[dev]'")

from chat_fakes import EchoModel, echo_format, wait_for_finished  # noqa: E402

import course_utils.chat as chat_module  # noqa: E402
from course_utils.server import ask_page, find_chromium, open_chat_page, start_server  # noqa: E402

try:
    find_chromium()
except FileNotFoundError as e:  # .ci/run installs it where apt-get works
    pytest.skip(f"{e}; .ci/run installs it", allow_module_level=True)

httpx = pytest.importorskip("httpx")


def state(page) -> str:
    """loading, ready or busy (a reply is being written)."""
    return page.get_attribute("body", "data-state")


def reply_text(page, n: int) -> str:
    return page.locator(".msg.assistant .text").nth(n).inner_text()


def finish_of(page, n: int) -> str:
    return page.locator(".msg.assistant").nth(n).get_attribute("data-finish")


@pytest.fixture(scope="module")
def fmt():
    return echo_format()


@pytest.fixture(scope="module")
def smollm2():
    pretrained = pytest.importorskip("course_utils.pretrained")
    try:
        pretrained.gguf_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    args = argparse.Namespace(model="smollm2-135m-instruct", checkpoint=None, block_size=1024,
                              device="cpu")
    return chat_module.load_chat_model(args)


def test_the_page_answers_with_smollm2(smollm2, tmp_path):
    """Type the question, wait for the streamed reply (greedy: temperature 0 in the page's
    settings): SmolLM2 says Paris."""
    model, fmt = smollm2
    with start_server(model, fmt, model_id="smollm2-135m-instruct") as server, \
            open_chat_page(server.url) as page:
        assert page.inner_text("#model") == "smollm2-135m-instruct"
        page.click("#settings summary")  # the settings open
        page.fill("#temperature", "0")
        page.locator("#input").press_sequentially("What is the capital of France?")
        page.click("#send")
        page.locator(".msg.assistant").wait_for()
        page.wait_for_selector("body[data-state=ready]", timeout=120_000)
        assert "Paris" in reply_text(page, 0) and finish_of(page, 0) == "stop"
        assert "tokens in" in page.locator(".msg.assistant .meta").inner_text()
        page.screenshot(path=str(tmp_path / "page.png"))
        assert (tmp_path / "page.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_reply_streams_and_stop_ends_it(fmt):
    """The reply grows while it is written; Stop ends it in the page and on the server (the
    generation stops within a few tokens); the partial reply stays."""
    text = "s" * 200
    with start_server(EchoModel(fmt, delay=0.03), fmt, model_id="echo") as server, \
            open_chat_page(server.url) as page:
        page.fill("#input", text)
        page.click("#send")
        page.locator(".msg.assistant .text", has_text="sssss").wait_for()
        assert state(page) == "busy"  # still being written
        assert page.is_enabled("#stop") and not page.is_enabled("#send")
        page.click("#stop")
        page.wait_for_selector("body[data-state=ready]")
        shown = reply_text(page, 0)
        time.sleep(0.5)
        assert reply_text(page, 0) == shown and 5 <= len(shown) < len(text)
        assert finish_of(page, 0) == "stopped" and not page.is_enabled("#stop")
        done = wait_for_finished(server.engine, 1)
        assert done.finish_reason == "cancelled" and done.completion_tokens <= len(shown) + 10


def test_multi_turn_new_chat_and_system_prompt(fmt):
    """Each turn sends the whole conversation (the prompt's size counted by hand with the
    chat format); New chat empties the page and the conversation; the system prompt setting
    goes first."""
    def prompt_tokens(messages):
        return len(fmt.encode(messages))

    with start_server(EchoModel(fmt), fmt, model_id="echo") as server, \
            open_chat_page(server.url) as page:
        engine = server.engine
        assert ask_page(page, "first message") == "first message"
        assert ask_page(page, "second one") == "second one"
        conversation = [{"role": "user", "content": "first message"},
                        {"role": "assistant", "content": "first message"},
                        {"role": "user", "content": "second one"}]
        assert engine.finished[-1].prompt_tokens == prompt_tokens(conversation)
        assert page.locator(".msg").count() == 4

        page.click("#new-chat")
        assert page.locator(".msg").count() == 0
        assert ask_page(page, "third") == "third"
        assert engine.finished[-1].prompt_tokens == prompt_tokens([conversation[0] | {
            "content": "third"}])

        page.click("#new-chat")
        page.click("#settings summary")
        page.fill("#system", "Answer in French.")
        assert ask_page(page, "Hello") == "Hello"
        assert engine.finished[-1].prompt_tokens == prompt_tokens(
            [{"role": "system", "content": "Answer in French."},
             {"role": "user", "content": "Hello"}])


def test_the_page_says_when_the_server_is_busy_or_gone(fmt):
    """No room in the queue (max_queue=0 and a request running): the page says the server is
    busy and when to try again, and keeps the message to resend. Server stopped: the page
    says it cannot reach it."""
    server = start_server(EchoModel(fmt, delay=0.05), fmt, model_id="echo", max_queue=0)
    try:
        with open_chat_page(server.url) as page:
            occupier = threading.Thread(target=lambda: httpx.post(
                server.api_url + "/chat/completions", timeout=30,
                json={"messages": [{"role": "user", "content": "o" * 60}]}))
            occupier.start()
            while server.engine.pending == 0:
                time.sleep(0.01)
            page.fill("#input", "Are you there?")
            page.click("#send")
            page.wait_for_selector("#banner:not([hidden])")
            banner = page.inner_text("#banner")
            assert "busy" in banner and "Try again in" in banner
            assert page.input_value("#input") == "Are you there?"  # to send again
            assert page.locator(".msg.user.failed").count() == 1
            occupier.join(30)

            server.stop()
            page.click("#send")
            page.wait_for_selector("#banner:has-text('Cannot reach the server')")
            assert state(page) == "ready"
    finally:
        server.stop()


def test_the_page_loads_nothing_from_elsewhere(fmt):
    """Every request the page makes goes to the server that served it (it works offline),
    and the browser reports no error (a Content-Security-Policy violation would be one)."""
    with start_server(EchoModel(fmt), fmt, model_id="echo") as server:
        with open_chat_page(server.url) as page:
            requests, errors = [], []
            page.on("request", lambda r: requests.append(r.url))
            page.on("console", lambda m: m.type == "error" and errors.append(m.text))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.reload()
            page.wait_for_selector("body[data-state=ready]")
            assert ask_page(page, "offline?") == "offline?"
        assert requests and all(u.startswith(server.url) for u in requests), requests
        assert errors == []
