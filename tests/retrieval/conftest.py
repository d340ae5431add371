"""Fixtures of the engine tests (helpers live in engine_fixtures.py)."""

from __future__ import annotations

import faiss
import pytest
from engine_fixtures import train_indexes


@pytest.fixture(scope="session")
def trained() -> dict[str, faiss.Index]:
    """Trained, empty quantised indexes per key (inner product, as published)."""
    return train_indexes()
