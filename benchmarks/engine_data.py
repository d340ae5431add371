"""The engine benchmarks' corpus: clustered unit vectors with a location hierarchy of terms, built once.

Documents: `n` unit vectors of dimension `d` drawn around 1,000 random centres (IVF sees realistic, clustered
data), and terms from a three-level location hierarchy independent of the vectors, so that each level is a
filter of known selectivity:
    location:c<0..999>   0.1% of the documents each
    region:r<0..99>      1% each
    country:k<0..9>      10% each
plus vertical:people|groups|events. Queries are fresh draws around the same centres.

`prepare(workdir, ...)` trains the quantiser on a sample, builds the engine folder with the engine's own
builder and caches everything (vectors, queries, trained index, engine folder, build timings) in `workdir`.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from ebr.retrieval.build import build_engine_index
from ebr.retrieval.index import EngineIndex

KEY = "bench"
CENTRES = 1_000
LEVELS = {"location": ("c", 1), "region": ("r", 10), "country": ("k", 100)}  # city -> value = city // div
SELECTIVITY = {"location": 0.001, "region": 0.01, "country": 0.1}


@dataclass
class BenchData:
    index: EngineIndex
    vectors: np.ndarray  # float32 (n, d), unit rows, row = internal id
    queries: np.ndarray  # float32 (n_queries, d)
    cities: np.ndarray  # int16 city of each document
    build: dict


def clustered(rng: np.random.Generator, centres: np.ndarray, n: int, spread: float) -> np.ndarray:
    """Unit vectors around random centres, made in blocks (no n x d float64 temporaries)."""
    out = np.empty((n, centres.shape[1]), dtype=np.float32)
    for start in range(0, n, 100_000):
        stop = min(n, start + 100_000)
        x = centres[rng.integers(len(centres), size=stop - start)]
        x = x + rng.standard_normal(x.shape, dtype=np.float32) * np.float32(spread / np.sqrt(x.shape[1]))
        out[start:stop] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def document_terms(cities: np.ndarray, rng: np.random.Generator) -> list[list[str]]:
    verticals = rng.integers(3, size=len(cities))
    names = ("vertical:people", "vertical:groups", "vertical:events")
    return [
        [names[v], f"location:c{c}", f"region:r{c // 10}", f"country:k{c // 100}"]
        for c, v in zip(cities.tolist(), verticals.tolist(), strict=True)
    ]


def filter_term(level: str, city: int) -> str:
    prefix, div = LEVELS[level]
    return f"{level}:{prefix}{city // div}"


def add_data_args(parser: argparse.ArgumentParser) -> None:
    """The corpus options every engine benchmark shares (same values: the cached corpus is reused)."""
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/ebr-engine-bench"))
    parser.add_argument("--n", type=int, default=1_000_000, help="documents")
    parser.add_argument("--d", type=int, default=64, help="dimensions")
    parser.add_argument("--factory", default="OPQ16,IVF1024,PQ16", help="faiss index_factory string")
    parser.add_argument("--train-size", type=int, default=50_000, help="training sample of the quantiser")
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)


def load(args: argparse.Namespace) -> BenchData:
    """`prepare` with the options of `add_data_args`."""
    return prepare(args.workdir, args.n, args.d, args.factory, args.train_size, args.queries, args.seed)


def prepare(
    workdir: Path, n: int, d: int, factory: str, train_size: int, n_queries: int, seed: int
) -> BenchData:
    """Build (or load from `workdir`) the corpus, the trained index and the engine folder."""
    workdir.mkdir(parents=True, exist_ok=True)
    params = {
        "n": n,
        "d": d,
        "factory": factory,
        "train_size": train_size,
        "n_queries": n_queries,
        "seed": seed,
    }
    info_path = workdir / "build.json"
    if info_path.is_file() and json.loads(info_path.read_text())["params"] == params:
        build = json.loads(info_path.read_text())
        return BenchData(
            EngineIndex.load(workdir / "engine"),
            np.load(workdir / "vectors.npy", mmap_mode="r"),
            np.load(workdir / "queries.npy"),
            np.load(workdir / "cities.npy"),
            build,
        )
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((CENTRES, d), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    vectors = clustered(rng, centres, n, spread=1.0)
    queries = clustered(rng, centres, n_queries, spread=1.0)
    cities = rng.integers(1000, size=n).astype(np.int16)
    timings = {}
    started = time.perf_counter()
    trained = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    trained.train(vectors[np.sort(rng.choice(n, size=min(train_size, n), replace=False))])
    timings["train_s"] = time.perf_counter() - started
    started = time.perf_counter()
    terms = document_terms(cities, rng)
    index = build_engine_index(np.arange(n, dtype=np.int64), terms, {KEY: vectors}, {KEY: trained})
    timings["engine_build_s"] = time.perf_counter() - started
    started = time.perf_counter()
    (workdir / "engine").mkdir(exist_ok=True)
    index.save(workdir / "engine")
    timings["engine_save_s"] = time.perf_counter() - started
    np.save(workdir / "vectors.npy", vectors)
    np.save(workdir / "queries.npy", queries)
    np.save(workdir / "cities.npy", cities)
    build = {"params": params, "timings": timings, "memory_bytes": index.memory_bytes()}
    info_path.write_text(json.dumps(build, indent=2))
    return BenchData(index, vectors, queries, cities, build)
