"""Faster decoding on a CPU: a linear layer that spreads small products over the cores
(notebook 08, section 9). An opt-in exhibit, never the default.

Generating with a KV cache feeds one token per step, so each weight matrix meets a single
row: a matrix-vector product. It needs almost no arithmetic but reads the whole matrix from
memory, and PyTorch's CPU matmul runs it on one core, so it gets one core's share of the
memory bandwidth. Splitting the output features into one chunk per thread and multiplying
the chunks as one batched matmul (``torch.bmm`` gives each batch entry its own thread) reads
the chunks in parallel: on 2 cores a decode step at GPT-2-small shape takes about half the
time (``benchmarks/results.md``). The same split of a layer's output features across
workers is the column-parallel linear layer of Megatron-LM (Shoeybi et al., 2019).

The course's GPT (:mod:`course_utils.model`) is built from plain ``nn.Linear`` layers, the
model the notebooks build. ``use_parallel_linear(model)`` turns it into the fast variant,
in place. **How the fast variant differs from the plain model**, exactly:

- every ``nn.Linear`` becomes a :class:`ParallelLinear` holding the *same* parameter
  tensors (a tied output layer stays tied), so the parameters, the state dict and the
  module names are unchanged;
- only the forward pass of a layer changes, and only on a CPU with more than one torch
  thread, for an input of at most ``MAX_ROWS`` rows and a weight of at least
  ``MIN_WEIGHT`` numbers (decoding, not training): the product is then computed by
  :func:`split_linear`, which adds up the same terms in another order, so the outputs
  equal the plain model's up to float rounding (not bit for bit); gradients likewise;
- everything else (GPUs, one thread, small weights, training batches) runs ``F.linear``
  as ``nn.Linear`` does.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

MAX_ROWS = 64  # more rows than this: the plain matmul already keeps every core busy
MIN_WEIGHT = 1 << 18  # smaller weights (1 MiB in float32) fit in cache: splitting costs more


def split_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 chunks: int) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` computed as ``chunks`` products of output-feature chunks.

    ``x``: ``(..., in_features)``; ``weight``: ``(out_features, in_features)``; returns
    ``(..., out_features)``, equal to ``F.linear`` up to float rounding. When
    ``out_features`` is not a multiple of ``chunks``, the last few rows are multiplied on
    their own. Raises ``ValueError`` for ``chunks < 1``.
    """
    if chunks < 1:
        raise ValueError(f"chunks must be >= 1, got {chunks}")
    out_features, in_features = weight.shape
    size = out_features // chunks
    if size == 0:
        return F.linear(x, weight, bias)
    rows = x.reshape(1, -1, in_features)  # (1, M, in)
    main = weight[:chunks * size].reshape(chunks, size, in_features)  # (chunks, size, in)
    y = torch.bmm(rows.expand(chunks, -1, -1), main.transpose(1, 2))  # (chunks, M, size)
    y = y.transpose(0, 1).reshape(rows.size(1), chunks * size)  # (M, chunks * size)
    if chunks * size < out_features:  # the rows left over
        y = torch.cat([y, F.linear(rows[0], weight[chunks * size:])], dim=1)
    if bias is not None:
        y = y + bias.to(y.dtype)  # under autocast y is bfloat16/float16, as F.linear's output
    return y.reshape(*x.shape[:-1], out_features)


class ParallelLinear(nn.Linear):
    """``nn.Linear`` (same parameters, state dict and result ``y = x W^T + b``) that runs
    small products on every CPU core.

    Input ``(..., in_features)``, output ``(..., out_features)``. On a CPU with more than one
    torch thread, when ``x`` holds at most ``MAX_ROWS`` rows and the weight has at least
    ``MIN_WEIGHT`` elements, the product goes through :func:`split_linear` with one chunk per
    thread; otherwise, and always on GPUs, it is ``F.linear``. Both give the same values up
    to float rounding, with gradients (tested against ``nn.Linear``).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type == "cpu" and self.weight.numel() >= MIN_WEIGHT
                and x.numel() <= MAX_ROWS * self.in_features and torch.get_num_threads() > 1):
            return split_linear(x, self.weight, self.bias, torch.get_num_threads())
        return F.linear(x, self.weight, self.bias)


def use_parallel_linear(model: nn.Module) -> nn.Module:
    """Swap every ``nn.Linear`` inside ``model`` for a :class:`ParallelLinear` that holds the
    same parameter tensors, in place; returns ``model``.

    Nothing is copied: weights shared between modules (a tied ``lm_head``) stay shared, and
    ``model.state_dict()`` has the same keys and tensors as before. See the module docstring
    for exactly how the result differs from the plain model (only the speed of small
    products on a multi-core CPU).
    """
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:  # exactly nn.Linear: leave subclasses alone
                fast = ParallelLinear(child.in_features, child.out_features,
                                      bias=child.bias is not None, device="meta")
                fast.weight, fast.bias = child.weight, child.bias  # the same tensors
                setattr(parent, name, fast)
    return model
