"""The README's picture of the chat page: ``python -m benchmarks.chat_page [PATH]``.

Serves SmolLM2-135M-Instruct (greedy) with :func:`course_utils.server.start_server`, asks it
two questions in the page in a headless Chromium, and saves a screenshot (default
``benchmarks/chat_page.png``). Needs the serve extra, Playwright's Python package, the
system's Chromium and the SmolLM2 wheel (see ``.ci/run``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

QUESTIONS = ("What is the capital of France?", "Tell me one thing to see there.")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.chat_page", description=__doc__)
    p.add_argument("path", nargs="?", type=Path,
                   default=Path(__file__).resolve().parent / "chat_page.png")
    args = p.parse_args(argv)
    from course_utils.chat import load_chat_model
    from course_utils.server import screenshot_page, start_server

    try:
        model, fmt = load_chat_model(argparse.Namespace(
            model="smollm2-135m-instruct", checkpoint=None, block_size=2048, device="cpu"))
        with start_server(model, fmt, model_id="smollm2-135m-instruct", temperature=0.0,
                          max_tokens=80) as server:
            screenshot_page(server.url, args.path, QUESTIONS, width=860, height=640)
    except (ImportError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
