"""Command line: ``python -m course_utils train | sample | chat | eval | serve | exercises ...``.

Every setting has a flag (``--n-layer``, ``--batch-size`` ...), made from the fields of
:class:`~course_utils.train.TrainConfig` and of the model's
:class:`~course_utils.model.GPTConfig`: the flag's type from the field's type, its help from
the comment beside the field. A new field gets its flag without an edit here. A mistake on the
command line (a bad flag value, a missing file, a busy run folder ...) prints one line on
stderr and exits with code 2 (argparse's mistakes too: :class:`~course_utils.utils.
OneLineErrorParser`); Ctrl-C during training says where the run stopped (exit code 130); a
reader that goes away (``... | head``) ends any command quietly.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
import io
import os
import re
import sys
import types
import typing
import warnings

import torch

from . import distributed
from .bpe import tokenizer_from_dict
from .chat import ChatFormat, ChatSession, add_chat_parser, run_chat
from .check import add_exercises_parser, run_exercises
from .checkpoint import load_checkpoint, model_from_checkpoint, pinned_init_from, start_model
from .config import RESUMABLE, TrainConfig, init_config, resumed_config
from .corpora import DataError
from .instructions import DATASET as INSTRUCTION_PREFS
from .instructions import InstructionDPOTask
from .model import GPTConfig
from .preference import PREFERENCE_DATASETS, DPOTask
from .presets import PRESETS
from .report import add_eval_parser, run_eval
from .sampling import MAX_NEW_TOKENS, check_settings, generate
from .server import add_serve_parser, run_serve
from .sft import CHAT_DATASETS, ChatTask
from .tasks import LMTask
from .train import RunFinished, TrainingError, train
from .utils import OneLineErrorParser, resolve_device

DEFAULT_PRESET = "shakespeare-char"
SETTINGS = tuple(TrainConfig().settings())  # every flat setting name, e.g. "n_layer"
# The task each dataset name of the presets trains on; any other dataset is a text corpus or
# a token folder, trained on by language modelling (course_utils.tasks.LMTask).
TASKS = {**dict.fromkeys(CHAT_DATASETS, ChatTask), **dict.fromkeys(PREFERENCE_DATASETS, DPOTask),
         INSTRUCTION_PREFS: InstructionDPOTask}


# What makes a run itself: its data and its model's shape (a --preset on resume must agree)
IDENTITY = {"dataset", "bpe_vocab_size", "init_from",
            *(f.name for f in dataclasses.fields(GPTConfig))} - {"vocab_size", "dropout"}


def task_class(dataset: str):
    """The :class:`~course_utils.tasks.Task` class that trains on ``dataset``."""
    return TASKS.get(dataset, LMTask)


def _field_comments(cls) -> dict[str, str]:
    """The comment beside each field in the source of dataclass ``cls`` (its --help text)."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):  # no source (e.g. a frozen install): no help texts
        return {}
    found = re.findall(r"^\s+(\w+)\s*:[^#\n]*#\s*(.+)$", source, flags=re.MULTILINE)
    return {name: comment.strip() for name, comment in reversed(found)}  # first one wins


def _flag_kwargs(hint) -> dict:
    """``argparse`` keyword arguments for a setting whose type is ``hint``: a bool gets
    ``--x/--no-x``; ``X | None`` takes an X or the word ``none``; a ``Literal`` its values."""
    if hint is bool:
        return {"action": argparse.BooleanOptionalAction}
    args = typing.get_args(hint)
    if typing.get_origin(hint) is typing.Literal:
        return {"type": type(args[0]), "choices": args}
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        (kind,) = [a for a in args if a is not type(None)]

        def parse(text: str):
            return None if text.lower() == "none" else kind(text)

        parse.__name__ = kind.__name__  # argparse names the type in its error messages
        return {"type": parse, "metavar": f"{kind.__name__.upper()}|none"}
    if hint in (int, float, str):
        return {"type": hint}
    raise TypeError(f"no command-line flag for a setting of type {hint}; "
                    f"add a case to course_utils.cli._flag_kwargs")


