"""LoRA (notebook 15): the course GPT with our adapters computes what Hugging Face peft's LoRA
computes with the same adapter weights (GPT-2 and Llama-style blocks); merging changes no
output; frozen weights take no gradient; the parameter and optimizer-state report agrees with
counts made here and with a real torch.optim.AdamW's state."""

import copy

import pytest
import torch
import torch.nn as nn

from course_utils.lora import (
    DEFAULT_TARGETS,
    LoRALinear,
    apply_lora,
    lora_parameters,
    merge_lora,
    parameter_report,
)
from course_utils.model import GPT, GPTConfig

SHAPE = dict(vocab_size=32, block_size=16, n_layer=2, n_head=4, n_embd=64)
CONFIGS = {
    "gpt2": lambda: GPTConfig(**SHAPE),
    "llama": lambda: GPTConfig.llama(**SHAPE, n_kv_head=2),  # RMSNorm, RoPE, SwiGLU, GQA
}


def random_gpt(kind="gpt2", seed=0):
    """A small GPT with every parameter random (biases and norm gains too)."""
    torch.manual_seed(seed)
    model = GPT(CONFIGS[kind]())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def randomise_adapters(model, seed=1):
    """LoRA's B starts at zero (no change at all); give A and B random values instead."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in lora_parameters(model):
            p.copy_(0.1 * torch.randn_like(p))


def with_peft(model, targets, r, alpha):
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(target_modules=list(targets), r=r, lora_alpha=alpha,
                             lora_dropout=0.0)
    return peft.inject_adapter_in_model(config, copy.deepcopy(model))


def linear_names(model, targets):
    return [n for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and n.rsplit(".", 1)[-1] in targets]


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_outputs_and_gradients_equal_peft_lora(kind):
    r, alpha = 4, 12
    base = random_gpt(kind)
    names = linear_names(base, DEFAULT_TARGETS)
    theirs = with_peft(base, DEFAULT_TARGETS, r, alpha)
    ours = apply_lora(copy.deepcopy(base), r=r, alpha=alpha)
    randomise_adapters(ours)
    with torch.no_grad():
        for name in names:
            mine, peft_layer = ours.get_submodule(name), theirs.get_submodule(name)
            peft_layer.lora_A["default"].weight.copy_(mine.lora_A)
            peft_layer.lora_B["default"].weight.copy_(mine.lora_B)
    # the same layers are adapted, and the same parameters train
    assert sorted(n for n, m in ours.named_modules() if isinstance(m, LoRALinear)) == sorted(names)
    peft_trainable = sum(p.numel() for p in theirs.parameters() if p.requires_grad)
    assert parameter_report(ours)["trainable"] == peft_trainable

    torch.manual_seed(2)
    idx = torch.randint(0, SHAPE["vocab_size"], (3, 12))
    targets = torch.randint(0, SHAPE["vocab_size"], (3, 12))
    logits, loss = ours(idx, targets)
    peft_logits, peft_loss = theirs(idx, targets)
    torch.testing.assert_close(logits, peft_logits, rtol=0, atol=1e-6)
    assert not torch.allclose(logits, base(idx)[0], atol=1e-3)  # the adapters do something
    loss.backward()
    peft_loss.backward()
    for name in names:
        mine, peft_layer = ours.get_submodule(name), theirs.get_submodule(name)
        torch.testing.assert_close(mine.lora_A.grad, peft_layer.lora_A["default"].weight.grad)
        torch.testing.assert_close(mine.lora_B.grad, peft_layer.lora_B["default"].weight.grad)


def test_initialisation_like_peft():
    """B starts at zero (the model is unchanged); A is Kaiming-uniform like peft's: values in
    [-1/sqrt(in_features), 1/sqrt(in_features)], spread like peft's own draws."""
    base = random_gpt()
    ours = apply_lora(copy.deepcopy(base), r=8)
    theirs = with_peft(base, DEFAULT_TARGETS, 8, 16)
    idx = torch.randint(0, SHAPE["vocab_size"], (2, 10))
    torch.testing.assert_close(ours(idx)[0], base(idx)[0], rtol=0, atol=0)

    def scaled_a(weights):  # A * sqrt(in_features): uniform on [-1, 1] for Kaiming-uniform
        return torch.cat([(w * w.size(1) ** 0.5).flatten() for w in weights])

    names = linear_names(base, DEFAULT_TARGETS)
    mine = scaled_a([ours.get_submodule(n).lora_A for n in names])
    peft_a = scaled_a([theirs.get_submodule(n).lora_A["default"].weight for n in names])
    assert all((ours.get_submodule(n).lora_B == 0).all() for n in names)
    assert mine.abs().max() <= 1 and peft_a.abs().max() <= 1
    assert mine.numel() == peft_a.numel() > 5000
    assert mine.std().item() == pytest.approx(peft_a.std().item(), rel=0.05)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_merged_equals_unmerged(kind):
    model = apply_lora(random_gpt(kind), r=4, alpha=8)
    randomise_adapters(model)
    idx = torch.randint(0, SHAPE["vocab_size"], (2, 14))
    with torch.no_grad():
        before = model(idx)[0]
        merge_lora(model)
        after = model(idx)[0]
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    for name in linear_names(random_gpt(kind), DEFAULT_TARGETS):
        assert type(model.get_submodule(name)) is nn.Linear


