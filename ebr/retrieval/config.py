"""The engine's settings from conf/engine/default.yaml (Hydra overrides: `engine.limits.max_k=50`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf

from ebr.config import load_config
from ebr.retrieval.executor import ORDERS, PlannerCosts
from ebr.retrieval.query import Limits
from ebr.retrieval.scoring import BM25Params
from ebr.retrieval.store import StoreConfig

MAX_DEPTH_CEILING = 200  # the parser recurses once per level


@dataclass(frozen=True)
class ServingConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    request_timeout_s: float = 5.0
    reload_poll_s: float = 1.0
    max_vector_dims: int = 4096


@dataclass(frozen=True)
class EngineConfig:
    limits: Limits
    store: StoreConfig
    serving: ServingConfig
    default_limit: int
    max_limit: int
    order: str
    max_batch_changes: int
    default_vertical: str | None
    templates: dict[str, str]
    planner: PlannerCosts
    bm25: BM25Params


def engine_config(cfg: DictConfig) -> EngineConfig:
    """Typed settings from the `engine` config node; raises ValueError naming a bad setting."""
    raw = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(raw, dict)
    store = dict(raw["store"])
    max_batch = int(store.pop("max_batch_changes"))
    config = EngineConfig(
        limits=Limits(**raw["limits"]),
        store=StoreConfig(**store),
        serving=ServingConfig(**raw["serving"]),
        default_limit=int(raw["results"]["default_limit"]),
        max_limit=int(raw["results"]["max_limit"]),
        order=str(raw["results"]["order"]),
        max_batch_changes=max_batch,
        default_vertical=raw.get("default_vertical"),
        templates={str(k): str(v) for k, v in (raw.get("templates") or {}).items()},
        planner=PlannerCosts(**raw["planner"]),
        bm25=BM25Params(**raw["bm25"]),
    )
    if not 1 <= config.limits.max_depth <= MAX_DEPTH_CEILING:
        raise ValueError(f"engine.limits.max_depth must be between 1 and {MAX_DEPTH_CEILING}")
    if config.order not in ORDERS:
        raise ValueError(f"engine.results.order must be one of {ORDERS}, got {config.order!r}")
    if not 1 <= config.default_limit <= config.max_limit:
        raise ValueError("engine.results.default_limit must be between 1 and engine.results.max_limit")
    if not 1 <= config.limits.default_nprobe <= config.limits.max_nprobe:
        raise ValueError("engine.limits.default_nprobe must be between 1 and engine.limits.max_nprobe")
    if not config.bm25.k1 >= 0:
        raise ValueError(f"engine.bm25.k1 must be at least 0, got {config.bm25.k1}")
    if not 0 <= config.bm25.b <= 1:
        raise ValueError(f"engine.bm25.b must be between 0 and 1, got {config.bm25.b}")
    return config


def load_engine_config(overrides: Sequence[str] = ()) -> EngineConfig:
    """conf/engine/default.yaml with Hydra overrides such as `engine.serving.port=9000`."""
    return engine_config(load_config(overrides, config_name="engine/default").engine)
