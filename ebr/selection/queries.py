"""Query selection (the paper's §4.3): per request, whether its (nn) part runs, as a version's stage
`query_policy` (ebr/retrieval/stages.py).

Three rules, each on or off in `query_selection` (conf/query_selection/default.yaml); a request gets term
matching only (`without_nn`) when any rule that is on says skip:

  repeat_click  the searcher repeats a query (normalised text) whose result they clicked in the training
                sessions: the (searcher, query) pairs are kept as 64-bit hashes (`pair_hash`), never as text;
  length        queries of at least `min_tokens` tokens and at most `max_chars` characters get `matched`
                (skip | keep), the others the other;
  classifier    a logistic regression over features of the request alone (`QueryFeatures`), labelled by
                replaying training requests with and without the (nn) part (`replay_labels`): skip when
                P(the nn part finds a click term matching misses) < `threshold`.

Serving reads the stage folder once (`load_policy`); a decision is a set look-up and a dot product over a
few features, in plain Python.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ebr.io import atomic_write_text
from ebr.retrieval.query import Node, vector_nodes, without_nn
from ebr.retrieval.service import SearchRequest, SearchService
from ebr.retrieval.stages import ORDER
from ebr.retrieval.terms import TEXT_PREFIX, tokens

if TYPE_CHECKING:
    from ebr.config import QuerySelectionConfig

FORMAT = 1
POLICY_FILE = "policy.json"
PAIRS_FILE = "pairs.npy"  # int64 hashes of (searcher, normalised query) pairs with a click, sorted
VOCAB_FILE = "vocab.npy"  # int64 hashes of the index's text tokens, sorted
DF_FILE = "df.npy"  # int64 document frequency of each token of vocab.npy
RULES = ("repeat_click", "length", "classifier")
BASE_FEATURES = ("tokens", "chars", "searcher", "known", "min_df", "mean_df")
STAGES_OFF = {name: False for name in ORDER}  # a replay measures retrieval alone


def normalised_query(text: str | None) -> str:
    """The query text as the policy compares it: its folded tokens joined by one space."""
    return " ".join(tokens(text or ""))


def hash64(text: str) -> int:
    """A deterministic signed 64-bit hash of `text` (blake2b), the same in every process."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def pair_hash(searcher_id: int | None, query_text: str | None) -> int | None:
    """The hash of a (searcher, normalised query) pair; None for an anonymous search or an empty query."""
    query = normalised_query(query_text)
    if searcher_id is None or not query:
        return None
    return hash64(f"{int(searcher_id)}\x1f{query}")


@dataclass(frozen=True)
class QueryFeatures:
    """Features of a request alone: token and character counts, whether a searcher is known, the share of
    its tokens in the index's text terms and their document frequencies (log, relative to the documents),
    and its vertical (one-hot over `verticals`)."""

    verticals: tuple[str, ...]
    n_docs: int
    df: Mapping[int, int]  # token hash -> document frequency in the index

    @property
    def names(self) -> tuple[str, ...]:
        return BASE_FEATURES + tuple(f"vertical={v}" for v in self.verticals)

    def vector(self, request: SearchRequest) -> list[float]:
        words = tokens(request.query_text or "")
        counts = [self.df.get(hash64(w), 0) for w in words]
        scale = math.log1p(max(self.n_docs, 1))
        logs = [math.log1p(c) / scale for c in counts]
        base = [
            float(len(words)),
            float(len((request.query_text or "").strip())),
            0.0 if request.searcher_id is None else 1.0,
            sum(c > 0 for c in counts) / len(words) if words else 0.0,
            min(logs) if logs else 0.0,
            sum(logs) / len(logs) if logs else 0.0,
        ]
        return base + [1.0 if request.vertical == v else 0.0 for v in self.verticals]

    def matrix(self, requests: Sequence[SearchRequest]) -> np.ndarray:
        return np.array([self.vector(r) for r in requests], dtype=np.float64).reshape(
            len(requests), len(self.names)
        )


