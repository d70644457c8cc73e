"""Section ``sampling``: greedy generation speed, batch 1.

Four sides generate the same number of new tokens from the same prompt with identical
weights: ``course_utils.sampling.generate`` on the course's plain GPT with the KV cache, the
same without it (the model re-reads the whole context at every step), the opt-in fast
variant (``course_utils.linear.use_parallel_linear``, notebook 08) with the KV cache, and
``transformers``' ``GPT2LMHeadModel.generate(do_sample=False, use_cache=True)``. The weights
are a random initialisation of the Hugging Face model, copied into ours with
``course_utils.gpt2.gpt_from_hf``; all four must produce the same tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .harness import (
    Context,
    SectionResult,
    Stat,
    Table,
    Target,
    first_difference,
    interleave,
    keeping,
    ratio,
    same_tokens,
)
from .training import GPT2_SMALL, GPT2_TOY, Shape, build_hf, char_shape

TITLE = "3. Sampling speed (greedy, batch 1)"


@dataclass
class Case:
    shape: Shape
    prompt_len: int
    new_tokens: int
    no_cache_repeats: int | None = None  # rounds without the cache (None: ctx.repeats)


def _ours(model, prompt, n, use_cache):
    from course_utils.sampling import generate

    return generate(model, prompt, n, temperature=0.0, use_cache=use_cache)


def _hf(hf, prompt, n):
    return hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n,
                       min_new_tokens=n, do_sample=False, use_cache=True)


PLAIN, FAST, HF, NO_CACHE = ("ours, KV cache", "ours + ParallelLinear, KV cache", "transformers",
                              "ours, no cache")


def measure_case(ctx: Context, case: Case) -> dict:
    """Tokens/s of the four sides and where (if anywhere) their tokens differ."""
    from course_utils.gpt2 import gpt_from_hf
    from course_utils.linear import use_parallel_linear

    s, n = case.shape, case.new_tokens
    torch.manual_seed(0)
    hf = build_hf(s).eval()
    hf.generation_config.eos_token_id = None  # never stop early
    hf.generation_config.pad_token_id = 0
    ours = gpt_from_hf(hf).eval()  # the plain model, as notebook 06 builds it
    fast = use_parallel_linear(gpt_from_hf(hf).eval())  # its own copy of the weights
    prompt = torch.randint(s.vocab_size, (1, case.prompt_len),
                           generator=torch.Generator().manual_seed(1))
    outputs: dict[str, torch.Tensor] = {}

    with torch.no_grad():
        warm = min(n, 8)  # warm-up: a short generation on each side
        for model in (ours, fast):
            _ours(model, prompt, warm, True)
        _hf(hf, prompt, warm), _ours(ours, prompt, warm, False)
        times = interleave({PLAIN: keeping(outputs, "cache", lambda: _ours(ours, prompt, n, True)),
                            FAST: keeping(outputs, "fast", lambda: _ours(fast, prompt, n, True)),
                            HF: keeping(outputs, "hf", lambda: _hf(hf, prompt, n))},
                           ctx.repeats, warmup=0)
        no_cache = keeping(outputs, "no cache", lambda: _ours(ours, prompt, n, False))
        times[NO_CACHE] = [no_cache() for _ in range(case.no_cache_repeats or ctx.repeats)]
    stats = {name: Stat([n / t for t in ts], "tokens/s") for name, ts in times.items()}
    cache, nc = stats[PLAIN], stats[NO_CACHE]
    cache_vs_nc = Stat([a / b for a, b in zip(cache.samples, nc.samples)], "x")
    return {"stats": stats, "cache_vs_no_cache": cache_vs_nc,
            "ours_vs_hf": ratio(cache, stats[HF]),
            "fast_vs_hf": ratio(stats[FAST], stats[HF]),
            "fast_vs_plain": ratio(stats[FAST], cache),
            "diff_hf": first_difference(outputs["cache"], outputs["hf"]),
            "diff_no_cache": first_difference(outputs["cache"], outputs["no cache"]),
            "diff_fast": first_difference(outputs["cache"], outputs["fast"]),
            "attn": hf.config._attn_implementation}


def run(ctx: Context) -> SectionResult:
    res = SectionResult("sampling", TITLE)
    char = char_shape(batch_size=1)
    char_new = char.block_size - 1  # prompt of 1 token: fill the whole context
    cases = ctx.pick(
        full=[Case(char, 1, char_new), Case(GPT2_SMALL, 4, 500, no_cache_repeats=1)],
        quick=[Case(char, 1, char_new), Case(GPT2_SMALL, 4, 32)],
        tiny=[Case(char, 1, char_new), Case(GPT2_TOY, 4, 24)],
    )
    table = Table("generated tokens/s, batch 1, greedy",
                  ["shape", "prompt + new", "side", "tokens/s", "ours cached / side"])
    for case in cases:
        s, n = case.shape, case.new_tokens
        key = s.name.split(" ")[0]
        ctx.log(f"sampling: {s.name}, {n} new tokens")
        r = measure_case(ctx, case)
        for name, st in r["stats"].items():
            res.figure(f"{key}/{name}/tokens_per_s", st)
        res.figure(f"{key}/cache_over_no_cache", r["cache_vs_no_cache"])
        res.figure(f"{key}/ours_over_transformers", r["ours_vs_hf"])
        res.figure(f"{key}/parallel_over_transformers", r["fast_vs_hf"])
        res.figure(f"{key}/parallel_over_plain", r["fast_vs_plain"])
        res.figure(f"{key}/first_difference_transformers", r["diff_hf"])
        res.figure(f"{key}/first_difference_no_cache", r["diff_no_cache"])
        res.figure(f"{key}/first_difference_parallel", r["diff_fast"])
        lengths = f"{case.prompt_len} + {n}"
        st = r["stats"]
        table.add(s.name, lengths, PLAIN, st[PLAIN].fmt(), "-")
        table.add(s.name, lengths, FAST, st[FAST].fmt(),
                  ratio(st[PLAIN], st[FAST]).fmt())
        table.add(s.name, lengths, HF, st[HF].fmt(), r["ours_vs_hf"].fmt())
        table.add(s.name, lengths, NO_CACHE, st[NO_CACHE].fmt(), r["cache_vs_no_cache"].fmt())
        res.targets += [
            Target(f"{s.name}: same greedy tokens as transformers",
                   same_tokens(r["diff_hf"], case.prompt_len), r["diff_hf"] is None, check=True),
            Target(f"{s.name}: same tokens with and without the KV cache",
                   same_tokens(r["diff_no_cache"], case.prompt_len), r["diff_no_cache"] is None,
                   check=True),
            Target(f"{s.name}: same tokens with use_parallel_linear",
                   same_tokens(r["diff_fast"], case.prompt_len), r["diff_fast"] is None,
                   check=True),
            Target(f"{s.name}: ours (plain, KV cache) >= transformers generate",
                   f"{r['ours_vs_hf'].median:.2f}x", r["ours_vs_hf"].median >= 1.0),
            Target(f"{s.name}: ours + ParallelLinear (KV cache) >= transformers generate",
                   f"{r['fast_vs_hf'].median:.2f}x", r["fast_vs_hf"].median >= 1.0),
        ]
        if s is GPT2_SMALL:
            m = r["cache_vs_no_cache"].median
            res.targets.append(Target(f"{s.name}, {n} new tokens: KV cache >= 5x no cache",
                                      f"{m:.1f}x", m >= 5.0))
        res.notes.append(
            f"{s.name}: transformers attention `{r['attn']}`; {ctx.repeats} interleaved "
            f"round(s) of the three cached sides, {case.no_cache_repeats or ctx.repeats} "
            f"without the cache, after a warm-up generation of 8 tokens on each side.")
    res.tables.append(table)
    res.notes.append("Weights: `GPT2LMHeadModel` random init (seed 0), copied into ours with "
                     "`course_utils.gpt2.gpt_from_hf`; prompt: random token ids. `ours` is the "
                     "course's plain GPT (`nn.Linear` layers, what the notebooks build); `ours "
                     "+ ParallelLinear` is a second copy after `course_utils.linear."
                     "use_parallel_linear` (the opt-in decoding speed-up of notebook 08). "
                     "`ours cached / side` is a speed ratio of the plain model's KV-cached "
                     "generation over each side: > 1 means the plain model is faster.")
    return res
