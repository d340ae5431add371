"""One tiny world per test session, shared by the simulator tests (generating one takes a few seconds)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ebr.simulator.world import simulate


@pytest.fixture(scope="session")
def tiny_seed() -> int:
    return 3


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory: pytest.TempPathFactory, tiny_seed: int) -> Path:
    return simulate("tiny", tiny_seed, tmp_path_factory.mktemp("worlds") / f"tiny-s{tiny_seed}")
