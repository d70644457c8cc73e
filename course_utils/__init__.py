"""The finished pieces of the course "GPT from scratch", one module per notebook topic.

The pieces each notebook builds (a piece imports only pieces of its own or earlier
notebooks; ``tests/test_architecture.py`` checks it):

- ``utils``: fast mode, device choice, seeding, atomic writes, progress bars, eval mode;
  ``diagram``: the architecture diagram (00)
- ``tokenization`` / ``bpe``: the tokenizer base class (save/load, special tokens),
  character, word and byte-level BPE tokenizers, GPT-2's tokenizer, Project Gutenberg
  clean-up (01); ``corpora``: the corpora registry, checksummed cache, downloads (01, 02)
- ``datasets``: train/val split, batches, right padding, token files, corpora as token ids
  (02)
- ``positions``: sinusoidal position encodings, RoPE (03, 11); ``bigram``: the bigram
  baseline (03)
- ``attention``: causal self-attention, grouped-query attention, the KV cache (04, 11)
- ``block``: LayerNorm, RMSNorm, the GELU and SwiGLU MLPs, the transformer block (05, 11)
- ``model``: the GPT and its settings ``GPTConfig``, with the Llama-style options;
  ``gpt2``: loading GPT-2 weights (06)
- ``optim``: AdamW and the warmup + cosine schedule (07)
- ``sampling``: greedy, temperature, top-k, top-p, cached generation, batched rollouts;
  ``linear``: an opt-in linear layer that spreads one-row products over the CPU cores (08)
- ``scaling``: parameter and FLOP counts, MFU, GPU peak FLOP/s; ``tinystories``:
  TinyStories to GPT-2 token files (10)
- ``pretrained``: SmolLM2-135M-Instruct from GGUF or the hub; ``chat``: the ChatML format
  and the chat session (11, 13)
- the report card (evaluation): ``logprobs``: per-token log-probabilities and masked means,
  the one place SFT, DPO, GRPO and evaluation read them; ``evaluation``: bits per byte,
  multiple choice by log-likelihood with a shared KV cache; ``mmlu``: MMLU's loader,
  stratified subsets, letter and cloze prompts; ``answers``: the final-number parser of
  graded generation, GSM8K; ``ifeval``: IFEval's instruction checkers, strict and loose;
  ``stats``: Wilson and bootstrap intervals, McNemar's test, paired comparisons
- ``sft``: conversations from Tiny Shakespeare, the masked ChatML encoding, padded batches,
  the chat SFT task (13)
- ``preference``: a readable reply reward, preference pairs sampled from the chat model,
  reward model, DPO and its task; ``instructions``: requests with instructions IFEval's
  checkers verify, pairs of a model's own replies to them, greedy IFEval replies, and the DPO
  task of SmolLM2 on them (14); ``lora``: LoRA; ``rl``: GRPO and its task, the arithmetic
  task, its answer and format rewards and evaluation; ``reasoning``: traces written by a
  program, self-consistency and best-of-n; ``tools``: the safe calculator and the generation
  loop that calls it (15)

The training machinery, one thing each (notebook 07 on):

- ``config``: ``TrainConfig`` (with the model's ``GPTConfig``), the rules of a resumed run
  and of a run started from another model; ``presets``: the presets
- ``checkpoint``: save, safe load, the model from a checkpoint, the model a fine-tuning run
  starts from; ``runs``: the run folder and its lock, the ways a run ends early
- ``tasks``: the interface between the loop and its data (``Task``), and language modelling
- ``train``: the one training loop

The front doors:

- ``cli``: ``python -m course_utils train | sample | chat | eval | serve | exercises``
- ``report``: the report card (``eval``): every task of a model in one Markdown table and a
  JSON file, cached per task, and stages compared item by item; ``eval_tasks``: its tasks
  (bits per byte, MMLU, GSM8K, IFEval, addition, chat-stop), each returning per-item
  outcomes (12)
- ``server``: the chat page and OpenAI's chat completions API (``serve``, notebook 13)
- ``check`` (a package: one module of checks per notebook, the grader of saved notebooks)
  and ``solutions``: the exercises' checks, hints and solutions
"""

__version__ = "0.1.0"

# The GitHub repository the notebooks' "Open in Colab" badges point at.
GITHUB_REPO = "gpt-from-scratch/gpt-course"
