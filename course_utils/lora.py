"""LoRA: fine-tuning a low-rank update instead of the whole weight matrix (notebook 15).

Hu et al. (2021), "LoRA: Low-Rank Adaptation of Large Language Models". A frozen linear
layer ``y = x W^T + b`` (``W`` is ``(out_features, in_features)``) gets a trainable update
of rank ``r``: ``y = x W^T + b + (x A^T B^T) * alpha / r`` with ``A`` ``(r, in_features)`` and
``B`` ``(out_features, r)``. ``B`` starts at zero, so the model starts exactly where it was.
Only ``A`` and ``B`` are trained: for a 576 x 576 matrix and ``r = 8`` that is 9,216 numbers
instead of 331,776, and the optimizer keeps state for those few only. After training the
update folds into the weight (``W + B A * alpha / r``) and costs nothing at inference.

The layers and names follow Hugging Face ``peft`` (its outputs equal ours with the same
``A`` and ``B``; tested): ``A`` starts like ``nn.Linear``'s weight (Kaiming-uniform),
``alpha / r`` scales the update, dropout acts on the update's input only.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn as nn

# the linear layers of the course's blocks: attention (c_attn, c_proj) and MLP (c_fc, c_proj,
# and c_gate in the SwiGLU MLP); the LM head is left out (it is usually tied to the embedding)
DEFAULT_TARGETS = ("c_attn", "c_proj", "c_fc", "c_gate")


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update (Hu et al., 2021).

    ``y = base(x) + (dropout(x) @ lora_A^T @ lora_B^T) * (alpha / r)``, input
    ``(..., in_features)``, output ``(..., out_features)``. ``lora_A`` ``(r, in_features)``
    starts Kaiming-uniform as in ``peft``, ``lora_B`` ``(out_features, r)`` starts at zero.
    The base layer's parameters are set to ``requires_grad=False``.

    Raises ``TypeError`` when ``base`` is not an ``nn.Linear`` and ``ValueError`` for
    ``r < 1``, ``alpha <= 0`` or ``dropout`` outside ``[0, 1)``.
    """

    def __init__(self, base: nn.Linear, r: int = 8, alpha: float = 16, dropout: float = 0.0):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps an nn.Linear, got {type(base).__name__}")
        if not isinstance(r, int) or r < 1:
            raise ValueError(f"LoRA rank r must be a positive integer, got {r!r}")
        if alpha <= 0:
            raise ValueError(f"LoRA alpha must be > 0 (often 2 * r), got {alpha}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout}")
        self.base = base.requires_grad_(False)
        self.r, self.alpha, self.scaling = r, alpha, alpha / r
        like_base = dict(device=base.weight.device, dtype=base.weight.dtype)
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, **like_base))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, **like_base))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # nn.Linear's own initialisation
        self.dropout = nn.Dropout(dropout)
        self.disabled = False  # True: the layer is its base layer (adapters_disabled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.disabled:
            return self.base(x)
        return self.base(x) + (self.dropout(x) @ self.lora_A.T @ self.lora_B.T) * self.scaling

    def merged(self) -> nn.Linear:
        """The base layer with the update folded in: ``W += (B @ A) * alpha / r``, in place."""
        with torch.no_grad():
            self.base.weight += (self.lora_B @ self.lora_A) * self.scaling
        return self.base


def apply_lora(model: nn.Module, target_modules=DEFAULT_TARGETS, r: int = 8, alpha: float = 16,
               dropout: float = 0.0) -> nn.Module:
    """Freeze ``model`` and wrap its matching ``nn.Linear`` layers in :class:`LoRALinear`.

    A layer matches when the last part of its name is in ``target_modules`` (as in ``peft``:
    ``"c_proj"`` matches ``transformer.h.0.attn.c_proj`` and ``transformer.h.0.mlp.c_proj``).
    Every other parameter gets ``requires_grad=False``, so only the adapters train. Works in
    place and returns ``model``.

    Raises ``ValueError`` when no layer matches (the message lists the linear layers there
    are), when a matching layer's weight is tied to another module (e.g. the LM head shares the
    token embedding: merging would change the embedding too), or when the model already has
    adapters; the :class:`LoRALinear` errors for bad ``r``, ``alpha``, ``dropout``.
    """
    if any(isinstance(m, LoRALinear) for m in model.modules()):
        raise ValueError("the model already has LoRA adapters; call merge_lora(model) first")
    if isinstance(target_modules, str):
        target_modules = (target_modules,)
    linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    targets = {name: m for name, m in linears.items() if name.rsplit(".", 1)[-1] in target_modules}
    if not targets:
        kinds = sorted({name.rsplit(".", 1)[-1] for name in linears})
        raise ValueError(f"no nn.Linear of the model is named any of {tuple(target_modules)}; "
                         f"its linear layers are named {kinds}")
    uses = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        uses[id(p)] = uses.get(id(p), 0) + 1
    for name, m in targets.items():
        if uses[id(m.weight)] > 1:
            raise ValueError(f"{name}.weight is tied to another module (weight tying); leave "
                             f"{name.rsplit('.', 1)[-1]!r} out of target_modules")
    model.requires_grad_(False)
    for name, m in targets.items():
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, LoRALinear(m, r, alpha, dropout))
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every :class:`LoRALinear` of ``model`` into its weight and put the base layer back.

    In place; returns ``model``, whose outputs are unchanged up to float rounding (tested) and
    which has no adapters left. Parameters keep ``requires_grad=False`` (as
    :func:`apply_lora` left them); call ``model.requires_grad_(True)`` to train them all.
    """
    wrapped = [(name, m) for name, m in model.named_modules() if isinstance(m, LoRALinear)]
    for name, m in wrapped:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, m.merged())
    return model


@contextlib.contextmanager
def adapters_disabled(model: nn.Module):
    """Run the ``with`` block with every :class:`LoRALinear` of ``model`` computing its base
    layer only: the model as it was before fine-tuning. A LoRA-tuned policy is thus its own
    frozen reference (for GRPO's KL penalty or DPO), with no second copy of the weights, as
    ``peft``'s ``disable_adapter()`` does. Raises ``ValueError`` for a model without
    adapters."""
    layers = [m for m in model.modules() if isinstance(m, LoRALinear)]
    if not layers:
        raise ValueError("the model has no LoRA adapters to switch off; give the reference "
                         "model explicitly")
    for m in layers:
        m.disabled = True
    try:
        yield model
    finally:
        for m in layers:
            m.disabled = False


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The adapters' parameters (every ``lora_A`` and ``lora_B``), e.g. for the optimizer."""
    return [p for m in model.modules() if isinstance(m, LoRALinear) for p in (m.lora_A, m.lora_B)]


def parameter_report(model: nn.Module) -> dict[str, int]:
    """What training ``model`` costs, as it is now versus full fine-tuning.

    Returns ``trainable`` and ``total`` parameter counts (tied weights counted once) and the
    bytes of AdamW's state: two moments (``exp_avg``, ``exp_avg_sq``) of each trainable
    parameter's shape and dtype, for the trainable parameters (``adamw_state_bytes``) and for
    all of them (``adamw_state_bytes_full``). AdamW's one-element step counters are left out.
    """
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    return {
        "trainable": sum(p.numel() for p in trainable),
        "total": sum(p.numel() for p in params),
        "adamw_state_bytes": 2 * sum(p.numel() * p.element_size() for p in trainable),
        "adamw_state_bytes_full": 2 * sum(p.numel() * p.element_size() for p in params),
    }
