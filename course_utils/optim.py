"""AdamW written out plainly, and the learning-rate schedule (notebook 07); Muon (notebook 16).

Adam: Kingma & Ba (2015), "Adam: A Method for Stochastic Optimization". AdamW, with the
weight decay taken out of the gradient and applied to the weights directly: Loshchilov &
Hutter (2019), "Decoupled Weight Decay Regularization". The update follows the one
``torch.optim.AdamW`` documents, so the two give the same parameters step for step (tested).
The schedule (:func:`get_lr`): linear warmup, then cosine decay (Loshchilov & Hutter, 2017,
"SGDR"), as GPT-3 (Brown et al. 2020, appendix B) and nanoGPT use it.

Muon (:class:`Muon`, :func:`newton_schulz`): Keller Jordan et al. (2024), "Muon: An optimizer
for hidden layers in neural networks" (kellerjordan.github.io/posts/muon), the optimizer of the
modded-nanogpt speedrun records: momentum, then the update of each 2-D weight matrix replaced by
the nearest (semi-)orthogonal matrix, computed with a Newton-Schulz iteration. Its update equals
``torch.optim.Muon``'s bit for bit (tested); :func:`make_optimizer` gives a run the optimizer its
settings ask for.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

import torch

from .model import GPT
from .utils import autocast_context, set_seed

if TYPE_CHECKING:
    from .config import TrainConfig


class AdamW(torch.optim.Optimizer):
    """Adam with decoupled weight decay, one parameter at a time, no fused kernels.

    For each parameter ``p`` with gradient ``g`` at step ``t`` (counted from 1)::

        p = p - lr * weight_decay * p            # decoupled weight decay
        m = beta1 * m + (1 - beta1) * g          # running mean of the gradient
        v = beta2 * v + (1 - beta2) * g * g      # running mean of its square
        m_hat = m / (1 - beta1 ** t)             # bias correction: m and v start at 0
        v_hat = v / (1 - beta2 ** t)
        p = p - lr * m_hat / (sqrt(v_hat) + eps)

    Every setting can differ per parameter group (e.g. ``weight_decay=0`` for biases and
    LayerNorm gains, see :meth:`course_utils.model.GPT.optimizer_groups`); ``lr`` may be
    changed between steps through ``optimizer.param_groups`` (a schedule). The state of each
    parameter is ``step``, ``exp_avg`` (m) and ``exp_avg_sq`` (v), named as in
    ``torch.optim.AdamW``. Parameters with no gradient are skipped; sparse gradients are
    not supported.

    Raises ``ValueError`` for ``lr < 0``, ``eps < 0``, ``weight_decay < 0`` or betas
    outside ``[0, 1)``.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2):
        if lr < 0:
            raise ValueError(f"AdamW: lr must be >= 0, got {lr}")
        if eps < 0:
            raise ValueError(f"AdamW: eps must be >= 0, got {eps}")
        if weight_decay < 0:
            raise ValueError(f"AdamW: weight_decay must be >= 0, got {weight_decay}")
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"AdamW: betas must be two numbers in [0, 1), got {betas}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter that has a gradient. ``closure`` (optional)
        re-evaluates the model and returns the loss, which is returned."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (beta1, beta2) = group["lr"], group["betas"]
            eps, weight_decay = group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if g.is_sparse:
                    raise RuntimeError("AdamW does not support sparse gradients")
                state = self.state[p]
                if not state:  # first step for this parameter
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p,
                                                           memory_format=torch.preserve_format)
                _adamw_update(p, g, state, lr, beta1, beta2, eps, weight_decay)
        return loss


def _adamw_update(p: torch.Tensor, g: torch.Tensor, state: dict, lr: float, beta1: float,
                  beta2: float, eps: float, weight_decay: float) -> None:
    """One AdamW step of parameter ``p`` with gradient ``g``, in place; ``state`` holds its
    ``step``, ``exp_avg`` and ``exp_avg_sq`` (see :class:`AdamW`)."""
    state["step"] += 1
    t = state["step"].item()
    m, v = state["exp_avg"], state["exp_avg_sq"]

    p.mul_(1 - lr * weight_decay)
    m.lerp_(g, 1 - beta1)  # m + (1 - beta1) * (g - m), the same as above
    v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    bias_correction1 = 1 - beta1**t
    bias_correction2 = 1 - beta2**t
    # lr * m_hat / (sqrt(v_hat) + eps), arranged as torch.optim.AdamW does it
    denom = (v.sqrt() / math.sqrt(bias_correction2)).add_(eps)
    p.addcdiv_(m, denom, value=-lr / bias_correction1)


