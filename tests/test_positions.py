"""Rotary position embeddings (RoPE) against Hugging Face Llama's implementation, and the
property that makes them relative: a query-key score depends only on the offset m - n.

(The sinusoidal encodings of notebook 03 are tested in test_bigram.py.)
"""

import pytest
import torch

from course_utils.positions import apply_rope, rope_tables

TOL = dict(atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("head_size,theta", [(8, 10000.0), (64, 10000.0), (16, 500000.0)])
@pytest.mark.parametrize("past,T", [(0, 1), (0, 12), (7, 5), (1000, 3)])
def test_rope_equals_hugging_face_llama(head_size, theta, past, T):
    """Our tables and rotation against transformers' LlamaRotaryEmbedding and
    apply_rotary_pos_emb on the same queries and keys, at positions past .. past + T - 1."""
    llama = pytest.importorskip("transformers.models.llama.modeling_llama")
    from transformers import LlamaConfig

    n_head, n_kv_head = 4, 2
    config = LlamaConfig(hidden_size=head_size * n_head, num_attention_heads=n_head,
                         num_key_value_heads=n_kv_head, max_position_embeddings=past + T,
                         rope_theta=theta)
    g = torch.Generator().manual_seed(head_size + past)
    q = torch.randn(2, n_head, T, head_size, generator=g)
    k = torch.randn(2, n_kv_head, T, head_size, generator=g)
    positions = torch.arange(past, past + T)

    cos_ref, sin_ref = llama.LlamaRotaryEmbedding(config)(q, positions[None].expand(2, T))
    q_ref, k_ref = llama.apply_rotary_pos_emb(q, k, cos_ref, sin_ref)

    cos, sin = rope_tables(positions, head_size, theta)
    assert cos.shape == sin.shape == (T, head_size) and cos.dtype == torch.float32
    torch.testing.assert_close(cos, cos_ref[0], **TOL)
    torch.testing.assert_close(sin, sin_ref[0], **TOL)
    torch.testing.assert_close(apply_rope(q, cos, sin), q_ref, **TOL)
    torch.testing.assert_close(apply_rope(k, cos, sin), k_ref, **TOL)


def score(q, k, m, n, theta=10000.0):
    """q . k after rotating q to position m and k to position n (one head, float64)."""
    cos, sin = rope_tables(torch.tensor([m, n]), q.numel(), theta)
    qm = apply_rope(q.view(1, 1, 1, -1), cos[:1].double(), sin[:1].double())
    kn = apply_rope(k.view(1, 1, 1, -1), cos[1:].double(), sin[1:].double())
    return (qm * kn).sum().item()


def test_score_depends_only_on_the_offset():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(32, generator=g, dtype=torch.float64), \
        torch.randn(32, generator=g, dtype=torch.float64)
    for m, n in [(5, 2), (2, 5), (9, 9), (40, 3)]:
        base = score(q, k, m, n)
        for shift in (1, 17, 300):  # shift both positions: the same score
            assert score(q, k, m + shift, n + shift) == pytest.approx(base, rel=1e-5, abs=1e-5)
    # ... and a different offset gives a different score: positions do matter
    offsets = {round(score(q, k, d, 0), 6) for d in range(8)}
    assert len(offsets) == 8


def test_rotation_keeps_lengths_and_position_zero_is_the_identity():
    x = torch.randn(2, 3, 6, 16)
    cos, sin = rope_tables(torch.arange(6), 16)
    y = apply_rope(x, cos, sin)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(y[:, :, 0], x[:, :, 0])  # angle 0 at position 0
    assert not torch.allclose(y[:, :, 1:], x[:, :, 1:])


def test_rope_keeps_a_low_precision_dtype():
    x = torch.randn(1, 2, 4, 8, dtype=torch.bfloat16)
    cos, sin = rope_tables(torch.arange(4), 8)
    y = apply_rope(x, cos, sin)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), apply_rope(x.float(), cos, sin), atol=2e-2, rtol=2e-2)


def test_bad_rope_settings():
    with pytest.raises(ValueError, match="even head size"):
        rope_tables(torch.arange(4), 7)
    with pytest.raises(ValueError, match="rope_theta must be positive"):
        rope_tables(torch.arange(4), 8, theta=0.0)
