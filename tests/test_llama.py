"""The Llama-style options of our GPT compute Llama: logits equal Hugging Face's
LlamaForCausalLM with our weights copied in (tied and untied output layer, with and without
grouped-query attention, both attention paths), and KV-cached greedy decoding equals
uncached decoding and transformers' generate."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from course_utils.model import GPT, GPTConfig, param_table  # noqa: E402
from course_utils.sampling import generate  # noqa: E402

TOL = dict(atol=1e-5, rtol=1e-5)  # float32


def ours_llama(seed=0, **fields) -> GPT:
    """A small Llama-style GPT with every parameter random (norm gains too), so that a
    skipped or swapped weight changes the logits."""
    fields = {**dict(vocab_size=97, block_size=32, n_layer=2, n_head=4, n_embd=64,
                     n_kv_head=2, mlp_hidden=96, rope_theta=500.0, norm_eps=1e-6), **fields}
    torch.manual_seed(seed)
    model = GPT(GPTConfig.llama(**fields)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def hf_twin(ours: GPT, attn: str = "eager"):
    """transformers' LlamaForCausalLM with the same config and our weights copied in."""
    c = ours.config
    hs = c.n_embd // c.n_head
    nkv = c.n_kv_head or c.n_head
    config = transformers.LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=c.n_embd, intermediate_size=ours.transformer.h[0]
        .mlp.c_fc.out_features, num_hidden_layers=c.n_layer, num_attention_heads=c.n_head,
        num_key_value_heads=nkv, max_position_embeddings=c.block_size, rms_norm_eps=c.norm_eps,
        rope_theta=c.rope_theta, tie_word_embeddings=c.tie_weights, attn_implementation=attn,
        bos_token_id=None, eos_token_id=None, pad_token_id=None)
    hf = transformers.LlamaForCausalLM(config).eval()
    theirs = dict(hf.named_parameters())
    copies = {"model.embed_tokens.weight": ours.transformer.wte.weight,
              "model.norm.weight": ours.transformer.ln_f.weight}
    if not c.tie_weights:
        copies["lm_head.weight"] = ours.lm_head.weight
    for i, block in enumerate(ours.transformer.h):
        p = f"model.layers.{i}."
        q, k, v = block.attn.c_attn.weight.split([c.n_head * hs, nkv * hs, nkv * hs])
        copies.update({
            p + "self_attn.q_proj.weight": q, p + "self_attn.k_proj.weight": k,
            p + "self_attn.v_proj.weight": v,
            p + "self_attn.o_proj.weight": block.attn.c_proj.weight,
            p + "mlp.gate_proj.weight": block.mlp.c_gate.weight,
            p + "mlp.up_proj.weight": block.mlp.c_fc.weight,
            p + "mlp.down_proj.weight": block.mlp.c_proj.weight,
            p + "input_layernorm.weight": block.ln_1.weight,
            p + "post_attention_layernorm.weight": block.ln_2.weight})
    assert copies.keys() == theirs.keys()  # every parameter of theirs gets one of ours
    with torch.no_grad():
        for name, value in copies.items():
            theirs[name].copy_(value)
    return hf


@pytest.mark.parametrize("fields,attn", [
    ({}, "eager"),                                       # GQA (2 K/V heads for 4), tied
    (dict(tie_weights=False), "eager"),                  # untied output layer
    (dict(n_kv_head=None, attn_impl="manual"), "eager"),  # one K/V head per query head
    (dict(n_kv_head=1, tie_weights=False), "sdpa"),       # multi-query attention
    (dict(n_head=8, n_kv_head=4, attn_impl="manual", mlp_hidden=None), "sdpa"),
])
def test_logits_equal_hugging_face_llama(fields, attn):
    ours = ours_llama(**fields)
    assert "wpe" not in ours.transformer  # positions come from RoPE alone
    assert (ours.lm_head.weight is ours.transformer.wte.weight) == ours.config.tie_weights
    hf = hf_twin(ours, attn)
    idx = torch.randint(0, 97, (3, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(idx).logits
        logits, _ = ours(idx)
    torch.testing.assert_close(logits, expected, **TOL)
    assert sum(p.numel() for p in ours.parameters()) == hf.num_parameters()
    assert sum(n for _, n in param_table(ours)) == hf.num_parameters()


@pytest.mark.parametrize("n_kv_head", [None, 2, 1])
def test_cached_greedy_decoding_equals_uncached_and_hugging_face(n_kv_head):
    ours = ours_llama(n_kv_head=n_kv_head, tie_weights=False)
    hf = hf_twin(ours, "sdpa")
    prompt = torch.randint(0, 97, (2, 5), generator=torch.Generator().manual_seed(2))
    n = 32 - 5  # up to block_size
    with torch.no_grad():
        cached = generate(ours, prompt, n, temperature=0, use_cache=True)
        uncached = generate(ours, prompt, n, temperature=0, use_cache=False)
        expected = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n,
                               min_new_tokens=n, do_sample=False, pad_token_id=0)
        # each cached step's logits against Hugging Face's full forward pass
        caches = ours.new_kv_caches(2)
        steps = [ours(cached[:, :5], kv_caches=caches)[0]]
        steps += [ours(cached[:, t:t + 1], kv_caches=caches)[0] for t in range(5, 32)]
        full = hf(cached).logits
    assert torch.equal(cached, uncached)
    assert torch.equal(cached, expected)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, **TOL)
    # past block_size the cache is rebuilt at every step: still the same as no cache
    with torch.no_grad():
        assert torch.equal(generate(ours, prompt, 40, temperature=0, use_cache=True),
                           generate(ours, prompt, 40, temperature=0, use_cache=False))


def test_llama_model_trains():
    ours = ours_llama(tie_weights=False)
    ours.train()
    idx = torch.randint(0, 97, (4, 17), generator=torch.Generator().manual_seed(3))
    opt = torch.optim.AdamW(ours.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        _, loss = ours(idx[:, :-1], idx[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
