"""Our GPT computes GPT-2: Hugging Face GPT2LMHeadModel logits with copied weights, loader
errors, and from_pretrained from local files (no network)."""

import dataclasses
import importlib
import re
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

from course_utils.gpt2 import (  # noqa: E402
    HubUnavailableError,
    config_from_hf,
    from_pretrained,
    gpt_from_hf,
    load_hf_state_dict,
)
from course_utils.model import GPT, param_table  # noqa: E402

SMALL = dict(n_layer=2, n_head=4, n_embd=64, n_positions=32, vocab_size=100)


def hf_gpt2(seed=0, attn="eager", **kw):
    """A small random Hugging Face GPT-2, every parameter (biases, LayerNorm gains) random so
    that a skipped or mis-transposed weight changes the logits."""
    kw = {**SMALL, **kw}
    config = transformers.GPT2Config(
        **kw, activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=kw["vocab_size"] - 1, eos_token_id=kw["vocab_size"] - 1,
        attn_implementation=attn)
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def assert_same_logits(ours: GPT, hf, seed=1):
    c = hf.config
    idx = torch.randint(0, c.vocab_size, (3, c.n_positions), generator=torch.Generator()
                        .manual_seed(seed))
    with torch.no_grad():
        expected = hf(idx).logits
        logits, _ = ours(idx)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kw,attn", [
    ({}, "eager"),
    ({}, "sdpa"),
    (dict(n_layer=3, n_head=2, n_embd=48, n_positions=16, vocab_size=77), "eager"),
    (dict(n_layer=1, n_head=8, n_embd=32, n_positions=24, vocab_size=50), "sdpa"),
    (dict(layer_norm_epsilon=1e-2), "eager"),  # a LayerNorm epsilon that matters: norm_eps
])
def test_logits_equal_hugging_face(kw, attn):
    hf = hf_gpt2(attn=attn, **kw)
    ours = gpt_from_hf(hf)
    assert not ours.training
    assert ours.config.n_head == hf.config.n_head and ours.config.bias
    assert_same_logits(ours, hf)


