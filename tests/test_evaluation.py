"""Bits per byte and multiple-choice scoring: by hand on tiny random GPTs, one scale across
tokenizers, batched option scoring (shared KV cache) equal to one-by-one scoring, and equal to
Hugging Face's LlamaForCausalLM on SmolLM2's weights."""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from course_utils.bpe import train_bpe
from course_utils.evaluation import (
    ChoiceResults,
    MultipleChoice,
    OptionScores,
    PrefixCache,
    bits_per_byte,
    evaluate_choices,
    score_options,
    text_loss,
)
from course_utils.logprobs import token_logprobs
from course_utils.model import GPT, GPTConfig
from course_utils.tokenization import CharTokenizer, WordTokenizer

TEXT = "Café au lait, s'il vous plaît! 東京 is far. " * 3  # multi-byte characters


def tiny_gpt(vocab_size, block_size=64, seed=0, **kw):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=2, n_head=2,
                         n_embd=32, **kw)).eval()


def hand_nats(model, ids, context_start=None):
    """-log p of ids[1:], each token from a forward pass of its own context (ids[start:t])."""
    total = 0.0
    for t in range(1, len(ids)):
        start = 0 if context_start is None else context_start(t)
        with torch.no_grad():
            logits, _ = model(torch.tensor([ids[start:t]]))
        total -= F.log_softmax(logits[0, -1], dim=-1)[ids[t]].item()
    return total


def test_bits_per_byte_by_hand_on_a_tiny_gpt():
    tok = CharTokenizer.from_text(TEXT)
    model = tiny_gpt(tok.vocab_size, block_size=256)
    ids = tok.encode(TEXT)
    n_bytes = len(TEXT.encode("utf-8")) - len(TEXT[0].encode("utf-8"))  # "C" is context
    expected = hand_nats(model, ids) / (math.log(2) * n_bytes)
    assert bits_per_byte(model, tok, TEXT) == pytest.approx(expected, rel=1e-5)
    loss = text_loss(model, tok, TEXT)
    assert (loss.tokens, loss.n_bytes) == (len(ids) - 1, n_bytes)
    assert loss.bits_per_token == pytest.approx(loss.nats / math.log(2) / (len(ids) - 1))


def test_bits_per_byte_with_a_bos_token_scores_every_byte():
    tok = CharTokenizer.from_text(TEXT).with_special_tokens(["<|endoftext|>"])
    bos = tok.special_tokens["<|endoftext|>"]
    model = tiny_gpt(tok.vocab_size, block_size=256)
    ids = [bos] + tok.encode(TEXT)
    expected = hand_nats(model, ids) / (math.log(2) * len(TEXT.encode("utf-8")))
    assert bits_per_byte(model, tok, TEXT, bos_id=bos) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("block_size,stride", [(8, 3), (8, 7), (6, 1), (16, 8)])
def test_long_text_windows_by_hand(block_size, stride):
    tok = CharTokenizer.from_text(TEXT)
    model = tiny_gpt(tok.vocab_size, block_size=block_size, seed=1)
    ids = tok.encode(TEXT[:45])

    def window_start(t):  # the first window (starts 0, stride, 2*stride ...) that holds t
        k = 0
        while k * stride + block_size <= t:
            k += 1
        assert k == 0 or t - k * stride >= block_size - stride  # the promised context
        return k * stride

    expected = hand_nats(model, ids, window_start)
    assert text_loss(model, tok, TEXT[:45], stride=stride).nats == pytest.approx(expected,
                                                                                  rel=1e-5)


class Uniform(nn.Module):
    """A 'model' that gives every token the same probability: logits all zero."""

    def __init__(self, vocab_size, block_size=32):
        super().__init__()
        self.config = GPTConfig(vocab_size=vocab_size, block_size=block_size)
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, idx, targets=None, kv_caches=None):
        return torch.zeros(*idx.shape, self.config.vocab_size) + 0 * self.w, None


