"""The chat page in a headless Chromium (:mod:`course_utils.server`), driven with Playwright:
for the browser tests, the notebook and the README's screenshot."""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

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
