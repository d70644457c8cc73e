"""Training: the schedule against PyTorch's schedulers, what the loop applies (learning rate,
clipping) measured from outside, exact resume, divergence, settings."""

import dataclasses
import math

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

import course_utils.preference as preference
import course_utils.train as train_mod
from course_utils.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_init_weights,
    model_from_checkpoint,
    save_checkpoint,
)
from course_utils.config import TrainConfig, resumed_config
from course_utils.datasets import load_corpus
from course_utils.model import GPTConfig
from course_utils.optim import get_lr
from course_utils.preference import DPOTask
from course_utils.presets import PRESETS
from course_utils.sft import ChatTask
from course_utils.train import TrainingError, train
from course_utils.utils import resolve_device


def smoke(tmp_path, name="run", **kw):
    return TrainConfig.from_preset("smoke", out_dir=str(tmp_path / name), **kw)


def torch_schedule(max_lr, min_lr, warmup_iters, max_iters):
    """Linear warmup then cosine decay, from PyTorch's own schedulers: LinearLR from
    max_lr / warmup_iters up to max_lr, then CosineAnnealingLR down to min_lr."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=max_lr)
    warm = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1 / warmup_iters,
                                             total_iters=warmup_iters - 1)
    cos = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max_iters - warmup_iters,
                                                     eta_min=min_lr)
    sched = torch.optim.lr_scheduler.SequentialLR(opt, [warm, cos], milestones=[warmup_iters])
    lrs = []
    for _ in range(max_iters):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_lr_schedule_warmup_peak_and_end():
    kw = dict(max_lr=1e-3, min_lr=1e-4, warmup_iters=10, max_iters=110)
    assert get_lr(0, **kw) == pytest.approx(1e-3 / 10)  # first warmup step
    assert get_lr(4, **kw) == pytest.approx(1e-3 * 5 / 10)  # linear in between
    assert get_lr(10, **kw) == pytest.approx(1e-3)  # peak right after warmup
    assert get_lr(60, **kw) == pytest.approx((1e-3 + 1e-4) / 2)  # cosine half-way
    assert get_lr(110, **kw) == pytest.approx(1e-4)  # end of decay
    assert get_lr(500, **kw) == pytest.approx(1e-4)  # after the end


@pytest.mark.parametrize("warmup_iters, max_iters", [(2, 9), (10, 110), (100, 1500)])
def test_lr_schedule_equals_pytorch_schedulers(warmup_iters, max_iters):
    kw = dict(max_lr=2e-3, min_lr=2e-4, warmup_iters=warmup_iters, max_iters=max_iters)
    ours = [get_lr(s, **kw) for s in range(max_iters)]
    assert ours == pytest.approx(torch_schedule(**kw), rel=1e-9)


def test_the_loop_applies_the_schedule_and_clips_the_gradient_norm(tmp_path):
    """Measured from outside train(): PyTorch calls a hook before every optimizer step, where
    the learning rate and the (clipped) gradients are what the step will use."""
    seen = []

    def hook(opt, args, kwargs):
        grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        seen.append((opt.param_groups[0]["lr"], norm.item()))

    cfg = smoke(tmp_path, max_iters=8, warmup_iters=3, eval_interval=100, grad_clip=0.05)
    handle = register_optimizer_step_pre_hook(hook)
    try:
        train(cfg, progress=False)
    finally:
        handle.remove()
    lrs, norms = zip(*seen)
    assert list(lrs) == pytest.approx(torch_schedule(cfg.learning_rate, cfg.min_lr, 3, 8),
                                      rel=1e-9)
    # unclipped, these gradients have norms of about 1 (measured): all were clipped to 0.05
    assert list(norms) == pytest.approx([0.05] * 8, rel=1e-4)


def test_checkpoint_round_trip(tmp_path):
    r = train(smoke(tmp_path, max_iters=10, eval_interval=5), progress=False)
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt["step"] == 10
    assert ckpt["best_val_loss"] == pytest.approx(min(r["history"]["val"]))
    assert TrainConfig.from_dict(ckpt["config"]) == r["config"]
    model, tok = model_from_checkpoint(ckpt)
    for name, p in r["model"].state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], p, rtol=0, atol=0)
    assert tok.to_dict() == r["tokenizer"].to_dict()
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000
    assert not list((tmp_path / "run").glob(".*"))  # no temporary files left


def test_resume_continues_exactly(tmp_path):
    cfg = dict(max_iters=24, eval_interval=8, dropout=0.1)  # dropout: the RNG state matters
    full = train(smoke(tmp_path, "full", **cfg), progress=False)
    part = train(smoke(tmp_path, "part", **cfg), stop_at=16, progress=False)
    assert part["history"]["step"][-1] == 15
    resumed = train(smoke(tmp_path, "part", **cfg), resume=True, progress=False)
    assert resumed["steps"] == 8
    assert resumed["history"]["step"] == full["history"]["step"]
    assert resumed["history"]["loss"] == full["history"]["loss"]  # bit for bit
    assert resumed["history"]["val"] == full["history"]["val"]


def test_resume_keeps_the_checkpoints_settings(tmp_path):
    train(smoke(tmp_path, max_iters=6, eval_interval=3, batch_size=4), stop_at=3,
          progress=False)
    with pytest.raises(ValueError, match=r"--batch-size 8 \(the checkpoint has 4\)"):
        train(smoke(tmp_path, max_iters=6, eval_interval=3), resume=True, progress=False)
    # max_iters may change: the run is extended, the rest comes from the checkpoint
    r = train(smoke(tmp_path, max_iters=9, eval_interval=3, batch_size=4), resume=True,
              progress=False)
    assert r["history"]["step"] == list(range(9)) and r["config"].batch_size == 4
    with pytest.raises(train_mod.RunFinished, match="finished.*--max-iters 18"):
        train(smoke(tmp_path, max_iters=9, eval_interval=3, batch_size=4), resume=True,
              progress=False)


def test_resumed_config_lists_what_may_change():
    saved = TrainConfig.from_preset("smoke")
    cfg = resumed_config(saved, {"max_iters": 60, "device": "cpu", "n_layer": 2,
                                 "out_dir": "elsewhere"})
    assert (cfg.max_iters, cfg.device, cfg.out_dir) == (60, "cpu", "elsewhere")
    assert dataclasses.replace(cfg, max_iters=30, device="auto", out_dir="runs/smoke") == saved
    with pytest.raises(ValueError, match=r"--n-layer 3 \(the checkpoint has 2\).*"
                                         r"--learning-rate 0.1 \(the checkpoint has 0.003\)"):
        resumed_config(saved, {"n_layer": 3, "learning_rate": 0.1})


def test_same_seed_same_losses_other_seed_differs(tmp_path):
    a = train(smoke(tmp_path, "a", max_iters=6), progress=False)
    b = train(smoke(tmp_path, "b", max_iters=6), progress=False)
    c = train(smoke(tmp_path, "c", max_iters=6, seed=7), progress=False)
    assert a["history"]["loss"] == b["history"]["loss"]
    assert a["history"]["loss"] != c["history"]["loss"]


def test_training_lowers_the_loss(tmp_path):
    r = train(smoke(tmp_path), progress=False)
    # at the start the model guesses about uniformly among Tiny Shakespeare's 65 characters
    assert r["history"]["val"][0] == pytest.approx(math.log(65), abs=0.15)
    assert r["val_loss"] < r["history"]["val"][0] - 0.5


@pytest.mark.parametrize("blow_up_at, caught_at, what", [
    (range(6, 10), 7, "training loss"),  # weights broken at step 6 -> step 7's loss
    (range(9, 10), 10, "train loss estimate"),  # broken by the last step -> the final eval
])
def test_a_diverging_run_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch,
                                                                  blow_up_at, caught_at, what):
    real_get_lr = train_mod.get_lr
    monkeypatch.setattr(train_mod, "get_lr",
                        lambda step, *a: math.inf if step in blow_up_at else real_get_lr(step, *a))
    with pytest.raises(TrainingError, match=f"{what} became nan at step {caught_at}.*step 5"):
        train(smoke(tmp_path, max_iters=10, eval_interval=5), progress=False)
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt["step"] == 5
    assert all(torch.isfinite(p).all() for p in ckpt["model"].values())


@pytest.mark.parametrize("setting, value, message", [
    ("max_iters", 0, "max_iters=0"),
    ("learning_rate", math.inf, "learning_rate=inf"),
    ("learning_rate", math.nan, "learning_rate=nan"),
    ("min_lr", 1.0, "min_lr=1.0"),  # above learning_rate
    ("grad_clip", math.nan, "grad_clip=nan"),
    ("grad_clip", -1.0, "grad_clip=-1.0"),
    ("weight_decay", math.inf, "weight_decay=inf"),
    ("beta2", 1.0, "beta2=1.0"),
    ("sample_tokens", -1, "sample_tokens=-1"),
    ("dtype", "float8", "dtype='float8'"),
    ("device", "gpu", "device='gpu'"),
    ("rope_theta", math.inf, "rope_theta=inf"),  # the model's float settings too
    ("dropout", math.nan, "dropout"),
    ("n_embd", 30, "divisible"),  # by n_head=4 (below)
])
def test_bad_settings_are_refused(setting, value, message):
    extra = {"n_head": 4} if setting == "n_embd" else {}
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_preset("smoke", **{setting: value}, **extra)


def test_devices_this_machine_lacks_are_named():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") in ("cpu", "cuda", "mps")
    missing = f"cuda:{torch.cuda.device_count()}"  # one past the last GPU, or any without CUDA
    with pytest.raises(ValueError, match=f"device '{missing}' asked for"):
        resolve_device(missing)
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        resolve_device("gpu")


def test_settings_of_the_wrong_kind_or_name():
    with pytest.raises(TypeError, match="max_iters must be of type int, got 1.5"):
        TrainConfig.from_preset("smoke", max_iters=1.5)
    with pytest.raises(TypeError, match="compile must be of type bool"):
        TrainConfig(compile="yes")
    with pytest.raises(TypeError, match="unknown setting.*vocab_size comes from the tokenizer"):
        TrainConfig.from_preset("smoke", vocab_size=100)
    with pytest.raises(TypeError, match="unknown setting.*n_layers"):
        TrainConfig.from_preset("smoke", n_layers=2)
    with pytest.raises(KeyError, match="shakespeare-char"):
        TrainConfig.from_preset("nope")


def test_flat_settings_go_to_the_model_or_the_training():
    cfg = TrainConfig.from_preset("smoke", n_layer=3, batch_size=5, dropout=0.1)
    assert (cfg.model.n_layer, cfg.model.dropout, cfg.batch_size) == (3, 0.1, 5)
    assert cfg.model.n_embd == PRESETS["smoke"]["n_embd"]
    assert TrainConfig.from_settings(**cfg.settings()) == cfg
    assert TrainConfig.from_dict(dataclasses.asdict(cfg)) == cfg
    model_names = {f.name for f in dataclasses.fields(GPTConfig)} - {"vocab_size"}
    train_names = {f.name for f in dataclasses.fields(TrainConfig)} - {"model"}
    assert set(cfg.settings()) == model_names | train_names  # one flat name space...
    assert not model_names & train_names  # ...without clashes
    for name in PRESETS:  # every preset is valid
        TrainConfig.from_preset(name)


def test_token_file_round_trip_and_training_from_a_folder(tmp_path):
    import numpy as np

    from course_utils.datasets import get_batch, read_token_file, write_token_file
    from course_utils.tokenization import CharTokenizer

    text = "the cat sat on the mat. " * 200
    tok = CharTokenizer.from_text(text)
    ids = tok.encode(text)
    docs = [ids[i:i + 100] for i in range(0, len(ids), 100)]
    write_token_file(docs[:40], tmp_path / "train.bin", progress=False)
    write_token_file(docs[40:], tmp_path / "val.bin", progress=False)
    tok.save(tmp_path / "tokenizer.json")
    mm = read_token_file(tmp_path / "train.bin")
    assert mm.dtype == np.uint16 and mm.tolist() == ids[:4000]
    x, y = get_batch(mm, 8, 4, torch.Generator().manual_seed(0))
    assert x.dtype == torch.int64 and torch.equal(x[:, 1:], y[:, :-1])
    with pytest.raises(ValueError, match="does not fit in uint8"):
        write_token_file([[300]], tmp_path / "bad.bin", dtype=np.uint8, progress=False)
    assert not (tmp_path / "bad.bin").exists()
    r = train(TrainConfig.from_preset("smoke", dataset=str(tmp_path), out_dir=str(tmp_path / "r"),
                                      max_iters=5), progress=False)
    assert r["tokenizer"].vocab_size == tok.vocab_size
    assert r["model"].config.vocab_size == tok.vocab_size == r["config"].model.vocab_size


def test_missing_data_is_named(tmp_path):
    (tmp_path / "train.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="lacks val.bin, tokenizer.json"):
        train(smoke(tmp_path, dataset=str(tmp_path)), progress=False)
    with pytest.raises(FileNotFoundError, match="python -m course_utils.tinystories nowhere/ts"):
        train(smoke(tmp_path, dataset="nowhere/ts"), progress=False)


def test_estimate_loss_is_the_mean_cross_entropy_of_seeded_batches(tmp_path):
    import contextlib

    import torch.nn.functional as F

    from course_utils.datasets import get_batch
    from course_utils.model import GPT
    from course_utils.tasks import LMTask
    from course_utils.train import estimate_loss

    cfg = smoke(tmp_path, eval_iters=3, dropout=0.2)
    torch.manual_seed(0)
    model = GPT(cfg.model_config(50)).train()
    data = torch.randint(0, 50, (500,), generator=torch.Generator().manual_seed(1))
    task = LMTask(None, data[:100], data, cfg.model.block_size, cfg.batch_size)
    got = estimate_loss(model, task, cfg.eval_iters, cfg.seed, contextlib.nullcontext())
    assert model.training  # back in training mode afterwards
    g = torch.Generator().manual_seed(cfg.seed + 1)
    model.eval()  # estimates are taken without dropout
    with torch.no_grad():
        want = []
        for _ in range(cfg.eval_iters):
            x, y = get_batch(data, cfg.model.block_size, cfg.batch_size, g)
            want.append(F.cross_entropy(model(x)[0].flatten(0, 1), y.flatten()).item())
    assert got["val"] == pytest.approx(sum(want) / len(want), rel=1e-6)


def test_a_time_budget_ends_the_run_with_an_evaluation_and_a_checkpoint(tmp_path):
    # any step takes longer than 1 ns: the run stops after its first step
    r = train(smoke(tmp_path, max_iters=30, max_seconds=1e-9), progress=False)
    assert r["steps"] == 1 and r["history"]["step"] == [0]
    assert r["history"]["eval_step"] == [0, 1]  # evaluated where the budget ran out
    assert load_checkpoint(tmp_path / "run")["step"] == 1
    t = r["history"]["train_s"]
    assert t[0] == 0.0 and t[1] > 1e-9
    full = train(smoke(tmp_path, "full", max_iters=12), progress=False)
    assert full["steps"] == 12 and full["history"]["eval_step"] == [0, 10, 12]


# ------------------------------------------------------------------ fine-tuning (notebook 13)
def bpe_base(tmp_path, name="base", **kw):
    """A tiny pretrained run in BPE tokens: the start of the fine-tuning tests."""
    cfg = smoke(tmp_path, name, bpe_vocab_size=300, block_size=64, max_iters=2,
                eval_interval=2, eval_iters=1, **kw)
    return train(cfg, progress=False)


def test_a_bpe_corpus_is_split_where_the_characters_are(shakespeare_text):
    from course_utils.datasets import train_val_split

    tok, tr, va = load_corpus("tinyshakespeare", bpe_vocab_size=300)
    assert tok.vocab_size == 300 and tok.kind == "bpe"
    char_train, _ = train_val_split(torch.arange(len(shakespeare_text)), 0.1)
    assert tok.decode(tr.tolist()) == shakespeare_text[:len(char_train)]
    assert tok.decode(va.tolist()) == shakespeare_text[len(char_train):]
    assert len(shakespeare_text) / (len(tr) + len(va)) > 1.3  # 44 merges: fewer tokens
    with pytest.raises(ValueError, match="bpe_vocab_size=100"):
        TrainConfig.from_preset("smoke", bpe_vocab_size=100)


@pytest.mark.parametrize("tie_weights", [True, False])
def test_new_tokens_get_the_mean_row_and_change_no_other_logit(tie_weights):
    from course_utils.model import GPT

    config = GPTConfig(vocab_size=50, block_size=16, n_layer=1, n_head=2, n_embd=16,
                       tie_weights=tie_weights)
    torch.manual_seed(0)
    base = GPT(config).eval()
    grown = GPT(dataclasses.replace(config, vocab_size=52)).eval()
    load_init_weights(grown, base.state_dict())
    for key in ("transformer.wte.weight", "lm_head.weight"):
        old, new = base.state_dict()[key], grown.state_dict()[key]
        assert torch.equal(new[:50], old)
        torch.testing.assert_close(new[50:], old.mean(dim=0).expand(2, -1))
    x = torch.randint(0, 50, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(grown(x)[0][..., :50], base(x)[0], rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_init_weights(GPT(dataclasses.replace(config, n_embd=32)),
                                    base.state_dict())


def test_fine_tuning_for_chat_starts_from_the_pretrained_run(tmp_path):
    from course_utils.chat import IM_END, IM_START
    from course_utils.sft import ChatData

    base = bpe_base(tmp_path)
    cfg = TrainConfig.from_preset("shakespeare-chat", init_from=str(tmp_path / "base"),
                                  out_dir=str(tmp_path / "chat"), batch_size=4, max_iters=4,
                                  eval_interval=2, eval_iters=1, dropout=0.0)
    r = train(cfg, stop_at=2, progress=False, task=ChatTask)
    assert r["tokenizer"].special_tokens == {IM_START: 300, IM_END: 301}
    assert r["config"].model == dataclasses.replace(base["config"].model, vocab_size=302)
    assert isinstance(ChatTask.build(r["config"], r["tokenizer"]).data["train"], ChatData)
    r = train(cfg, resume=True, progress=False, task=ChatTask)  # the checkpoint's tokenizer
    assert r["history"]["step"] == [0, 1, 2, 3]
    ckpt = load_checkpoint(tmp_path / "chat")
    assert ckpt["config"]["init_from"] == str(tmp_path / "base") and ckpt["step"] == 4


def test_loss_mask_off_trains_every_token(tmp_path):
    bpe_base(tmp_path)
    base_tok = model_from_checkpoint(load_checkpoint(tmp_path / "base"))[1]
    counts = {}
    for mask in (True, False):
        cfg = TrainConfig.from_preset("shakespeare-chat", block_size=64, loss_mask=mask)
        data = ChatTask.build(cfg, base_tok).data["train"]
        counts[mask] = sum(int((y != -1).sum()) for _, y in data.examples)
        assert counts[mask] > 0
    total = sum(len(x) for x, _ in data.examples)
    assert counts[True] < counts[False] / 2 and counts[False] == total


def test_fine_tuning_errors_say_what_to_do(tmp_path):
    from course_utils.tokenization import WordTokenizer

    chat = dict(out_dir=str(tmp_path / "chat"), max_iters=2)
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        train(TrainConfig.from_preset("shakespeare-chat", init_from=str(tmp_path / "nothing"),
                                      **chat), progress=False, task=ChatTask)
    with pytest.raises(ValueError, match="give the model to start from with --init-from"):
        train(TrainConfig.from_preset("shakespeare-chat", init_from="", **chat),
              progress=False, task=ChatTask)
    bpe_base(tmp_path)
    ckpt = load_checkpoint(tmp_path / "base")
    ckpt["tokenizer"] = WordTokenizer.from_text("user assistant thou art").to_dict()
    save_checkpoint(tmp_path / "words.pt", ckpt)
    with pytest.raises(ValueError, match=r"--init-from .*words.pt: this tokenizer cannot "
                                         r"write the chat format"):
        train(TrainConfig.from_preset("shakespeare-chat", init_from=str(tmp_path / "words.pt"),
                                      **chat), progress=False, task=ChatTask)
    with pytest.raises(ValueError, match="differs from the one the model was trained"):
        train(smoke(tmp_path, "more", init_from=str(tmp_path / "base"), max_iters=2),
              progress=False)
    assert not (tmp_path / "chat" / "ckpt.pt").exists()


# ------------------------------------------------------------------ preference tuning (nb 13)
def chat_run(tmp_path):
    """A tiny chat fine-tuned run (BPE base, one SFT step): the start of the DPO tests."""
    bpe_base(tmp_path)
    cfg = TrainConfig.from_preset("shakespeare-chat", init_from=str(tmp_path / "base"),
                                  out_dir=str(tmp_path / "chat"), batch_size=2, max_iters=1,
                                  eval_interval=1, eval_iters=1)
    return train(cfg, progress=False, task=ChatTask)


def synthetic_pairs(model, tok, n_prompts, samples, margin, seed, corpus=None, **settings):
    """Preference pairs without sampling: after any prompt, "good my lord" is chosen over
    "zzq xv"; both replies end with <|im_end|>."""
    from course_utils.chat import ChatFormat
    from course_utils.preference import Preferences

    fmt = ChatFormat(tok)
    good, bad = fmt.text_ids("good my lord") + [fmt.im_end], fmt.text_ids("zzq xv") + [fmt.im_end]
    words = ["Speak", "Hark", "What news", "Who goes there", "Peace", "Farewell"]

    def split(texts):
        prompts = [fmt.encode([{"role": "user", "content": t}]) for t in texts]
        return Preferences(prompts, [[good, bad] for _ in prompts],
                           [[1.0, 0.0] for _ in prompts], [(i, 0, 1) for i in range(len(texts))])

    return split(words[:4]), split(words[4:])


def dpo_config(tmp_path, name="dpo", **kw):
    settings = dict(init_from=str(tmp_path / "chat"), out_dir=str(tmp_path / name),
                    batch_size=4, max_iters=8, learning_rate=1e-2, min_lr=1e-3, warmup_iters=0,
                    eval_interval=4, eval_iters=1, beta=0.5)
    return TrainConfig.from_preset("shakespeare-dpo", **{**settings, **kw})


def test_dpo_through_the_training_loop_raises_the_margin(tmp_path, monkeypatch):
    """DPO is the same loop on preference data: on synthetic pairs the implicit reward margin
    beta * ((log pi - log ref)(chosen) - (log pi - log ref)(rejected)) starts at 0 (loss
    log 2) and grows; the checkpoint loads safely and is a chat model; resume is exact."""
    from course_utils.preference import PreferenceData, dpo_loss, sequence_logprobs

    monkeypatch.setattr(preference, "preference_pairs", synthetic_pairs)
    preference._sampled_pairs.cache_clear()
    chat_run(tmp_path)
    r = train(dpo_config(tmp_path), progress=False, task=DPOTask)
    assert r["history"]["train"][0] == pytest.approx(math.log(2), abs=1e-4)  # policy = ref
    assert r["history"]["train"][-1] < 0.5 * math.log(2)
    task = DPOTask.build(r["config"])
    data, val, tok = task.data["train"], task.data["val"], task.tokenizer
    assert isinstance(data, PreferenceData) and tok.to_dict() == r["tokenizer"].to_dict()

    def margin(model):
        idx, mask = val.collate(range(len(val)))
        with torch.no_grad():
            chosen, rejected = sequence_logprobs(model, idx, mask).chunk(2)
        _, rc, rr = dpo_loss(chosen, rejected, *val.ref_logps, beta=0.5)
        return (rc - rr).mean().item()

    start, _ = model_from_checkpoint(load_checkpoint(tmp_path / "chat"))
    assert margin(start) == pytest.approx(0.0, abs=1e-4)
    assert margin(r["model"]) > 1.0  # on the held-out pairs too
    ckpt = load_checkpoint(tmp_path / "dpo")  # weights_only=True inside
    assert ckpt["config"]["dataset"] == "tinyshakespeare-prefs" and ckpt["step"] == 8
    assert "<|im_end|>" in model_from_checkpoint(ckpt)[1].special_tokens
    preference._sampled_pairs.cache_clear()  # a resumed run samples its pairs again
    train(dpo_config(tmp_path, "cut"), stop_at=4, progress=False, task=DPOTask)
    resumed = train(dpo_config(tmp_path, "cut"), resume=True, progress=False, task=DPOTask)
    assert resumed["history"]["loss"] == r["history"]["loss"]


def test_dpo_errors_say_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(preference, "preference_pairs", synthetic_pairs)
    with pytest.raises(ValueError, match=r"beta=0\.0 \(must be finite and > 0"):
        dpo_config(tmp_path, beta=0.0)
    with pytest.raises(ValueError, match="pref_samples=1"):
        dpo_config(tmp_path, pref_samples=1)
    with pytest.raises(ValueError, match="give it with --init-from"):
        train(dpo_config(tmp_path, init_from=""), progress=False, task=DPOTask)
    bpe_base(tmp_path)  # a pretrained model, not a chat model
    with pytest.raises(ValueError, match=r"--init-from .*base is not a chat model: its "
                                         r"tokenizer has no <\|im_start\|>"):
        train(dpo_config(tmp_path, init_from=str(tmp_path / "base")), progress=False,
              task=DPOTask)
    assert not (tmp_path / "dpo" / "ckpt.pt").exists()


def test_a_muon_run_resumes_exactly_and_learns(tmp_path):
    """Muon's momentum buffers and the AdamW moments of the other parameters are saved: a
    resumed run goes on bit for bit; the schedule reaches Muon's own peak learning rate."""
    seen = []

    def hook(opt, args, kwargs):
        seen.append([g["lr"] for g in opt.param_groups])

    cfg = dict(max_iters=10, eval_interval=5, optimizer="muon", muon_lr=0.03, warmup_iters=2)
    handle = register_optimizer_step_pre_hook(hook)
    try:
        full = train(smoke(tmp_path, "full", **cfg), progress=False)
    finally:
        handle.remove()
    train(smoke(tmp_path, "part", **cfg), stop_at=5, progress=False)
    resumed = train(smoke(tmp_path, "part", **cfg), resume=True, progress=False)
    assert resumed["history"]["loss"] == full["history"]["loss"]  # bit for bit
    assert full["history"]["val"][-1] < full["history"]["val"][0] - 0.3
    lr = PRESETS["smoke"]["learning_rate"]
    assert seen[1] == pytest.approx([0.03, lr, lr])  # the peak: Muon's group, AdamW's two


