"""Stand-ins for a chat model, shared by the server's tests (tests/test_server.py) and the
browser's (tests/test_browser.py)."""

import string
import time
from types import SimpleNamespace

import torch

from course_utils.chat import IM_END, IM_START, ChatFormat
from course_utils.tokenization import CharTokenizer

ALPHABET = string.printable + "éü東京"


def echo_format() -> ChatFormat:
    """ChatML over a character tokenizer: one token per character, so counts are easy."""
    return ChatFormat(CharTokenizer.from_text(ALPHABET).with_special_tokens([IM_START, IM_END]))


class ListCache:
    """A stand-in KV cache that keeps the token ids it was fed (``length`` as the real one)."""

    def __init__(self):
        self.ids: list[int] = []

    @property
    def length(self) -> int:
        return len(self.ids)

    @length.setter
    def length(self, n: int) -> None:
        del self.ids[n:]


def last_index(ids: list[int], sub: list[int]) -> int:
    return max(i for i in range(len(ids) - len(sub) + 1) if ids[i:i + len(sub)] == sub)


class EchoModel(torch.nn.Module):
    """A scripted chat model: it replies with the content of the last user message, one
    character token per step, then ``<|im_end|>`` (logits +-1e4: any temperature picks it).
    ``delay`` seconds per step make it slow enough to stop, queue or disconnect from."""

    def __init__(self, fmt: ChatFormat, block_size: int = 512, delay: float = 0.0):
        super().__init__()
        self.fmt, self.delay = fmt, delay
        self.config = SimpleNamespace(block_size=block_size, vocab_size=fmt.tokenizer.vocab_size)
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the model a device
        self.user_header = [fmt.im_start, *fmt.text_ids("user\n")]
        self.reply_header = fmt.generation_prompt()

    def new_kv_caches(self, batch_size: int):
        return [ListCache()]

    def forward(self, idx, kv_caches):
        ids = kv_caches[0].ids
        ids += idx[0].tolist()
        start = last_index(ids, self.user_header) + len(self.user_header)
        content = ids[start:ids.index(self.fmt.im_end, start)]
        written = len(ids) - last_index(ids, self.reply_header) - len(self.reply_header)
        target = content[written] if written < len(content) else self.fmt.im_end
        logits = torch.full((1, idx.size(1), self.config.vocab_size), -1e4)
        logits[0, -1, target] = 1e4
        time.sleep(self.delay)
        return logits, None


def wait_for_finished(engine, n: int, timeout: float = 10.0):
    """The ``n``-th job the engine finished (waiting up to ``timeout`` seconds for it)."""
    deadline = time.monotonic() + timeout
    while len(engine.finished) < n:
        assert time.monotonic() < deadline, "the generation did not stop"
        time.sleep(0.02)
    return engine.finished[n - 1]
