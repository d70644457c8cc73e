"""Training presets, in one place. Each is a set of overrides of :class:`TrainConfig`."""

from __future__ import annotations

PRESETS: dict[str, dict] = {
    # A character-level GPT on Tiny Shakespeare sized for a 2-core laptop CPU (a few
    # minutes). Measured results are in the README.
    "shakespeare-char": dict(
        dataset="tinyshakespeare", out_dir="runs/shakespeare-char",
        n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0,
        batch_size=32, max_iters=2000, learning_rate=2e-3, min_lr=2e-4, warmup_iters=100,
        weight_decay=0.1, grad_clip=1.0, eval_interval=250, eval_iters=20,
    ),
    # Seconds: for tests and for checking that everything is wired up.
    "smoke": dict(
        dataset="tinyshakespeare", out_dir="runs/smoke",
        n_layer=2, n_head=2, n_embd=32, block_size=32, dropout=0.0,
        batch_size=8, max_iters=30, learning_rate=3e-3, min_lr=3e-4, warmup_iters=5,
        weight_decay=0.1, grad_clip=1.0, eval_interval=10, eval_iters=2, sample_tokens=60,
    ),
}
