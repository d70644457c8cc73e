"""The course's instruction-following requests and pairs (notebook 14, part B): the generator is
seeded, asks only trained types and never a held-out one, shares no text with IFEval's
prompts, and every constraint is scored by IFEval's own checkers; the pair rule; greedy
IFEval replies equal one-prompt-at-a-time generation; the task caches its pairs and trains
through the loop; the command line knows the dataset and the preset."""

import json
import math
import re

import pytest
import torch

from course_utils import ifeval
from course_utils import instructions as ins
from course_utils.chat import ChatFormat
from course_utils.config import TrainConfig
from course_utils.ifeval import IFEvalPrompt
from course_utils.model import GPT, GPTConfig
from course_utils.preference import Preferences


def chat_model(seed=0, block_size=128, byte_level=False):
    """A tiny untrained chat model on Tiny Shakespeare's characters (or on the 256 bytes, to
    write any text) plus the ChatML tokens."""
    from course_utils.bpe import BPETokenizer
    from course_utils.corpora import load_text
    from course_utils.sft import chat_tokenizer
    from course_utils.tokenization import CharTokenizer

    tok = chat_tokenizer(BPETokenizer({}) if byte_level
                         else CharTokenizer.from_text(load_text("tinyshakespeare")))
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=block_size, n_layer=1,
                          n_head=2, n_embd=16))
    return model, tok


# ------------------------------------------------------------------------ the generator
def test_requests_are_seeded_and_reproducible():
    a, b = ins.make_requests(60, seed=5), ins.make_requests(60, seed=5)
    assert a == b
    assert [r.prompt for r in ins.make_requests(20, seed=5)] == [r.prompt for r in a[:20]]
    assert [r.prompt for r in ins.make_requests(60, seed=6)] != [r.prompt for r in a]
    assert len({r.prompt for r in a}) == 60 and [r.key for r in a] == list(range(60))
    held = ins.make_requests(30, seed=6, exclude=a)
    assert not {r.prompt for r in held} & {r.prompt for r in a}


def test_requests_ask_trained_types_only_and_never_a_held_out_one():
    requests = ins.make_requests(2000, seed=0, max_instructions=3)
    asked = {i for r in requests for i in r.instruction_ids}
    assert asked == set(ins.TRAINED)  # every trained type turns up, nothing else
    assert not asked & set(ins.HELD_OUT)
    assert set(ins.HELD_OUT) <= set(ifeval.CHECKERS)  # real IFEval types
    for r in requests:
        assert 1 <= len(r.instruction_ids) <= 3
        assert len(set(r.instruction_ids)) == len(r.instruction_ids)
        assert len(r.kwargs) == len(r.instruction_ids)
        for x in r.instruction_ids:
            for y in r.instruction_ids:
                assert frozenset((x, y)) not in ins.CONFLICTS
        assert any(r.prompt.startswith(topic + " ") for topic in ins.TOPICS)
    assert max(len(r.instruction_ids) for r in ins.make_requests(200, seed=0,
                                                                 max_instructions=1)) == 1


def test_requests_reject_bad_arguments():
    with pytest.raises(ValueError, match="max_instructions in 1..3"):
        ins.make_requests(3, max_instructions=0)
    with pytest.raises(ValueError, match="n >= 0"):
        ins.make_requests(-1)
    with pytest.raises(ValueError, match="found only"):
        ins.make_requests(5000, max_instructions=1)  # fewer single-instruction prompts exist


def _words(text):
    return re.findall(r"\w+", text.lower())


