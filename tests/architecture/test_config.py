"""Every experiment in conf/experiment composes under the schemas (ebr/config.py) and passes the checks a
retrain makes before it reads any data; a key no schema knows is refused with its name."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException

from ebr.config import RetrainConfig, load_config, typed
from ebr.evaluation.gate import GateConfig
from ebr.home import conf_dir
from ebr.models.training import variant
from ebr.retrieval.calibration import check
from ebr.retrieval.config import engine_config, load_engine_config

EXPERIMENTS = sorted(p.stem for p in (conf_dir() / "experiment").glob("*.yaml"))


def test_the_experiments_are_found() -> None:
    assert {"smoke", "text_search"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes_and_validates(name: str) -> None:
    cfg = load_config([f"experiment={name}"])
    assert isinstance(typed(cfg), RetrainConfig)
    for model in cfg.train.models:
        assert variant(cfg, model).name == model
    check(typed(cfg.serving))
    GateConfig.from_mapping(cfg.gate, verticals=["people", "papers"])


def test_the_engine_config_composes_and_validates() -> None:
    assert load_engine_config().max_limit >= load_engine_config().default_limit
    engine_config(load_config(config_name="engine/default").engine)


@pytest.mark.parametrize("key", ["train.bogus", "model.hidden", "gate.flor"])
def test_an_unknown_key_is_refused_with_its_name(key: str) -> None:
    with pytest.raises(ConfigCompositionException, match=key):
        load_config([f"{key}=1"])


def test_a_mistyped_value_is_refused_with_its_key() -> None:
    with pytest.raises(ConfigCompositionException, match="batch_size"):
        load_config(["train.batch_size=many"])
