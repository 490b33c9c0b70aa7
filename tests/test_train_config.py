"""The typed training config (vertedge_train.config): every shipped config reads, survives its JSON
round trip, and a misspelt setting is refused by name, also on the command line. No torch needed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vertedge.geometry import Protocol
from vertedge_train.cli import main
from vertedge_train.config import TrainConfig

CONFIGS = sorted((Path(__file__).parents[1] / "vertedge_train" / "configs").glob("*.json"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_read_and_round_trip(path):
    raw = json.loads(path.read_text())
    cfg = TrainConfig.load(path)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert isinstance(cfg.protocol, Protocol)
    if "loc" in raw:  # what the file says wins over the defaults
        assert list(cfg.loc.crop) == raw["loc"]["crop"] and cfg.loc.steps == raw["loc"]["steps"]
    if "protocol" in raw:
        assert cfg.protocol == Protocol.from_dict(raw["protocol"])


def test_a_misspelt_setting_is_refused_by_name(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"config\.loc: unknown setting stpes"):
        TrainConfig.from_dict({"loc": {"stpes": 10}})
    with pytest.raises(ValueError, match=r"config\.data: expected a table"):
        TrainConfig.from_dict({"data": [1, 2]})
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"augment": {"gama": 1.2}}))
    assert main(["render", "--config", str(bad), "--out", str(tmp_path / "run")]) == 2
    assert "unknown setting gama" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_with_task_changes_one_task_only():
    cfg = TrainConfig().with_task("id", steps=7, context_dilations=(1, 2))
    assert cfg.id.steps == 7 and cfg.id.context_dilations == (1, 2)
    assert cfg.loc == TrainConfig().loc
    with pytest.raises(ValueError, match="unknown task"):
        cfg.task("seg")
