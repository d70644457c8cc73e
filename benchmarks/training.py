"""Section ``training``: training throughput (tokens/s of forward + backward + AdamW step).

Three models of identical shape, batch and dtype (float32), trained on the same random
batches with the same optimizer settings, interleaved round by round:

- ours: ``course_utils.model.GPT`` with ``attn_impl="sdpa"``, the plain model the notebooks
  build (``nn.Embedding``, ``nn.Linear``; the output layer tied to the token embedding);
- Hugging Face ``transformers.GPT2LMHeadModel``, random init, dropout 0,
  ``attn_implementation="sdpa"``, called with ``use_cache=False``;
- ``llms_from_scratch.ch04.GPTModel`` (the model of Raschka's "Build a Large Language Model
  (From Scratch)", PyPI package ``llms-from-scratch``), dropout 0, ``qkv_bias=True``.

All three use ``torch.optim.AdamW(model.parameters())`` with PyTorch's default
implementation and the loss ``F.cross_entropy`` over every position.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .harness import Context, SectionResult, Stat, Table, Target, interleave, ratio

TITLE = "1. Training throughput"


@dataclass
class Shape:
    """A model shape and a batch: ``batch_size`` sequences of ``seq_len`` tokens."""

    name: str
    vocab_size: int
    block_size: int  # length of the position table
    n_layer: int
    n_head: int
    n_embd: int
    batch_size: int
    seq_len: int


def char_shape(batch_size: int | None = None) -> Shape:
    """The ``shakespeare-char`` preset's shape, read from the presets at run time."""
    from course_utils.presets import PRESETS

    p = PRESETS["shakespeare-char"]
    return Shape("shakespeare-char", 65, p["block_size"], p["n_layer"], p["n_head"],
                 p["n_embd"], batch_size or p["batch_size"], p["block_size"])


GPT2_SMALL = Shape("gpt2-small", 50257, 1024, 12, 12, 768, batch_size=4, seq_len=64)
# A stand-in for the harness's own test: GPT-2's vocabulary, a toy body.
GPT2_TOY = Shape("gpt2-vocab toy (1 layer, 64 wide)", 50257, 1024, 1, 2, 64, 2, 16)


def build_ours(s: Shape) -> torch.nn.Module:
    """``course_utils.model.GPT`` of shape ``s``, dropout 0, SDPA attention."""
    from course_utils.model import GPT, GPTConfig

    return GPT(GPTConfig(vocab_size=s.vocab_size, block_size=s.block_size, n_layer=s.n_layer,
                         n_head=s.n_head, n_embd=s.n_embd, dropout=0.0, bias=True,
                         attn_impl="sdpa"))


def build_hf(s: Shape) -> torch.nn.Module:
    """``GPT2LMHeadModel`` of shape ``s``, dropout 0, SDPA attention, random init."""
    from transformers import GPT2Config, GPT2LMHeadModel

    special = 50256 if s.vocab_size > 50256 else None
    cfg = GPT2Config(vocab_size=s.vocab_size, n_positions=s.block_size, n_embd=s.n_embd,
                     n_layer=s.n_layer, n_head=s.n_head, resid_pdrop=0.0, embd_pdrop=0.0,
                     attn_pdrop=0.0, bos_token_id=special, eos_token_id=special,
                     attn_implementation="sdpa")
    return GPT2LMHeadModel(cfg)


def build_lfs(s: Shape) -> torch.nn.Module:
    """``llms_from_scratch.ch04.GPTModel`` of shape ``s`` (dropout 0, qkv bias)."""
    try:
        from llms_from_scratch.ch04 import GPTModel
    except ImportError as e:
        raise ImportError('the llms-from-scratch side needs its package: pip install '
                          '--no-deps "llms-from-scratch>=1.0" (see benchmarks/README.md)') from e

    return GPTModel({"vocab_size": s.vocab_size, "context_length": s.block_size,
                     "emb_dim": s.n_embd, "n_heads": s.n_head, "n_layers": s.n_layer,
                     "drop_rate": 0.0, "qkv_bias": True})


def _loss_ours(model, x, y):
    return model(x, y)[1]


def _loss_hf(model, x, y):
    logits = model(input_ids=x, use_cache=False).logits
    return F.cross_entropy(logits.flatten(0, 1), y.flatten())


def _loss_lfs(model, x, y):
    return F.cross_entropy(model(x).flatten(0, 1), y.flatten())


SIDES = {"ours": (build_ours, _loss_ours), "transformers": (build_hf, _loss_hf),
         "llms-from-scratch": (build_lfs, _loss_lfs)}


def _attention_of(name: str, model) -> str:
    """The attention computation a side uses, as the model reports it."""
    if name == "transformers":
        return model.config._attn_implementation
    if name == "ours":
        return model.config.attn_impl
    return "own (explicit mask)"  # llms-from-scratch: softmax(masked q k^T) v written out


