"""Compose the Hydra config outside @hydra.main (CLI commands, tests, Prefect flows)."""

from __future__ import annotations

from collections.abc import Sequence

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from ebr.home import conf_dir


def load_config(overrides: Sequence[str] = (), config_name: str = "retrain") -> DictConfig:
    """The resolved config `conf/<config_name>.yaml` with Hydra overrides applied (no sweep syntax)."""
    if GlobalHydra.instance().is_initialized():  # inside @hydra.main (e.g. a sweep job): compose in place
        cfg = compose(config_name=config_name, overrides=list(overrides))
    else:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=list(overrides))
    OmegaConf.resolve(cfg)
    return cfg