def add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """One ``--flag`` per setting: TrainConfig's fields, then GPTConfig's (all but
    ``vocab_size``, which comes from the tokenizer). A flag that is not given is absent from
    the parsed arguments (``argparse.SUPPRESS``), so the preset or the checkpoint decides."""
    for cls, skip in ((TrainConfig, "model"), (GPTConfig, "vocab_size")):
        group = parser.add_argument_group(f"{cls.__name__} settings")
        hints, comments = typing.get_type_hints(cls), _field_comments(cls)
        for f in dataclasses.fields(cls):
            if f.name == skip:
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            about = comments.get(f.name, "").replace("%", "%%")  # argparse formats help with %
            group.add_argument("--" + f.name.replace("_", "-"), dest=f.name,
                               default=argparse.SUPPRESS, **_flag_kwargs(hints[f.name]),
                               help=f"{about} (default: the preset's, else {default!r})")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(  # its subcommands' parsers are of its class
        prog="python -m course_utils",
        description="Train, sample and chat with the course's GPT; check your exercises.")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a GPT from a preset (flags override it)")
    t.set_defaults(run=run_train)
    t.add_argument("--preset", default=None, choices=sorted(PRESETS),
                   help=f"the settings to start from (default {DEFAULT_PRESET}); with "
                        f"--resume, checked against the checkpoint's")
    mode = t.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true",
                      help="continue the run in --out-dir with its checkpoint's settings; only "
                           f"{', '.join('--' + k.replace('_', '-') for k in RESUMABLE)} may "
                           f"differ")
    mode.add_argument("--overwrite", action="store_true",
                      help="replace the run that --out-dir holds (by default that is an error)")
    t.add_argument("--stop-at", type=int, default=None,
                   help="stop at this step after saving a checkpoint (continue with --resume)")
    t.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    t.add_argument("--prompt", default="\n", help="prompt for the sample printed at the end "
                                                  "(a chat run: the user's message)")
    add_setting_flags(t)

    s = sub.add_parser("sample", help="generate text from a trained checkpoint")
    s.set_defaults(run=run_sample)
    s.add_argument("--checkpoint", required=True, help="run folder or ckpt.pt file")
    s.add_argument("--prompt", default="\n")
    s.add_argument("--max-new-tokens", type=int, default=500,
                   help=f"tokens to generate (at most {MAX_NEW_TOKENS:,})")
    s.add_argument("--temperature", type=float, default=0.8, help="0 means greedy")
    s.add_argument("--top-k", type=int, default=None)
    s.add_argument("--top-p", type=float, default=None)
    s.add_argument("--num-samples", type=int, default=1)
    s.add_argument("--seed", type=int, default=1337)
    s.add_argument("--device", default="auto")
    s.add_argument("--no-cache", action="store_true", help="generate without the KV cache")

    add_chat_parser(sub).set_defaults(run=run_chat)
    add_eval_parser(sub).set_defaults(run=run_eval)
    add_serve_parser(sub).set_defaults(run=run_serve)
    add_exercises_parser(sub).set_defaults(run=run_exercises)
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


def _check_prompt(tokenizer, prompt: str) -> None:
    """Raise ``ValueError`` unless ``prompt`` encodes to at least one token."""
    try:
        ids = tokenizer.encode(prompt)
    except ValueError as e:
        raise ValueError(f"--prompt {prompt!r} cannot be encoded: {e}") from None
    if not ids:
        raise ValueError("--prompt is empty: give it at least one character, e.g. --prompt 'A'")


def run_train(args: argparse.Namespace) -> int:
    """``train``: settings from the preset and the flags (or, with ``--resume``, from the
    checkpoint), checked before anything is trained; then train, report and sample."""
    given = {k: v for k, v in vars(args).items() if k in SETTINGS}
    preset = args.preset or DEFAULT_PRESET
    if args.resume:
        # The settings come from the checkpoint. Flags typed out are checked against it (only
        # RESUMABLE ones may differ). The model a fine-tuning run started from must be the
        # same (sha256), perhaps moved (--init-from NEW_PLACE): checked before the task uses
        # it (a DPO run samples its pairs from it).
        out_dir = given.get("out_dir", PRESETS[preset].get("out_dir", TrainConfig.out_dir))
        ckpt = load_checkpoint(out_dir)
        saved = TrainConfig.from_dict(
            {**ckpt["config"], "init_from": pinned_init_from(ckpt, given.get("init_from"))})
        if args.preset:
            _check_preset(args.preset, saved, given, out_dir)
        cfg = resumed_config(saved, {**given, "out_dir": out_dir})
        base = tokenizer_from_dict(ckpt["tokenizer"])
        what = f"resuming {out_dir} at step {ckpt['step']}"
        del ckpt  # train() reads it again, under the run folder's lock
    else:
        cfg = TrainConfig.from_preset(preset, **given)
        base = None  # the tokenizer of the model fine-tuned, if any
        if cfg.init_from:
            start = start_model(cfg.init_from)
            cfg = init_config(cfg, start["config"]["model"], requested=given)
            base = tokenizer_from_dict(start["tokenizer"])
            del start
        what = f"training preset {preset!r}" + (f" from {cfg.init_from}" if base else "")
    if cfg.sample_tokens > MAX_NEW_TOKENS:
        raise ValueError(f"--sample-tokens must be in [0, {MAX_NEW_TOKENS:,}], got "
                         f"{cfg.sample_tokens}")
    task = task_class(cfg.dataset).build(cfg, base, resolve_device(cfg.device))
    tok = task.tokenizer
    device = resolve_device(cfg.device)
    _check_prompt(tok, args.prompt)
    print(f"{what} on {device}, into {cfg.out_dir}")
    print("model: " + ", ".join(f"{k} {v}" for k, v in dataclasses.asdict(cfg.model).items()
                                if k != "vocab_size"))
    print("training: " + ", ".join(f"{f.name} {getattr(cfg, f.name)}"
                                   for f in dataclasses.fields(cfg)
                                   if f.name not in ("model", "out_dir")))
    print(distributed.describe_batch(cfg, device))
    r = train(cfg, resume=args.resume, stop_at=args.stop_at, progress=not args.no_progress,
              overwrite=args.overwrite, task=task)
    if not distributed.is_main():  # several processes (torchrun): rank 0 reports and samples
        return 0
    print(f"final train loss {r['train_loss']:.4f}, val loss {r['val_loss']:.4f} "
          f"(best {r['best_val_loss']:.4f})")
    print(f"{r['tokens_per_s']:,.0f} tokens/s, wall time {r['wall_s']:.1f} s, "
          f"{r['model'].num_params():,} parameters")
    print(f"checkpoint: {r['checkpoint']}\nloss plot:  {r['plot']}")
    chat = task.chat
    if r["config"].sample_tokens and chat:
        session = ChatSession(r["model"], ChatFormat(r["tokenizer"]),
                              max_new_tokens=r["config"].sample_tokens, seed=r["config"].seed)
        print(f"sample:\nuser> {args.prompt}\nassistant> "
              + r["tokenizer"].decode(list(session.send(args.prompt))))
    elif r["config"].sample_tokens:
        print("sample:")
        print(sample_text(r["model"], r["tokenizer"], args.prompt, r["config"].sample_tokens,
                          seed=r["config"].seed))
    if chat:
        print(f"chat with it: python -m course_utils chat --checkpoint {r['config'].out_dir}")
    return 0


