"""Friendships from geography and communities, with triadic closure; graph statistics (ours and SNAP's).

Users have a social position in [0, 1); each layer (family, school, work, hobby, college) cuts the users
of a scope (their city or region) into circles of geometric size along that position, jittered per layer, so
that the circles of different layers overlap as real ones do. Sociable users (sociability s > 1) sit in extra
circles, which gives the degree distribution its heavy tail; two members of a circle become friends with
chance p * min(1, s_i) * min(1, s_j), which gives it its many low-degree users. Random long ties connect
cities, regions and countries, and triadic closure makes friends of friends meet.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from ebr.simulator.population import Geography, Users

_MAX_PAIRS_PER_STEP = 4_000_000


def csr(n: int, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ptr, adj) of the undirected graph with `edges` (m, 2); each row's neighbours are sorted."""
    u = np.concatenate([edges[:, 0], edges[:, 1]])
    v = np.concatenate([edges[:, 1], edges[:, 0]])
    order = np.argsort(u * n + v)
    ptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(u, minlength=n), out=ptr[1:])
    return ptr, v[order]


def csr_gather(ptr: np.ndarray, data: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The concatenated slices data[ptr[r]:ptr[r+1]] of `rows`, without a Python loop."""
    starts, ends = ptr[rows], ptr[rows + 1]
    lengths = ends - starts
    total = int(lengths.sum())
    if total == 0:
        return data[:0]
    offsets = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    return data[np.arange(total) + offsets]


def _canonical(edges: np.ndarray) -> np.ndarray:
    """Sorted unique (u < v) pairs without self-loops."""
    u, v = edges.min(axis=1).astype(np.int64), edges.max(axis=1).astype(np.int64)
    keep = u != v
    n = int(v.max()) + 1 if len(v) else 1
    keys = np.sort(u[keep] * n + v[keep])
    keys = keys[np.concatenate([[True], keys[1:] != keys[:-1]])]
    return np.stack([keys // n, keys % n], axis=1)


def _circles(
    scope: np.ndarray,
    position: np.ndarray,
    copies: np.ndarray,
    mean_size: float,
    jitter: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Cut each scope's users (`copies` seats each) into circles of geometric size along their social position
    (jittered by about `jitter` circles, so circles of different layers overlap): (user of each seat in circle
    order, circle id of each seat)."""
    seats = np.repeat(np.arange(len(scope)), copies)
    first_seat = np.concatenate([[0], np.cumsum(copies)[:-1]])
    seat_position = rng.random(len(seats))  # extra seats of sociable users: anywhere in the scope
    seat_position[first_seat] = position
    scope_size = np.bincount(scope)[scope[seats]]
    key = seat_position + rng.normal(0.0, jitter * mean_size, len(seats)) / scope_size
    order = seats[np.lexsort((key, scope[seats]))]
    starts = rng.random(len(seats)) < 1.0 / mean_size
    starts[0] = True
    starts[1:] |= scope[order][1:] != scope[order][:-1]
    return order, np.cumsum(starts) - 1


def _circle_edges(
    order: np.ndarray, circle: np.ndarray, p: float, s: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Friendships inside circles: each pair with chance p * min(1, s_i) * min(1, s_j)."""
    sizes = np.bincount(circle)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    out = []
    for size in np.unique(sizes[sizes >= 2]):
        i, j = np.triu_indices(size, 1)
        circ_starts = starts[sizes == size]
        step = max(1, _MAX_PAIRS_PER_STEP // len(i))
        for b in range(0, len(circ_starts), step):
            base = circ_starts[b : b + step, None]
            a, c = order[(base + i).ravel()], order[(base + j).ravel()]
            keep = rng.random(len(a)) < p * s[a] * s[c]  # s already capped at 1
            out.append(np.stack([a[keep], c[keep]], axis=1))
    return np.concatenate(out) if out else np.empty((0, 2), dtype=np.int64)


def _random_in_group(group_of: np.ndarray, groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For each entry of `groups`, a uniformly random member (index) of that group."""
    order = np.argsort(group_of, kind="stable")
    counts = np.bincount(group_of, minlength=int(group_of.max()) + 1)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return order[starts[groups] + (rng.random(len(groups)) * counts[groups]).astype(np.int64)]


def make_friendships(
    users: Users, geo: Geography, cfg: DictConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(edges (m, 2) int64 with u < v sorted, hobby circle id per user)."""
    g = cfg.graph
    n = len(users)
    s = users.sociability
    capped = np.minimum(s, 1.0)
    position = rng.random(n)
    scopes = {"city": users.city, "region": geo.city_region[users.city]}
    parts, hobby = [], np.zeros(n, dtype=np.int64)
    for layer in g.layers:
        copies = 1 + rng.poisson(g.extra_circles * np.maximum(s - 1.0, 0.0))
        order, circle = _circles(scopes[layer.scope], position, copies, layer.mean_size, g.layer_jitter, rng)
        parts.append(_circle_edges(order, circle, layer.p, capped, rng))
        if layer.name == g.hobby_layer:
            hobby[order] = circle

    m = int(round(n * g.long_ties_per_user / 2))
    src = rng.choice(n, size=m, p=s / s.sum())
    kinds = list(g.long_tie_scopes)
    kind = rng.choice(len(kinds), size=m, p=np.array(list(g.long_tie_scopes.values())))
    dst = rng.integers(0, n, size=m)
    country = geo.city_country[users.city]
    for k, group_of in (("city", users.city), ("country", country)):
        sel = kind == kinds.index(k)
        dst[sel] = _random_in_group(group_of, group_of[src[sel]], rng)
    parts.append(np.stack([src, dst], axis=1))
    edges = _canonical(np.concatenate(parts))

    ptr, adj = csr(n, edges)
    deg = np.diff(ptr)
    centres = rng.choice(np.flatnonzero(deg >= 2), size=int(round(n * g.closure_per_user)))
    d = deg[centres]
    first = (rng.random(len(centres)) * d).astype(np.int64)
    second = (first + 1 + (rng.random(len(centres)) * (d - 1)).astype(np.int64)) % d
    closing = np.stack([adj[ptr[centres] + first], adj[ptr[centres] + second]], axis=1)
    return _canonical(np.concatenate([edges, closing])), hobby


def graph_statistics(
    n: int, edges: np.ndarray, sample: int | None, rng: np.random.Generator
) -> dict[str, Any]:
    """Degree distribution and clustering; clustering on `sample` random nodes (all nodes when None)."""
    ptr, adj = csr(n, edges)
    deg = np.diff(ptr)
    nodes = (
        np.arange(n) if sample is None or sample >= n else np.sort(rng.choice(n, size=sample, replace=False))
    )
    triangles = np.zeros(len(nodes))
    for i, v in enumerate(nodes):
        nb = adj[ptr[v] : ptr[v + 1]]
        if len(nb) >= 2:
            triangles[i] = np.isin(csr_gather(ptr, adj, nb), nb).sum() / 2
    wedges = deg[nodes] * (deg[nodes] - 1) / 2
    local = np.divide(triangles, wedges, out=np.zeros_like(triangles), where=wedges > 0)
    q = np.percentile(deg, [10, 25, 50, 75, 90, 99])
    bins = 2 ** np.arange(0, int(np.log2(max(deg.max(), 1))) + 2)
    hist = np.histogram(deg[deg > 0], bins=bins)[0] / max(int((deg > 0).sum()), 1)
    return {
        "nodes": int(n),
        "edges": int(len(edges)),
        "average_degree": round(float(deg.mean()), 3),
        "degree_quantiles": {
            f"p{p}": round(float(x), 1) for p, x in zip((10, 25, 50, 75, 90, 99), q, strict=True)
        },
        "max_degree": int(deg.max()),
        "degree_cv": round(float(deg.std() / deg.mean()), 3),
        "p90_over_p50": round(float(q[4] / max(q[2], 1)), 3),
        "tail_exponent": round(_tail_exponent(deg, x_min=max(int(q[2]), 1)), 3),
        "average_clustering": round(float(local.mean()), 4),
        "transitivity": round(float(triangles.sum() / max(wedges.sum(), 1)), 4),
        "clustering_nodes": int(len(nodes)),
        "log2_degree_histogram": {
            f"[{int(a)},{int(b)})": round(float(h), 4)
            for a, b, h in zip(bins[:-1], bins[1:], hist, strict=True)
        },
    }


def _tail_exponent(deg: np.ndarray, x_min: int) -> float:
    """Maximum-likelihood power-law exponent of the degrees >= x_min (discrete approximation)."""
    tail = deg[deg >= x_min].astype(np.float64)
    return float(1 + len(tail) / np.log(tail / (x_min - 0.5)).sum())


def reference_statistics(path: Path) -> dict[str, Any] | None:
    """Statistics of a reference edge list ("u v" lines, e.g. SNAP ego-Facebook); None when it is absent."""
    if not path.is_file():
        return None
    edges = np.loadtxt(path, dtype=np.int64, ndmin=2)
    ids, inverse = np.unique(edges, return_inverse=True)
    edges = _canonical(inverse.reshape(edges.shape))
    return graph_statistics(len(ids), edges, None, np.random.default_rng(0))
