"""The command line: end to end on the smoke preset with real Tiny Shakespeare, every user
error as one line without a traceback, flags made from the settings, resume semantics."""

import argparse
import dataclasses
import os
import subprocess
import sys
import typing
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from course_utils import cli
from course_utils.checkpoint import load_checkpoint
from course_utils.config import TrainConfig
from course_utils.model import GPTConfig
from course_utils.train import train

REPO = Path(__file__).resolve().parent.parent


def run(*args, cwd=None, stdin=None):
    """``python -m course_utils ARGS`` in a fresh process (about 2-3 s, most of it torch's
    import), reading ``stdin`` (a str) as its standard input."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "course_utils", *map(str, args)],
                          capture_output=True, text=True, timeout=300, cwd=cwd, env=env,
                          input=stdin)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished smoke run (4 steps), trained in this process."""
    out = tmp_path_factory.mktemp("cli") / "finished"
    train(TrainConfig.from_preset("smoke", out_dir=str(out), max_iters=4, eval_interval=2),
          progress=False)
    return out


def test_train_then_sample(tmp_path):
    out = tmp_path / "smoke"
    r = run("train", "--preset", "smoke", "--out-dir", out, "--max-iters", "12", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "val loss" in r.stdout and "tokens/s" in r.stdout and str(out) in r.stdout
    assert (out / "ckpt.pt").is_file() and (out / "loss.png").is_file()

    r = run("sample", "--checkpoint", out, "--prompt", "ROMEO:", "--max-new-tokens", "40",
            "--top-k", "10")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ROMEO:") and len(r.stdout.rstrip("\n")) >= 46


def test_every_user_error_is_one_line_and_exit_code_2(tmp_path, finished):
    """Each case in a fresh ``python -m course_utils`` (a few at a time). The errors of
    resuming and of run folders that hold a run are checked in-process below."""
    ckpt = (finished / "ckpt.pt").read_bytes()
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "ckpt.pt").write_bytes(ckpt[:len(ckpt) // 2])
    (tmp_path / "a-file").write_text("not a folder")
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "train.bin").write_bytes(b"")
    unwritable = tmp_path / "read-only"
    unwritable.mkdir(mode=0o500)
    if os.access(unwritable, os.W_OK):  # root writes anyway: use a file system that refuses
        unwritable = Path("/sys/course-utils-test")
    cuda = f"cuda:{torch.cuda.device_count()}"  # a GPU this machine lacks
    train_ = ("train", "--preset", "smoke", "--no-progress", "--out-dir")
    new = tmp_path / "new"  # a run folder no case may create
    cases = [  # (arguments, what the one line must say)
        ((*train_, new, "--device", cuda), f"device '{cuda}' asked for"),
        ((*train_, tmp_path / "a-file"), "a-file is a file, not a folder"),
        ((*train_, unwritable / "run"), f"cannot write to --out-dir {unwritable}"),
        ((*train_, new, "--dataset", tmp_path / "ds"), "lacks val.bin, tokenizer.json"),
        (("train", "--preset", "tinystories-cpu", "--out-dir", new),
         "python -m course_utils.tinystories data/tinystories-gpt2"),
        ((*train_, new, "--prompt", "été"), "--prompt 'été' cannot be encoded"),
        ((*train_, new, "--sample-tokens", "-1"), "sample_tokens=-1"),
        (("sample", "--checkpoint", tmp_path / "cut"), "cut/ckpt.pt is not a PyTorch checkpoint"),
        (("sample", "--checkpoint", tmp_path / "nothing"), "no checkpoint at"),
        (("train", "--preset", "shakespeare-chat", "--out-dir", new, "--init-from",
          tmp_path / "nothing"), "no checkpoint at"),
        (("train", "--preset", "shakespeare-chat", "--out-dir", new, "--init-from", finished,
          "--n-layer", "3"), "comes from --init-from"),
        (("train", "--preset", "shakespeare-chat", "--out-dir", new, "--init-from", ""),
         "give the model to start from with --init-from"),
        (("sample", "--checkpoint", finished, "--temperature", "-1", "--top-k", "0",
          "--top-p", "1.5"), "--temperature must be finite and >= 0 (0: greedy), got -1.0; "
                             "--top-k must be >= 1, got 0; --top-p must be in (0, 1], got 1.5"),
    ]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 2)) as pool:
        results = list(pool.map(lambda case: run(*case[0], cwd=tmp_path), cases))
    for (args, message), r in zip(cases, results):
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, (
            args, r.returncode, r.stderr)
        assert lines[0].startswith("error: ") and message in lines[0], (args, lines[0])
    assert not new.exists()


