"""Section ``tokenizer``: BPE training time and GPT-2 encoding throughput.

- Training, on Tiny Shakespeare with GPT-2's pre-tokenization regex, to a vocabulary of
  ``vocab_size`` tokens (256 bytes + merges): ``course_utils.bpe.train_bpe`` against
  Hugging Face ``tokenizers`` (``BpeTrainer`` with the ``ByteLevel`` pre-tokenizer and its
  256-byte initial alphabet, i.e. the same number of merges), interleaved; and
  ``train_bpe`` against the plain ``train_bpe_naive`` on exactly the same text and vocabulary
  size (naive is slow: in quick mode it sees a prefix of the text), which must learn the
  same merges.
- Encoding Tiny Shakespeare with GPT-2's tokenizer: ours (``course_utils.bpe.gpt2_tokenizer``)
  with its chunk cache empty (a fresh instance each round; building it is not timed) and
  warm (the same text again), against tiktoken's ``gpt2`` encoding (``encode_ordinary``).
  The ids must be identical.
"""

from __future__ import annotations

import os
import time

from .harness import Context, SectionResult, Stat, Table, Target, interleave, stopwatch, timed

TITLE = "4. Tokenizer: BPE training and GPT-2 encoding"


def hf_train_bpe(text: str, vocab_size: int):
    """A byte-level BPE tokenizer trained by Hugging Face ``tokenizers`` (GPT-2 regex)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=0, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=[])
    tok.train_from_iterator([text], trainer=trainer)
    return tok


def bpe_training(ctx: Context, res: SectionResult, text: str, label: str) -> None:
    from course_utils.bpe import train_bpe, train_bpe_naive

    vocab_sizes = ctx.pick(full=[1024, 4096], quick=[1024, 4096], tiny=[300, 1024])
    table = Table("BPE training time (s)", ["text", "vocab_size", "side", "seconds",
                                            "speed: ours / side"])
    train_bpe(text[:10_000], 300), hf_train_bpe(text[:10_000], 300)  # warm-up, untimed
    for v in vocab_sizes:
        ctx.log(f"tokenizer: BPE training to {v} tokens, ours vs tokenizers")
        times = interleave({"ours": stopwatch(lambda v=v: train_bpe(text, v)),
                            "tokenizers": stopwatch(lambda v=v: hf_train_bpe(text, v))},
                           ctx.repeats, warmup=0)
        ours, hf = Stat(times["ours"], "s"), Stat(times["tokenizers"], "s")
        speed = Stat([b / a for a, b in zip(ours.samples, hf.samples)], "x")
        res.figure(f"bpe_train/{v}/ours_s", ours)
        res.figure(f"bpe_train/{v}/tokenizers_s", hf)
        res.figure(f"bpe_train/{v}/ours_speed_over_tokenizers", speed)
        table.add(label, v, "ours (train_bpe)", ours.fmt(), "-")
        table.add(label, v, "tokenizers (Rust)", hf.fmt(), speed.fmt())
        res.targets.append(Target(f"BPE training to {v}: ours within 10x of tokenizers",
                                  f"{speed.median:.2f}x", speed.median >= 0.1))

    # naive vs fast on the same text and vocabulary size
    n_chars, v = ctx.pick(full=(len(text), 1024), quick=(10_000, 1024), tiny=(2_000, 300))
    part = text[:n_chars]
    what = ("all" if n_chars == len(text) else f"first {n_chars:,} chars") + " of the text"
    ctx.log(f"tokenizer: naive vs fast BPE, {what}, vocab {v}")
    t_naive, merges_naive = timed(lambda: train_bpe_naive(part, v))  # once: it is slow
    fast_runs = [timed(lambda: train_bpe(part, v)) for _ in range(ctx.repeats)]
    same = all(list(merges_naive.items()) == list(tok.merges.items()) for _, tok in fast_runs)
    naive, fast = Stat([t_naive], "s"), Stat([t for t, _ in fast_runs], "s")
    speedup = Stat([t_naive / fast.median], "x")
    res.figure(f"bpe_naive/{v}/chars", n_chars)
    res.figure(f"bpe_naive/{v}/merges_learned", len(merges_naive))
    res.figure(f"bpe_naive/{v}/naive_s", naive)
    res.figure(f"bpe_naive/{v}/fast_s", fast)
    res.figure(f"bpe_naive/{v}/fast_speed_over_naive", speedup)
    part_label = f"{what} ({len(part.encode('utf-8')) / 1e6:.3f} MB)"
    table.add(part_label, v, "ours (train_bpe)", fast.fmt(), "-")
    table.add(part_label, v, "ours naive (train_bpe_naive)", naive.fmt(), speedup.fmt())
    res.tables.append(table)
    res.targets.append(Target(f"BPE training to {v} ({what}): train_bpe >= 20x naive",
                              f"{speedup.median:.1f}x", speedup.median >= 20))
    res.targets.append(Target(f"BPE to {v} ({what}): train_bpe learns the naive merges",
                              "same merges" if same else "different merges", same, check=True))
    res.notes.append(
        f"Naive vs fast: {what} ({label}) to vocab_size {v} ({len(merges_naive)} merges "
        f"learned); naive runs once, fast {ctx.repeats} time(s), the speed-up is naive's time "
        f"over fast's median. tokenizers parallelises with "
        f"Rayon threads (RAYON_NUM_THREADS={os.environ.get('RAYON_NUM_THREADS', 'unset')}); "
        f"ours is single-threaded Python.")


def encoding(ctx: Context, res: SectionResult, text: str) -> None:
    from course_utils.bpe import gpt2_tokenizer, tiktoken_gpt2

    enc = tiktoken_gpt2()
    warm = gpt2_tokenizer()
    ids = warm.encode(text)  # also fills the warm instance's cache
    same = ids == enc.encode_ordinary(text)

    def cold() -> float:
        tok = gpt2_tokenizer()  # building it (reading the 50k merges) is not timed
        t0 = time.perf_counter()
        tok.encode(text)
        return time.perf_counter() - t0

    times = interleave({"ours, cold cache": cold,
                        "ours, warm cache": stopwatch(lambda: warm.encode(text)),
                        "tiktoken": stopwatch(lambda: enc.encode_ordinary(text))},
                       ctx.repeats, warmup=0)
    build_s, _ = timed(gpt2_tokenizer)
    mb = len(text.encode("utf-8")) / 1e6
    stats = {name: Stat([mb / t for t in ts], "MB/s") for name, ts in times.items()}
    table = Table(f"GPT-2 encoding of {mb:.2f} MB ({len(ids):,} tokens)",
                  ["side", "MB/s", "ours / tiktoken"])
    for name, st in stats.items():
        r = Stat([a / b for a, b in zip(st.samples, stats["tiktoken"].samples)], "x")
        res.figure(f"encode/{name}/MB_per_s", st)
        if name != "tiktoken":
            res.figure(f"encode/{name}/over_tiktoken", r)
            res.targets.append(Target(f"GPT-2 encoding, {name}: within 10x of tiktoken",
                                      f"{r.median:.2f}x", r.median >= 0.1))
        table.add(name, st.fmt(), "-" if name == "tiktoken" else r.fmt())
    res.tables.append(table)
    res.figure("encode/same_ids_as_tiktoken", same)
    res.figure("encode/build_tokenizer_s", build_s)
    res.targets.append(Target("GPT-2 encoding: same ids as tiktoken",
                              "identical" if same else "different", same, check=True))
    res.notes.append(
        f"Encoding: {ctx.repeats} interleaved round(s); building our GPT-2 tokenizer from "
        f"encoder.json and vocab.bpe takes {build_s:.2f} s (not in the figures). tiktoken's "
        f"`encode_ordinary` runs in Rust on one thread.")


def run(ctx: Context) -> SectionResult:
    from course_utils.corpora import load_text

    res = SectionResult("tokenizer", TITLE)
    text = load_text("tinyshakespeare")
    text = ctx.pick(full=text, quick=text, tiny=text[:50_000])
    label = "Tiny Shakespeare" if ctx.mode != "tiny" else "first 50,000 chars of Tiny Shakespeare"
    label += f" ({len(text.encode('utf-8')) / 1e6:.2f} MB)"
    bpe_training(ctx, res, text, label)
    ctx.log("tokenizer: GPT-2 encoding, ours vs tiktoken")
    encoding(ctx, res, text)
    return res