def _check_preset(preset: str, saved: TrainConfig, given: dict, out_dir: str) -> None:
    """A ``--preset`` given on resume must describe the run: its data and model shape
    (:data:`IDENTITY`) equal the checkpoint's, where no flag replaces them. Its other values
    are not compared: they were maybe never used (a flag typed when the run started)."""
    current = saved.settings()
    differ = [f"--{k.replace('_', '-')} {v!r} (the checkpoint has {current[k]!r})"
              for k, v in PRESETS[preset].items()
              if k in IDENTITY and k not in given and v != current[k]]
    if differ:
        raise ValueError(f"--preset {preset} does not describe the run in {out_dir}: "
                         f"{'; '.join(differ)}. Resume it without --preset (its settings come "
                         f"from its checkpoint): python -m course_utils train --resume "
                         f"--out-dir {out_dir}")


def run_sample(args: argparse.Namespace) -> int:
    """``sample``: check the flags, load the checkpoint, print ``--num-samples`` samples."""
    if args.num_samples < 1:
        raise ValueError(f"--num-samples must be >= 1, got {args.num_samples}")
    check_settings(args.temperature, args.top_k, args.top_p, args.max_new_tokens,
                   seed=args.seed, flags=True)
    device = resolve_device(args.device)
    model, tok = model_from_checkpoint(load_checkpoint(args.checkpoint), device,
                                       f"the checkpoint {args.checkpoint}")
    _check_prompt(tok, args.prompt)
    for i in range(args.num_samples):
        print(sample_text(model, tok, args.prompt, args.max_new_tokens, args.temperature,
                          args.top_k, args.top_p, args.seed + i, not args.no_cache))
        if i + 1 < args.num_samples:
            print("-" * 40)
    return 0


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print("warning: " + " ".join(str(message).split()), file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code: 0 done, 2 a usage or input error (one
    line on stderr), 130 after Ctrl-C (one line: where training stopped). Warnings are one
    line each (``warning: ...``). When the reader of the output goes away
    (``... | head -1``), the command ends quietly with 0."""
    args = build_parser().parse_args(argv)
    rank, size = distributed.world()  # torchrun: only rank 0 prints, every rank its errors
    quiet = contextlib.redirect_stdout(io.StringIO()) if rank else contextlib.nullcontext()
    try:
        with quiet, warnings.catch_warnings():
            warnings.showwarning = _one_line_warning
            code = args.run(args)
            sys.stdout.flush()  # a reader that went away shows here, not at exit
        return code
    except RunFinished as e:  # nothing left to do: not an error
        if not rank:
            print(e)
        return 0
    except BrokenPipeError:  # before OSError, which it is
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return 0
    except (ValueError, OSError, TrainingError, DataError) as e:
        where = f"rank {rank}: " if size > 1 else ""
        print("error: " + where + " ".join(str(e).split()), file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # training says where it stopped (TrainingInterrupted)
        print(" ".join(str(e).split()) or "interrupted", file=sys.stderr)
        return 130
