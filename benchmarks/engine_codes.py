"""Table 3 through the engine: every code type at equal scan share, filtered and pure nn recall@10, p50.

On the engine benchmark corpus (benchmarks/engine_data.py), one IVF coarse quantiser is trained once on the
sample and shared by every code type (OPQ rotates the space, so OPQ16 trains its own: its share is reported
apart), so the same nprobe scans the same lists: equal scan share. Each code type's engine index is built
by the engine's own builder; queries go through `execute` (the serving path), interleaved across code types
query by query. Recall@10 is against the exact float top 10 of the filter's documents (pure nn: of all).

    python benchmarks/engine_codes.py --workdir /tmp/h14_c_bench --nprobes 16 64
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import faiss
import numpy as np
from engine_data import KEY, LEVELS, SELECTIVITY, add_data_args, filter_term, load

from ebr.retrieval.build import build_engine_index
from ebr.retrieval.executor import execute
from ebr.retrieval.quantized import unsupported_reason
from ebr.retrieval.query import parse

CODES = {  # name -> index_factory codes after "IVF{nlist}," (OPQ: the whole factory)
    "PQ16 (default)": "PQ16",
    "PQ32": "PQ32",
    "OPQ16,PQ16": "OPQ16,IVF{nlist},PQ16",
    "SQ8": "SQ8",
    "Flat": "Flat",
    "PQ32x4fs": "PQ32x4fs",
    "PQ32x4fsr": "PQ32x4fsr",
    "RaBitQ": "RaBitQ",
    "RaBitQ4": "RaBitQ4",
    "RaBitQfs": "RaBitQfs",
}


def trained_codes(codes: str, d: int, nlist: int, quantizer: faiss.Index, sample: np.ndarray) -> faiss.Index:
    """A trained index for `codes`, its coarse quantiser a copy of the shared one (OPQ: its own)."""
    if codes.startswith("OPQ"):
        index = faiss.index_factory(d, codes.format(nlist=nlist), faiss.METRIC_INNER_PRODUCT)
    else:
        index = faiss.index_factory(d, f"IVF{nlist},{codes}", faiss.METRIC_INNER_PRODUCT)
        ivf = faiss.extract_index_ivf(index)
        shared = faiss.clone_index(quantizer)
        ivf.quantizer = shared
        ivf.own_fields = True
        shared.this.disown()
    if isinstance(faiss.downcast_index(faiss.extract_index_ivf(index)), faiss.IndexIVFPQ):
        faiss.downcast_index(faiss.extract_index_ivf(index)).do_polysemous_training = False
    index.train(sample)
    return index


def exact_top(vectors: np.ndarray, rows: np.ndarray, query: np.ndarray, k: int) -> set[int]:
    best_scores, best_rows = np.empty(0, np.float32), np.empty(0, np.int64)
    for start in range(0, len(rows), 200_000):
        block = rows[start : start + 200_000]
        scores = np.asarray(vectors[block]) @ query
        best_scores = np.concatenate([best_scores, scores])
        best_rows = np.concatenate([best_rows, block])
        keep = np.argsort(-best_scores, kind="stable")[:k]
        best_scores, best_rows = best_scores[keep], best_rows[keep]
    return set(best_rows.tolist())


def expression(level: str | None, city: int, nprobe: int):
    nn = f"(nn {KEY} :radius 2 :nprobe {nprobe})"  # radius 2: every score; the limit keeps the top 10
    return parse(nn if level is None else f"(and (term {filter_term(level, city)}) {nn})")


def compare(systems, info, queries, cities, cases, truth, nprobe: int, n: int) -> list[dict]:
    """One row per code type at `nprobe`: recall@10 and p50 per case, queries interleaved across codes."""
    exprs = {
        (case, i): expression(level, int(c), nprobe) for case, level in cases for i, c in enumerate(cities)
    }
    names = list(systems)
    times = {(name, case): [] for name in names for case, _ in cases}
    recalls = {(name, case): [] for name in names for case, _ in cases}
    shares = {name: [] for name in names}
    for rep in range(2):  # pass 0 warms caches, untimed
        for i, q in enumerate(queries):
            order = names[i % len(names) :] + names[: i % len(names)]  # rotate who goes first
            for case, _ in cases:
                for name in order:
                    t0 = time.perf_counter()
                    hits = execute(systems[name], exprs[case, i], {KEY: q}, limit=10)
                    elapsed = time.perf_counter() - t0
                    if rep:
                        times[name, case].append(elapsed)
                        recalls[name, case].append(len(set(hits.doc_ids.tolist()) & truth[case, i]) / 10)
            if rep:
                for name in names:
                    field = systems[name].fields[KEY]
                    shares[name].append(field.list_sizes(field.probe(q, nprobe).lists) / n)
    rows = []
    for name in names:
        row = {"code": name, "nprobe": nprobe, **info[name], "scan_share": float(np.mean(shares[name]))}
        for case, _ in cases:
            row[f"recall_{case}"] = float(np.mean(recalls[name, case]))
            row[f"p50_ms_{case}"] = float(np.median(times[name, case]) * 1e3)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_data_args(parser)
    parser.add_argument("--nlist", type=int, default=1024)
    parser.add_argument("--nprobes", type=int, nargs="+", default=[16, 64], help="one table per nprobe")
    parser.add_argument("--n-queries", type=int, default=200)
    parser.add_argument("--codes", nargs="*", default=list(CODES), help="names from CODES")
    parser.add_argument("--out", type=Path, default=None, help="JSON results (default: workdir/codes.json)")
    args = parser.parse_args()
    faiss.omp_set_num_threads(1)
    data = load(args)
    vectors, n, d = data.vectors, len(data.vectors), data.vectors.shape[1]
    rng = np.random.default_rng(args.seed + 1)
    sample = np.ascontiguousarray(
        vectors[np.sort(rng.choice(n, size=min(args.train_size, n), replace=False))]
    )
    started = time.perf_counter()
    coarse = faiss.IndexFlatIP(d)
    kmeans = faiss.Clustering(d, args.nlist)
    kmeans.seed = args.seed
    kmeans.train(sample, coarse)
    shared_train_s = time.perf_counter() - started
    terms = [[filter_term(level, int(c)) for level in LEVELS] for c in data.cities.tolist()]
    systems, info = {}, {}
    for name in args.codes:
        trained = trained_codes(CODES[name], d, args.nlist, coarse, sample)
        reason = unsupported_reason(trained)
        if reason is not None:
            info[name] = {"servable": False, "reason": reason}
            print(f"{name}: not servable: {reason}", flush=True)
            continue
        started = time.perf_counter()
        index = build_engine_index(np.arange(n, dtype=np.int64), terms, {KEY: vectors}, {KEY: trained})
        field = index.fields[KEY]
        info[name] = {
            "servable": True,
            "build_s": time.perf_counter() - started,
            "bytes_per_code": field.ivf.sa_code_size() - field.ivf.coarse_code_size(),
            "index": type(faiss.downcast_index(field.ivf)).__name__,
        }
        systems[name] = index
        print(f"{name}: built in {info[name]['build_s']:.1f}s", flush=True)
    queries = data.queries[np.arange(args.n_queries) % len(data.queries)]
    cities = rng.integers(1000, size=args.n_queries)
    cases = [("all", None)] + [(level, level) for level in LEVELS]
    truth = {}
    for case, level in cases:
        for i, (q, c) in enumerate(zip(queries, cities.tolist(), strict=True)):
            div = 1 if level is None else LEVELS[level][1]
            rows = np.arange(n) if level is None else np.flatnonzero(data.cities // div == c // div)
            truth[case, i] = exact_top(vectors, rows, q, 10)
    rows = []
    for nprobe in args.nprobes:
        rows += compare(systems, info, queries, cities, cases, truth, nprobe, n)
    result = {
        "params": {**vars(args), "workdir": str(args.workdir), "out": str(args.out)},
        "shared_coarse_train_s": shared_train_s,
        "rows": rows,
        "not_servable": {k: v["reason"] for k, v in info.items() if not v["servable"]},
    }
    out = args.out or args.workdir / "codes.json"
    out.write_text(json.dumps(result, indent=2))
    print(markdown(rows, result["not_servable"]))


def markdown(rows: list[dict], not_servable: dict[str, str]) -> str:
    """The Table-3-like comparison: recall@10 per selectivity and p50 per case, a row per (code, nprobe)."""
    levels = list(LEVELS)
    cells = [f"R@10 {SELECTIVITY[level]:.1%}" for level in levels] + ["R@10 all"]
    cells += [f"p50 ms {SELECTIVITY[level]:.1%}" for level in levels] + ["p50 ms all"]
    lines = ["| code | bytes/code | nprobe | % scanned | " + " | ".join(cells) + " |"]
    lines.append("| --- |" + " ---: |" * (3 + len(cells)))
    for r in rows:
        recalls = [f"{r[f'recall_{case}']:.3f}" for case in [*levels, "all"]]
        p50s = [f"{r[f'p50_ms_{case}']:.3f}" for case in [*levels, "all"]]
        head = f"| {r['code']} | {r['bytes_per_code']} | {r['nprobe']} | {r['scan_share']:.2%}"
        lines.append(head + " | " + " | ".join(recalls + p50s) + " |")
    lines += [f"| {name} | not servable: {reason} |" for name, reason in not_servable.items()]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
