"""The GPT: shapes, initial loss, learning, causality, attention paths, config errors."""

import math

import pytest
import torch
import torch.nn.functional as F

from course_utils.attention import CausalSelfAttention
from course_utils.model import GPT, GPTConfig

SMALL = dict(vocab_size=50, block_size=16, n_layer=2, n_head=4, n_embd=32)


def make(**kw):
    torch.manual_seed(0)
    return GPT(GPTConfig(**{**SMALL, **kw}))


def test_output_shapes():
    model = make()
    idx = torch.randint(0, 50, (3, 10))
    logits, loss = model(idx)
    assert logits.shape == (3, 10, 50) and loss is None
    logits, loss = model(idx, idx)
    assert loss.shape == () and torch.isfinite(loss)


def test_loss_matches_cross_entropy_and_starts_near_ln_vocab():
    model = make(vocab_size=65)
    idx = torch.randint(0, 65, (8, 16))
    targets = torch.randint(0, 65, (8, 16))
    logits, loss = model(idx, targets)
    torch.testing.assert_close(loss, F.cross_entropy(logits.reshape(-1, 65), targets.reshape(-1)))
    assert abs(loss.item() - math.log(65)) < 0.1


def test_weight_tying_and_param_count():
    model = make()
    assert model.lm_head.weight is model.transformer.wte.weight
    unique = {id(p): p.numel() for p in model.parameters()}
    assert model.num_params() == sum(unique.values())


def test_default_model_is_built_from_plain_torch_layers():
    """The teaching model is the one notebook 06 builds: exactly nn.Embedding (dense
    gradients) and nn.Linear, no speed-up subclasses (those are opt-in, course_utils.linear)."""
    model = make()
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    embeddings = [m for m in model.modules() if isinstance(m, torch.nn.Embedding)]
    assert len(linears) == 2 * 4 + 1 and len(embeddings) == 2  # 4 per block, lm_head
    assert all(type(m) is torch.nn.Linear for m in linears)
    assert all(type(m) is torch.nn.Embedding and not m.sparse for m in embeddings)
    idx = torch.randint(0, 50, (2, 9))
    model(idx[:, :-1], idx[:, 1:])[1].backward()
    assert all(p.grad.layout == torch.strided for p in model.parameters())


def test_untied_output_layer_has_its_own_weight_and_trains_with_torch_adamw():
    tied, untied = make(), make(tie_weights=False)
    assert untied.lm_head.weight is not untied.transformer.wte.weight
    assert untied.num_params() == tied.num_params() + 50 * 32
    assert untied.num_params(non_embedding=True) == tied.num_params(non_embedding=True)
    idx = torch.randint(0, 50, (4, 16), generator=torch.Generator().manual_seed(1))
    opt = torch.optim.AdamW(untied.parameters(), lr=1e-2)
    losses = []
    for _ in range(5):
        loss = untied(idx[:, :-1], idx[:, 1:])[1]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert untied.lm_head.weight.grad is not None and untied.transformer.wte.weight.grad is not None
    assert losses[-1] < losses[0]
    assert not torch.equal(untied.lm_head.weight, untied.transformer.wte.weight)


def test_forward_reads_nothing_back_from_a_non_cpu_device():
    """On a 'meta' device tensors have no values: reading one back (the id check, .item())
    raises. A forward pass and KV-cached decoding steps still run, so neither waits on the
    device; on the CPU the same ids are checked."""
    model = make().to("meta").eval()
    idx = torch.zeros(2, 5, dtype=torch.long, device="meta")
    logits, _ = model(idx)
    assert logits.shape == (2, 5, 50) and logits.device.type == "meta"
    caches = model.new_kv_caches(2)
    model(idx, kv_caches=caches)
    for _ in range(3):
        model(idx[:, :1], kv_caches=caches)
    assert caches[0].length == 8
    with pytest.raises(RuntimeError):  # what a read-back does on 'meta'
        int(idx.max())


def test_overfits_one_batch():
    model = make()
    idx = torch.randint(0, 50, (4, 16), generator=torch.Generator().manual_seed(1))
    x, y = idx[:, :-1], idx[:, 1:]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(300):
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05