def test_frozen_weights_get_no_gradient_and_do_not_move():
    base = random_gpt()
    model = apply_lora(copy.deepcopy(base), r=4, alpha=8)
    adapters = {id(p) for p in lora_parameters(model)}
    assert {id(p) for p in model.parameters() if p.requires_grad} == adapters
    opt = torch.optim.AdamW(lora_parameters(model), lr=1e-2)
    torch.manual_seed(3)
    idx = torch.randint(0, SHAPE["vocab_size"], (4, 12))
    losses = []
    for _ in range(5):
        _, loss = model(idx[:, :-1], idx[:, 1:])
        opt.zero_grad()
        loss.backward()
        if not losses:  # first step: only the adapters have gradients, B's is not zero
            for p in model.parameters():
                assert (p.grad is not None) == (id(p) in adapters)
            assert all(m.lora_B.grad.abs().sum() > 0
                       for m in model.modules() if isinstance(m, LoRALinear))
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    # our wrapper keeps each original layer as ".base": strip that to compare with the start
    frozen = {n.replace(".base.", "."): p for n, p in model.named_parameters() if "lora_" not in n}
    start = dict(base.named_parameters())
    assert frozen.keys() == start.keys()
    for name, p in frozen.items():
        assert torch.equal(p, start[name]), f"{name} moved"


def test_a_lone_lora_linear_freezes_its_base_layer():
    layer = LoRALinear(nn.Linear(8, 6), r=2, alpha=4)
    assert [n for n, p in layer.named_parameters() if p.requires_grad] == ["lora_A", "lora_B"]
    layer(torch.randn(3, 8)).sum().backward()
    assert layer.base.weight.grad is None and layer.base.bias.grad is None


def test_parameter_report_against_counts_and_adamw_state():
    r = 4
    base = random_gpt()
    full = sum(p.numel() for p in base.parameters())
    adapters = sum(r * (m.in_features + m.out_features) for n, m in base.named_modules()
                   if isinstance(m, nn.Linear) and n.rsplit(".", 1)[-1] in DEFAULT_TARGETS)
    model = apply_lora(copy.deepcopy(base), r=r)
    report = parameter_report(model)
    assert report["trainable"] == adapters
    assert report["total"] == full + adapters

    def adamw_state_bytes(params):  # what a real AdamW keeps, after one step
        params = list(params)
        opt = torch.optim.AdamW(params)
        for p in params:
            p.grad = torch.zeros_like(p)
        opt.step()
        return sum(t.numel() * t.element_size() for state in opt.state.values()
                   for key, t in state.items() if key != "step")

    assert report["adamw_state_bytes"] == adamw_state_bytes(lora_parameters(model))
    assert report["adamw_state_bytes_full"] == adamw_state_bytes(model.parameters())
    assert parameter_report(base)["trainable"] == full  # full fine-tuning trains everything


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match=r"named any of \('q_proj',\).*'c_attn'"):
        apply_lora(random_gpt(), target_modules=("q_proj",))
    with pytest.raises(ValueError, match="tied to another module"):
        apply_lora(random_gpt(), target_modules=("lm_head",))
    with pytest.raises(ValueError, match="rank r must be a positive integer"):
        apply_lora(random_gpt(), r=0)
    with pytest.raises(ValueError, match="alpha must be > 0"):
        apply_lora(random_gpt(), alpha=0)
    with pytest.raises(ValueError, match="dropout must be in"):
        apply_lora(random_gpt(), dropout=1.0)
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        apply_lora(apply_lora(random_gpt()))
    with pytest.raises(TypeError, match="wraps an nn.Linear"):
        LoRALinear(nn.Embedding(4, 4))