def _trainer(model, loss_fn, batches, device):
    """A callable running one AdamW step per batch; returns the seconds it took."""
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)
    batches = [(x.to(device), y.to(device)) for x, y in batches]

    def run() -> float:
        t0 = time.perf_counter()
        for x, y in batches:
            loss = loss_fn(model, x, y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    return run


def measure_shape(ctx: Context, s: Shape, steps: int, rounds: int
                  ) -> tuple[dict[str, Stat], dict[str, dict]]:
    """tokens/s of every side at shape ``s`` (``rounds`` rounds of ``steps`` optimizer steps
    each, after a warm-up round), and per
    side its parameter count and attention implementation, or ``{"missing": why}`` for a
    side whose package is not installed (it has no tokens/s then)."""
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(steps):
        xy = torch.randint(s.vocab_size, (s.batch_size, s.seq_len + 1), generator=g)
        batches.append((xy[:, :-1], xy[:, 1:]))
    runners, info = {}, {}
    for name, (build, loss_fn) in SIDES.items():
        torch.manual_seed(0)
        try:
            model = build(s)
        except ImportError as e:  # an optional side whose package is not installed
            info[name] = {"missing": str(e)}
            continue
        info[name] = {"params": sum(p.numel() for p in model.parameters()),
                      "attn": _attention_of(name, model)}
        runners[name] = _trainer(model, loss_fn, batches, ctx.device)
    times = interleave(runners, rounds, warmup=1)
    tokens = steps * s.batch_size * s.seq_len
    stats = {name: Stat([tokens / t for t in ts], "tokens/s") for name, ts in times.items()}
    return stats, info


def run(ctx: Context) -> SectionResult:
    res = SectionResult("training", TITLE)
    shapes = ctx.pick(full=[char_shape(), GPT2_SMALL],
                      quick=[char_shape(), dataclasses.replace(GPT2_SMALL, batch_size=1)],
                      tiny=[char_shape(batch_size=4), GPT2_TOY])
    steps = {s.name: n for s, n in zip(shapes, ctx.pick(full=[20, 3], quick=[5, 1],
                                                          tiny=[1, 1]))}
    # One GPT-2-small step takes about 2 s here and varies by up to 20% from step to step
    # (other load on the host), so the full run gives it more rounds than the default.
    rounds = {s.name: n for s, n in zip(shapes, ctx.pick(
        full=[ctx.repeats, max(ctx.repeats, 7)], quick=[ctx.repeats] * 2,
        tiny=[ctx.repeats] * 2))}
    table = Table("tokens/s (forward + backward + AdamW step, float32)",
                  ["shape", "B x T", "side", "attention", "params", "tokens/s", "ours / side"])
    for s in shapes:
        ctx.log(f"training: {s.name}, {steps[s.name]} steps x {rounds[s.name]} rounds per side")
        stats, info = measure_shape(ctx, s, steps[s.name], rounds[s.name])
        key = s.name.split(" ")[0]
        for name, st in stats.items():
            res.figure(f"{key}/{name}/tokens_per_s", st)
            res.figure(f"{key}/{name}/params", info[name]["params"])
            res.figure(f"{key}/{name}/attention", info[name]["attn"])
            cells = [s.name, f"{s.batch_size} x {s.seq_len}", name, info[name]["attn"],
                     f"{info[name]['params']:,}", st.fmt()]
            if name == "ours":
                table.add(*cells, "-")
                continue
            r = ratio(stats["ours"], st)
            res.figure(f"{key}/ours_over_{name}", r)
            table.add(*cells, r.fmt())
            res.targets.append(Target(f"training tokens/s at {s.name}: ours >= {name}",
                                      f"{r.median:.2f}x", r.median >= 1.0))
        for name, i in info.items():
            if "missing" in i:
                res.figure(f"{key}/{name}/missing", i["missing"])
                res.targets.append(Target(f"training tokens/s at {s.name}: ours >= {name}",
                                          "not installed", None))
                ctx.log(f"training: skipped {name}: {i['missing']}")
    res.tables.append(table)
    res.notes += [
        "transformers side: `GPT2LMHeadModel` built with `attn_implementation=\"sdpa\"` "
        "(PyTorch's scaled_dot_product_attention; the attention column shows what the model "
        "reports it uses), called with `use_cache=False`, loss by `F.cross_entropy` on its "
        "logits; ours: `attn_impl=\"sdpa\"`.",
        "llms-from-scratch side: `llms_from_scratch.ch04.GPTModel` (its own attention with an "
        "explicit mask, its own LayerNorm and GELU); its output layer is not tied to the token "
        "embedding, hence more parameters (ours and transformers tie them, as GPT-2 does).",
        "Rounds per side after one warm-up round, and steps per round: "
        + ", ".join(f"{k}: {rounds[k]} x {v}" for k, v in steps.items())
        + ". Batches are random token ids, the same for every side.",
    ]
    return res
