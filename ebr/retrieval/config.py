"""The engine's settings from conf/engine/default.yaml (Hydra overrides: `engine.limits.max_k=50`), checked:
the schema (ebr/config.py) types every value when the config is composed; this module checks the ranges."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import fields

from omegaconf import DictConfig

from ebr.config import EngineConfig, load_config, typed
from ebr.retrieval.executor import ORDERS

MAX_DEPTH_CEILING = 200  # the parser recurses once per level
MAY_BE_ZERO = {"store.compact_after_records", "serving.port"}


def _check_positive(config: EngineConfig) -> None:
    """Every count, size and duration of limits, results, store and serving is positive (a few may be 0)."""
    for section in ("limits", "results", "store", "serving"):
        node = getattr(config, section)
        for f in fields(node):
            value, name = getattr(node, f.name), f"{section}.{f.name}"
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if not math.isfinite(value) or value < 0 or (value == 0 and name not in MAY_BE_ZERO):
                bound = "at least 0" if name in MAY_BE_ZERO else "positive"
                raise ValueError(f"engine.{name} must be {bound}, got {value}")


def engine_config(cfg: DictConfig) -> EngineConfig:
    """Typed settings from the `engine` config node; raises ValueError naming a bad setting."""
    config: EngineConfig = typed(cfg)
    _check_positive(config)
    if config.serving.port > 65535:
        raise ValueError(f"engine.serving.port must be at most 65535, got {config.serving.port}")
    if not config.serving.allowed_hosts:
        raise ValueError("engine.serving.allowed_hosts must name at least one host")
    if not 1 <= config.limits.max_depth <= MAX_DEPTH_CEILING:
        raise ValueError(f"engine.limits.max_depth must be between 1 and {MAX_DEPTH_CEILING}")
    if config.order not in ORDERS:
        raise ValueError(f"engine.results.order must be one of {ORDERS}, got {config.order!r}")
    if not 1 <= config.default_limit <= config.max_limit:
        raise ValueError("engine.results.default_limit must be between 1 and engine.results.max_limit")
    if not 1 <= config.limits.default_nprobe <= config.limits.max_nprobe:
        raise ValueError("engine.limits.default_nprobe must be between 1 and engine.limits.max_nprobe")
    if (cache_bytes := config.planner.filter_cache_bytes) < 0:
        raise ValueError(f"engine.planner.filter_cache_bytes must be at least 0, got {cache_bytes}")
    if not config.bm25.k1 >= 0:
        raise ValueError(f"engine.bm25.k1 must be at least 0, got {config.bm25.k1}")
    if not 0 <= config.bm25.b <= 1:
        raise ValueError(f"engine.bm25.b must be between 0 and 1, got {config.bm25.b}")
    return config


def load_engine_config(overrides: Sequence[str] = ()) -> EngineConfig:
    """conf/engine/default.yaml with Hydra overrides such as `engine.serving.port=9000`."""
    return engine_config(load_config(overrides, config_name="engine/default").engine)
