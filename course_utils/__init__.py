"""The finished pieces of the course "GPT from scratch", one module per notebook topic.

- ``utils``: fast mode, device choice, seeding, atomic writes, progress bars;
  ``diagram``: the architecture diagram (00)
- ``tokenization`` / ``bpe``: the tokenizer base class (save/load, special tokens),
  character, word and byte-level BPE tokenizers, GPT-2's tokenizer, Project Gutenberg
  clean-up (01)
- ``corpora``: the corpora registry, checksummed cache, downloads; ``datasets``: train/val
  split, batches, token files (02)
- ``positions``: sinusoidal position encodings, RoPE (03, 11); ``bigram``: the bigram
  baseline (03)
- ``attention``: causal self-attention, grouped-query attention, the KV cache (04, 11)
- ``block``: LayerNorm, RMSNorm, the GELU and SwiGLU MLPs, the transformer block (05, 11)
- ``model``: the GPT, with the Llama-style options; ``gpt2``: loading GPT-2 weights (06)
- ``optim``: AdamW; ``train``: training loop, safe checkpoints; ``presets``: presets (07)
- ``sampling``: greedy, temperature, top-k, top-p, cached generation; ``linear``: an opt-in
  linear layer that spreads one-row products over the CPU cores (08)
- ``scaling``: parameter and FLOP counts, MFU, GPU peak FLOP/s; ``tinystories``:
  TinyStories to GPT-2 token files (10)
- ``pretrained``: SmolLM2-135M-Instruct from GGUF or the hub; ``chat``: the ChatML format
  and the chat session (11, 12)
- ``sft``: conversations from Tiny Shakespeare, the masked ChatML encoding, padded batches
  (12)
- ``preference``: sequence log-probabilities, a readable reply reward, preference pairs
  sampled from the chat model, reward model, DPO (13); ``lora``: LoRA;
  ``rl``: GRPO, the addition task, its reward and evaluation (14)
- ``server``: the chat page and OpenAI's chat completions API (``serve``) (12)
- ``check`` and ``solutions``: the exercises' checks, hints and solutions
- ``cli``: ``python -m course_utils train | sample | chat | serve | exercises``
"""

__version__ = "0.1.0"

# The GitHub repository the notebooks' "Open in Colab" badges point at.
GITHUB_REPO = "gpt-from-scratch/gpt-course"