class PairTokenizer:
    """Every pair of characters of an alphabet is one token (K * K tokens)."""

    def __init__(self, alphabet):
        self.alphabet = alphabet
        self.vocab_size = len(alphabet) ** 2

    def encode_ordinary(self, text):
        k = len(self.alphabet)
        return [self.alphabet.index(a) * k + self.alphabet.index(b)
                for a, b in zip(text[::2], text[1::2])]

    def decode(self, ids):
        k = len(self.alphabet)
        return "".join(self.alphabet[i // k] + self.alphabet[i % k] for i in ids)


def test_one_scale_across_tokenizers():
    """Uniform over K characters and uniform over the K*K pairs of characters are the same
    distribution over texts: both give log2(K) bits per byte, though one token carries
    log2(K) bits and the other 2 log2(K). A BPE tokenizer's uniform model: log2(V) bits per
    token times tokens per byte."""
    alphabet = "abcdefgh"  # K = 8: 3 bits per character
    g = torch.Generator().manual_seed(0)
    text = "".join(alphabet[i] for i in torch.randint(0, 8, (400,), generator=g).tolist())
    chars = CharTokenizer(list(alphabet))
    pairs = PairTokenizer(alphabet)
    by_char = text_loss(Uniform(8), chars, text, stride=16)
    by_pair = text_loss(Uniform(64), pairs, text, stride=16)
    assert (by_char.bits_per_token, by_pair.bits_per_token) == pytest.approx((3.0, 6.0))
    assert by_char.bits_per_byte == pytest.approx(3.0) and by_pair.bits_per_byte == \
        pytest.approx(3.0)
    bpe = train_bpe(TEXT * 4, 300)
    ids = bpe.encode(TEXT)
    first = len(bpe.decode_bytes(ids[:1]))
    expected = (len(ids) - 1) * math.log2(bpe.vocab_size) / (len(TEXT.encode()) - first)
    assert bits_per_byte(Uniform(bpe.vocab_size, 256), bpe, TEXT) == pytest.approx(expected)


def test_bits_per_byte_errors():
    tok = CharTokenizer.from_text(TEXT)
    model = tiny_gpt(tok.vocab_size, block_size=16)
    with pytest.raises(ValueError, match="stride"):
        bits_per_byte(model, tok, TEXT, stride=16)
    with pytest.raises(ValueError, match="two tokens"):
        bits_per_byte(model, tok, "C")
    words = WordTokenizer.from_text("the cat sat on the mat")
    with pytest.raises(ValueError, match="lossless"):
        bits_per_byte(tiny_gpt(words.vocab_size), words, "the  cat sat")


# ------------------------------------------------------------------------ multiple choice
CONFIGS = {
    "gpt2": {},
    "llama-gqa": dict(norm="rmsnorm", pos_emb="rope", mlp="swiglu", bias=False, n_kv_head=1),
}


def one_by_one(model, context, option):
    """The option's summed log-probability from a full forward pass of context + option."""
    with torch.no_grad():
        logp = token_logprobs(model, torch.tensor([context + option]))[0]
    return logp[len(context):].sum().item()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_batched_options_equal_one_by_one(name):
    model = tiny_gpt(50, block_size=32, seed=2, **CONFIGS[name])
    g = torch.Generator().manual_seed(3)
    context = torch.randint(0, 50, (9,), generator=g).tolist()
    options = [[7], [3, 4, 5, 6, 7], [8, 1], torch.randint(0, 50, (12,), generator=g).tolist()]
    got = score_options(model, context, options)
    assert got.n_tokens == (1, 5, 2, 12)
    for lp, option in zip(got.logprobs, options):
        assert lp == pytest.approx(one_by_one(model, context, option), abs=1e-4)
    # all options of one token: the context alone answers
    single = score_options(model, context, [[1], [2]])
    assert single.logprobs == pytest.approx([one_by_one(model, context, [i]) for i in (1, 2)],
                                            abs=1e-4)
    assert not model.training


@pytest.mark.parametrize("name", list(CONFIGS))
def test_prefix_cache_reuses_the_shared_start_and_changes_nothing(name):
    model = tiny_gpt(50, block_size=40, seed=5, **CONFIGS[name])
    g = torch.Generator().manual_seed(6)
    shots = torch.randint(0, 50, (15,), generator=g).tolist()
    contexts = [shots + torch.randint(0, 50, (k,), generator=g).tolist() for k in (4, 7, 1)]
    contexts += [contexts[2][:-1] + [contexts[2][-1]], [9, 9] + shots]  # the same; none shared
    options = [[1, 2, 3], [4], [5, 6]]
    prefix = PrefixCache()
    for context in contexts:
        shared = prefix.shared(context)
        got = score_options(model, context, options, prefix)
        assert prefix.tokens == context and shared <= len(context)
        alone = score_options(model, context, options)
        assert got.logprobs == pytest.approx(alone.logprobs, abs=1e-4)
        assert got.logprobs == pytest.approx([one_by_one(model, context, o) for o in options],
                                             abs=1e-4)
    assert PrefixCache().shared([1, 2]) == 0


def test_sum_and_mean_choices_by_hand():
    s = OptionScores((-2.0, -3.0, -9.0), (1, 3, 10))
    assert s.scores("sum") == [-2.0, -3.0, -9.0] and s.choice("sum") == 0
    assert s.scores("mean") == pytest.approx([-2.0, -1.0, -0.9]) and s.choice("mean") == 2
    with pytest.raises(ValueError, match="normalize"):
        s.scores("bytes")


def test_score_options_errors():
    model = tiny_gpt(20, block_size=8)
    with pytest.raises(ValueError, match="non-empty"):
        score_options(model, [1, 2], [[3], []])
    with pytest.raises(ValueError, match="non-empty"):
        score_options(model, [], [[3]])
    with pytest.raises(ValueError, match="longer than block_size 8"):
        score_options(model, [1] * 6, [[2], [3, 4, 5]])


def test_evaluate_choices_scores_each_item():
    text = "Q: 2+2? A: 4 5 Q: 3+3? A: 6 7"
    tok = CharTokenizer.from_text(text)
    model = tiny_gpt(tok.vocab_size, block_size=32, seed=4)
    items = [MultipleChoice("Q: 2+2? A:", (" 4", " 5"), 0),
             MultipleChoice("Q: 3+3? A:", (" 6", " 7", " 4 5"), 2)]
    results = evaluate_choices(model, tok, items, progress=False)
    assert isinstance(results, ChoiceResults) and results.answers == [0, 2]
    unshared = evaluate_choices(model, tok, items, progress=False, share_prefix=False)
    for a, b in zip(results.scores, unshared.scores):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)
    for item, scores in zip(items, results.scores):
        ctx = tok.encode(item.context)
        assert scores.logprobs == pytest.approx(
            [one_by_one(model, ctx, tok.encode(o)) for o in item.options], abs=1e-4)
    right = [s.choice("mean") == a for s, a in zip(results.scores, results.answers)]
    assert results.correct("mean") == right and results.accuracy("mean") == sum(right) / 2
    with pytest.raises(ValueError, match="at least one item"):
        evaluate_choices(model, tok, [])


# -------------------------------------------------------------- SmolLM2 against transformers
@pytest.fixture(scope="module")
def smollm2_pair():
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")  # from_pretrained(gguf_file=...) needs it
    from course_utils.pretrained import from_gguf, gguf_path

    try:
        path = gguf_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    ours = from_gguf(path, block_size=1024)
    theirs = transformers.LlamaForCausalLM.from_pretrained(path.parent,
                                                           gguf_file=path.name).eval()
    return ours, theirs


def test_option_logprobs_equal_llama_for_causal_lm(smollm2_pair):
    from course_utils.mmlu import load_mmlu, mmlu_item

    smol, hf = smollm2_pair
    tok = smol.tokenizer
    question = next(q for q in load_mmlu("val", ["prehistory"])  # short: the test stays fast
                    if q.question.startswith("Mesopotamia is located"))
    prefix = PrefixCache()  # the cloze prompt shares its header's first tokens with the letter's
    for form in ("letter", "cloze"):
        item = mmlu_item(question, form)
        context = tok.encode_ordinary(item.context)
        options = [tok.encode_ordinary(o) for o in item.options]
        ours = score_options(smol.model, context, options, prefix)
        for lp, option in zip(ours.logprobs, options):
            with torch.no_grad():
                logits = hf(torch.tensor([context + option])).logits[0].float()
            logp = F.log_softmax(logits[len(context) - 1:-1], dim=-1)
            theirs = logp.gather(1, torch.tensor(option)[:, None]).sum().item()
            # float32 logits agree to ~1e-4 per token (tests/test_pretrained.py); sums add up
            assert lp == pytest.approx(theirs, abs=1e-3 + 2e-4 * len(option)), (form, option)
