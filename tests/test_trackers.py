"""``logging.report_to`` through accelerate's trackers: a real GRPO run writes tensorboard events whose scalars are
the numbers of log.jsonl, and the config's hyper-parameters."""

import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rl.train import grpo, trackers
from rl.train.config import ConfigError
from tests.helpers import tiny_config, to_toml


def test_tensorboard_gets_every_logged_step(tmp_path, tiny_dir):
    cfg = tiny_config(tiny_dir, logging={"progress_bar": False, "completions_per_step": 1,
                                         "report_to": ["tensorboard"]})
    (tmp_path / "run.toml").write_text(to_toml(cfg))
    grpo.main(["--config", str(tmp_path / "run.toml"), "--out", str(tmp_path / "out")])
    log = [json.loads(line) for line in (tmp_path / "out" / "log.jsonl").read_text().splitlines()]
    events = list((tmp_path / "out" / "runs").rglob("events.out.tfevents.*"))
    assert events, "no tensorboard event file under out/runs"
    scalars = {}
    for path in events:
        acc = EventAccumulator(str(path))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars[tag] = [(e.step, e.value) for e in acc.Scalars(tag)]
    for key in ("reward", "accuracy", "loss", "lr"):
        assert [s for s, _ in scalars[key]] == [r["step"] for r in log]
        assert [v for _, v in scalars[key]] == pytest.approx([r[key] for r in log], rel=1e-6)
    assert "stage" not in scalars  # text, not a scalar


def test_unknown_tracker_is_a_config_error_naming_the_known_ones(tmp_path):
    with pytest.raises(ConfigError, match="unknown tracker.*'tensorbord'.*tensorboard"):
        trackers.accelerator_kwargs(["tensorbord"], tmp_path)
    assert trackers.accelerator_kwargs([], tmp_path) == {} and trackers.accelerator_kwargs(["none"], tmp_path) == {}
