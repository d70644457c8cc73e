"""Side-by-side benchmarks of the course's pieces against well-known implementations.

Run ``python -m benchmarks`` (see ``benchmarks/README.md``). Each section measures both
sides in the same process on the same machine, interleaved, and reports ratios:

1. ``training``: training tokens/s, ours vs transformers' GPT-2 vs llms-from-scratch;
2. ``quality``: val loss of the shakespeare-char preset after fixed wall-clock budgets;
3. ``sampling``: generation tokens/s with and without the KV cache, vs transformers;
4. ``tokenizer``: BPE training vs naive BPE and Hugging Face tokenizers; GPT-2 encoding vs
   tiktoken;
5. ``memory``: peak RSS of a training run and of BPE training, each in its own process;
6. ``notebooks``: wall time of every notebook in fast (and full) mode;
7. ``smollm2``: SmolLM2-135M-Instruct greedy generation vs transformers, with and without the
   KV cache; its KV-cache bytes with grouped-query attention and without; the peak memory of
   loading it;
8. ``batched``: answering many prompts at once (left-padded batches, a stop per row) against
   one prompt at a time, SmolLM2 on GSM8K questions.
9. ``serve``: the chat server under load on the loopback (16 clients, 100 requests):
   answered, refused, lost, mixed up; latency, time to first token, tokens/s, side by side
   with one client.
10. ``speedrun``: the ``shakespeare-speedrun`` preset (notebook 16) and ``shakespeare-char``, one
    after the other, each command given the same wall time: their val losses.
"""

from __future__ import annotations

import time
import traceback
from pathlib import Path

from .harness import Context, SectionResult, Target, write_results

SECTIONS = ("training", "quality", "sampling", "tokenizer", "memory", "notebooks", "smollm2",
            "batched", "serve", "speedrun")
RESULTS_DIR = Path(__file__).resolve().parent


def _section_module(name: str):
    import importlib

    return importlib.import_module(f"{__name__}.{name}")


def run_suite(ctx: Context, names=SECTIONS, out_dir: Path = RESULTS_DIR
              ) -> tuple[list[SectionResult], Path, Path]:
    """Run the named sections in order with ``torch.set_num_threads(ctx.threads)``, write
    ``results.md`` and ``results.json`` into ``out_dir``, return
    ``(results, md_path, json_path)``.

    A section that raises is recorded with the error and a failed check, and the others
    still run. Raises ``ValueError`` for an unknown section name.
    """
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        raise ValueError(f"unknown section(s) {', '.join(unknown)}; choose from "
                         f"{', '.join(SECTIONS)}")
    import torch

    torch.set_num_threads(ctx.threads)
    results = []
    for name in names:
        module = _section_module(name)
        t0 = time.perf_counter()
        try:
            res = module.run(ctx)
        except Exception as e:  # keep going: one broken section should not hide the others
            ctx.log(traceback.format_exc())
            res = SectionResult(name, module.TITLE)
            res.notes.append(f"ERROR: {type(e).__name__}: {e}")
            res.targets.append(Target(f"section {name} runs", f"{type(e).__name__}", False,
                                      check=True))
        res.seconds, res.mode = time.perf_counter() - t0, ctx.mode
        ctx.log(f"{name}: done in {res.seconds:.0f} s")
        results.append(res)
    md, js = write_results(out_dir, ctx, results)
    return results, md, js
