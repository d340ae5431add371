"""The simulator's configuration: conf/simulator/<scale>.yaml over conf/simulator/_base.yaml."""

from __future__ import annotations

from collections.abc import Sequence

from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from ebr.config import load_config
from ebr.home import conf_dir

POSITIVE_INTS = (
    "users",
    "cities",
    "days",
    "groups.count",
    "events.count",
    "sessions.count",
    "sessions.chunk",
    "sessions.workers",
    "retriever.k",
)


def scales() -> list[str]:
    """The scales shipped in conf/simulator/ (tiny, small, large, ...)."""
    return sorted(p.stem for p in (conf_dir() / "simulator").glob("*.yaml") if not p.stem.startswith("_"))


def load_scale(scale: str, overrides: Sequence[str] = ()) -> DictConfig:
    """The resolved simulator config of `scale`; overrides are Hydra overrides of its keys (`users=500`,
    `+countries.FR=0.1`), written without the `simulator.` prefix."""
    if scale not in scales():
        raise ValueError(f"unknown scale {scale!r}: expected one of {', '.join(scales())} (conf/simulator/)")
    try:
        prefixed = [f"+simulator.{o[1:]}" if o.startswith("+") else f"simulator.{o}" for o in overrides]
        cfg = load_config(prefixed, config_name=f"simulator/{scale}")
    except HydraException as e:
        raise ValueError(f"bad simulator override in {list(overrides)}: {str(e).splitlines()[0]}") from e
    for key in POSITIVE_INTS:
        value = OmegaConf.select(cfg.simulator, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"simulator.{key} must be a positive integer, got {value!r}")
    return cfg.simulator
