"""Step `logs`: the folder of log tables a run ingests (data.logs_dir, or the simulated world of a scale)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from ebr import home


def world_dir(cfg: DictConfig) -> Path:
    """The logs folder: data.logs_dir, or the simulated world of data.scale (simulated once, then reused)."""
    if cfg.data.logs_dir:
        path = Path(cfg.data.logs_dir).expanduser().resolve()
        if not path.is_dir():
            raise FileNotFoundError(f"data.logs_dir: {path} is not a folder")
        return path
    path = home.worlds_dir() / f"{cfg.data.scale}-s{cfg.data.world_seed}"
    if not (path / "schema.json").is_file():
        from ebr.simulator.world import simulate

        simulate(str(cfg.data.scale), int(cfg.data.world_seed), path)
    return path
