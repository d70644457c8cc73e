"""Section ``batched``: answering many prompts at once, for evaluation (notebook 12).

SmolLM2-135M-Instruct answers GSM8K test questions greedily, each reply ending at its own
``<|im_end|>`` or after a cap of new tokens, two ways on the same model:

- one prompt at a time: :func:`course_utils.sampling.rollout` with a batch of one;
- all prompts in one batch: the same :func:`~course_utils.sampling.rollout`, the prompts
  padded on the left (the KV cache knows each row's padding), every row stopping at its own
  ``<|im_end|>``.

Both must give the same replies token for token. Interleaved rounds; the figure is prompts
(questions answered) per second and the batched / one-at-a-time ratio.
"""

from __future__ import annotations

import importlib.util

import torch

from .harness import Context, SectionResult, Stat, Table, Target, interleave, keeping, ratio

TITLE = "8. Batched generation for evaluation: one batch vs one prompt at a time (SmolLM2)"
ONE, BATCH = "one at a time", "one left-padded batch"


def run(ctx: Context) -> SectionResult:
    res = SectionResult("batched", TITLE)
    from course_utils.pretrained import gguf_path

    try:
        gguf_path()
    except FileNotFoundError as e:
        res.notes.append(f"Not measured: {e}")
        res.targets.append(Target("batched generation >= 3x one at a time", "not measured",
                                  None))
        return res
    if importlib.util.find_spec("gguf") is None:
        res.notes.append("Not measured: the gguf package is missing (pip install gguf)")
        return res
    from course_utils.answers import load_gsm8k
    from course_utils.chat import ChatFormat
    from course_utils.pretrained import from_gguf
    from course_utils.rl import prompt_ids
    from course_utils.sampling import rollout

    n_prompts = ctx.pick(full=32, quick=8, tiny=2)
    new_tokens = ctx.pick(full=128, quick=32, tiny=4)
    rounds = max(ctx.repeats, 3) if ctx.mode == "full" else ctx.repeats
    smol = from_gguf(block_size=1024)
    model = smol.model.eval()
    fmt = ChatFormat.from_template(smol.tokenizer, smol.chat_template)
    prompts = [prompt_ids(fmt, p.question) for p in load_gsm8k("test")[:n_prompts]]
    outputs: dict[str, list] = {}

    def one_at_a_time():
        return [c for p in prompts
                for c in rollout(model, [p], 1, new_tokens, fmt.im_end, temperature=0.0)
                .completions]

    def batched():
        return rollout(model, prompts, 1, new_tokens, fmt.im_end, temperature=0.0).completions

    ctx.log(f"batched: {n_prompts} GSM8K prompts, up to {new_tokens} new tokens, {rounds} "
            f"round(s)")
    with torch.no_grad():
        times = interleave({ONE: keeping(outputs, ONE, one_at_a_time),
                            BATCH: keeping(outputs, BATCH, batched)}, rounds, warmup=0)
    stats = {name: Stat([n_prompts / t for t in ts], "prompts/s") for name, ts in times.items()}
    speedup = ratio(stats[BATCH], stats[ONE])
    same = outputs[ONE] == outputs[BATCH]
    mismatched = sum(a != b for a, b in zip(outputs[ONE], outputs[BATCH]))
    lengths = [len(p) for p in prompts]
    replies = [len(c) for c in outputs[BATCH]]
    finished = sum(bool(c) and c[-1] == fmt.im_end for c in outputs[BATCH])
    table = Table(f"SmolLM2-135M-Instruct, greedy, {n_prompts} GSM8K questions (prompts "
                  f"{min(lengths)}-{max(lengths)} tokens), replies up to {new_tokens} tokens",
                  ["side", "prompts/s", "batched / side"])
    table.add(ONE, stats[ONE].fmt(), speedup.fmt())
    table.add(BATCH, stats[BATCH].fmt(), "-")
    res.tables.append(table)
    for name, st in stats.items():
        res.figure(f"{name}/prompts_per_s", st)
    res.figure("batched_over_one", speedup)
    res.figure("replies_finished", finished)
    res.figure("mean_reply_tokens", sum(replies) / len(replies))
    res.targets += [
        Target("batched replies equal one-at-a-time replies, token for token",
               "identical" if same else f"{mismatched} of {n_prompts} differ", same, check=True),
        Target("batched generation >= 3x one at a time", f"{speedup.median:.2f}x",
               speedup.median >= 3.0),
    ]
    res.notes.append(
        f"{finished} of {n_prompts} replies ended with <|im_end|> within {new_tokens} tokens "
        f"(mean {sum(replies) / len(replies):.0f} tokens); the batch runs until its longest "
        f"reply ends. Float32, {ctx.threads} thread(s).")
    return res
