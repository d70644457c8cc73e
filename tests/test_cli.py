"""The command line, end to end on the smoke preset with real Tiny Shakespeare."""

import subprocess
import sys


def run(*args):
    return subprocess.run([sys.executable, "-m", "course_utils", *args], capture_output=True,
                          text=True, timeout=300)


def test_train_then_sample(tmp_path):
    out = tmp_path / "smoke"
    r = run("train", "--preset", "smoke", "--out-dir", str(out), "--max-iters", "12",
            "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "val loss" in r.stdout and "tokens/s" in r.stdout and str(out) in r.stdout
    assert (out / "ckpt.pt").is_file() and (out / "loss.png").is_file()

    r = run("sample", "--checkpoint", str(out), "--prompt", "ROMEO:", "--max-new-tokens", "40",
            "--top-k", "10")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ROMEO:") and len(r.stdout.rstrip("\n")) >= 46


def test_clear_errors(tmp_path):
    r = run("sample", "--checkpoint", str(tmp_path / "nothing-here"))
    assert r.returncode == 2 and "no checkpoint" in r.stderr
    r = run("train", "--preset", "smoke", "--n-head", "4", "--n-embd", "30",
            "--out-dir", str(tmp_path / "x"))
    assert r.returncode == 2 and "divisible" in r.stderr
