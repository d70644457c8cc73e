"""Training: schedule, checkpoints, exact resume, reproducibility, settings errors."""

import math

import pytest
import torch

from course_utils.train import TrainConfig, get_lr, load_checkpoint, model_from_checkpoint, train


def test_lr_schedule_warmup_peak_and_end():
    kw = dict(max_lr=1e-3, min_lr=1e-4, warmup_iters=10, max_iters=110)
    assert get_lr(0, **kw) == pytest.approx(1e-3 / 10)  # first warmup step
    assert get_lr(4, **kw) == pytest.approx(1e-3 * 5 / 10)  # linear in between
    assert get_lr(10, **kw) == pytest.approx(1e-3)  # peak right after warmup
    assert get_lr(60, **kw) == pytest.approx((1e-3 + 1e-4) / 2)  # cosine half-way
    assert get_lr(110, **kw) == pytest.approx(1e-4)  # end of decay
    assert get_lr(500, **kw) == pytest.approx(1e-4)  # after the end
    steps = [get_lr(s, **kw) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(steps, steps[1:]))  # decays monotonically


def smoke(tmp_path, name="run", **kw):
    return TrainConfig.from_preset("smoke", out_dir=str(tmp_path / name), **kw)


def test_checkpoint_round_trip(tmp_path):
    r = train(smoke(tmp_path, max_iters=10, eval_interval=5), progress=False)
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt["step"] == 10
    assert ckpt["best_val_loss"] == pytest.approx(min(r["history"]["val"]))
    model, tok = model_from_checkpoint(ckpt)
    for name, p in r["model"].state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], p, rtol=0, atol=0)
    assert tok.chars == r["tokenizer"].chars
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.startswith(".")]


def test_resume_continues_exactly(tmp_path):
    cfg = dict(max_iters=24, eval_interval=8, dropout=0.1)  # dropout: the RNG state matters
    full = train(smoke(tmp_path, "full", **cfg), progress=False)
    part = train(smoke(tmp_path, "part", **cfg), stop_at=16, progress=False)
    assert part["history"]["step"][-1] == 15
    resumed = train(smoke(tmp_path, "part", **cfg), resume=True, progress=False)
    assert resumed["history"]["step"] == full["history"]["step"]
    assert resumed["history"]["loss"] == full["history"]["loss"]  # bit for bit
    assert resumed["history"]["val"] == full["history"]["val"]


def test_same_seed_same_losses_other_seed_differs(tmp_path):
    a = train(smoke(tmp_path, "a", max_iters=6), progress=False)
    b = train(smoke(tmp_path, "b", max_iters=6), progress=False)
    c = train(smoke(tmp_path, "c", max_iters=6, seed=7), progress=False)
    assert a["history"]["loss"] == b["history"]["loss"]
    assert a["history"]["loss"] != c["history"]["loss"]


def test_training_lowers_the_loss(tmp_path):
    r = train(smoke(tmp_path), progress=False)
    assert r["history"]["val"][0] == pytest.approx(math.log(65), abs=0.15)
    assert r["val_loss"] < r["history"]["val"][0] - 0.5


def test_bad_settings_and_missing_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="max_iters=0"):
        smoke(tmp_path, max_iters=0)
    with pytest.raises(ValueError, match="divisible"):
        smoke(tmp_path, n_embd=30, n_head=4)
    with pytest.raises(KeyError, match="shakespeare-char"):
        TrainConfig.from_preset("nope")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(smoke(tmp_path, "missing"), resume=True, progress=False)


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


def test_train_is_the_plain_loop_with_torch_pieces(tmp_path):
    """train() = seeded init, then per step: get_lr, a batch, F.cross_entropy, backward,
    clip_grad_norm_, torch.optim.AdamW. Rebuilt here from those pieces, the weights agree."""
    import torch.nn.functional as F

    from course_utils.datasets import get_batch
    from course_utils.model import GPT
    from course_utils.train import load_corpus

    cfg = smoke(tmp_path, max_iters=4, eval_interval=100, grad_clip=0.05)
    r = train(cfg, progress=False)

    tok, train_data, _ = load_corpus(cfg.dataset)
    torch.manual_seed(cfg.seed)
    model = GPT(cfg.model_config(tok.vocab_size))
    opt = torch.optim.AdamW(model.optimizer_groups(cfg.weight_decay), lr=cfg.learning_rate,
                            betas=(cfg.beta1, cfg.beta2))
    g = torch.Generator().manual_seed(cfg.seed)
    losses = []
    for step in range(cfg.max_iters):
        for group in opt.param_groups:
            group["lr"] = get_lr(step, cfg.learning_rate, cfg.min_lr, cfg.warmup_iters,
                                 cfg.max_iters)
        x, y = get_batch(train_data, cfg.block_size, cfg.batch_size, g)
        logits, _ = model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert r["history"]["loss"] == pytest.approx(losses, rel=1e-5)
    for (name, p), q in zip(model.named_parameters(), r["model"].parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)


def test_estimate_loss_is_the_mean_cross_entropy_of_seeded_batches(tmp_path):
    import contextlib

    import torch.nn.functional as F

    from course_utils.datasets import get_batch
    from course_utils.model import GPT
    from course_utils.train import estimate_loss

    cfg = smoke(tmp_path, eval_iters=3, dropout=0.2)
    torch.manual_seed(0)
    model = GPT(cfg.model_config(50)).train()
    data = torch.randint(0, 50, (500,), generator=torch.Generator().manual_seed(1))
    got = estimate_loss(model, {"val": data}, cfg, "cpu", contextlib.nullcontext())
    assert model.training  # back in training mode afterwards
    g = torch.Generator().manual_seed(cfg.seed + 1)
    model.eval()  # estimates are taken without dropout
    with torch.no_grad():
        want = []
        for _ in range(cfg.eval_iters):
            x, y = get_batch(data, cfg.block_size, cfg.batch_size, g)
            want.append(F.cross_entropy(model(x)[0].flatten(0, 1), y.flatten()).item())
    assert got["val"] == pytest.approx(sum(want) / len(want), rel=1e-6)
