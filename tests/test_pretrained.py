"""SmolLM2-135M-Instruct on the course's GPT: the GGUF tensors equal Hugging Face's, the logits
and 50 greedy tokens equal LlamaForCausalLM's, the tokenizer's ids equal Hugging Face's on two
books, the hub loader (from a local Hugging Face cache), and the loaders' errors."""

import importlib.metadata
import os
import random

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # LlamaForCausalLM.from_pretrained(gguf_file=...) needs it
tokenizers = pytest.importorskip("tokenizers")

import course_utils.pretrained as pretrained  # noqa: E402
from course_utils.corpora import load_text  # noqa: E402
from course_utils.gpt2 import HubUnavailableError  # noqa: E402
from course_utils.pretrained import (  # noqa: E402
    INSTALL_OFFLINE,
    SMOLLM2,
    SMOLLM2_HUB_REPO,
    config_from_gguf,
    from_gguf,
    from_hub,
    gguf_path,
    gguf_to_llama_state_dict,
    load_pretrained,
    read_gguf,
    unpermute_rotary,
)
from course_utils.sampling import generate  # noqa: E402

try:
    GGUF = gguf_path()
except FileNotFoundError as e:
    pytest.skip(str(e), allow_module_level=True)

BLOCK_SIZE = 256  # enough for every prompt here; the KV cache stays small
MIXED = ("Numbers: 3.14159, 2024-05-01 and  42 or\n 7\t\t9; 1st  2nd\n\n3rd. Unicode: café, "
         "naïve, 東京, Ελληνικά, 👍🏽, ½ ² ٣. <|im_start|>user\nhi there<|im_end|>\n")


@pytest.fixture(scope="module")
def smol():
    return from_gguf(block_size=BLOCK_SIZE)


@pytest.fixture(scope="module")
def gguf_file():
    return read_gguf(GGUF)


@pytest.fixture(scope="module")
def hf_model():
    return transformers.LlamaForCausalLM.from_pretrained(GGUF.parent, gguf_file=GGUF.name).eval()


@pytest.fixture(scope="module")
def hf_tokenizer():
    return transformers.AutoTokenizer.from_pretrained(GGUF.parent, gguf_file=GGUF.name)


