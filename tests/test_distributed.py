"""Training on 2 CPU processes (Gloo) with DistributedDataParallel, started by ``torchrun``,
against training in one process: the same losses at the same global batch, checkpoints that
resume in either, and a failure on one process that ends the other cleanly.

Each ``torchrun`` start runs ``tests/ddp_worker.py`` (the command line's ``train`` on the
``smoke`` preset) in two fresh processes: a few seconds, most of it importing torch.

Why "equal within float32 rounding" and not bit for bit: both runs see the very same batches
(each micro-batch has its own seed, see :mod:`course_utils.distributed`), but one process
adds the two micro-batches' gradients, each divided by 2, while DDP gives each process one
micro-batch (divided by 1) and averages the two processes' gradients in an all-reduce: the
same sum, rounded in another order. Measured: losses agree to about 1e-7 relative after 8
steps; the test allows 1e-5.
"""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from course_utils.checkpoint import CHECKPOINT_NAME, load_checkpoint
from course_utils.config import TrainConfig
from course_utils.train import train

REPO = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "ddp_worker.py"
CLOSE = dict(rtol=1e-5, atol=0)  # float32 rounding: see the module docstring

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(),
                                reason="this PyTorch build has no torch.distributed")


def torchrun(mode: str, folder: Path) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=2 tests/ddp_worker.py MODE FOLDER``
    (``--standalone`` picks a free port)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(WORKER), mode, str(folder)]
    # a session of its own, so that a hang ends torchrun and both workers, not torchrun alone
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=env, start_new_session=True) as proc:
        try:
            out, err = proc.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            pytest.fail(f"torchrun {mode} hung; it printed:\n{out}\n{err}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def single(folder: Path, **kw) -> TrainConfig:
    """The settings of the worker's runs, for one process: the same global batch (2
    micro-batches of 8 sequences a step)."""
    return TrainConfig.from_preset("smoke", out_dir=str(folder), grad_accum_steps=2,
                                   max_iters=8, eval_interval=4, device="cpu", sample_tokens=0,
                                   **kw)


def history(folder: Path) -> dict:
    return load_checkpoint(folder)["history"]


def assert_same_run(got: dict, expected: dict):
    assert got["step"] == expected["step"] and got["eval_step"] == expected["eval_step"]
    torch.testing.assert_close(torch.tensor(got["loss"]), torch.tensor(expected["loss"]),
                               **CLOSE)
    torch.testing.assert_close(torch.tensor(got["val"]), torch.tensor(expected["val"]), **CLOSE)
    assert got["tokens"] == expected["tokens"]  # the tokens of all processes are counted


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The worker's ``runs`` on 2 processes, after the first half of a single-process run
    that it resumes; and the same run uninterrupted in one process, the reference."""
    folder = tmp_path_factory.mktemp("ddp")
    train(single(folder / "single_part"), stop_at=4, progress=False)
    r = torchrun("runs", folder)
    assert r.returncode == 0, r.stdout + r.stderr
    reference = train(single(folder / "single_full"), progress=False)["history"]
    return folder, r, reference


def test_two_processes_train_the_run_one_process_trains(runs):
    folder, _, reference = runs
    assert_same_run(history(folder / "ddp_full"), reference)
    assert torch.tensor(reference["loss"][-1]) < torch.tensor(reference["loss"][0])  # it learns


def test_two_processes_split_muon_and_train_the_run_one_process_trains(tmp_path):
    """Muon: each process orthogonalises half of the matrices, an all-reduce shares them."""
    r = torchrun("muon", tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    reference = train(single(tmp_path / "single_muon", optimizer="muon"), progress=False)
    assert_same_run(history(tmp_path / "ddp_muon"), reference["history"])


def test_a_checkpoint_of_two_processes_resumes_in_one(runs):
    folder, _, reference = runs
    assert load_checkpoint(folder / "ddp_part")["step"] == 4
    train(single(folder / "ddp_part"), resume=True, progress=False)
    assert_same_run(history(folder / "ddp_part"), reference)


def test_a_checkpoint_of_one_process_resumes_in_two(runs):
    folder, _, reference = runs
    assert_same_run(history(folder / "single_part"), reference)


def test_only_rank_0_prints_and_the_banner_states_the_batch(runs):
    _, r, _ = runs
    banner = ("processes: 2 (DDP over Gloo); per process 1 micro-batch(es) of 8 sequences a "
              "step; global batch 16 sequences of 32 tokens = 512 tokens a step")
    assert r.stdout.count(banner) == 3  # one per run, from rank 0 alone
    assert r.stdout.count("final train loss") == 3  # rank 0 reports each run once
    assert "error" not in r.stderr.lower()


def test_a_failing_process_ends_the_other_with_a_clear_message(tmp_path):
    r = torchrun("crash", tmp_path)
    assert r.returncode != 0
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert "error: rank 1: rank 1 failed on purpose at step 5" in errors, r.stderr
    rank0 = [line for line in errors if line.startswith("error: rank 0: ")]
    assert len(rank0) == 1 and "another process of the run failed" in rank0[0], r.stderr
    ckpt = load_checkpoint(tmp_path / "crash")  # whole: the last evaluation's, before step 5
    assert ckpt["step"] == 4 and ckpt["history"]["step"][-1] == 3
    assert sorted(p.name for p in (tmp_path / "crash").iterdir()) == [CHECKPOINT_NAME,
                                                                       "train.lock"]


def test_micro_batches_that_the_processes_cannot_share_are_refused(tmp_path, monkeypatch):
    from course_utils import distributed

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="--grad-accum-steps 3 must be a multiple of the 2 "
                                         "processes.*--grad-accum-steps 4"):
        distributed.shard(3)
    assert distributed.shard(4) == range(0, 2)
    monkeypatch.setenv("RANK", "1")
    assert distributed.shard(4) == range(2, 4)
