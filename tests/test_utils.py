"""Atomic writes, clean-up of interrupted writes, and progress bars that save cleanly."""

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from course_utils.utils import atomic_write, progress_bar, remove_stale_temp_files


def test_atomic_write_replaces_only_on_success(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]  # no temporary file left
    with atomic_write(target) as tmp:
        tmp.write_text("new")
        assert target.read_text() == "old"  # readers see the old file until the end
    assert target.read_text() == "new"


def test_stale_temp_files_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)  # that process has exited
    stale = tmp_path / f".ckpt.pt.{dead_pid}.tmp"
    live = tmp_path / f".ckpt.pt.{os.getpid()}.tmp"
    other = tmp_path / ".notes.tmp"  # not ours: no pid in the name
    for p in (stale, live, other):
        p.write_bytes(b"x")
    assert remove_stale_temp_files(tmp_path) == [stale]
    assert not stale.exists() and live.exists() and other.exists()


def test_progress_bar_prints_one_line_when_not_a_terminal(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal, like a notebook
    bar = progress_bar(total=100, desc="train", unit="step")
    for _ in range(100):
        bar.update(1)
        bar.set_postfix(loss="1.234", refresh=False)
    bar.write("step 100: val loss 1.5")
    bar.close()
    assert list(progress_bar(range(3), desc="loop")) == [0, 1, 2]
    err = sys.stderr.getvalue()
    assert "\r" not in err
    lines = err.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("train: 100/100 step in ") and lines[0].endswith("(loss=1.234)")
    assert lines[1].startswith("loop: 3/3 it in ")
    assert capsys.readouterr().out == "step 100: val loss 1.5\n"
    assert progress_bar(range(2), disable=True).__class__.__name__ == "_LogBar"


def test_run_dir_is_runs_at_the_repository_root_from_any_working_directory(tmp_path, monkeypatch):
    from course_utils.utils import run_dir

    root = Path(__file__).resolve().parent.parent
    for cwd in (root, root / "notebooks", tmp_path):
        monkeypatch.chdir(cwd)
        path = run_dir("shakespeare-char")
        assert (cwd / path).resolve() == root / "runs" / "shakespeare-char"
    monkeypatch.chdir(root / "notebooks")
    assert str(run_dir("x")) == str(Path("..") / "runs" / "x")  # no machine path in outputs


def test_run_dir_rejects_names_that_are_paths():
    from course_utils.utils import run_dir

    for bad in ("", "a/b", "..", "/tmp/x"):
        with pytest.raises(ValueError, match="plain folder name"):
            run_dir(bad)