@dataclass(frozen=True)
class Classifier:
    """A standardised logistic regression: P(nn helps) = sigmoid(w . (x - mean) / scale + b)."""

    features: QueryFeatures
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    weights: tuple[float, ...]
    intercept: float
    threshold: float

    def probability(self, request: SearchRequest) -> float:
        x = self.features.vector(request)
        z = self.intercept + sum(
            w * (v - m) / s for w, v, m, s in zip(self.weights, x, self.mean, self.scale, strict=True)
        )
        return 1.0 / (1.0 + math.exp(-z)) if z > -700 else 0.0


@dataclass(frozen=True)
class LengthBand:
    min_tokens: int | None
    max_chars: int | None
    matched: str  # skip | keep

    def skips(self, request: SearchRequest) -> bool:
        text = (request.query_text or "").strip()
        inside = (self.min_tokens is None or len(tokens(text)) >= self.min_tokens) and (
            self.max_chars is None or len(text) <= self.max_chars
        )
        return inside == (self.matched == "skip")


@dataclass(frozen=True)
class QueryPolicy:
    """The rules that are on (None: off); `select` is the stage's entry point."""

    repeat: frozenset[int] | None = None
    length: LengthBand | None = None
    classifier: Classifier | None = None

    @property
    def rules(self) -> list[str]:
        return [name for name in RULES if getattr(self, _FIELDS[name]) is not None]

    def skip_rule(self, request: SearchRequest) -> str | None:
        """The first rule (in `RULES` order) that says skip the nn part of `request`, or None."""
        if self.repeat is not None:
            key = pair_hash(request.searcher_id, request.query_text)
            if key is not None and key in self.repeat:
                return "repeat_click"
        if self.length is not None and self.length.skips(request):
            return "length"
        if self.classifier is not None and self.classifier.probability(request) < self.classifier.threshold:
            return "classifier"
        return None

    def select(self, request: SearchRequest, root: Node) -> Node:
        """The expression to run: `root` without its (nn) part when a rule says skip, else `root`."""
        if not vector_nodes(root) or self.skip_rule(request) is None:
            return root
        return without_nn(root)

    def only(self, rules: Sequence[str]) -> QueryPolicy:
        """The same policy with only `rules` on (of those it has); for measuring each rule alone."""
        unknown = sorted(set(rules) - set(RULES))
        if unknown:
            raise ValueError(f"unknown query selection rule {unknown[0]!r} (rules: {', '.join(RULES)})")
        return replace(self, **{_FIELDS[n]: None for n in RULES if n not in rules})


_FIELDS = {"repeat_click": "repeat", "length": "length", "classifier": "classifier"}


# ----- training