def test_no_ifeval_prompt_text_is_reused():
    """No request equals an IFEval prompt, and no sentence the generator can write (topics,
    every wording with every value it fills in) shares a run of six words with any of the 541
    IFEval prompts."""
    prompts = ifeval.load_ifeval()
    assert len(prompts) == 541
    n = 6
    seen = {tuple(w[i:i + n]) for p in prompts for w in [_words(p.prompt)]
            for i in range(len(w) - n + 1)}
    fills = {"num_bullets": range(2, 6), "at_most": (15, 20, 30, 40, 50),
             "sentences": ("1 sentence", "2 sentences", "3 sentences"),
             "end_phrase": ins.END_PHRASES, "keyword": ins.KEYWORDS, "avoided": ins.AVOIDED,
             "phrases": ("1 phrase", "3 phrases"), "parts": ("1 part", "3 parts")}
    texts = list(ins.TOPICS) + list(ins.END_PHRASES)
    for wordings in ins.WORDINGS.values():
        for w in wordings:
            fields = re.findall(r"{(\w+)}", w)
            for k in range(5):
                texts.append(w.format(**{f: list(fills[f])[k % len(fills[f])]
                                         for f in fields}))
    for text in texts:
        w = _words(text)
        shared = [" ".join(w[i:i + n]) for i in range(len(w) - n + 1)
                  if tuple(w[i:i + n]) in seen]
        assert not shared, f"{text!r} shares {shared} with IFEval"
    ifeval_texts = {p.prompt for p in prompts}
    assert not {r.prompt for r in ins.make_requests(3000, seed=1, max_instructions=3)} \
        & ifeval_texts


def _compliant(instruction_id, kwargs):
    """A reply, written by hand, that follows one instruction."""
    text = "the answer is here and it is short"
    return {
        "punctuation:no_comma": text,
        "change_case:english_lowercase": "the sea is calm today and the boats rest",
        "detectable_format:number_bullet_lists": "\n".join(
            f"* point {i}" for i in range(kwargs.get("num_bullets", 0))),
        "length_constraints:number_words": " ".join(["word"] * (kwargs.get("num_words", 2)
                                                               - 1)),
        "length_constraints:number_sentences": "One sentence here.",
        "startend:end_checker": f"{text} {kwargs.get('end_phrase')}",
        "keywords:existence": f"{text} {' '.join(kwargs.get('keywords', []))}",
        "keywords:forbidden_words": text,
        "detectable_format:json_format": '{"answer": "here"}',
        "detectable_format:title": "<<A Title>>\nThe text.",
        "detectable_format:number_highlighted_sections": " ".join(
            ["*one*"] * kwargs.get("num_highlights", 0)),
    }[instruction_id]


def _violating(instruction_id, kwargs):
    """A reply, written by hand, that does not follow one instruction."""
    return {
        "punctuation:no_comma": "first, second",
        "change_case:english_lowercase": "The sea is calm",
        "detectable_format:number_bullet_lists": "\n".join(
            f"* point {i}" for i in range(kwargs.get("num_bullets", 0) + 1)),
        "length_constraints:number_words": " ".join(["word"] * kwargs.get("num_words", 0)),
        "length_constraints:number_sentences": " ".join(
            ["A sentence."] * kwargs.get("num_sentences", 0)),
        "startend:end_checker": f"{kwargs.get('end_phrase')} and then more",
        "keywords:existence": "nothing of the kind",
        "keywords:forbidden_words": f"it is {' '.join(kwargs.get('forbidden_words', []))}",
        "detectable_format:json_format": "answer: here",
        "detectable_format:title": "A Title\nThe text.",
        "detectable_format:number_highlighted_sections": "no highlights",
    }[instruction_id]


def test_every_constraint_is_scored_by_the_ifeval_checkers():
    """Each generated instruction, with its generated kwargs, goes through
    ifeval.check (the evaluation's own checkers): a reply written by hand to follow it passes,
    one written to break it fails; followed_share is the share of a request's instructions
    followed."""
    requests = ins.make_requests(400, seed=2)
    by_type = {}
    for r in requests:
        for i, kw in zip(r.instruction_ids, r.kwargs):
            by_type.setdefault(i, []).append(kw)
            assert ifeval.check(i, _compliant(i, kw), kw), (i, kw)
            assert not ifeval.check(i, _violating(i, kw), kw), (i, kw)
    assert set(by_type) == set(ins.TRAINED)
    words = IFEvalPrompt(0, "p", ("punctuation:no_comma", "length_constraints:number_words"),
                         ({}, {"relation": "less than", "num_words": 4}))
    assert ins.followed_share(words, "one two three") == 1.0
    assert ins.followed_share(words, "one, two") == 0.5  # a comma
    assert ins.followed_share(words, "one two three four") == 0.5  # four words
    assert ins.followed_share(words, "one, two, three, four") == 0.0
    assert ins.instruction_reward(words)("one two three four", True) == 0.5


