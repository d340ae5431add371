"""Fixtures of the ranking tests: the tiny version staged once per module, its DuckDB and context."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import faiss
import pytest
from ranking_pieces import TinyWorld, make_world, stage, write_db

from ebr.ranking.features import RankingContext


@pytest.fixture(autouse=True, scope="module")
def one_faiss_thread() -> Iterator[None]:
    saved = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(saved)


@pytest.fixture(scope="module")
def world() -> TinyWorld:
    return make_world()


@pytest.fixture(scope="module")
def staged(world: TinyWorld, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("ranking")
    return stage(world, tmp / "candidate")


@pytest.fixture(scope="module")
def db(world: TinyWorld, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_db(world, tmp_path_factory.mktemp("db") / "ebr.duckdb")


@pytest.fixture(scope="module")
def context(db: Path) -> RankingContext:
    return RankingContext.from_db(db)