def replay_labels(
    service: SearchService,
    requests: Sequence[SearchRequest],
    targets: Sequence[np.ndarray],
    k: int,
    block: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
    """Per request: whether one of its clicked documents is in the first `k` results with the (nn) part, and
    without it (`without_nn`), through `service.search_many` with every stage off; in blocks of requests."""
    with_nn = np.zeros(len(requests), dtype=bool)
    term_only = np.zeros(len(requests), dtype=bool)
    for start in range(0, len(requests), block):
        part = [replace(r, limit=k, stages=STAGES_OFF) for r in requests[start : start + block]]
        bare = [replace(r, expr=str(without_nn(service.expression(r)))) for r in part]
        full, terms = service.search_many(part), service.search_many(bare)
        for i, (a, b) in enumerate(zip(full, terms, strict=True)):
            clicked = targets[start + i]
            with_nn[start + i] = bool(np.isin(clicked, a.hits.doc_ids).any())
            term_only[start + i] = bool(np.isin(clicked, b.hits.doc_ids).any())
    return with_nn, term_only


def index_vocabulary(service: SearchService) -> tuple[np.ndarray, np.ndarray, int]:
    """The hashes of the index's text tokens (sorted), their live document frequencies and the number of
    live documents."""
    index = service.engine.index
    words = [t for t in index.terms if t.startswith(TEXT_PREFIX)]
    pairs = sorted((hash64(t[len(TEXT_PREFIX) :]), index.live_document_frequency(t)) for t in words)
    hashes = np.array([h for h, _ in pairs], dtype=np.int64)
    df = np.array([d for _, d in pairs], dtype=np.int64)
    return hashes, df, int(index.live_count)


def fit_classifier(
    x: np.ndarray, y: np.ndarray, c: float, holdout: float, seed: int
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """A standardised logistic regression on a seeded `1 - holdout` share of (x, y), its AUC and accuracy on
    the rest: (the model's parameters, or None when the labels are of one class, and the metrics)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, roc_auc_score

    n = len(y)
    order = np.random.default_rng(seed).permutation(n)
    n_held = int(round(holdout * n)) if n > 1 else 0
    held, fit = order[:n_held], order[n_held:]
    metrics: dict[str, Any] = {"requests": n, "positives": int(y.sum()), "fit": len(fit), "held_out": n_held}
    if len(fit) == 0 or len(np.unique(y[fit])) < 2:
        return None, metrics | {"trained": False, "why": "the training labels are all of one class"}
    mean = x[fit].mean(axis=0)
    scale = x[fit].std(axis=0)
    scale[scale == 0] = 1.0
    model = LogisticRegression(C=c, max_iter=1000).fit((x[fit] - mean) / scale, y[fit])
    if n_held:
        p = model.predict_proba((x[held] - mean) / scale)[:, 1]
        metrics["accuracy"] = float(accuracy_score(y[held], p >= 0.5))
        metrics["auc"] = float(roc_auc_score(y[held], p)) if len(np.unique(y[held])) == 2 else None
    params = {
        "mean": mean.tolist(),
        "scale": scale.tolist(),
        "weights": model.coef_[0].tolist(),
        "intercept": float(model.intercept_[0]),
    }
    return params, metrics | {"trained": True}


def train_policy(
    cfg: QuerySelectionConfig,
    service: SearchService,
    requests: Sequence[SearchRequest],
    targets: Sequence[np.ndarray],
    verticals: Sequence[str],
    seed: int,
    out: Path,
) -> dict[str, Any]:
    """Train the rules of `cfg` on the training requests and their clicked
    documents, measured through `service` (the candidate); write the stage folder `out`; return its summary
    (what the manifest's `stages.query_policy` records)."""
    out.mkdir(parents=True, exist_ok=True)
    if len(requests) != len(targets):
        raise ValueError(f"query selection: {len(requests)} requests but {len(targets)} target lists")
    policy: dict[str, Any] = {"format": FORMAT, "rules": {}}
    summary: dict[str, Any] = {"format": FORMAT, "requests": len(requests), "rules": []}
    if cfg.repeat_click.enabled:
        hashes = {
            pair_hash(r.searcher_id, r.query_text) for r, t in zip(requests, targets, strict=True) if len(t)
        }
        hashes.discard(None)
        np.save(out / PAIRS_FILE, np.array(sorted(hashes), dtype=np.int64))
        policy["rules"]["repeat_click"] = {"file": PAIRS_FILE}
        summary["repeat_click"] = {"pairs": len(hashes)}
    if cfg.length.enabled:
        if cfg.length.matched not in ("skip", "keep"):
            raise ValueError(
                f"query_selection.length.matched must be skip or keep, got {cfg.length.matched!r}"
            )
        band = {
            "min_tokens": cfg.length.min_tokens,
            "max_chars": cfg.length.max_chars,
            "matched": cfg.length.matched,
        }
        policy["rules"]["length"] = band
        summary["length"] = band
    if cfg.classifier.enabled:
        policy["rules"]["classifier"], summary["classifier"] = _train_classifier(
            cfg, service, requests, targets, verticals, seed, out
        )
        if policy["rules"]["classifier"] is None:
            del policy["rules"]["classifier"]
    summary["rules"] = [name for name in RULES if name in policy["rules"]]
    atomic_write_text(out / POLICY_FILE, json.dumps(policy, indent=2))
    return summary


def _train_classifier(
    cfg: QuerySelectionConfig,
    service: SearchService,
    requests: Sequence[SearchRequest],
    targets: Sequence[np.ndarray],
    verticals: Sequence[str],
    seed: int,
    out: Path,
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    ccfg = cfg.classifier
    if not 0.0 <= ccfg.threshold <= 1.0 or not 0.0 <= ccfg.holdout < 1.0 or ccfg.max_requests < 1:
        raise ValueError(
            "query_selection.classifier: threshold must be in [0, 1], holdout in [0, 1) and max_requests >= 1"
            f" (got {ccfg.threshold}, {ccfg.holdout}, {ccfg.max_requests})"
        )
    rows = np.arange(len(requests))
    if len(rows) > ccfg.max_requests:
        rows = np.sort(np.random.default_rng(seed).choice(rows, ccfg.max_requests, replace=False))
    asked = [requests[i] for i in rows]
    with_nn, term_only = replay_labels(service, asked, [targets[i] for i in rows], cfg.k)
    labels = with_nn & ~term_only
    hashes, df, n_docs = index_vocabulary(service)
    features = QueryFeatures(tuple(verticals), n_docs, dict(zip(hashes.tolist(), df.tolist(), strict=True)))
    params, metrics = fit_classifier(features.matrix(asked), labels, ccfg.c, ccfg.holdout, seed)
    metrics |= {
        "k": cfg.k,
        "found_with_nn": float(with_nn.mean()) if len(asked) else None,
        "found_term_only": float(term_only.mean()) if len(asked) else None,
        "nn_helps": float(labels.mean()) if len(asked) else None,
        "threshold": ccfg.threshold,
        "features": list(features.names),
    }
    if params is None:
        return None, metrics
    np.save(out / VOCAB_FILE, hashes)
    np.save(out / DF_FILE, df)
    rule = params | {
        "threshold": ccfg.threshold,
        "features": list(features.names),
        "verticals": list(verticals),
        "n_docs": n_docs,
        "vocabulary": VOCAB_FILE,
        "df": DF_FILE,
    }
    return rule, metrics


# ----- serving


def load_policy(folder: Path, summary: Mapping[str, Any]) -> QueryPolicy:
    """The stage `query_policy` of a version (its folder and its manifest summary)."""
    path = folder / POLICY_FILE
    try:
        policy = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: unreadable query policy ({exc})") from exc
    if policy.get("format") != FORMAT:
        raise ValueError(f"{path}: query policy format {policy.get('format')!r}, this code reads {FORMAT}")
    rules = policy.get("rules") or {}
    unknown = sorted(set(rules) - set(RULES))
    if unknown:
        raise ValueError(f"{path}: unknown rule {unknown[0]!r} (rules: {', '.join(RULES)})")
    repeat = length = classifier = None
    if "repeat_click" in rules:
        repeat = frozenset(np.load(folder / rules["repeat_click"]["file"]).tolist())
    if "length" in rules:
        band = rules["length"]
        length = LengthBand(band.get("min_tokens"), band.get("max_chars"), band["matched"])
    if "classifier" in rules:
        c = rules["classifier"]
        hashes, df = np.load(folder / c["vocabulary"]), np.load(folder / c["df"])
        features = QueryFeatures(
            tuple(c["verticals"]), int(c["n_docs"]), dict(zip(hashes.tolist(), df.tolist(), strict=True))
        )
        if list(features.names) != list(c["features"]) or len(c["weights"]) != len(features.names):
            raise ValueError(f"{path}: the classifier's features {c['features']} are not this code's")
        classifier = Classifier(
            features,
            tuple(c["mean"]),
            tuple(c["scale"]),
            tuple(c["weights"]),
            float(c["intercept"]),
            float(c["threshold"]),
        )
    return QueryPolicy(repeat, length, classifier)
