"""Notebook 16's speedrun: the preset keeps shakespeare-char's rules, the records file and
the README's records table agree, every record's command parses, and the equal-time timer
(`course_utils.train.step_seconds`) times what it is given."""

import json
from pathlib import Path

import pytest
import torch

from course_utils.cli import build_parser
from course_utils.config import TrainConfig
from course_utils.optim import step_seconds
from course_utils.presets import PRESETS

ROOT = Path(__file__).resolve().parent.parent


def _val_protocol(cfg: TrainConfig) -> dict:
    """What the validation loss of a run depends on besides the model: the data, the split,
    the windows (their length and how many) and the seed that draws them."""
    return {"dataset": cfg.dataset, "bpe_vocab_size": cfg.bpe_vocab_size,
            "block_size": cfg.model.block_size, "windows": cfg.eval_iters * cfg.batch_size,
            "seed": cfg.seed}


def test_the_speedrun_keeps_the_validation_protocol_of_shakespeare_char():
    speed = TrainConfig.from_preset("shakespeare-speedrun")
    assert _val_protocol(speed) == _val_protocol(TrainConfig.from_preset("shakespeare-char"))
    # one evaluation, after the last step: the race pays for no others
    assert speed.eval_interval >= speed.max_iters


def test_the_speedrun_preset_shares_its_micro_batches_between_two_processes():
    # an even number of micro-batches a step: half per process under torchrun with 2, all of
    # them in one process, the same run either way (tests/test_distributed.py)
    assert PRESETS["shakespeare-speedrun"]["grad_accum_steps"] % 2 == 0


def test_every_record_command_parses_and_the_readme_shows_the_records_file():
    from benchmarks.records import RECORDS, RECORDS_PATH, markdown, record_command

    parser = build_parser()
    for change, procs, flags in RECORDS:
        cmd = record_command(procs, flags, "runs/x", 1337)
        args = parser.parse_args(cmd[cmd.index("train"):])
        assert args.preset == flags[1], change
    doc = json.loads(RECORDS_PATH.read_text())
    assert [r["change"] for r in doc["records"]] == [c for c, _, _ in RECORDS], (
        "records.json is not the RECORDS list: run python -m benchmarks.records")
    for r, (_, procs, flags) in zip(doc["records"], RECORDS):
        assert (r["procs"], r["flags"]) == (procs, flags), (
            f"{r['change']}: records.json holds another command; re-run that record")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert markdown(doc) in readme, "the README's records table differs from records.json"


def test_step_seconds_times_every_config_and_refuses_nothing_to_time():
    small = TrainConfig.from_settings(n_layer=1, n_head=2, n_embd=16, block_size=8,
                                      batch_size=2)
    muon = TrainConfig.from_settings(n_layer=1, n_head=2, n_embd=16, block_size=8,
                                     batch_size=2, optimizer="muon")
    torch.manual_seed(0)
    times = step_seconds({"adamw": small, "muon": muon}, rounds=2, steps_per_round=1)
    assert set(times) == {"adamw", "muon"}
    assert all(0 < t < 60 for t in times.values())
    with pytest.raises(ValueError, match="at least one config"):
        step_seconds({})
    with pytest.raises(ValueError, match="rounds >= 1"):
        step_seconds({"adamw": small}, rounds=0)
