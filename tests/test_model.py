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


def test_sparse_token_embedding_gives_the_dense_gradient():
    """wte keeps its lookup gradient sparse; with the tied head's gradient added, every
    parameter's gradient is dense and equals that of the same model with a dense lookup,
    also when two backward passes accumulate."""
    model = make()
    dense = make()
    dense.load_state_dict(model.state_dict())
    dense.transformer.wte.sparse = False
    assert model.transformer.wte.sparse
    idx = torch.randint(0, 50, (2, 4, 16), generator=torch.Generator().manual_seed(2))
    for m in (model, dense):
        for batch in idx:  # two micro-batches, gradients accumulate
            m(batch[:, :-1], batch[:, 1:])[1].backward()
    for (name, p), q in zip(model.named_parameters(), dense.parameters()):
        assert p.grad.layout == torch.strided, name
        torch.testing.assert_close(p.grad, q.grad, msg=name)


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
    sdpa = CausalSelfAttention(32, 4, 16, attn_impl="sdpa")
    manual = CausalSelfAttention(32, 4, 16, attn_impl="manual")
    manual.load_state_dict(sdpa.state_dict())
    x = torch.randn(3, 16, 32)
    torch.testing.assert_close(sdpa(x), manual(x), atol=1e-6, rtol=1e-5)


def test_attention_equals_torch_multihead_attention():
    torch.manual_seed(0)
    ours = CausalSelfAttention(32, 4, 16, attn_impl="manual")
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


def test_config_errors():
    with pytest.raises(ValueError, match=r"n_embd \(30\) must be divisible by n_head \(4\)"):
        GPTConfig(**{**SMALL, "n_embd": 30})
    with pytest.raises(ValueError, match="attn_impl"):
        GPTConfig(**{**SMALL, "attn_impl": "flash"})
    with pytest.raises(ValueError, match="n_layer"):
        GPTConfig(**{**SMALL, "n_layer": 0})


def test_sequence_longer_than_block_size_and_bad_ids():
    model = make()
    with pytest.raises(ValueError, match="longer than block_size 16"):
        model(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 50\)"):
        model(torch.full((1, 4), 50))