@pytest.mark.parametrize("attn_impl", ["sdpa", "manual"])
def test_causality(attn_impl):
    model = make(attn_impl=attn_impl).eval()
    idx = torch.randint(0, 50, (2, 16))
    changed = idx.clone()
    changed[:, 9:] = torch.randint(0, 50, (2, 7))
    a, _ = model(idx)
    b, _ = model(changed)
    torch.testing.assert_close(a[:, :9], b[:, :9])
    assert not torch.allclose(a[:, 9:], b[:, 9:])


def test_attention_paths_equal():
    torch.manual_seed(0)
    sdpa = CausalSelfAttention(GPTConfig(n_embd=32, n_head=4, block_size=16, attn_impl="sdpa"))
    manual = CausalSelfAttention(GPTConfig(n_embd=32, n_head=4, block_size=16, attn_impl="manual"))
    manual.load_state_dict(sdpa.state_dict())
    x = torch.randn(3, 16, 32)
    torch.testing.assert_close(sdpa(x), manual(x), atol=1e-6, rtol=1e-5)


def test_attention_equals_torch_multihead_attention():
    torch.manual_seed(0)
    ours = CausalSelfAttention(GPTConfig(n_embd=32, n_head=4, block_size=16, attn_impl="manual"))
    ref = torch.nn.MultiheadAttention(32, 4, batch_first=True)
    with torch.no_grad():  # nn.Linear stores (out, in), like MultiheadAttention
        ref.in_proj_weight.copy_(ours.c_attn.weight)
        ref.in_proj_bias.copy_(ours.c_attn.bias)
        ref.out_proj.weight.copy_(ours.c_proj.weight)
        ref.out_proj.bias.copy_(ours.c_proj.bias)
    x = torch.randn(2, 16, 32)
    mask = torch.nn.Transformer.generate_square_subsequent_mask(16)
    expected, _ = ref(x, x, x, attn_mask=mask, need_weights=False)
    torch.testing.assert_close(ours(x), expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("change,message", [
    (dict(n_embd=30), r"n_embd \(30\) must be divisible by n_head \(4\)"),
    (dict(attn_impl="flash"), "attn_impl must be 'sdpa' or 'manual', got 'flash'"),
    (dict(n_layer=0), "n_layer must be a positive integer"),
    (dict(norm="batchnorm"), "norm must be 'layernorm' or 'rmsnorm'"),
    (dict(pos_emb="alibi"), "pos_emb must be 'learned' or 'rope'"),
    (dict(mlp="relu"), "mlp must be 'gelu' or 'swiglu'"),
    (dict(n_kv_head=3), r"n_kv_head \(3\) must be a positive divisor of n_head \(4\)"),
    (dict(n_kv_head=0), "n_kv_head"),
    (dict(mlp_hidden=0), "mlp_hidden must be a positive integer"),
    (dict(norm_eps=0.0), "norm_eps must be positive"),
    (dict(rope_theta=-1.0), "rope_theta must be positive"),
    (dict(pos_emb="rope", n_embd=36), "even head size"),  # 36 // 4 = 9
])
def test_config_errors(change, message):
    with pytest.raises(ValueError, match=message):
        GPTConfig(**{**SMALL, **change})


def test_llama_config_switches_the_modern_options_on_and_keeps_overrides():
    c = GPTConfig.llama(**SMALL, n_kv_head=2, tie_weights=False)
    assert (c.norm, c.pos_emb, c.mlp, c.bias) == ("rmsnorm", "rope", "swiglu", False)
    assert (c.n_kv_head, c.tie_weights) == (2, False)
    assert GPTConfig.llama(**SMALL, bias=True).bias
    model = GPT(c)
    assert "wpe" not in model.transformer  # no position table with rope


def test_sequence_longer_than_block_size_and_bad_ids():
    model = make()
    with pytest.raises(ValueError, match="longer than block_size 16"):
        model(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 50\); got min 0, max 50"):
        model(torch.tensor([[0, 50]]))
    with pytest.raises(ValueError, match=r"got min -1, max 3"):
        model(torch.tensor([[3, -1]]))