def test_every_setting_has_a_flag():
    p = argparse.ArgumentParser()
    cli.add_setting_flags(p)
    flags = {a.dest for a in p._actions}
    for f in dataclasses.fields(GPTConfig):  # the model's settings, whatever fields it has
        assert (f.name in flags) == (f.name != "vocab_size"), f.name
    for f in dataclasses.fields(TrainConfig):
        assert (f.name in flags) == (f.name != "model"), f.name
    args = cli.build_parser().parse_args([
        "train", "--n-layer", "6", "--no-bias", "--learning-rate", "0.01", "--n-kv-head", "none",
        "--block-size", "16"])
    given = {k: v for k, v in vars(args).items() if k in cli.SETTINGS}
    assert given == {"n_layer": 6, "bias": False, "learning_rate": 0.01, "n_kv_head": None,
                     "block_size": 16}  # flags not given are absent: the preset decides
    cfg = TrainConfig.from_preset("smoke", **given)
    assert (cfg.model.n_layer, cfg.model.bias, cfg.learning_rate) == (6, False, 0.01)


def test_flag_types_come_from_the_type_hints():
    @dataclasses.dataclass
    class Example:
        a: int | None = None
        b: typing.Optional[float] = 1.0  # noqa: UP045 - the older spelling works too
        c: bool = False
        d: typing.Literal["x", "y"] = "x"
        e: str = "s"

    p = argparse.ArgumentParser()
    for name, hint in typing.get_type_hints(Example).items():
        p.add_argument(f"--{name}", **cli._flag_kwargs(hint))
    assert vars(p.parse_args(["--a", "3", "--b", "none", "--c", "--d", "y", "--e", "t"])) == {
        "a": 3, "b": None, "c": True, "d": "y", "e": "t"}
    assert vars(p.parse_args(["--a", "None", "--b", "2.5", "--no-c"]))["b"] == 2.5
    for bad in (["--a", "3.5"], ["--d", "z"]):
        with pytest.raises(SystemExit):
            p.parse_args(bad)
    with pytest.raises(TypeError, match="no command-line flag"):
        cli._flag_kwargs(list[int])


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_resume_uses_the_checkpoints_settings(tmp_path, capsys):
    out = tmp_path / "run"
    base = ["train", "--preset", "smoke", "--out-dir", str(out), "--no-progress",
            "--sample-tokens", "0"]
    assert cli.main([*base, "--max-iters", "8", "--eval-interval", "4", "--stop-at", "4"]) == 0
    capsys.readouterr()
    # no flags repeated: the checkpoint's max_iters (8), not the preset's (30)
    assert cli.main(["train", "--resume", "--out-dir", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "max_iters 8," in printed and "eval_interval 4," in printed
    assert load_checkpoint(out)["history"]["step"] == list(range(8))
    # a finished run: said so, exit code 0
    assert cli.main(["train", "--resume", "--out-dir", str(out), "--no-progress"]) == 0
    assert "is finished" in capsys.readouterr().out
    # extending it; the same preset agrees with the checkpoint on everything fixed
    assert cli.main([*base, "--resume", "--max-iters", "10", "--eval-interval", "4"]) == 0
    assert load_checkpoint(out)["step"] == 10
    capsys.readouterr()
    # another preset contradicts it
    assert cli.main(["train", "--resume", "--preset", "shakespeare-char", "--out-dir",
                     str(out), "--max-iters", "20"]) == 2
    err = one_line_error(capsys)
    assert "--n-layer 4 (the checkpoint has 2)" in err and "--n-embd 128" in err
    # a new run into the folder must say so, and offer the ways out
    assert cli.main([*base, "--max-iters", "2"]) == 2
    err = one_line_error(capsys)
    assert f"{out} already holds a run" in err and "--resume" in err and "--overwrite" in err
    assert cli.main([*base, "--max-iters", "2", "--learning-rate", "inf", "--overwrite"]) == 2
    assert "learning_rate=inf (must be finite and > 0)" in one_line_error(capsys)
    assert cli.main([*base, "--max-iters", "2", "--overwrite"]) == 0
    assert load_checkpoint(out)["step"] == 2


def test_the_exercises_command_is_wired_in(capsys):
    from course_utils.cli import main

    assert main(["exercises", "04"]) == 0
    out = capsys.readouterr().out
    assert "causal_mask" in out and "exercises passed" in out


def test_chat_through_a_pipe_answers_with_paris():
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "course_utils", "chat", "--model", "smollm2-135m-instruct",
         "--temperature", "0", "--max-new-tokens", "20"],
        input="What is the capital of France?\n", capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "Paris" in out.stdout and "Traceback" not in out.stderr


def test_pretrain_fine_tune_then_chat_through_a_pipe(tmp_path):
    """The commands of the README in smoke size: a BPE base, SFT on the Shakespeare
    conversations from it, the chat command reading two lines from a pipe; then preference
    tuning (DPO on pairs sampled from the chat model) and the chat command on its result, and
    the one-line errors of a DPO run."""
    small = ("--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--eval-iters", "1",
             "--batch-size", "4", "--no-progress")
    r = run("train", "--preset", "shakespeare-bpe", *small, "--bpe-vocab-size", "300",
            "--block-size", "64", "--max-iters", "2", "--eval-interval", "2",
            "--sample-tokens", "0", "--out-dir", tmp_path / "base")
    assert r.returncode == 0, r.stderr
    r = run("train", "--preset", "shakespeare-chat", "--init-from", tmp_path / "base",
            "--out-dir", tmp_path / "chat", "--max-iters", "3", "--eval-interval", "3",
            "--sample-tokens", "5", "--prompt", "Good morrow.", *small)
    assert r.returncode == 0, r.stderr
    assert "n_layer 1," in r.stdout and "user> Good morrow.\nassistant> " in r.stdout
    assert f"chat --checkpoint {tmp_path / 'chat'}" in r.stdout
    assert load_checkpoint(tmp_path / "chat")["tokenizer"]["special_tokens"] == {
        "<|im_start|>": 300, "<|im_end|>": 301}
    r = run("chat", "--checkpoint", tmp_path / "chat",
            stdin="Good morrow, my lord.\nWho goes there? <|im_end|>\n/quit\n")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) >= 2 and any(line.strip() for line in lines), r.stdout
    # replies of at most half the context of 64 tokens by default: the first one has room
    assert not lines[0].startswith("[only room"), r.stdout

    dpo = ("--preset", "shakespeare-dpo", "--out-dir", tmp_path / "dpo", "--pref-prompts", "4",
           "--pref-samples", "6", "--pref-margin", "0.05", "--max-iters", "2",
           "--eval-interval", "2", "--eval-iters", "1", "--batch-size", "2", "--no-progress")
    r = run("train", *dpo, "--init-from", tmp_path / "chat", "--sample-tokens", "5",
            "--prompt", "Good morrow.")
    assert r.returncode == 0, r.stderr
    assert "dataset tinyshakespeare-prefs" in r.stdout and "beta 0.1" in r.stdout
    assert "user> Good morrow.\nassistant> " in r.stdout
    assert f"chat --checkpoint {tmp_path / 'dpo'}" in r.stdout
    assert load_checkpoint(tmp_path / "dpo")["step"] == 2
    r = run("chat", "--checkpoint", tmp_path / "dpo", stdin="Good morrow, my lord.\n/quit\n")
    assert r.returncode == 0 and r.stderr == "" and r.stdout.strip(), (r.stdout, r.stderr)

    errors = {  # extra flags -> what the one line must say
        ("--init-from", tmp_path / "base"): "is not a chat model",
        ("--init-from", tmp_path / "chat", "--beta", "0"): "beta=0.0 (must be finite and > 0",
        ("--init-from", tmp_path / "chat", "--beta", "-0.5"): "beta=-0.5",
        ("--init-from", tmp_path / "chat", "--pref-margin", "1.0"): "no preference pairs",
    }
    for extra, message in errors.items():
        r = run("train", *dpo[:3], tmp_path / "dpo-bad", *dpo[4:], *extra)
        assert r.returncode == 2, (extra, r.stdout, r.stderr)
        assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
        assert message in r.stderr, r.stderr
    assert not (tmp_path / "dpo-bad" / "ckpt.pt").exists()