@pytest.mark.parametrize("parallel", [False, True], ids=["plain", "use_parallel_linear"])
def test_cached_greedy_decoding_equals_hugging_face(threads, split_calls, parallel):
    """Decoding one token at a time with the KV cache: the same tokens as Hugging Face's
    generate, and each step's logits equal to its full forward pass; for the plain model,
    and for the opt-in ParallelLinear variant on 2 threads, whose split path the weights
    are large enough to take."""
    from course_utils.linear import use_parallel_linear
    from course_utils.sampling import generate

    hf = hf_gpt2(n_layer=2, n_head=4, n_embd=256, n_positions=48, vocab_size=1031)
    ours = gpt_from_hf(hf)
    if parallel:
        threads(2)  # the split path needs more than one thread
        use_parallel_linear(ours)
    prompt = torch.randint(0, 1031, (1, 5), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = hf.generate(prompt, attention_mask=torch.ones_like(prompt),
                               max_new_tokens=40, min_new_tokens=40, do_sample=False,
                               pad_token_id=0)
        got = generate(ours, prompt, 40, temperature=0.0)
        caches = ours.new_kv_caches(1)
        stepwise = [ours(got[:, i:i + 1], kv_caches=caches)[0] for i in range(got.size(1))]
        full = hf(got).logits
    assert set(split_calls) == ({2} if parallel else set())
    assert torch.equal(got, expected)
    torch.testing.assert_close(torch.cat(stepwise, dim=1), full, atol=1e-4, rtol=1e-4)


def test_param_table_matches_hugging_face_parameter_groups():
    hf = hf_gpt2(n_layer=3)
    groups = {"token embedding (wte)": r"transformer\.wte\.",
              "position embedding (wpe)": r"transformer\.wpe\.",
              "attention (all blocks)": r"\.h\.\d+\.attn\.", "MLP (all blocks)": r"\.h\.\d+\.mlp\.",
              "LayerNorms (all blocks)": r"\.h\.\d+\.ln_[12]\.",
              "final LayerNorm (ln_f)": r"transformer\.ln_f\."}
    expected = {row: sum(p.numel() for n, p in hf.named_parameters() if re.search(pattern, n))
                for row, pattern in groups.items()}
    expected["LM head (tied to wte)"] = 0  # HF ties it too: named_parameters lists it once
    table = param_table(gpt_from_hf(hf))
    assert dict(table) == expected
    assert sum(c for _, c in table) == sum(p.numel() for p in hf.parameters())


def test_config_from_hf_maps_fields_and_rejects_other_variants():
    hf_config = hf_gpt2().config
    c = config_from_hf(hf_config)
    assert (c.vocab_size, c.block_size, c.n_layer, c.n_head, c.n_embd) == (
        hf_config.vocab_size, hf_config.n_positions, hf_config.n_layer, hf_config.n_head,
        hf_config.n_embd)
    exact_gelu = transformers.GPT2Config(**SMALL, activation_function="gelu")
    with pytest.raises(ValueError, match="activation_function='gelu'"):
        config_from_hf(exact_gelu)
    wide = transformers.GPT2Config(**SMALL, activation_function="gelu_new", n_inner=100)
    with pytest.raises(ValueError, match="n_inner=100"):
        config_from_hf(wide)


def test_mismatched_state_dicts_give_a_clear_error_and_copy_nothing():
    hf = hf_gpt2()
    sd = hf.state_dict()
    torch.manual_seed(0)
    model = GPT(config_from_hf(hf.config))
    before = {k: v.clone() for k, v in model.state_dict().items()}

    deeper = GPT(config_from_hf(hf_gpt2(n_layer=3).config))
    with pytest.raises(ValueError, match=r"missing keys \(12\): transformer\.h\.2\."):
        load_hf_state_dict(deeper, sd)

    extra = dict(sd, **{"transformer.h.0.attn.c_attn.lora": torch.zeros(2)})
    with pytest.raises(ValueError, match=r"unexpected keys \(1\): .*lora"):
        load_hf_state_dict(model, extra)

    wrong = dict(sd, **{"transformer.wpe.weight": torch.zeros(16, 64)})
    with pytest.raises(ValueError, match=r"mis-shaped keys \(1\): transformer\.wpe\.weight: "
                                         r"ours \(32, 64\), theirs \(16, 64\)"):
        load_hf_state_dict(model, wrong)

    untied = dict(sd, **{"lm_head.weight": torch.randn(100, 64)})
    with pytest.raises(ValueError, match="ties them"):
        load_hf_state_dict(model, untied)

    untied_model = GPT(dataclasses.replace(config_from_hf(hf.config), tie_weights=False))
    with pytest.raises(ValueError, match="tie_weights=False"):
        load_hf_state_dict(untied_model, sd)

    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed although loading failed"


def released_layout(hf) -> dict:
    """The hub's GPT-2 files: no 'transformer.' prefix, no lm_head, mask buffers included."""
    sd = {k.removeprefix("transformer."): v.contiguous() for k, v in hf.state_dict().items()
          if k != "lm_head.weight"}
    T = hf.config.n_positions
    for i in range(hf.config.n_layer):
        sd[f"h.{i}.attn.bias"] = torch.ones(T, T).tril().view(1, 1, T, T)
    return sd


def test_from_pretrained_loads_a_local_safetensors_file(tmp_path):
    hf = hf_gpt2(seed=3)
    path = tmp_path / "model.safetensors"
    safetensors_torch.save_file(released_layout(hf), str(path))
    ours = from_pretrained("gpt2", path=path, config=config_from_hf(hf.config))
    assert_same_logits(ours, hf)


def test_from_pretrained_reads_the_hugging_face_cache_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hf = hf_gpt2(seed=4, n_head=8)
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--gpt2"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    safetensors_torch.save_file(released_layout(hf), str(snapshot / "model.safetensors"))
    ours = from_pretrained("gpt2", cache_dir=tmp_path, config=config_from_hf(hf.config))
    assert_same_logits(ours, hf)


def test_from_pretrained_offline_without_cache_fails_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubUnavailableError, match=r"unreachable.*gpt2-medium/model\.safetensors"
                                                  r".*path="):
        from_pretrained("gpt2-medium", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown GPT-2 model 'gpt3'"):
        from_pretrained("gpt3", cache_dir=tmp_path)


def test_course_utils_works_without_the_hf_extra(monkeypatch):
    """course_utils.gpt2 imports without transformers/huggingface_hub/safetensors; only
    loading weights needs them, and then the error names the extra to install."""
    import course_utils

    for name in ("transformers", "huggingface_hub", "safetensors", "safetensors.torch"):
        monkeypatch.setitem(sys.modules, name, None)  # `import name` now raises ImportError
    monkeypatch.delitem(sys.modules, "course_utils.gpt2")
    monkeypatch.setattr(course_utils, "gpt2", None, raising=False)
    fresh = importlib.import_module("course_utils.gpt2")
    with pytest.raises(ImportError, match=r"course-utils\[hf\]"):
        fresh.from_pretrained("gpt2")
