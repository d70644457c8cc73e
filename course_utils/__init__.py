"""The finished pieces of the course "GPT from scratch", one module per notebook topic.

- ``data``: corpora registry, checksummed cache, downloads
- ``tokenization`` / ``bpe``: character and byte-level BPE tokenizers (notebook 01)
- ``datasets``: train/val split and batches (02)
- ``attention``: causal self-attention and the KV cache (04)
- ``block``: LayerNorm, MLP, transformer block (05)
- ``model``: the GPT (06)
- ``train``: training loop and checkpoints (07)
- ``sampling``: greedy, temperature, top-k, top-p, cached generation (08)
"""

__version__ = "0.1.0"

# The GitHub repository the notebooks' "Open in Colab" badges point at.
GITHUB_REPO = "gpt-from-scratch/gpt-course"