# ------------------------------------------------------------------------ pairs
def test_pick_pair_keeps_finished_replies_and_the_closest_lengths():
    # replies:        0     1     2     3     4
    rewards = [1.0, 0.5, 1.0, 0.0, 1.0]
    lengths = [40, 12, 10, 38, 11]
    stopped = [True, True, True, True, False]
    # reply 4 (11 tokens, follows all) did not finish: not used, though (4, 1) is closest;
    # (0, 3) and (2, 1) are both 2 tokens apart: the first one
    assert ins.pick_pair(rewards, lengths, stopped) == (0, 3)
    assert ins.pick_pair(rewards, lengths, [True, True, True, False, True]) == (4, 1)
    assert ins.pick_pair([1.0, 1.0], [5, 6], [True, True]) is None  # none fails
    assert ins.pick_pair([0.5, 0.0], [5, 6], [True, True]) is None  # none follows all
    assert ins.pick_pair([1.0, 0.0], [5, 6], [False, True]) is None  # chosen unfinished
    assert ins.pick_pair([1.0, 0.0, 0.0], [5, 9, 1], [True] * 3) == (0, 1)  # a tie: the first


def test_sample_preferences_takes_one_reward_per_prompt_a_pair_rule_and_chunks():
    """With a list of rewards each prompt's replies are scored by its own function; the pair
    rule sees the rewards, token lengths and stops; greedy replies do not depend on how many
    prompts share a batch."""
    from course_utils.preference import sample_preferences

    model, tok = chat_model()
    fmt = ChatFormat(tok)
    prompts = [fmt.encode([{"role": "user", "content": t}]) for t in ("Hi.", "Good morrow.",
                                                                      "What news?")]
    seen = []

    def rule(rewards, lengths, stopped):
        seen.append((list(rewards), list(lengths), list(stopped)))
        return (0, 1)

    rewards = [lambda text, s, k=k: 10.0 * k + len(text) for k in range(3)]
    kw = dict(samples=2, margin=0.0, max_new_tokens=6, temperature=0.0, pair=rule)
    whole = sample_preferences(model, fmt, prompts, rewards, **kw)
    chunked = sample_preferences(model, fmt, prompts, rewards, chunk_size=2, **kw)
    assert whole.replies == chunked.replies and whole.rewards == chunked.rewards
    assert whole.pairs == [(0, 0, 1), (1, 0, 1), (2, 0, 1)]
    for k, (scores, lengths, stopped) in enumerate(seen[:3]):
        group = whole.replies[k]
        assert lengths == [len(ids) for ids in group]
        assert stopped == [ids[-1] == fmt.im_end for ids in group] == whole.stopped[k]
        texts = [tok.decode(ids[:-1] if s else ids) for ids, s in zip(group, stopped)]
        assert scores == [10.0 * k + len(t) for t in texts]
    with pytest.raises(ValueError, match="one reward function per prompt"):
        sample_preferences(model, fmt, prompts, rewards[:2], **kw)
    with pytest.raises(ValueError, match="the pairing rule found no pair"):
        sample_preferences(model, fmt, prompts, rewards, **{**kw, "pair": lambda *a: None})