def test_a_finished_run_is_reused_only_for_the_same_task(tmp_path, capsys):
    # a task given as an object carries data the settings do not name: a run trained on other
    # data (or, for GRPO, another beta) under the same settings must not be reused or resumed
    from course_utils.tasks import LMTask, data_sha256
    from course_utils.tokenization import CharTokenizer
    from course_utils.train import finished_or_train

    text = "to be or not to be, that is the question. " * 40
    tok = CharTokenizer(sorted(set(text)))
    ids = torch.tensor(tok.encode(text))
    task = {name: LMTask(tok, data, ids[:300], block_size=16, batch_size=4)
            for name, data in (("a", ids), ("b", ids.flip(0)))}
    cfg = smoke(tmp_path, max_iters=4, eval_interval=2, block_size=16)
    first = finished_or_train(cfg, task=task["a"])
    assert "reused" not in first
    assert finished_or_train(cfg, task=task["a"])["reused"]  # the same data: reused
    capsys.readouterr()
    other = finished_or_train(cfg, task=task["b"])  # other data, same settings: trained again
    assert "reused" not in other and "trained on another task" in capsys.readouterr().out
    assert load_checkpoint(cfg.out_dir)["task_sha256"] == task["b"].fingerprint()
    # a run stopped halfway resumes only on its own task
    part = smoke(tmp_path, "part", max_iters=4, eval_interval=2, block_size=16)
    train(part, stop_at=2, progress=False, task=task["a"])
    with pytest.raises(ValueError, match="task given differs.*overwrite=True"):
        train(part, resume=True, progress=False, task=task["b"])
    # the digest sees data and functions, not where they live in memory
    assert data_sha256({"x": ids.clone()}, get_lr) == data_sha256({"x": ids}, get_lr)
    assert data_sha256(ids[:-1]) != data_sha256(ids) != data_sha256(ids.to(torch.int32))


def test_ctrl_c_right_after_a_checkpoint_is_announced_names_that_checkpoint(tmp_path,
                                                                           monkeypatch):
    # the interrupt lands just after "step 2: ..." is written (a busy machine can deschedule
    # the run there): the error must name step 2, which is on disk, not the one before
    from course_utils.runs import TrainingInterrupted

    real = train_mod.progress_bar

    def bar_then_ctrl_c(*args, **kwargs):
        bar = real(*args, **kwargs)
        write = bar.write

        def write_then_interrupt(text, *a, **k):
            write(text, *a, **k)
            if text.startswith("step 2:"):
                raise KeyboardInterrupt
        bar.write = write_then_interrupt
        return bar

    monkeypatch.setattr(train_mod, "progress_bar", bar_then_ctrl_c)
    cfg = smoke(tmp_path, max_iters=6, eval_interval=2, batch_size=4)
    with pytest.raises(TrainingInterrupted) as e:
        train(cfg, progress=False)
    assert e.value.saved_step == 2 == load_checkpoint(cfg.out_dir)["step"]
