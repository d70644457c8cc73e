"""The checks of notebook 10 (TinyStories): ``join_stories``, ``train_flops_per_token``.

Each check is registered with :func:`~course_utils.check.core._exercise`, which puts in its
place a function that prints one line; the learner calls it as ``check.NAME(NAME)``. Solutions:
``course_utils/solutions/nb10_tinystories.py``.
"""

from __future__ import annotations

from .core import Wrong, _describe, _exercise, _number


@_exercise("10", (
    "Go through the stories in order: extend the list with the story's ids, then append "
    "the separator.",
    "ids = []; for s in stories: ids.extend(encode(s)); ids.append(eot_id); return ids",
))
def join_stories(fn):
    """``join_stories(stories, encode, eot_id) -> list``: each story's ids, then ``eot_id``."""

    def encode(s):
        return list(s.encode("utf-8"))

    for stories in (["Once upon a time.", "The end!", "Lily ran."], ["Hi"], [], ["", "ok"]):
        call = f"join_stories({stories}, encode, 256)"
        got = fn(list(stories), encode, 256)
        expected = [i for s in stories for i in (*encode(s), 256)]
        if not isinstance(got, list) or any(isinstance(i, (list, tuple)) for i in got):
            kind = "list of lists" if isinstance(got, list) else type(got).__name__
            raise Wrong(f"{call} returned a {kind}; return one flat list of ids")
        if got == expected:
            continue
        if stories and got == [i for s in stories for i in (256, *encode(s))]:
            raise Wrong(f"{call}: the separator goes after each story; it marks where a story "
                        f"ends")
        if got == expected[:-1]:
            raise Wrong(f"{call}: the last story needs its separator too")
        raise Wrong(f"{call} returned {_describe(got)}, expected {_describe(expected)}")


@_exercise("10", (
    "Each weight costs 2 FLOPs per token forward and 4 backward; attention's q k^T and att v "
    "cost 2 * 2 * seq_len * n_embd per layer forward, and twice that backward.",
    "return 6 * n_params + 12 * n_layer * n_embd * seq_len",
))
def train_flops_per_token(fn):
    """``train_flops_per_token(n_params, n_layer, n_embd, seq_len)``: PaLM's ``6N + 12 L C T``."""
    from ..model import GPTConfig
    from ..scaling import count_params, flops_per_token

    for V, L, C, T in ((50257, 12, 768, 1024), (65, 4, 128, 256), (10, 1, 8, 1)):
        config = GPTConfig(vocab_size=V, block_size=T, n_layer=L, n_head=1, n_embd=C)
        N = count_params(config, non_embedding=True)
        call = f"train_flops_per_token({N:,}, n_layer={L}, n_embd={C}, seq_len={T})"
        got = fn(N, L, C, T)
        _number(got, flops_per_token(config, T), call, [  # the course's estimate
            (2 * N + 4 * L * C * T, f"{call}: that is the forward pass alone; training adds "
             f"the backward pass, twice as much: 3 times in all"),
            (6 * N, f"{call}: the attention products q k^T and att v are missing: "
             f"+ 12 * n_layer * n_embd * seq_len"),
            (6 * N + 4 * L * C * T, f"{call}: the attention term must count the backward "
             f"pass too: 3 * 4 * n_layer * n_embd * seq_len"),
        ])