def test_instruction_pairs_pair_a_followed_reply_with_a_broken_one():
    """Sampled replies of a tiny model to requests: every pair is a finished reply that
    follows all instructions against a finished one that does not, by ifeval's checkers;
    seeded; pair_yield counts them."""
    model, tok = chat_model(seed=1)
    fmt = ChatFormat(tok)
    requests = [IFEvalPrompt(i, t, ("punctuation:no_comma",), ({},))
                for i, t in enumerate(("Say hi.", "Say more.", "Go on.", "Speak."))]
    kw = dict(samples=16, max_new_tokens=12, chunk_size=3, progress=False)
    prefs = ins.instruction_pairs(model, fmt, requests, **kw,
                                  generator=torch.Generator().manual_seed(0))
    assert prefs.pairs
    for i, c, r in prefs.pairs:
        chosen, rejected = prefs.replies[i][c], prefs.replies[i][r]
        assert chosen[-1] == fmt.im_end and rejected[-1] == fmt.im_end
        good, bad = tok.decode(chosen[:-1]), tok.decode(rejected[:-1])
        assert "," not in good and good.strip()
        assert "," in bad or not bad.strip()  # an empty reply follows nothing (IFEval)
        assert prefs.rewards[i][c] == 1.0 and prefs.rewards[i][r] == 0.0
    again = ins.instruction_pairs(model, fmt, requests, **kw,
                                  generator=torch.Generator().manual_seed(0))
    assert again.replies == prefs.replies and again.pairs == prefs.pairs
    y = ins.pair_yield(prefs)
    stops = [s for g in prefs.stopped for s in g]
    assert y["prompts"] == 4 and y["pairs"] == len(prefs.pairs)
    assert y["finished"] == sum(stops) / len(stops)
    assert 0 < y["followed"] < 1


# ------------------------------------------------------------------------ IFEval replies
def test_ifeval_replies_equal_one_prompt_at_a_time_greedy_generation():
    from course_utils.sampling import generate

    model, tok = chat_model(seed=2)
    fmt = ChatFormat(tok)
    prompts = [IFEvalPrompt(i, t, ("punctuation:no_comma",), ({},)) for i, t in
               enumerate(("A much longer request than the others.", "Hi.", "Good morrow.",
                          "What?"))]
    got = ins.ifeval_replies(model, fmt, prompts, max_new_tokens=10, batch_size=3,
                             progress=False)
    for k, p in enumerate(prompts):
        ids = ins.request_ids(fmt, p)
        out = generate(model, torch.tensor([ids]), 10, temperature=0.0)[0, len(ids):].tolist()
        if fmt.im_end in out:
            out = out[:out.index(fmt.im_end) + 1]
        ended = out[-1] == fmt.im_end
        assert got.texts[k] == tok.decode(out[:-1] if ended else out)
        assert got.stopped[k] == ended and got.tokens[k] == len(out)
    with pytest.raises(ValueError, match="batch_size >= 1"):
        ins.ifeval_replies(model, fmt, prompts, 4, batch_size=0)


def test_ifeval_replies_are_cached_for_the_same_weights_prompts_and_limit(tmp_path):
    import copy

    model, tok = chat_model(seed=3)
    fmt = ChatFormat(tok)
    prompts = [IFEvalPrompt(i, t, ("punctuation:no_comma",), ({},))
               for i, t in enumerate(("Hi.", "What news?"))]
    path = tmp_path / "replies.json"
    first = ins.ifeval_replies(model, fmt, prompts, 8, progress=False, cache=path)
    assert path.is_file() and not first.reused
    again = ins.ifeval_replies(copy.deepcopy(model), fmt, prompts, 8, progress=False,
                               cache=path)
    assert again.reused and again.texts == first.texts and again.seconds == first.seconds
    assert not ins.ifeval_replies(model, fmt, prompts, 6, progress=False, cache=path).reused
    assert not ins.ifeval_replies(model, fmt, prompts[:1], 6, progress=False,
                                  cache=path).reused
    assert ins.weights_sha256(model) == ins.weights_sha256(copy.deepcopy(model))
    with torch.no_grad():
        model.lm_head.weight[0, 0] += 1e-3
    assert not ins.ifeval_replies(model, fmt, prompts[:1], 6, progress=False,
                                  cache=path).reused


