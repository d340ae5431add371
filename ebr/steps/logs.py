"""Step `logs`: the folder of log tables a run ingests (data.logs_dir, or the simulated world of a scale)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from ebr import home
from ebr.runners import SERIAL, Shards


def world_dir(cfg: DictConfig, shards: Shards = SERIAL) -> Path:
    """The logs folder: data.logs_dir, or the simulated world of data.scale (simulated once, then reused;
    its progress goes to `shards`)."""
    if cfg.data.logs_dir:
        path = Path(cfg.data.logs_dir).expanduser().resolve()
        if not path.is_dir():  # a config error (not retried), not an I/O failure
            raise ValueError(f"data.logs_dir: {path} is not a folder")
        return path
    path = home.world_dir(str(cfg.data.scale), int(cfg.data.world_seed))
    if not (path / "schema.json").is_file():
        from ebr.simulator.world import simulate

        simulate(str(cfg.data.scale), int(cfg.data.world_seed), path, progress=shards.report)
    return path
