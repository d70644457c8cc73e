"""Sampling: greedy, top-k, top-p, seeds, the KV cache against plain generation (GPT-2 and
Llama-style models), and the generation loop generate_tokens that generate and chat share."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from course_utils.model import GPT, GPTConfig
from course_utils.sampling import filter_logits, generate, generate_tokens, sample_next


def test_greedy_is_argmax():
    logits = torch.randn(4, 30)
    assert torch.equal(sample_next(logits, temperature=0).squeeze(1), logits.argmax(-1))


def test_top_k_never_leaves_the_top_k():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 50, generator=g).repeat(2000, 1)
    top5 = set(torch.topk(logits[0], 5).indices.tolist())
    draws = sample_next(logits, temperature=1.5, top_k=5, generator=g).flatten().tolist()
    assert set(draws) <= top5
    assert len(set(draws)) == 5  # and every one of them is used


def test_top_p_never_leaves_the_nucleus():
    probs = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05])
    logits = probs.log().repeat(3000, 1)
    g = torch.Generator().manual_seed(0)
    # 0.5 + 0.2 = 0.7 < 0.75, so the nucleus needs the third token as well
    draws = sample_next(logits, top_p=0.75, generator=g).flatten()
    assert set(draws.tolist()) == {0, 1, 2}
    kept = torch.softmax(filter_logits(probs.log()[None], top_p=0.75), -1)[0]
    torch.testing.assert_close(kept, torch.tensor([0.5, 0.2, 0.15, 0, 0]) / 0.85)
    # the most likely token survives even a tiny p
    assert torch.isfinite(filter_logits(probs.log()[None], top_p=1e-6)).sum() == 1


def test_bad_sampling_settings():
    with pytest.raises(ValueError, match="top_p"):
        filter_logits(torch.randn(1, 5), top_p=1.5)
    with pytest.raises(ValueError, match="top_k"):
        filter_logits(torch.randn(1, 5), top_k=0)
    with pytest.raises(ValueError, match="temperature"):
        sample_next(torch.randn(1, 5), temperature=-1)


SHAPE = dict(vocab_size=40, block_size=24, n_layer=2, n_head=2, n_embd=32)
CONFIGS = {"sdpa": GPTConfig(**SHAPE, attn_impl="sdpa"),
           "manual": GPTConfig(**SHAPE, attn_impl="manual"),
           # RoPE, RMSNorm, SwiGLU, grouped-query attention (one K/V head), untied head
           "llama": GPTConfig.llama(**{**SHAPE, "n_head": 4}, n_kv_head=1, tie_weights=False)}


@pytest.fixture(scope="module", params=list(CONFIGS))
def model(request):
    torch.manual_seed(0)
    return GPT(CONFIGS[request.param]).eval()


def test_kv_cache_greedy_equals_uncached(model):
    prompt = torch.randint(0, 40, (2, 5), generator=torch.Generator().manual_seed(1))
    # 40 new tokens run past block_size 24, exercising the cache rebuild as well
    cached = generate(model, prompt, 40, temperature=0, use_cache=True)
    plain = generate(model, prompt, 40, temperature=0, use_cache=False)
    assert torch.equal(cached, plain)


def test_kv_cache_seeded_sampling_equals_uncached(model):
    prompt = torch.randint(0, 40, (1, 3), generator=torch.Generator().manual_seed(2))
    a = generate(model, prompt, 30, temperature=1.0, top_k=10,
                 generator=torch.Generator().manual_seed(3), use_cache=True)
    b = generate(model, prompt, 30, temperature=1.0, top_k=10,
                 generator=torch.Generator().manual_seed(3), use_cache=False)
    assert torch.equal(a, b)


def test_cached_logits_equal_full_forward(model):
    idx = torch.randint(0, 40, (2, 12))
    full, _ = model(idx)
    caches = model.new_kv_caches(2)
    first, _ = model(idx[:, :7], kv_caches=caches)  # prefill 7, then 3 at once, then 1 by 1
    middle, _ = model(idx[:, 7:10], kv_caches=caches)
    last = [model(idx[:, t:t + 1], kv_caches=caches)[0] for t in (10, 11)]
    torch.testing.assert_close(torch.cat([first, middle, *last], 1), full, atol=1e-5, rtol=1e-4)


def test_same_seed_same_text(model):
    prompt = torch.zeros(1, 1, dtype=torch.long)
    runs = [generate(model, prompt, 20, generator=torch.Generator().manual_seed(s))
            for s in (5, 5, 6)]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


# --- top-p: the nucleus is the smallest top set with mass >= p ----------------------------

@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), p=st.floats(0.01, 1.0), vocab=st.integers(2, 60),
       scale=st.floats(0.1, 8.0))
def test_top_p_keeps_the_smallest_top_set_with_mass_at_least_p(seed, p, vocab, scale):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, vocab, generator=g, dtype=torch.float64) * scale
    kept = torch.isfinite(filter_logits(logits, top_p=p))
    probs = torch.softmax(logits, dim=-1)
    for row in range(3):
        pr, keep = probs[row], kept[row]
        mass = pr[keep].sum().item()
        assert mass >= p - 1e-9  # enough mass
        assert mass - pr[keep].min().item() < p + 1e-9  # minimal: one fewer is not enough
        if (~keep).any():  # a top set: nothing dropped is likelier than something kept
            assert pr[~keep].max() <= pr[keep].min()


def test_top_p_filters_each_row_on_its_own():
    peaked = torch.tensor([0.9, 0.05, 0.03, 0.02]).log()
    flat = torch.tensor([0.3, 0.3, 0.2, 0.2]).log()
    kept = torch.isfinite(filter_logits(torch.stack([peaked, flat]), top_p=0.8))
    assert kept.tolist() == [[True, False, False, False], [True, True, True, False]]
    # p = 1 keeps every token
    assert torch.isfinite(filter_logits(torch.stack([peaked, flat]), top_p=1.0)).all()


def test_top_k_larger_than_vocab_keeps_everything_and_input_is_untouched():
    logits = torch.randn(2, 7)
    before = logits.clone()
    torch.testing.assert_close(filter_logits(logits, top_k=100), logits)
    filter_logits(logits, top_k=2, top_p=0.5)
    assert torch.equal(logits, before)


def test_sampling_frequencies_follow_the_tempered_softmax():
    """20,000 draws per temperature: frequencies within ~5 standard errors of
    softmax(logits / T) computed by F.softmax."""
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])
    g = torch.Generator().manual_seed(0)
    for T in (0.5, 1.0, 2.0):
        draws = sample_next(logits.repeat(20_000, 1), temperature=T, generator=g).flatten()
        freq = torch.bincount(draws, minlength=6).double() / 20_000
        torch.testing.assert_close(freq, torch.softmax(logits.double() / T, -1),
                                   atol=0.018, rtol=0)


def test_generate_keeps_the_prompt_restores_train_mode_and_checks_input(model):
    prompt = torch.tensor([[3, 1, 4]])
    model.train()
    out = generate(model, prompt, 5, generator=torch.Generator().manual_seed(0))
    assert model.training  # put back in the mode it was in
    model.eval()
    assert out.shape == (1, 8) and torch.equal(out[:, :3], prompt)
    assert torch.equal(generate(model, prompt, 0), prompt)
    with pytest.raises(ValueError, match="at least one token"):
        generate(model, torch.zeros(1, 0, dtype=torch.long), 5)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, prompt, -1)


# --- generate_tokens: the one generation loop (generate and chat) -------------------------

def greedy_reference(model, idx, n):
    """Greedy decoding written out: the whole sequence through the model at every step."""
    for _ in range(n):
        logits, _ = model(idx)
        idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return idx


def test_generate_tokens_yields_one_b_by_1_tensor_per_step(model):
    prompt = torch.randint(0, 40, (2, 4), generator=torch.Generator().manual_seed(4))
    steps = list(generate_tokens(model, prompt, 10, temperature=0))
    assert len(steps) == 10 and all(t.shape == (2, 1) for t in steps)
    assert torch.equal(torch.cat([prompt, *steps], 1), greedy_reference(model, prompt, 10))


def test_generate_tokens_continues_a_caller_owned_cache(model):
    """A chat's pattern: the cache is updated in place and the last yielded token is not in
    it, so feeding that token next time continues the same sequence."""
    prompt = torch.randint(0, 40, (1, 5), generator=torch.Generator().manual_seed(5))
    caches = model.new_kv_caches(1)
    first = list(generate_tokens(model, prompt, 4, temperature=0, kv_caches=caches))
    assert caches[0].length == 5 + 4 - 1  # the prompt and all but the last token
    turn = torch.tensor([[7, 8]])  # the next "user turn", fed together with the last token
    second = list(generate_tokens(model, torch.cat([first[-1], turn], 1), 6, temperature=0,
                                  kv_caches=caches))
    assert caches[0].length == 5 + 4 + 2 + 6 - 1
    whole = torch.cat([prompt, *first, turn], 1)
    assert torch.equal(torch.cat([whole, *second], 1), greedy_reference(model, whole, 6))


def test_tokens_written_into_the_yielded_tensor_are_what_is_fed_next(model):
    """Forcing tokens (the calculator loop of notebook 15 feeds tool results this way): the
    caller overwrites a yielded token, and the loop goes on exactly as if the prompt had held
    that token, in one row of a batch while the other row is left alone."""
    prompt = torch.randint(0, 40, (2, 4), generator=torch.Generator().manual_seed(9))
    forced = {2: 11, 3: 12}  # step -> the token row 0 gets instead of the model's
    rows, steps = [[], []], generate_tokens(model, prompt, 8, temperature=0)
    for step, next_ids in enumerate(steps):
        if step in forced:
            next_ids[0, 0] = forced[step]
        rows[0].append(int(next_ids[0, 0]))
        rows[1].append(int(next_ids[1, 0]))
    assert [rows[0][s] for s in forced] == list(forced.values())
    for r in range(2):
        head = torch.cat([prompt[r:r + 1], torch.tensor([rows[r][:4]])], 1)
        assert torch.equal(torch.cat([head, torch.tensor([rows[r][4:]])], 1),
                           greedy_reference(model, head, 4))
    assert rows[1] == greedy_reference(model, prompt[1:], 8)[0, 4:].tolist()


def test_generate_tokens_stops_after_a_stop_token(model):
    prompt = torch.randint(0, 40, (1, 3), generator=torch.Generator().manual_seed(6))
    free = torch.cat(list(generate_tokens(model, prompt, 12, temperature=0)), 1)[0].tolist()
    stop = free[4]
    k = free.index(stop)  # the first time it comes up
    got = [t.item() for t in generate_tokens(model, prompt, 12, temperature=0,
                                             stop_ids=[stop, 10_000])]
    assert got == free[:k + 1]  # the stop token is yielded, then the loop ends


def test_generate_tokens_stops_a_batch_only_when_every_row_stops(model):
    prompt = torch.randint(0, 40, (2, 3), generator=torch.Generator().manual_seed(7))
    free = torch.cat(list(generate_tokens(model, prompt, 12, temperature=0)), 1)
    rows = [set(r) for r in free.tolist()]
    stops = list(rows[0] - rows[1]) or [0]  # tokens that never show up in row 1
    got = list(generate_tokens(model, prompt, 12, temperature=0, stop_ids=stops))
    assert len(got) == 12  # row 1 never stops, so neither does the batch


def test_generate_tokens_raises_when_the_cache_would_overflow(model):
    prompt = torch.randint(0, 40, (1, 20), generator=torch.Generator().manual_seed(8))
    got = []
    with pytest.raises(ValueError, match=r"sequence of 25 tokens is longer than block_size 24"):
        for t in generate_tokens(model, prompt, 10, temperature=0):
            got.append(t)
    # one token from the prompt, then one per cached step up to block_size 24
    assert len(got) == 24 - 20 + 1
    assert torch.equal(torch.cat([prompt, *got], 1), greedy_reference(model, prompt, 5))


def test_generate_tokens_checks_its_input_at_once_and_restores_the_mode(model):
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 40\)"):
        generate_tokens(model, torch.tensor([[1, 40]]), 3)  # raised before any iteration
    with pytest.raises(ValueError, match="top_p"):
        generate_tokens(model, torch.tensor([[1]]), 3, top_p=0.0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate_tokens(model, torch.tensor([[1]]), -1)
    model.train()
    try:
        steps = generate_tokens(model, torch.tensor([[1, 2]]), 5)
        next(steps)
        assert not model.training  # eval mode while generating
        steps.close()  # the caller stops early
        assert model.training
    finally:
        model.eval()


def test_ids_are_checked_once_per_generate_call(model, monkeypatch):
    """Not at every step: generate reads the prompt's ids back once (the model's own check
    runs on CPU tensors only, where it costs no device synchronisation)."""
    import course_utils.sampling as sampling

    calls = []
    real = sampling.check_ids
    monkeypatch.setattr(sampling, "check_ids", lambda *a: calls.append(1) or real(*a))
    prompt = torch.tensor([[1, 2, 3]])
    for use_cache in (True, False):  # 40 new tokens: past block_size 24 either way
        calls.clear()
        generate(model, prompt, 40, temperature=0, use_cache=use_cache)
        assert calls == [1]


@pytest.mark.parametrize("kind", ["gpt2-sdpa", "gpt2-manual", "llama-gqa-sdpa", "llama-manual"])
def test_left_padded_batches_generate_what_each_prompt_generates_alone(kind):
    """rollout pads prompts of different lengths on the left and generates them as one batch;
    greedy, every row equals generation from that prompt alone, token for token, and each row
    stops at its own stop token."""
    from course_utils.sampling import rollout

    impl = kind.rsplit("-", 1)[1]
    settings = dict(vocab_size=30, block_size=40, n_layer=2, n_head=4, n_embd=32, attn_impl=impl)
    config = (GPTConfig.llama(**settings, n_kv_head=2 if "gqa" in kind else None)
              if kind.startswith("llama") else GPTConfig(**settings))
    torch.manual_seed(3)
    model = GPT(config).eval()
    g = torch.Generator().manual_seed(4)
    prompts = [torch.randint(0, 30, (n,), generator=g).tolist() for n in (3, 9, 1, 6, 9)]
    alone = [generate(model, torch.tensor([p]), 12, temperature=0.0)[0, len(p):].tolist()
             for p in prompts]
    stop = alone[0][2]  # a token some rows write, at their own step
    out = rollout(model, prompts, 1, 12, stop, temperature=0.0, pad_id=0)
    for completion, reference in zip(out.completions, alone):
        if stop in reference:
            reference = reference[:reference.index(stop) + 1]
        assert completion == reference
    assert any(c[-1] == stop for c in out.completions)  # some rows stopped, at their own step
    assert len({len(c) for c in out.completions}) > 1
