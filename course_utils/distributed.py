"""Training on several processes with PyTorch's DistributedDataParallel (DDP), launched by
``torchrun``: the plumbing the training loop (:mod:`course_utils.train`) calls.

    torchrun --nproc_per_node=8 -m course_utils train --preset tinystories-gpu

``torchrun`` starts one process per GPU (or per CPU share) and tells each its ``RANK``, its
``LOCAL_RANK`` on the machine and the ``WORLD_SIZE`` in environment variables; each process
runs the same training loop on its own shard of every step's batch, and DDP averages the
gradients over the processes during the backward pass (an all-reduce: NCCL between GPUs,
Gloo between CPU processes), so that every process takes the same optimizer step with the
same weights. Li et al. (2020), "PyTorch Distributed: Experiences on Accelerating Data
Parallel Training".

How the course uses it:

- **The global batch is a setting.** A step is ``grad_accum_steps`` micro-batches of
  ``batch_size`` sequences in all, whatever the number of processes: each of ``N`` processes
  computes ``grad_accum_steps / N`` of them (which must divide evenly), so 1 or 8 GPUs train
  the same run (as nanoGPT divides its accumulation steps by the world size).
- **Each micro-batch has its own seed.** At every step each process draws the
  ``grad_accum_steps`` seeds of the step from the run's batch generator (the same numbers in
  every process) and builds only its own micro-batches from them (:func:`micro_batch_seeds`);
  the seed also seeds dropout. So one process and ``N`` processes see the very same batches,
  and a checkpoint of either resumes in the other.
- **Rank 0 is the run's voice**: only it evaluates, writes checkpoints, holds the run
  folder's lock, draws the progress bar and prints; the others train.
- **Every process stops together.** Each step the processes add up their losses, token
  counts and "out of time" flags in one all-reduce (:func:`reduce_step`), so all see the
  same loss (a NaN anywhere stops every process at that step) and stop at the same step. A
  process that fails ends the run: the others get an error from their next collective call
  (:func:`peer_failed`), or ``torchrun`` ends them with SIGTERM, and stop with
  :class:`PeerFailed`, naming the step and the checkpoint that still holds the last good
  state (rank 0 writes checkpoints atomically; one being written is removed).
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import os
import signal

import torch
import torch.distributed as dist

from .runs import TrainingError

# How long a collective call waits for a process that does not answer before it fails:
# longer than any evaluation or checkpoint rank 0 makes while the others wait.
TIMEOUT = datetime.timedelta(minutes=10)


class PeerFailed(TrainingError):
    """Another process of a distributed run failed, so this one stopped too."""


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process: from the process group when one is running,
    else from ``torchrun``'s environment variables ``RANK`` and ``WORLD_SIZE``, else
    ``(0, 1)``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def is_main() -> bool:
    """Whether this process speaks for the run (rank 0): it logs, evaluates and saves."""
    return world()[0] == 0


def local_device(device: str) -> str:
    """The device of this process: ``cuda`` becomes ``cuda:LOCAL_RANK`` when ``torchrun``
    started several processes on the machine (one GPU each); other devices are shared."""
    if device == "cuda" and world()[1] > 1:
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return device


@contextlib.contextmanager
def process_group(device: str):
    """In a run started by ``torchrun`` (``WORLD_SIZE > 1``): join its process group (NCCL for
    a CUDA device, Gloo otherwise) unless this process already did, and turn ``torchrun``'s
    SIGTERM into :class:`PeerFailed` during the ``with`` block. The group stays joined until
    the process ends (joining a second time in one process is not reliable), so a process may
    train several times. Does nothing in a single process."""
    if world()[1] <= 1:
        yield
        return
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_device("cuda"))
        dist.init_process_group(backend, timeout=TIMEOUT)
        atexit.register(dist.destroy_process_group)
    # torchrun ends the other processes with SIGTERM when one fails: raise an exception
    # instead of dying at once, so that a checkpoint being written is removed, not left half
    previous = signal.signal(signal.SIGTERM, _stopped_by_torchrun)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _stopped_by_torchrun(signum, frame):
    raise PeerFailed(f"rank {world()[0]} was stopped (SIGTERM): another process of the run "
                     f"failed, or the run was interrupted")


def shard(grad_accum_steps: int) -> range:
    """The micro-batches of a step that this process computes: a contiguous ``1 / N`` of
    ``range(grad_accum_steps)`` (process ``r`` of ``N`` takes the ``r``-th part).

    Raises ``ValueError`` when ``grad_accum_steps`` is not a multiple of the number of
    processes."""
    rank, size = world()
    if grad_accum_steps % size:
        fit = size * max(1, round(grad_accum_steps / size))
        raise ValueError(f"--grad-accum-steps {grad_accum_steps} must be a multiple of the "
                         f"{size} processes: each computes an equal share of every step's "
                         f"micro-batches (the global batch is batch_size x grad_accum_steps "
                         f"sequences); use e.g. --grad-accum-steps {fit}")
    n = grad_accum_steps // size
    return range(rank * n, (rank + 1) * n)


def micro_batch_seeds(batch_gen: torch.Generator, grad_accum_steps: int) -> list[int]:
    """The seeds of this process's micro-batches of one step: all ``grad_accum_steps`` seeds
    are drawn from ``batch_gen`` (so every process's generator stays in step), and the
    :func:`shard` of this process is returned."""
    seeds = torch.randint(2**62, (grad_accum_steps,), generator=batch_gen).tolist()
    return [seeds[i] for i in shard(grad_accum_steps)]


def describe_batch(cfg, device: str) -> str:
    """One line for the banner of a run (``cfg``, a :class:`~course_utils.config.
    TrainConfig`, on ``device``): the processes, each one's share of a step and the global
    batch. Raises ``ValueError`` as :func:`shard` does."""
    _, size = world()
    per, total = len(shard(cfg.grad_accum_steps)), cfg.batch_size * cfg.grad_accum_steps
    backend = f" (DDP over {'NCCL' if device.startswith('cuda') else 'Gloo'})" if size > 1 else ""
    return (f"processes: {size}{backend}; per process {per} micro-batch(es) of "
            f"{cfg.batch_size} sequences a step; global batch {total} sequences of "
            f"{cfg.model.block_size} tokens = {total * cfg.model.block_size:,} tokens a step")


def wrap(model: torch.nn.Module, device: str) -> torch.nn.Module:
    """``model`` in ``DistributedDataParallel`` when this process is one of several (its
    weights are then broadcast from rank 0, and its gradients averaged over the processes in
    the backward pass); ``model`` itself in a single process."""
    if world()[1] <= 1:
        return model
    ids = [torch.device(device).index] if device.startswith("cuda") else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def sync_gradients(model: torch.nn.Module, last: bool):
    """The context of one micro-batch's backward pass: DDP averages the gradients over the
    processes only after the last micro-batch of a step (``no_sync`` before it, which saves
    an all-reduce per micro-batch); nothing to do in a single process."""
    if last or not isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext()
    return model.no_sync()


def peer_failed(error: BaseException) -> bool:
    """Whether ``error``, raised in a process of a distributed run, says that another process
    is gone: an error of the collective calls (``torch.distributed.DistError``, NCCL's), or
    Gloo's "Connection closed by peer" (a plain ``RuntimeError``)."""
    if world()[1] <= 1 or isinstance(error, TrainingError):
        return False
    text = str(error)
    return isinstance(error, dist.DistError) or "gloo" in text or "closed by peer" in text


def reduce_step(loss: torch.Tensor, tokens: int, out_of_time: bool) -> tuple[float, int, bool]:
    """The step's loss averaged over every process, the tokens all of them trained on, and
    whether any ran out of time, as ``(loss, tokens, out_of_time)``.

    ``loss`` is this process's mean loss over its micro-batches (a scalar tensor). The one
    place the loop waits for the device (``.item()``/``.tolist()``); with several processes
    also one all-reduce, which every process must reach, so all of them see the same loss (a
    NaN anywhere stops all at once) and stop at the same step."""
    _, size = world()
    if size <= 1:
        return loss.item(), tokens, out_of_time
    flags = torch.stack([loss.float(), torch.tensor(float(tokens), device=loss.device),
                         torch.tensor(float(out_of_time), device=loss.device)])
    dist.all_reduce(flags)  # a failed peer: an error the loop turns into PeerFailed
    total_loss, total_tokens, late = flags.tolist()
    return total_loss / size, int(total_tokens), late > 0
