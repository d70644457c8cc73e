"""The finished pieces of the course "GPT from scratch", one module per notebook topic.

- ``utils``: fast mode, device choice, seeding; ``diagram``: the architecture diagram (00)
- ``tokenization`` / ``bpe``: character, word and byte-level BPE tokenizers, GPT-2's
  tokenizer, Project Gutenberg clean-up (01)
- ``corpora``: the corpora registry, checksummed cache, downloads; ``datasets``: train/val
  split, batches, token files (02)
- ``positions``: sinusoidal position encodings; ``bigram``: the bigram baseline (03)
- ``attention``: causal self-attention and the KV cache (04)
- ``block``: LayerNorm, MLP, transformer block (05)
- ``model``: the GPT; ``gpt2``: loading Hugging Face / OpenAI GPT-2 weights (06)
- ``optim``: AdamW; ``train``: training loop, checkpoints; ``presets``: training presets (07)
- ``sampling``: greedy, temperature, top-k, top-p, cached generation; ``linear``: the
  linear layer that spreads one-row products over the CPU cores (08)
- ``scaling``: parameter and FLOP counts, MFU, GPU peak FLOP/s; ``tinystories``:
  TinyStories to GPT-2 token files (10)
- ``cli``: ``python -m course_utils train|sample``
"""

__version__ = "0.1.0"

# The GitHub repository the notebooks' "Open in Colab" badges point at.
GITHUB_REPO = "gpt-from-scratch/gpt-course"