def get_lr(step: int, max_lr: float, min_lr: float, warmup_iters: int, max_iters: int) -> float:
    """Learning rate at ``step``: linear warmup to ``max_lr`` over ``warmup_iters`` steps
    (``max_lr * (step + 1) / warmup_iters``), then cosine decay to ``min_lr`` at
    ``max_iters``, then ``min_lr``."""
    if step < warmup_iters:
        return max_lr * (step + 1) / warmup_iters
    if step >= max_iters:
        return min_lr
    progress = (step - warmup_iters) / max(1, max_iters - warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (max_lr - min_lr)


# The coefficients (a, b, c) of the quintic Newton-Schulz step of Keller Jordan's Muon (and of
# torch.optim.Muon): each step maps every singular value s of the matrix to
# a*s + b*s**3 + c*s**5, a polynomial picked for its steep slope at 0 (a = 3.4445), so that five
# steps lift even tiny singular values close to 1.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def newton_schulz(G: torch.Tensor, steps: int = 5,
                  coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
                  eps: float = 1e-7, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """An approximately orthogonal matrix with the singular vectors of ``G``: for
    ``G = U S V^T`` (``(m, n)``), about ``U S' V^T`` where every singular value in ``S'`` lies
    near 1 (between about 0.7 and 1.2 after five steps; exactly orthogonal would be
    ``U V^T``). Returns an ``(m, n)`` tensor of ``dtype``.

    The iteration, on ``X = G / ||G||_F`` (the Frobenius norm bounds the largest singular
    value, so every one starts in [0, 1]), is ``X <- a X + (b A + c A^2) X`` with
    ``A = X X^T``, which maps each singular value ``s`` to ``a s + b s^3 + c s^5`` and keeps
    the singular vectors. ``A`` is the smaller Gram matrix: a tall ``G`` is transposed first.
    Every product is ``torch.addmm`` (``beta * M + alpha * (A @ B)``, rounded once), in
    bfloat16 as in Keller Jordan's Muon, so the result equals ``torch.optim.Muon``'s bit for
    bit; ``dtype=torch.float32`` computes in single precision.

    Raises ``ValueError`` unless ``G`` is 2-D and ``steps >= 0``.
    """
    if G.dim() != 2:
        raise ValueError(f"newton_schulz needs a 2-D matrix, got shape {tuple(G.shape)}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    a, b, c = coefficients
    X = G.to(dtype)
    tall = G.size(0) > G.size(1)
    if tall:
        X = X.T  # (n, m): the Gram matrix X X^T is then the smaller one
    X = X / X.norm().clamp(min=eps)
    for _ in range(steps):
        A = X @ X.T
        B = torch.addmm(A, A, A, beta=b, alpha=c)  # b A + c A^2
        X = torch.addmm(X, B, X, beta=a)  # a X + B X
    return X.T if tall else X


class Muon(torch.optim.Optimizer):
    """Muon for 2-D weight matrices; groups marked ``muon=False`` are updated by AdamW.

    For each matrix ``W`` of shape ``(out, in)`` with gradient ``G`` (a group with
    ``muon=True``, the default)::

        B = momentum * B + (1 - momentum) * G        # running mean of the gradient
        U = (1 - momentum) * G + momentum * B        # Nesterov (nesterov=False: U = B)
        O = newton_schulz(U, ns_steps)               # orthogonalised: singular values ~1
        W = W * (1 - lr * weight_decay)              # decoupled weight decay
        W = W - lr * sqrt(max(1, out / in)) * O

    This is ``torch.optim.Muon`` with its default ``adjust_lr_fn="original"`` (the factor
    ``sqrt(max(1, out / in))``, Keller Jordan's, keeps the update's size per element alike
    for wide and tall matrices); the state of each matrix is its ``momentum_buffer``, named as
    there. Muon is for the hidden layers' matrices only: embeddings, the output layer, norm
    gains and biases go into groups with ``muon=False``, which take AdamW's update
    (:class:`AdamW`, with the group's ``betas``, ``eps`` and ``weight_decay``), as in Keller
    Jordan's ``MuonWithAuxAdam``. Every setting may differ per group, and ``lr`` may change
    between steps (a schedule).

    Why it helps: the gradient of a weight matrix in a transformer is nearly low-rank, a few
    directions dominate it; orthogonalising gives every direction of the update the same
    size, so the rare directions are learned as fast as the common ones.

    The orthogonalisation is the class attribute ``orthogonalise`` (:func:`newton_schulz`),
    called as ``orthogonalise(U, steps, coefficients, eps)``; notebook 16 puts the learner's
    own function there, in one visible line.

    Raises ``ValueError`` for a negative ``lr``, ``weight_decay`` or ``momentum`` (or one
    ``>= 1``) and for a Muon group that holds a parameter that is not 2-D.
    """

    orthogonalise = staticmethod(newton_schulz)

    def __init__(self, params, lr: float = 1e-3, weight_decay: float = 0.1,
                 momentum: float = 0.95, nesterov: bool = True,
                 ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
                 eps: float = 1e-7, ns_steps: int = 5, betas: tuple[float, float] = (0.9, 0.95)):
        if lr < 0:
            raise ValueError(f"Muon: lr must be >= 0, got {lr}")
        if weight_decay < 0:
            raise ValueError(f"Muon: weight_decay must be >= 0, got {weight_decay}")
        if not 0 <= momentum < 1:
            raise ValueError(f"Muon: momentum must be in [0, 1), got {momentum}")
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                        ns_coefficients=tuple(ns_coefficients), eps=eps, ns_steps=ns_steps,
                        betas=tuple(betas), muon=True)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"] if group["muon"] else ():
                if p.dim() != 2:
                    raise ValueError(f"Muon: a Muon group holds a parameter of shape "
                                     f"{tuple(p.shape)}; Muon is for 2-D weight matrices, put "
                                     f"the others in a group with muon=False (AdamW)")

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter that has a gradient. ``closure`` (optional)
        re-evaluates the model and returns the loss, which is returned."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, weight_decay = group["lr"], group["weight_decay"]
            matrices, updates = [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                g, state = p.grad, self.state[p]
                if not group["muon"]:  # embeddings, norms, biases, the output layer
                    if not state:
                        state["step"] = torch.tensor(0.0)
                        state["exp_avg"] = torch.zeros_like(p)
                        state["exp_avg_sq"] = torch.zeros_like(p)
                    beta1, beta2 = group["betas"]
                    _adamw_update(p, g, state, lr, beta1, beta2, group["eps"], weight_decay)
                    continue
                if not state:
                    state["momentum_buffer"] = torch.zeros_like(g)
                buf, momentum = state["momentum_buffer"], group["momentum"]
                buf.lerp_(g, 1 - momentum)
                matrices.append(p)
                updates.append(g.lerp(buf, momentum) if group["nesterov"] else buf)
            for p, update in zip(matrices, self._orthogonalised(updates, group)):
                p.mul_(1 - lr * weight_decay)
                p.add_(update, alpha=-lr * math.sqrt(max(1.0, p.size(0) / p.size(1))))
        return loss

    def _orthogonalised(self, updates: list[torch.Tensor], group: dict) -> list[torch.Tensor]:
        """``orthogonalise`` of each update. Under ``torchrun`` with N processes, whose
        updates are the same (DDP averaged the gradients), each process orthogonalises every
        N-th matrix only and one all-reduce (a sum, the others' entries zero) gives every
        process all of them: the same numbers as one process computes, in about 1/N of the
        time. Keller Jordan's modded-nanogpt splits Muon's work over its GPUs in this way."""
        args = (group["ns_steps"], group["ns_coefficients"], group["eps"])
        rank, size = _world()
        if size == 1 or not updates:
            return [self.orthogonalise(u, *args) for u in updates]
        mine = [self.orthogonalise(u, *args).to(u.dtype) if i % size == rank
                else torch.zeros_like(u) for i, u in enumerate(updates)]
        flat = torch.cat([m.flatten() for m in mine])
        torch.distributed.all_reduce(flat)  # zeros elsewhere: the sum is exact
        parts = torch.split(flat, [u.numel() for u in updates])
        return [part.view_as(u) for part, u in zip(parts, updates)]


def _world() -> tuple[int, int]:
    """``(rank, world_size)`` of a running process group, else ``(0, 1)``."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def make_optimizer(model: torch.nn.Module, cfg, device: str = "cpu") -> torch.optim.Optimizer:
    """The optimizer a training run's settings ask for (``cfg``, a
    :class:`~course_utils.config.TrainConfig`), over ``model``'s trainable parameters.

    - ``cfg.optimizer == "adamw"``: ``torch.optim.AdamW`` over ``model.optimizer_groups(
      cfg.weight_decay)`` (no decay on biases and norm gains), fused kernels on a GPU.
    - ``"muon"``: :class:`Muon` for the weights of the linear layers inside the blocks
      (peak learning rate ``cfg.muon_lr``, momentum ``cfg.muon_momentum``, weight decay
      ``cfg.muon_weight_decay``), AdamW for the rest (embeddings, norms, biases, the output
      layer: ``cfg.learning_rate``, ``cfg.weight_decay`` on matrices).

    Each group holds ``lr_ratio``, its peak learning rate over ``cfg.learning_rate``: the
    loop sets ``lr = schedule * lr_ratio`` in every group, so all follow one schedule.
    Raises ``ValueError`` for another ``cfg.optimizer``.
    """
    betas = (cfg.beta1, cfg.beta2)
    if cfg.optimizer == "adamw":
        groups = [{**g, "lr_ratio": 1.0} for g in model.optimizer_groups(cfg.weight_decay)]
        return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=betas,
                                 fused=device.startswith("cuda") or None)
    if cfg.optimizer != "muon":
        raise ValueError(f"optimizer must be 'adamw' or 'muon', got {cfg.optimizer!r}")
    head = getattr(model, "lm_head", None)
    hidden = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)
              and m is not head and m.weight.requires_grad]
    ids = {id(p) for p in hidden}
    groups = [{"params": hidden, "lr": cfg.muon_lr, "lr_ratio": cfg.muon_lr / cfg.learning_rate,
               "momentum": cfg.muon_momentum, "weight_decay": cfg.muon_weight_decay}]
    for g in model.optimizer_groups(cfg.weight_decay):
        rest = [p for p in g["params"] if id(p) not in ids]
        groups.append({"params": rest, "muon": False, "lr": cfg.learning_rate, "lr_ratio": 1.0,
                       "betas": betas, "eps": 1e-8, "weight_decay": g["weight_decay"]})
    return Muon([g for g in groups if g["params"]], lr=cfg.muon_lr)


def step_seconds(configs: dict[str, TrainConfig], rounds: int = 5, steps_per_round: int = 8,
                 vocab_size: int = 65, device: str = "cpu") -> dict[str, float]:
    """Median wall-clock seconds of one training step (forward and backward of each of the
    ``grad_accum_steps`` micro-batches, gradient clipping, the optimizer of
    :func:`make_optimizer`) of each config in ``configs`` (name -> :class:`TrainConfig`), in
    one process, on random tokens of ``(batch_size, block_size)``. The models are timed
    round-robin, so that a change of the machine's load falls on all of them: each of
    ``rounds`` rounds runs ``steps_per_round`` steps of every model, the order rotating from
    round to round, after one untimed warm-up step each (a ``compile=True`` config compiles
    there). Notebook 16 uses it (notebook 11 builds the same timer by hand) to give every
    model of a comparison the same training time (equal time, not equal steps).

    Raises ``ValueError`` when ``configs`` is empty or ``rounds``/``steps_per_round`` < 1.
    """
    if not configs or rounds < 1 or steps_per_round < 1:
        raise ValueError("step_seconds needs at least one config, rounds >= 1 and "
                         "steps_per_round >= 1")
    setups = {}
    for name, cfg in configs.items():
        set_seed(0)
        model = GPT(cfg.model_config(vocab_size)).to(device)
        fwd = torch.compile(model) if cfg.compile else model
        x, y = torch.randint(vocab_size, (2, cfg.batch_size, cfg.model.block_size),
                             generator=torch.Generator().manual_seed(0)).to(device)
        setups[name] = (model, fwd, make_optimizer(model, cfg, device), cfg, x, y)

    def steps(model, fwd, optimizer, cfg, x, y, n):
        with autocast_context(device, cfg.dtype):
            for _ in range(n):
                for _ in range(cfg.grad_accum_steps):  # the step's micro-batches
                    _, loss = fwd(x, y)
                    (loss / cfg.grad_accum_steps).backward()
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

    for setup in setups.values():
        steps(*setup, 1)
    names, times = list(setups), {name: [] for name in setups}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            steps(*setups[name], steps_per_round)
            times[name].append((time.perf_counter() - t0) / steps_per_round)
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}
