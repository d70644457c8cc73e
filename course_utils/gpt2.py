"""Our GPT is GPT-2: load Hugging Face GPT-2 weights into :class:`~course_utils.model.GPT`
(notebook 06).

GPT-2 (Radford et al., 2019, "Language Models are Unsupervised Multitask Learners") was
released by OpenAI as TensorFlow checkpoints; Hugging Face ``transformers`` converted them to
PyTorch and hosts them on the hub (``gpt2``, ``gpt2-medium``, ``gpt2-large``, ``gpt2-xl``).
Our module names match theirs, so loading is a copy, key by key, with two details:

- Hugging Face's GPT-2 uses ``Conv1D`` layers, which store their weight as ``(in, out)``;
  ``nn.Linear`` stores ``(out, in)``. The four such weights per block (``attn.c_attn``,
  ``attn.c_proj``, ``mlp.c_fc``, ``mlp.c_proj``) are transposed on the way in.
- Some files also hold the causal mask as a buffer (``attn.bias``, ``attn.masked_bias``);
  these are not parameters and are skipped. The released files leave out the
  ``transformer.`` prefix and the tied ``lm_head.weight``; both spellings are accepted.

``transformers``, ``huggingface_hub`` and ``safetensors`` are optional (the ``hf`` extra:
``pip install "course-utils[hf]"``); they are imported only inside the functions that need
them.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import torch

from .model import GPT, GPTConfig

# Hugging Face Conv1D weights, stored (in, out): transpose to nn.Linear's (out, in).
CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight",
                  "mlp.c_proj.weight")
# Non-parameter buffers some GPT-2 files carry (the causal mask); skipped.
HF_BUFFERS = (".attn.bias", ".attn.masked_bias")

# The four released sizes (Radford et al., 2019, table 2; Hugging Face config.json files).
GPT2_CONFIGS: dict[str, dict] = {
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),  # 124M parameters
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),  # 350M
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),  # 774M
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),  # 1558M
}
GPT2_VOCAB_SIZE = 50257
GPT2_BLOCK_SIZE = 1024

_HF_INSTALL = 'pip install "course-utils[hf]"  (or: pip install transformers safetensors)'


class HubUnavailableError(RuntimeError):
    """The Hugging Face hub could not be reached and the file is not in the local cache."""


def _require(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"{module} is needed to load GPT-2 weights: {_HF_INSTALL}") from e


def config_from_hf(hf_config) -> GPTConfig:
    """Our :class:`GPTConfig` for a Hugging Face ``GPT2Config``.

    ``n_positions`` becomes ``block_size``; the three dropout rates of Hugging Face
    (``embd_pdrop``, ``attn_pdrop``, ``resid_pdrop``) become our single ``dropout``
    (``resid_pdrop``; they are all 0.1 in the released models and only matter in training).

    ``layer_norm_epsilon`` becomes ``norm_eps``.

    Raises ``ValueError`` for a GPT-2 variant our model does not compute: an activation other
    than the tanh-approximated GELU (``gelu_new``), an MLP width other than ``4 * n_embd``,
    or attention scaled differently from ``1/sqrt(head_size)``.
    """
    c = hf_config
    problems = []
    if c.activation_function not in ("gelu_new", "gelu_pytorch_tanh"):
        problems.append(f"activation_function={c.activation_function!r} (ours is the tanh "
                        f"GELU, 'gelu_new')")
    if getattr(c, "n_inner", None) not in (None, 4 * c.n_embd):
        problems.append(f"n_inner={c.n_inner} (ours is 4 * n_embd = {4 * c.n_embd})")
    if not getattr(c, "scale_attn_weights", True):
        problems.append("scale_attn_weights=False (ours divides by sqrt(head_size))")
    if getattr(c, "scale_attn_by_inverse_layer_idx", False):
        problems.append("scale_attn_by_inverse_layer_idx=True (ours does not)")
    if getattr(c, "add_cross_attention", False):
        problems.append("add_cross_attention=True (ours is decoder-only)")
    if problems:
        raise ValueError("this GPT-2 config is not the architecture course_utils.model.GPT "
                         "computes: " + "; ".join(problems))
    return GPTConfig(vocab_size=c.vocab_size, block_size=c.n_positions, n_layer=c.n_layer,
                     n_head=c.n_head, n_embd=c.n_embd, dropout=float(c.resid_pdrop), bias=True,
                     norm_eps=float(c.layer_norm_epsilon))


def _short(keys, limit: int = 8) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_hf_state_dict(model: GPT, state_dict: dict) -> GPT:
    """Copy Hugging Face GPT-2 weights into ``model`` in place and return it.

    ``state_dict`` maps names to tensors, as from ``GPT2LMHeadModel.state_dict()`` (names
    start with ``transformer.``) or from the hub's ``model.safetensors`` (names without the
    prefix, e.g. ``h.0.attn.c_attn.weight``). Conv1D weights ``(in, out)`` are transposed to
    our ``(out, in)``. The causal-mask buffers ``attn.bias``/``attn.masked_bias`` are
    ignored. ``lm_head.weight``, when present, must equal ``wte.weight``: our head is tied.

    Raises ``ValueError`` listing every missing, unexpected and mis-shaped key (nothing is
    copied then), when ``lm_head.weight`` is not tied to ``wte.weight``, or when ``model``
    has an untied output layer (``tie_weights=False``).
    """
    if model.lm_head.weight is not model.transformer.wte.weight:
        raise ValueError("GPT-2 ties its output layer to the token embedding, but this GPT has "
                         "tie_weights=False: build it with the checkpoint's config "
                         "(see config_from_hf)")
    ours = model.state_dict()  # tensors that share memory with the parameters
    expected = {k: v.shape for k, v in ours.items() if k != "lm_head.weight"}
    theirs: dict[str, torch.Tensor] = {}
    lm_head = None
    for key, value in state_dict.items():
        if key.endswith(HF_BUFFERS):
            continue
        if key == "lm_head.weight":
            lm_head = value
            continue
        if not key.startswith("transformer."):
            key = "transformer." + key
        if key.endswith(CONV1D_WEIGHTS):
            value = value.t()
        theirs[key] = value

    missing = expected.keys() - theirs.keys()
    unexpected = theirs.keys() - expected.keys()
    misshaped = [f"{k}: ours {tuple(expected[k])}, theirs {tuple(theirs[k].shape)}"
                 + (" (after transposing Conv1D)" if k.endswith(CONV1D_WEIGHTS) else "")
                 for k in sorted(expected.keys() & theirs.keys())
                 if theirs[k].shape != expected[k]]
    if missing or unexpected or misshaped:
        lines = ["the state dict does not fit this GPT "
                 f"(n_layer={model.config.n_layer}, n_embd={model.config.n_embd}, "
                 f"vocab_size={model.config.vocab_size}, block_size={model.config.block_size}):"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {_short(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {_short(unexpected)}")
        if misshaped:
            lines.append(f"  mis-shaped keys ({len(misshaped)}): " + "; ".join(misshaped[:8]))
        lines.append("  build the GPT with the checkpoint's config (see config_from_hf)")
        raise ValueError("\n".join(lines))
    wte = theirs["transformer.wte.weight"]
    if lm_head is not None and not torch.equal(lm_head.to(wte.dtype), wte):
        raise ValueError("lm_head.weight differs from wte.weight, but our GPT ties them "
                         "(weight tying): this checkpoint was trained with an untied head")
    with torch.no_grad():
        for key, value in theirs.items():
            ours[key].copy_(value)
    return model


def gpt_from_hf(hf_model) -> GPT:
    """A :class:`GPT` equal to a Hugging Face ``GPT2LMHeadModel`` (same config and weights),
    in eval mode. Raises ``ValueError`` as :func:`config_from_hf` does."""
    model = GPT(config_from_hf(hf_model.config))
    load_hf_state_dict(model, hf_model.state_dict())
    return model.eval()


def _offline_env() -> bool:
    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return any(f.strip().upper() in {"1", "ON", "YES", "TRUE"} for f in flags)


def hub_file(name: str, filename: str, cache_dir, timeout: float) -> Path:
    """Path of ``filename`` from hub repo ``name``: from the local Hugging Face cache, else
    downloaded. Fails within about ``timeout`` seconds when the hub is unreachable."""
    hub = _require("huggingface_hub")
    url = f"https://huggingface.co/{name}/resolve/main/{filename}"
    how = (f"Download {url} on a machine with internet access and pass "
           f"from_pretrained({name!r}, path='.../{filename}'), or fill the Hugging Face cache "
           f"there (python -c \"from huggingface_hub import hf_hub_download; "
           f"hf_hub_download('{name}', '{filename}')\") and copy ~/.cache/huggingface over.")
    try:  # the cache first: works offline, no network request
        return Path(hub.hf_hub_download(name, filename, cache_dir=cache_dir,
                                        local_files_only=True))
    except Exception:  # not cached (the error type varies across huggingface_hub versions)
        pass
    if _offline_env():
        raise HubUnavailableError(f"the Hugging Face hub is unreachable (HF_HUB_OFFLINE is set) "
                                  f"and {name}/{filename} is not in the local cache. {how}")
    # huggingface_hub retries a failed connection for ~20 s; one quick probe fails faster.
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    if not (os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")):
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
        except OSError as e:
            raise HubUnavailableError(f"the Hugging Face hub ({host}) is unreachable ({e}). "
                                      f"{how}") from e
    try:
        return Path(hub.hf_hub_download(name, filename, cache_dir=cache_dir,
                                        etag_timeout=timeout))
    except Exception as e:  # report any hub failure the same way
        raise HubUnavailableError(f"could not download {name}/{filename} from the Hugging "
                                  f"Face hub ({type(e).__name__}: {e}). {how}") from e


def from_pretrained(name: str = "gpt2", *, path: str | Path | None = None,
                    cache_dir: str | Path | None = None, config: GPTConfig | None = None,
                    timeout: float = 5.0) -> GPT:
    """OpenAI's released GPT-2 weights in our :class:`GPT`, in eval mode.

    ``name`` is one of ``gpt2`` (124M parameters), ``gpt2-medium``, ``gpt2-large``,
    ``gpt2-xl``. The weights are the hub's ``model.safetensors`` for that name, taken from the
    Hugging Face cache (``cache_dir``, default ``~/.cache/huggingface/hub``) or downloaded
    into it; ``path`` loads a ``.safetensors`` file you downloaded yourself instead.
    ``config`` overrides the shape implied by ``name`` (for other GPT-2-shaped checkpoints).

    Raises:
        ValueError: unknown ``name`` (and no ``config``), or weights that do not fit.
        HubUnavailableError: the file is not cached and the hub cannot be reached (offline,
            or ``HF_HUB_OFFLINE=1``); raised within about ``timeout`` seconds. The message
            says how to get the file by hand.
        ImportError: ``huggingface_hub``/``safetensors`` are not installed.
    """
    if config is None:
        if name not in GPT2_CONFIGS:
            raise ValueError(f"unknown GPT-2 model {name!r}; choose one of "
                             f"{', '.join(GPT2_CONFIGS)} (or pass config=GPTConfig(...))")
        config = GPTConfig(vocab_size=GPT2_VOCAB_SIZE, block_size=GPT2_BLOCK_SIZE,
                           dropout=0.0, bias=True, **GPT2_CONFIGS[name])
    if path is None:
        path = hub_file(name, "model.safetensors", cache_dir, timeout)
    safetensors_torch = _require("safetensors.torch")
    state_dict = safetensors_torch.load_file(str(path))
    model = GPT(config)
    load_hf_state_dict(model, state_dict)
    return model.eval()
