"""A diagram of the GPT, drawn with matplotlib from its configuration (notebook 00).

The picture follows GPT-2 (Radford et al., 2019) as built in :mod:`course_utils.model`: token
and position embeddings are added into the *residual stream* (the vertical line); each block
reads the stream through LayerNorm, computes causal self-attention and adds the result back,
then does the same with the MLP (pre-norm residual blocks); a final LayerNorm and the LM head
turn the stream into logits.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.patches import FancyBboxPatch

# Layout, in data units: x runs 0..10, y grows upwards, from the token ids to the logits.
_STREAM_X = 2.4  # the residual stream
_BLOCK_H = 2.3  # height of one transformer block (its frame is 0.1 shorter)
_SUB_Y = (0.3, 1.3)  # attention and MLP rows, relative to the bottom of their block
_ADD_DY = 0.55  # the "+" of a sub-layer sits this far above its row
_BOX_H = 0.5

_COLORS = {
    "embed": "#cfe2f3", "ln": "#fff2cc", "attn": "#f4cccc", "mlp": "#d9ead3",
    "head": "#d9d2e9", "block": "#f3f3f3",
}


def _box(ax: Axes, x: float, y: float, w: float, h: float, text: str, kind: str,
         gid: str, fontsize: float = 8) -> FancyBboxPatch:
    """A rounded box centred at (x, y), with ``text`` in it; ``gid`` names it for tests."""
    patch = FancyBboxPatch((x - w / 2, y - h / 2), w, h,
                           boxstyle="round,pad=0.02,rounding_size=0.1",
                           facecolor=_COLORS[kind], edgecolor="0.3", linewidth=1, zorder=2)
    patch.set_gid(gid)
    ax.add_patch(patch)
    ax.text(x, y, text, ha="center", va="center", fontsize=fontsize, zorder=3)
    return patch


def _arrow(ax: Axes, points: list[tuple[float, float]]) -> None:
    """A polyline through ``points`` with an arrow head at the last one."""
    xs, ys = zip(*points)
    ax.plot(xs[:-1], ys[:-1], color="0.2", linewidth=1, zorder=1)
    ax.annotate("", xy=points[-1], xytext=points[-2], zorder=1,
                arrowprops=dict(arrowstyle="-|>", color="0.2", linewidth=1,
                                shrinkA=0, shrinkB=0, mutation_scale=10))


def _plus(ax: Axes, x: float, y: float) -> None:
    """The "+" where a branch is added back into the residual stream."""
    ax.text(x, y, "+", ha="center", va="center", fontsize=9, fontweight="bold", zorder=4,
            bbox=dict(boxstyle="circle,pad=0.15", facecolor="white", edgecolor="0.2"))


def draw_gpt(config, ax: Axes | None = None) -> Axes:
    """Draw the GPT described by ``config``, with its sizes written on it.

    Bottom to top: token ids ``(B, T)``; token embedding ``wte`` (``vocab_size x n_embd``) and
    position embedding ``wpe`` (``block_size x n_embd``), added; ``n_layer`` blocks, each one
    box holding LayerNorm -> causal self-attention (``n_head`` heads of ``n_embd // n_head``)
    -> add, and LayerNorm -> MLP (``n_embd -> 4 n_embd -> n_embd``) -> add, with the residual
    stream running through; the final LayerNorm; the LM head (``n_embd -> vocab_size``, its
    weight tied to ``wte``); logits ``(B, T, vocab_size)``.

    Every block is drawn, so the figure grows with ``n_layer`` (about 1.1 inch per block).
    The patches carry gids for programmatic checks: ``"block"`` (one per block), ``"ln"``,
    ``"attn"``, ``"mlp"``, ``"wte"``, ``"wpe"``, ``"ln_f"``, ``"lm_head"``.

    Args:
        config: a :class:`course_utils.model.GPTConfig` (or anything with ``vocab_size``,
            ``block_size``, ``n_layer``, ``n_head`` and ``n_embd`` attributes).
        ax: the matplotlib Axes to draw in; ``None`` makes a new figure of the right size.

    Returns:
        the Axes drawn in (its axis lines are turned off).

    Raises:
        ValueError: a size is missing or not a positive integer, or ``n_embd`` is not a
            multiple of ``n_head``.
    """
    sizes = {}
    for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
        value = getattr(config, name, None)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"draw_gpt: config.{name} must be a positive integer, got {value!r}")
        sizes[name] = value
    V, T, L, H, C = (sizes[k] for k in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"))
    if C % H:
        raise ValueError(f"draw_gpt: n_embd ({C}) must be divisible by n_head ({H})")

    y_blocks = 3.1  # bottom of the first block
    y_top = y_blocks + L * _BLOCK_H + 2.9
    if ax is None:
        fig = plt.figure(figsize=(8, 0.45 * y_top))
        ax = fig.add_axes((0.01, 0.0, 0.98, 1 - 0.35 / (0.45 * y_top)))
    sx = _STREAM_X

    # token ids -> embeddings -> sum
    ax.text(sx, 0.25, "token ids  idx  (B, T)", ha="center", va="center", fontsize=8)
    ax.text(6.9, 0.25, f"positions  0 .. T-1  (T ≤ block_size = {T})", ha="center",
            va="center", fontsize=8)
    _box(ax, sx, 1.2, 3.6, 0.7, f"token embedding wte\n{V} × {C}  (vocab_size × n_embd)",
         "embed", "wte")
    _box(ax, 6.9, 1.2, 3.8, 0.7, f"position embedding wpe\n{T} × {C}  (block_size × n_embd)",
         "embed", "wpe")
    _arrow(ax, [(sx, 0.45), (sx, 0.85)])
    _arrow(ax, [(6.9, 0.45), (6.9, 0.85)])
    y_emb_add = 2.25
    _arrow(ax, [(sx, 1.55), (sx, y_emb_add - 0.16)])
    _arrow(ax, [(6.9, 1.55), (6.9, y_emb_add), (sx + 0.17, y_emb_add)])
    _plus(ax, sx, y_emb_add)
    ax.text(sx - 0.2, (y_emb_add + y_blocks) / 2, f"x  (B, T, {C})", ha="right", va="center",
            fontsize=8, style="italic")

    # the blocks: the residual stream runs up through each; the sub-layers branch off it
    y = y_emb_add
    for i in range(L):
        yb = y_blocks + i * _BLOCK_H
        frame = FancyBboxPatch((0.15, yb), 9.7, _BLOCK_H - 0.1,
                               boxstyle="round,pad=0.02,rounding_size=0.15",
                               facecolor=_COLORS["block"], edgecolor="0.5", linewidth=1,
                               linestyle="--", zorder=0)
        frame.set_gid("block")
        ax.add_patch(frame)
        ax.text(0.55, yb + (_BLOCK_H - 0.1) / 2, f"block {i + 1} of {L}",
                ha="center", va="center", rotation=90, fontsize=8)
        rows = [
            ("attn", f"causal self-attention: {H} heads × {C // H}"),
            ("mlp", f"MLP: {C} → {4 * C} → GELU → {C}"),
        ]
        for (kind, label), dy in zip(rows, _SUB_Y):
            y_row = yb + dy + _BOX_H / 2
            y_add = y_row + _ADD_DY
            _arrow(ax, [(sx, y + 0.16), (sx, y_add - 0.16)])  # the stream, up to the "+"
            _box(ax, 4.3, y_row, 1.9, _BOX_H, f"LayerNorm ({C})", "ln", "ln")
            _box(ax, 7.3, y_row, 3.6, _BOX_H, label, kind, kind)
            _arrow(ax, [(sx, y_row), (4.3 - 0.95, y_row)])
            _arrow(ax, [(4.3 + 0.95, y_row), (7.3 - 1.8, y_row)])
            _arrow(ax, [(7.3 + 1.8, y_row), (9.55, y_row), (9.55, y_add), (sx + 0.17, y_add)])
            _plus(ax, sx, y_add)
            y = y_add
        if i == 0:
            ax.text(sx - 0.12, yb + 0.9, "residual", ha="right", va="center", fontsize=7,
                    style="italic", color="0.35")

    # final LayerNorm, LM head, logits
    y_lnf = y_blocks + L * _BLOCK_H + 0.3
    _arrow(ax, [(sx, y + 0.16), (sx, y_lnf - 0.25)])
    _box(ax, sx, y_lnf, 3.0, _BOX_H, f"final LayerNorm ln_f ({C})", "ln", "ln_f")
    y_head = y_lnf + 0.95
    _arrow(ax, [(sx, y_lnf + 0.25), (sx, y_head - 0.25)])
    _box(ax, sx, y_head, 4.4, _BOX_H, f"LM head: {C} → {V} (weight tied to wte)", "head",
         "lm_head")
    _arrow(ax, [(sx, y_head + 0.25), (sx, y_head + 0.8)])
    ax.text(sx - 0.9, y_head + 1.0, f"logits  (B, T, {V})  → softmax → next-token probabilities",
            ha="left", va="center", fontsize=8)

    ax.set_xlim(0, 10)
    ax.set_ylim(0, y_top)
    ax.axis("off")
    ax.set_title(f"GPT: n_layer={L}, n_head={H}, n_embd={C}, block_size={T}, vocab_size={V}",
                 fontsize=10)
    return ax