@pytest.fixture(scope="module")
def smollm2_reference(hf_tokenizer):
    """Hugging Face's tokenizer from the same file, with SmolLM2's own pre-tokenizer: its
    tokenizer.json on the hub (and llama.cpp's 'smollm' pre-tokenizer, which the GGUF file
    names) split off each digit before GPT-2's byte-level regex. transformers' GGUF converter
    has no entry for 'smollm' and leaves the digit split out, which changes the ids wherever
    two or more whitespace characters come before a digit."""
    ref = tokenizers.Tokenizer.from_str(hf_tokenizer.backend_tokenizer.to_str())
    ref.pre_tokenizer = tokenizers.pre_tokenizers.Sequence([
        tokenizers.pre_tokenizers.Digits(individual_digits=True),
        tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    return ref


def test_config_comes_from_the_file(smol, hf_model, gguf_file):
    c, h = smol.model.config, hf_model.config
    assert (c.vocab_size, c.n_layer, c.n_head, c.n_kv_head, c.n_embd, c.mlp_hidden) == (
        h.vocab_size, h.num_hidden_layers, h.num_attention_heads, h.num_key_value_heads,
        h.hidden_size, h.intermediate_size)
    assert c.norm_eps == h.rms_norm_eps and c.rope_theta == h.rope_parameters["rope_theta"]
    assert c.tie_weights == h.tie_word_embeddings
    assert smol.model.lm_head.weight is smol.model.transformer.wte.weight
    assert (c.norm, c.pos_emb, c.mlp, c.bias) == ("rmsnorm", "rope", "swiglu", False)
    assert c.block_size == BLOCK_SIZE and not smol.model.training
    assert smol.model.num_params() == sum(p.numel() for p in hf_model.parameters())
    metadata, tensors = gguf_file
    assert config_from_gguf(metadata, tensors).block_size == h.max_position_embeddings
    with pytest.raises(ValueError, match=r"block_size must be in \[1, 8192\]"):
        config_from_gguf(metadata, tensors, block_size=h.max_position_embeddings + 1)


def test_dequantized_tensors_equal_hugging_face_and_load_into_llama(hf_model, gguf_file):
    """Our reading of the GGUF file (dequantization, shapes, query/key row order) gives
    exactly the tensors transformers' GGUF loader gives, and they load into LlamaForCausalLM."""
    sd = gguf_to_llama_state_dict(*gguf_file)
    theirs = hf_model.state_dict()
    assert set(sd) == set(theirs) - {"lm_head.weight"}  # tied: the file has no output.weight
    for name, w in sd.items():
        assert w.dtype == torch.float32 and torch.equal(w, theirs[name]), name
    with torch.device("meta"):  # names and shapes only; the values were compared above
        fresh = transformers.LlamaForCausalLM(hf_model.config)
    result = fresh.load_state_dict(sd, strict=False, assign=True)  # checks every shape
    assert result.missing_keys == ["lm_head.weight"] and not result.unexpected_keys


def test_unpermute_rotary_undoes_llama_cpp_row_order():
    """llama.cpp's converter sends row j of each head to 2j and row j + hs/2 to 2j + 1."""
    n_head, hs, C = 3, 8, 5
    w = torch.randn(n_head * hs, C)
    permuted = torch.empty_like(w)
    for h in range(n_head):
        for j in range(hs // 2):
            permuted[h * hs + 2 * j] = w[h * hs + j]
            permuted[h * hs + 2 * j + 1] = w[h * hs + hs // 2 + j]
    assert not torch.equal(permuted, w)
    assert torch.equal(unpermute_rotary(permuted, n_head), w)


def test_logits_equal_llama_for_causal_lm(smol, hf_model):
    tok = smol.tokenizer
    prompts = [
        tok.encode("<|im_start|>user\nWhat is the capital of France?<|im_end|>",
                   allowed_special="all"),
        tok.encode(load_text("tinyshakespeare")[:600]),
        tok.encode(MIXED, allowed_special="all"),
        tok.encode("Hi"),
    ]
    for ids in prompts:
        idx = torch.tensor([ids])
        with torch.no_grad():
            ours, _ = smol.model(idx)
            theirs = hf_model(idx).logits
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    batch = torch.randint(0, 49152, (3, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(smol.model(batch)[0], hf_model(batch).logits, atol=1e-4,
                                   rtol=1e-4)


def test_50_greedy_tokens_equal_hugging_face_generate(smol, hf_model, hf_tokenizer):
    messages = [{"role": "user", "content": "Write a short poem about the sea."}]
    chat = hf_tokenizer.apply_chat_template(messages, add_generation_prompt=True)["input_ids"]
    prompt = torch.tensor([chat])
    ours = generate(smol.model, prompt, 50, temperature=0.0)  # with the KV cache
    with torch.no_grad():
        theirs = hf_model.generate(prompt, attention_mask=torch.ones_like(prompt),
                                   max_new_tokens=50, min_new_tokens=50, do_sample=False,
                                   pad_token_id=hf_tokenizer.pad_token_id)
    assert torch.equal(ours, theirs)


def test_tokenizer_ids_equal_hugging_face(smol, hf_tokenizer, smollm2_reference):
    tok = smol.tokenizer
    assert tok.special_tokens == {t.content: i for i, t in
                                  hf_tokenizer.added_tokens_decoder.items() if t.special}
    assert tok.vocab_size == len(hf_tokenizer)
    for name in ("tinyshakespeare", "alice"):
        text = load_text(name)
        ids = tok.encode(text)
        assert ids == smollm2_reference.encode(text, add_special_tokens=False).ids, name
        assert tok.decode(ids) == text
        if name == "tinyshakespeare":  # no whitespace run before a digit: the GGUF converter
            assert ids == hf_tokenizer.encode(text, add_special_tokens=False)  # agrees here
    # special tokens: ids when allowed, plain text otherwise
    assert tok.encode(MIXED, allowed_special="all") == smollm2_reference.encode(
        MIXED, add_special_tokens=False).ids
    smollm2_reference.encode_special_tokens = True  # the reference's plain-text mode
    try:
        assert tok.encode(MIXED, allowed_special="none") == smollm2_reference.encode(
            MIXED, add_special_tokens=False).ids
    finally:
        smollm2_reference.encode_special_tokens = False


def test_split_pattern_equals_smollm2_pre_tokenizer_on_random_text(smol, smollm2_reference):
    """Random mixes of the characters where the digit rule matters (runs of spaces, tabs and
    newlines before digits, letters, contractions, punctuation, non-ASCII numerals)."""
    pieces = [" ", "  ", "   ", "\n", "\n\n", "\t", " \n ", "a", "Bc", "é", "東京", "1", "23",
              "456", "½", "٣", "'s", "'ll", "'", ".", "!?", "-", "👍"]
    rng = random.Random(0)
    for _ in range(500):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 12)))
        assert smol.tokenizer.encode(text) == smollm2_reference.encode(
            text, add_special_tokens=False).ids, repr(text)


# ----------------------------------------------------------------------------------- errors
def test_missing_wheel_says_how_to_install(monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(pretrained.importlib.metadata, "distribution", not_installed)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for call in (gguf_path, lambda: load_pretrained(source="gguf"), load_pretrained):
        with pytest.raises(FileNotFoundError) as e:
            call()
        assert INSTALL_OFFLINE in str(e.value) and "\n" not in str(e.value)


def test_damaged_files_give_one_line_errors(tmp_path):
    data = GGUF.read_bytes()
    files = {"header.gguf": data[:1000], "half.gguf": data[:len(data) // 2],
             "random.gguf": os.urandom(4096), "magic.gguf": b"GGUF" + os.urandom(4096)}
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match="not a readable GGUF file") as e:
            from_gguf(tmp_path / name)
        assert "\n" not in str(e.value) and "--force-reinstall" in str(e.value), name
    with pytest.raises(FileNotFoundError, match="no GGUF file"):
        from_gguf(tmp_path / "nothing.gguf")


def test_unknown_model_and_source():
    for call in (lambda: load_pretrained("gpt-5"), lambda: gguf_path("SmolLM3")):
        with pytest.raises(ValueError, match="unknown model .*smollm2-135m-instruct"):
            call()
    with pytest.raises(ValueError, match="source must be"):
        load_pretrained(SMOLLM2, source="ftp")


# -------------------------------------------------------------------------------------- hub
def fake_hub_cache(tmp_path, hf_tokenizer, hf_llama) -> None:
    """A Hugging Face cache holding SmolLM2's repo as the hub serves it (config.json,
    model.safetensors, tokenizer files), with a small random Llama as its weights."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / ("models--" + SMOLLM2_HUB_REPO.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    hf_llama.save_pretrained(snapshot)
    hf_tokenizer.save_pretrained(snapshot)


def test_from_hub_reads_the_hugging_face_cache(tmp_path, monkeypatch, smol, hf_tokenizer):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = transformers.LlamaConfig(
        vocab_size=49152, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        rope_theta=5000.0, rms_norm_eps=1e-6, tie_word_embeddings=True)
    torch.manual_seed(0)
    hf_llama = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # random norm gains too, so that a swapped norm shows
        for name, p in hf_llama.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    fake_hub_cache(tmp_path, hf_tokenizer, hf_llama)
    got = from_hub(cache_dir=tmp_path)
    c = got.model.config
    assert (c.n_layer, c.n_head, c.n_kv_head, c.rope_theta, c.norm_eps, c.block_size) == (
        2, 4, 2, 5000.0, 1e-6, 64)
    idx = torch.randint(0, 49152, (2, 64), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(got.model(idx)[0], hf_llama(idx).logits, atol=1e-5,
                                   rtol=1e-5)
    assert got.chat_template == smol.chat_template and got.source == "hub"
    assert got.tokenizer.encode(MIXED, allowed_special="all") == smol.tokenizer.encode(
        MIXED, allowed_special="all")
    with pytest.raises(HubUnavailableError, match="unreachable"):
        from_hub("HuggingFaceTB/not-cached", cache_dir=tmp_path)


def test_full_precision_weights_from_the_hub_equal_llama(tmp_path):
    """Online only: the hub's full-precision SmolLM2 in our GPT equals LlamaForCausalLM."""
    try:
        got = from_hub(block_size=64)
    except HubUnavailableError as e:
        pytest.skip(f"the Hugging Face hub is unreachable, so the full-precision weights "
                    f"were not checked ({str(e).split('. ')[0]})")
    hf = transformers.LlamaForCausalLM.from_pretrained(SMOLLM2_HUB_REPO, dtype=torch.float32)
    idx = torch.tensor([got.tokenizer.encode("The capital of France is")])
    with torch.no_grad():
        torch.testing.assert_close(got.model(idx)[0], hf.eval()(idx).logits, atol=1e-4,
                                   rtol=1e-4)
