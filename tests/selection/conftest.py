"""One faiss thread in these tests: deterministic, and no OpenMP spinning when the 2 cores are shared."""

from __future__ import annotations

from collections.abc import Iterator

import faiss
import pytest


@pytest.fixture(autouse=True, scope="module")
def one_faiss_thread() -> Iterator[None]:
    saved = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(saved)
