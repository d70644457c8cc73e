"""Command line: ``python -m course_utils train ...`` and ``python -m course_utils sample ...``."""

from __future__ import annotations

import argparse
import dataclasses
import sys

import torch

from .corpora import DataError
from .presets import PRESETS
from .sampling import generate
from .train import TrainConfig, load_checkpoint, model_from_checkpoint, train
from .utils import get_device


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    """One ``--flag`` per TrainConfig field; unset flags keep the preset's value."""
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None)
        else:
            kind = {"int": int, "float": float, "str": str}[str(f.type)]
            p.add_argument(flag, dest=f.name, type=kind, default=None,
                           help=f"(default from the preset; TrainConfig: {f.default!r})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m course_utils",
                                     description="Train and sample the course's GPT.")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a GPT from a preset (flags override it)")
    t.add_argument("--preset", default="shakespeare-char", choices=sorted(PRESETS))
    t.add_argument("--resume", action="store_true",
                   help="continue the run in --out-dir from its checkpoint")
    t.add_argument("--stop-at", type=int, default=None,
                   help="stop at this step after saving a checkpoint (continue with --resume)")
    t.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    t.add_argument("--prompt", default="\n", help="prompt for the sample printed at the end")
    _add_config_flags(t)

    s = sub.add_parser("sample", help="generate text from a trained checkpoint")
    s.add_argument("--checkpoint", required=True, help="run folder or ckpt.pt file")
    s.add_argument("--prompt", default="\n")
    s.add_argument("--max-new-tokens", type=int, default=500)
    s.add_argument("--temperature", type=float, default=0.8, help="0 means greedy")
    s.add_argument("--top-k", type=int, default=None)
    s.add_argument("--top-p", type=float, default=None)
    s.add_argument("--num-samples", type=int, default=1)
    s.add_argument("--seed", type=int, default=1337)
    s.add_argument("--device", default="auto")
    s.add_argument("--no-cache", action="store_true", help="generate without the KV cache")
    return parser


def sample_text(model, tokenizer, prompt: str, max_new_tokens: int, temperature: float = 0.8,
                top_k: int | None = None, top_p: float | None = None, seed: int = 1337,
                use_cache: bool = True) -> str:
    """Encode ``prompt`` with the model's tokenizer, generate, and decode everything."""
    device = next(model.parameters()).device
    idx = torch.tensor([tokenizer.encode(prompt)], dtype=torch.long, device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    out = generate(model, idx, max_new_tokens, temperature, top_k, top_p, gen, use_cache)
    return tokenizer.decode(out[0].tolist())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "train":
        overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                     if getattr(args, f.name) is not None}
        try:
            cfg = TrainConfig.from_preset(args.preset, **overrides)
        except (ValueError, KeyError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"training preset {args.preset!r} on {get_device(cfg.device)}: "
              f"{cfg.n_layer} layers, {cfg.n_head} heads, n_embd {cfg.n_embd}, "
              f"block_size {cfg.block_size}, batch {cfg.batch_size}, {cfg.max_iters} steps")
        try:
            r = train(cfg, resume=args.resume, stop_at=args.stop_at,
                      progress=not args.no_progress)
        except (DataError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"final train loss {r['train_loss']:.4f}, val loss {r['val_loss']:.4f} "
              f"(best {r['best_val_loss']:.4f})")
        print(f"{r['tokens_per_s']:,.0f} tokens/s, wall time {r['wall_s']:.1f} s, "
              f"{r['model'].num_params():,} parameters")
        print(f"checkpoint: {r['checkpoint']}\nloss plot:  {r['plot']}")
        print("sample:")
        print(sample_text(r["model"], r["tokenizer"], args.prompt, r["config"].sample_tokens,
                          seed=cfg.seed))
        return 0
    try:
        ckpt = load_checkpoint(args.checkpoint)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    model, tok = model_from_checkpoint(ckpt, get_device(args.device))
    for i in range(args.num_samples):
        try:
            text = sample_text(model, tok, args.prompt, args.max_new_tokens, args.temperature,
                               args.top_k, args.top_p, args.seed + i, not args.no_cache)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(text)
        if i + 1 < args.num_samples:
            print("-" * 40)
    return 0