# ------------------------------------------------------------------------ the task
def synthetic_sampled(model, fmt, n_prompts, samples, max_tokens, seed, temperature=1.0,
                      progress=True):
    """Pairs without sampling: "all lowercase" chosen over "All Capitals" for every request;
    the last quarter held out."""
    good = fmt.text_ids("all lowercase") + [fmt.im_end]
    bad = fmt.text_ids("All Capitals") + [fmt.im_end]
    requests = ins.make_requests(n_prompts, seed)
    prompts = [ins.request_ids(fmt, r) for r in requests]
    prefs = Preferences(prompts, [[good, bad] for _ in prompts], [[1.0, 0.0] for _ in prompts],
                        [(i, 0, 1) for i in range(n_prompts)], [[True, True] for _ in prompts])
    return ins.SampledPairs(requests, prefs, list(range(n_prompts - n_prompts // 4, n_prompts)),
                            temperature, 0.5)


def chat_run(tmp_path):
    """A tiny chat run folder (a character model with the ChatML tokens, saved as a
    checkpoint), the start of the task's tests."""
    from course_utils.sft import ChatData, ChatTask, encode_conversation, targets
    from course_utils.train import train

    model, tok = chat_model(byte_level=True, block_size=512)
    fmt = ChatFormat(tok)
    ids, trained = encode_conversation(fmt, [{"role": "user", "content": "Hi."},
                                             {"role": "assistant", "content": "hello"}])
    data = ChatData([targets(ids, trained)], pad_id=fmt.im_end)
    cfg = TrainConfig.from_settings(
        dataset="chat", out_dir=str(tmp_path / "chat"), n_layer=1, n_head=2, n_embd=16,
        block_size=512, batch_size=1, max_iters=1, eval_interval=1, eval_iters=1)
    train(cfg, progress=False, task=ChatTask(tok, data, data, 1))
    return tmp_path / "chat"


def ifeval_config(tmp_path, name="dpo", **kw):
    settings = dict(init_from=str(tmp_path / "chat"), out_dir=str(tmp_path / name),
                    block_size=512, lora_rank=2, lora_alpha=4, batch_size=4, max_iters=6,
                    learning_rate=1e-2, min_lr=1e-3, warmup_iters=0, eval_interval=3,
                    eval_iters=1, beta=0.5, pref_prompts=8, pref_samples=2,
                    pref_max_tokens=16, pref_temperature=0.8)
    return TrainConfig.from_preset("smollm2-ifeval-dpo", **{**settings, **kw})


def test_the_task_caches_its_pairs_in_the_run_folder(tmp_path, monkeypatch):
    calls = []

    def counted(*args, **kwargs):
        calls.append((*args[2:], kwargs["temperature"]))
        return synthetic_sampled(*args, **kwargs)

    monkeypatch.setattr(ins, "sample_instruction_pairs", counted)
    chat_run(tmp_path)
    cfg = ifeval_config(tmp_path)
    task = ins.InstructionDPOTask.build(cfg)
    assert calls == [(8, 2, 16, cfg.seed, 0.8)]
    assert len(task.data["train"]) == 6 and len(task.data["val"]) == 2
    held = {task.sampled.prefs.pairs[k][0] for k in task.sampled.val}
    trained = {i for i, _, _ in task.sampled.split("train").pairs}
    assert held == {6, 7} and trained == set(range(6))  # no request in both
    saved = json.loads((tmp_path / "dpo" / ins.PAIRS_FILE).read_text())
    assert saved["key"]["prompts"] == 8 and len(saved["pairs"]) == 8
    again = ins.InstructionDPOTask.build(cfg)  # read back, not sampled again
    assert len(calls) == 1 and again.reused and not task.reused
    assert again.sampled == task.sampled
    for split in ("train", "val"):
        torch.testing.assert_close(task.data[split].ref_logps, again.data[split].ref_logps)
    ins.InstructionDPOTask.build(ifeval_config(tmp_path, pref_samples=3))  # other settings
    ins.InstructionDPOTask.build(ifeval_config(tmp_path, pref_temperature=1.0))
    assert len(calls) == 3
    (tmp_path / "dpo" / ins.PAIRS_FILE).write_text("not json")  # damaged: sampled again
    ins.InstructionDPOTask.build(cfg)
    assert len(calls) == 4


def test_held_out_pairs_are_a_fifth_of_the_pairs_by_request(monkeypatch):
    """sample_instruction_pairs holds out a fifth of the pairs (at least one), drawn by the
    seed; the splits share no request; fewer than two pairs is an error."""
    model, tok = chat_model(seed=1)
    fmt = ChatFormat(tok)

    def fake_pairs(model, fmt, requests, samples, max_tokens, **kw):
        n = len(requests)
        return Preferences([[1]] * n, [[[2], [3]]] * n, [[1.0, 0.0]] * n,
                           [(i, 0, 1) for i in range(0, n, 2)], [[True, True]] * n)

    monkeypatch.setattr(ins, "instruction_pairs", fake_pairs)
    s = ins.sample_instruction_pairs(model, fmt, 20, 2, 8, seed=4)  # 10 pairs
    assert len(s.val) == 2 and s.val == sorted(set(s.val))
    train, val = s.split("train"), s.split("val")
    assert len(train.pairs) == 8 and len(val.pairs) == 2
    assert not {i for i, _, _ in train.pairs} & {i for i, _, _ in val.pairs}
    assert ins.sample_instruction_pairs(model, fmt, 20, 2, 8, seed=4).val == s.val
    assert len(ins.sample_instruction_pairs(model, fmt, 4, 2, 8, seed=4).val) == 1
    with pytest.raises(ValueError, match="only 1 of 2 requests gave a pair"):
        ins.sample_instruction_pairs(model, fmt, 2, 2, 8, seed=4)
    with pytest.raises(ValueError, match="split must be"):
        s.split("test")


def test_dpo_on_instruction_pairs_through_the_training_loop(tmp_path, monkeypatch):
    """The loop trains LoRA adapters on the task class (as the command line does): the DPO
    loss starts at log 2 (the policy is the reference) and falls on the held-out pairs."""
    from course_utils.train import train

    monkeypatch.setattr(ins, "sample_instruction_pairs", synthetic_sampled)
    chat_run(tmp_path)
    r = train(ifeval_config(tmp_path, learning_rate=5e-2, min_lr=5e-3), progress=False,
              task=ins.InstructionDPOTask)
    assert r["history"]["train"][0] == pytest.approx(math.log(2), abs=1e-4)
    val = r["history"]["val"]
    assert val[-1] < val[1] < val[0] and val[-1] < 0.8 * math.log(2)
    assert (tmp_path / "dpo" / ins.PAIRS_FILE).is_file()


def test_task_errors_say_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(ins, "sample_instruction_pairs", synthetic_sampled)
    with pytest.raises(ValueError, match="give it with --init-from"):
        ins.InstructionDPOTask.build(ifeval_config(tmp_path, init_from=""))
    with pytest.raises(ValueError, match="trains on the dataset ifeval-prefs"):
        ins.InstructionDPOTask.build(ifeval_config(tmp_path, dataset="tinyshakespeare-prefs"))
    with pytest.raises(ValueError, match="pref_max_tokens=0"):
        ifeval_config(tmp_path, pref_max_tokens=0)
    with pytest.raises(ValueError, match="pref_temperature=0"):
        ifeval_config(tmp_path, pref_temperature=0.0)


def test_the_command_line_knows_the_dataset_and_the_preset():
    from course_utils.cli import build_parser, task_class
    from course_utils.presets import PRESETS

    assert task_class("ifeval-prefs") is ins.InstructionDPOTask
    preset = PRESETS["smollm2-ifeval-dpo"]
    assert preset["dataset"] == "ifeval-prefs" and preset["init_from"] == "smollm2-135m-instruct"
    assert preset["lora_rank"] > 0 and preset["block_size"] <= 1024
    cfg = TrainConfig.from_preset("smollm2-ifeval-dpo")
    assert cfg.pref_max_tokens == preset["pref_max_tokens"]
    args = build_parser().parse_args(["train", "--preset", "smollm2-ifeval-dpo",
                                      "--pref-max-tokens", "48"])
    assert args.pref_max_tokens == 48
