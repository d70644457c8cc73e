"""The architecture diagram: one box per block, the config's sizes written on it."""

from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from matplotlib.patches import FancyBboxPatch  # noqa: E402

from course_utils.diagram import draw_gpt  # noqa: E402
from course_utils.model import GPTConfig  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def patches(ax, gid):
    return [p for p in ax.patches if isinstance(p, FancyBboxPatch) and p.get_gid() == gid]


def y_range(p):
    return p.get_y(), p.get_y() + p.get_height()


@pytest.mark.parametrize("n_layer", [1, 3, 7])
def test_one_box_per_block(n_layer):
    ax = draw_gpt(GPTConfig(vocab_size=65, block_size=64, n_layer=n_layer, n_head=4, n_embd=128))
    blocks = patches(ax, "block")
    assert len(blocks) == n_layer
    assert len(patches(ax, "attn")) == len(patches(ax, "mlp")) == n_layer
    assert len(patches(ax, "ln")) == 2 * n_layer  # two LayerNorms per block
    for gid in ("wte", "wpe", "ln_f", "lm_head"):
        assert len(patches(ax, gid)) == 1, gid

    # blocks are stacked bottom to top without overlapping, between the embeddings and ln_f
    spans = sorted(y_range(b) for b in blocks)
    assert all(top <= bottom for (_, top), (bottom, _) in zip(spans, spans[1:]))
    assert y_range(patches(ax, "wte")[0])[1] <= spans[0][0]
    assert spans[-1][1] <= y_range(patches(ax, "ln_f")[0])[0]
    # each block frame holds exactly one attention and one MLP box
    for lo, hi in spans:
        for gid in ("attn", "mlp"):
            inside = [p for p in patches(ax, gid) if lo <= y_range(p)[0] and y_range(p)[1] <= hi]
            assert len(inside) == 1
    # everything is inside the visible area
    y0, y1 = ax.get_ylim()
    assert all(y0 <= p.get_y() and p.get_y() + p.get_height() <= y1 for p in ax.patches)


def test_sizes_are_written_on_the_diagram():
    # sizes chosen so that no two of them, nor 4 * n_embd or the head size, are equal
    config = GPTConfig(vocab_size=50257, block_size=1024, n_layer=5, n_head=3, n_embd=96)
    ax = draw_gpt(config)
    labels = " | ".join(t.get_text() for t in ax.texts)
    assert "50257 × 96" in labels  # wte: vocab_size x n_embd
    assert "1024 × 96" in labels  # wpe: block_size x n_embd
    assert "3 heads × 32" in labels  # n_head x (n_embd // n_head)
    assert "96 → 384" in labels  # MLP widens to 4 * n_embd
    assert "96 → 50257" in labels  # LM head
    assert "block 5 of 5" in labels and "block 6" not in labels
    title = ax.get_title()
    for name, value in config.to_dict().items():
        if name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            assert f"{name}={value}" in title


def test_draws_into_a_given_axes():
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 8))
    out = draw_gpt(GPTConfig(n_layer=2), ax=right)
    assert out is right
    assert len(patches(right, "block")) == 2 and not left.patches
    assert not right.axison


def test_bad_config():
    good = dict(vocab_size=65, block_size=64, n_layer=2, n_head=4, n_embd=128)
    with pytest.raises(ValueError, match="n_layer"):
        draw_gpt(SimpleNamespace(**{**good, "n_layer": 0}))
    with pytest.raises(ValueError, match="vocab_size"):
        draw_gpt(SimpleNamespace(**{k: v for k, v in good.items() if k != "vocab_size"}))
    with pytest.raises(ValueError, match="divisible"):
        draw_gpt(SimpleNamespace(**{**good, "n_embd": 130}))
