"""Checkpoints and run folders: loading never runs code, damaged files get a clear error,
saves are atomic, a finished run is never replaced silently, one process per folder."""

import os
import zipfile

import pytest
import torch
from filelock import FileLock

from course_utils.checkpoint import (
    CheckpointError,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from course_utils.config import TrainConfig
from course_utils.runs import LOCK_NAME
from course_utils.train import RunFinished, TrainingError, train


class Payload:
    """Unpickling this creates the file ``path``: a stand-in for arbitrary code."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished smoke run: (run folder, its checkpoint)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    train(TrainConfig.from_preset("smoke", out_dir=str(out), max_iters=4, eval_interval=2),
          progress=False)
    return out, load_checkpoint(out)


def smoke(out, **kw):
    return TrainConfig.from_preset("smoke", out_dir=str(out), **kw)


def test_a_pickle_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "ckpt.pt"
    torch.save({"model": {}, "x": Payload(marker)}, path)
    with pytest.raises(CheckpointError, match=f"refusing to load {path}.*io.open"):
        load_checkpoint(path)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the payload is live: unrestricted unpickling
    assert marker.exists()  # runs it


def test_a_payload_inside_a_real_checkpoint_is_refused(tmp_path, finished):
    _, ckpt = finished
    marker = tmp_path / "pwned"
    evil = {**ckpt, "history": {**ckpt["history"], "note": Payload(marker)}}
    torch.save(evil, tmp_path / "ckpt.pt")
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_checkpoint(tmp_path)  # a run folder works as well as the file
    with pytest.raises(CheckpointError, match="refusing to load"):
        train(smoke(tmp_path), resume=True, progress=False)
    assert not marker.exists()


def test_damaged_and_foreign_files_get_an_error_naming_them(tmp_path, finished):
    out, _ = finished
    good = (out / "ckpt.pt").read_bytes()
    cases = {
        "truncated": (good[:len(good) // 2], "not a PyTorch checkpoint"),
        "random": (os.urandom(4096), "not a PyTorch checkpoint"),
        "empty": (b"", "not a PyTorch checkpoint"),
    }
    for name, (data, message) in cases.items():
        path = tmp_path / name / "ckpt.pt"
        path.parent.mkdir()
        path.write_bytes(data)
        with pytest.raises(CheckpointError, match=message) as e:
            load_checkpoint(path.parent)
        assert str(path) in str(e.value)
    with zipfile.ZipFile(tmp_path / "zip.pt", "w") as z:  # a zip archive, but not torch's
        z.writestr("notes.txt", "hello")
    with pytest.raises(CheckpointError, match="zip.pt is damaged"):
        load_checkpoint(tmp_path / "zip.pt")
    torch.save({"weight": torch.zeros(2)}, tmp_path / "bare.pt")  # a bare state dict
    with pytest.raises(CheckpointError, match="bare.pt is not a checkpoint.*lacks config"):
        load_checkpoint(tmp_path / "bare.pt")
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "nothing-here")


def test_weights_that_do_not_fit_the_settings(finished):
    _, ckpt = finished
    config = {**ckpt["config"], "model": {**ckpt["config"]["model"], "n_embd": 64}}
    with pytest.raises(CheckpointError, match="weights do not fit"):
        model_from_checkpoint({**ckpt, "config": config})


def test_an_interrupted_save_keeps_the_old_checkpoint_and_no_temp_file(tmp_path, monkeypatch,
                                                                        finished):
    out, ckpt = finished
    before = (out / "ckpt.pt").read_bytes()

    def dies_halfway(obj, f):
        with open(f, "wb") as fh:
            fh.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(out / "ckpt.pt", ckpt)
    assert (out / "ckpt.pt").read_bytes() == before
    assert not list(out.glob(".*"))


def test_leftovers_of_a_killed_save_are_deleted_on_the_next_start(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    dead_pid = 2**22 + 1  # above Linux's largest pid (pid_max <= 2**22): no such process
    leftover = out / f".ckpt.pt.{dead_pid}.tmp"
    leftover.write_bytes(b"x" * 1000)
    train(smoke(out, max_iters=2), progress=False)
    assert not leftover.exists()
    assert not list(out.glob(".*"))


def test_a_run_folder_with_a_checkpoint_is_not_replaced_silently(tmp_path):
    out = tmp_path / "run"
    train(smoke(out, max_iters=2), progress=False)
    before = (out / "ckpt.pt").read_bytes()
    with pytest.raises(TrainingError, match=f"{out} already holds a run.*--resume.*--overwrite"):
        train(smoke(out, max_iters=2, seed=1), progress=False)
    assert (out / "ckpt.pt").read_bytes() == before
    r = train(smoke(out, max_iters=2, seed=1), overwrite=True, progress=False)
    assert load_checkpoint(out)["config"]["seed"] == 1 and r["steps"] == 2
    with pytest.raises(ValueError, match="exclude each other"):
        train(smoke(out), resume=True, overwrite=True, progress=False)


def test_a_second_process_cannot_train_into_a_busy_folder(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    # filelock's OS lock (flock) is held per open file, so this lock taken here blocks
    # train() just as one held by another process would
    with FileLock(out / LOCK_NAME):
        with pytest.raises(TrainingError, match=f"another process is training into {out}"):
            train(smoke(out, max_iters=2), progress=False)
    assert not (out / "ckpt.pt").exists()
    train(smoke(out, max_iters=2), progress=False)  # free again


def test_an_out_dir_that_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(TrainingError, match="is a file, not a folder"):
        train(smoke(tmp_path / "f"), progress=False)
    with pytest.raises(TrainingError, match="cannot write to --out-dir"):
        train(smoke(tmp_path / "f" / "sub"), progress=False)


def test_resuming_a_finished_run_or_stopping_before_the_checkpoint(finished):
    out, ckpt = finished
    with pytest.raises(RunFinished, match="finished: it trained 4 of max_iters 4.*--max-iters 8"):
        train(smoke(out, max_iters=4, eval_interval=2), resume=True, progress=False)
    with pytest.raises(ValueError, match="--stop-at 3 is not after the checkpoint's step 4"):
        train(smoke(out, max_iters=6, eval_interval=2), resume=True, stop_at=3, progress=False)
    assert load_checkpoint(out)["step"] == 4


def test_resume_without_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        train(smoke(tmp_path / "missing"), resume=True, progress=False)


def test_a_checkpoint_of_the_previous_format_loads_and_resumes(tmp_path, capsys):
    """Checkpoints written before the settings gained LoRA and the history gained tokens and
    task metrics (and before init_sha256 was kept) still sample and resume."""
    from course_utils import cli

    out = tmp_path / "old"
    train(TrainConfig.from_preset("smoke", out_dir=str(out), max_iters=4, eval_interval=2),
          stop_at=2, progress=False)
    ckpt = load_checkpoint(out)
    for key in ("lora_rank", "lora_alpha"):
        del ckpt["config"][key]
    for key in ("tokens", "metrics"):
        del ckpt["history"][key]
    del ckpt["init_sha256"]
    save_checkpoint(out / "ckpt.pt", ckpt)
    assert cli.main(["sample", "--checkpoint", str(out), "--max-new-tokens", "5"]) == 0
    r = train(TrainConfig.from_preset("smoke", out_dir=str(out), max_iters=4, eval_interval=2),
              resume=True, progress=False)
    assert r["history"]["step"] == [0, 1, 2, 3] and r["history"]["tokens"]
