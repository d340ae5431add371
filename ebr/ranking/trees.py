"""A trained LightGBM model as flat numpy arrays, for serving without importing LightGBM.

Importing lightgbm imports scikit-learn and pandas (seconds of a cold `ebr search`, docs/benchmarks.md); a
served stage only needs the trees' decisions. `Forest.from_booster` reads a booster's `dump_model()` (its best
iteration) into arrays, `save`/`load` keep them as `trees.json` in the stage folder, and `raw` evaluates every
tree of every row at once, one level per step, with LightGBM's numerical decision: a NaN is 0.0 unless the
split's missing type is NaN; a missing value (NaN for type NaN, zero for type Zero) goes the split's default
way; otherwise `x <= threshold` goes left. `tests/ranking/test_trees.py` checks it equal to
`Booster.predict`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

TREES_FILE = "trees.json"
MISSING = {"None": 0, "Zero": 1, "NaN": 2}
ZERO = 1e-35  # LightGBM's kZeroThreshold


@dataclass(frozen=True)
class Forest:
    """Split nodes of every tree (a child >= 0 is a split node, < 0 the leaf ~child), leaves, roots."""

    feature: np.ndarray  # int64 per split node
    threshold: np.ndarray  # float64
    default_left: np.ndarray  # bool
    missing: np.ndarray  # int8: MISSING
    left: np.ndarray  # int64
    right: np.ndarray  # int64
    leaf_value: np.ndarray  # float64 per leaf
    roots: np.ndarray  # int64 per tree, encoded as the children are
    objective: str  # LightGBM's objective line, e.g. "lambdarank" or "binary sigmoid:1"
    n_features: int

    @classmethod
    def from_dump(cls, dump: dict[str, Any]) -> Forest:
        """From `Booster.dump_model()`; ValueError for a split this evaluator does not know (categorical)."""
        nodes: dict[str, list[Any]] = {k: [] for k in ("f", "t", "d", "m", "l", "r")}
        leaves: list[float] = []

        def walk(node: dict[str, Any]) -> int:
            if "leaf_value" in node or "split_feature" not in node:
                leaves.append(float(node.get("leaf_value", 0.0)))
                return ~(len(leaves) - 1)
            if node.get("decision_type") != "<=":
                raise ValueError(f"tree split {node.get('decision_type')!r} is not numerical")
            at = len(nodes["f"])
            for key, value in (
                ("f", int(node["split_feature"])),
                ("t", float(node["threshold"])),
                ("d", bool(node["default_left"])),
                ("m", MISSING[str(node["missing_type"])]),
                ("l", 0),
                ("r", 0),
            ):
                nodes[key].append(value)
            nodes["l"][at] = walk(node["left_child"])
            nodes["r"][at] = walk(node["right_child"])
            return at

        roots = [walk(tree["tree_structure"]) for tree in dump["tree_info"]]
        return cls(
            np.asarray(nodes["f"], dtype=np.int64),
            np.asarray(nodes["t"], dtype=np.float64),
            np.asarray(nodes["d"], dtype=bool),
            np.asarray(nodes["m"], dtype=np.int8),
            np.asarray(nodes["l"], dtype=np.int64),
            np.asarray(nodes["r"], dtype=np.int64),
            np.asarray(leaves, dtype=np.float64),
            np.asarray(roots, dtype=np.int64),
            str(dump.get("objective", "")),
            int(dump["max_feature_idx"]) + 1,
        )

    @classmethod
    def from_booster(cls, booster: Any) -> Forest:
        """From a trained `lightgbm.Booster` (its best iteration when it has one)."""
        return cls.from_dump(booster.dump_model())

    def raw(self, matrix: np.ndarray) -> np.ndarray:
        """The sum of the trees' leaf values per row (LightGBM's raw score)."""
        x = np.asarray(matrix, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"the model takes {self.n_features} features, got an array of shape {x.shape}")
        rows = np.repeat(np.arange(len(x)), len(self.roots))
        node = np.tile(self.roots, len(x))
        split = node >= 0
        while split.any():
            at, row = node[split], rows[split]
            value = x[row, self.feature[at]]
            nan = np.isnan(value)
            missing = self.missing[at]
            value = np.where(nan & (missing != MISSING["NaN"]), 0.0, value)
            default = ((missing == MISSING["Zero"]) & (np.abs(value) <= ZERO)) | (
                (missing == MISSING["NaN"]) & nan
            )
            go_left = np.where(default, self.default_left[at], value <= self.threshold[at])
            node[split] = np.where(go_left, self.left[at], self.right[at])
            split = node >= 0
        return self.leaf_value[~node].reshape(len(x), len(self.roots)).sum(axis=1)

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        """What `Booster.predict` gives: the raw score, through the sigmoid for a binary objective."""
        raw = self.raw(matrix)
        if self.objective.startswith("binary"):
            scale = next((float(p[8:]) for p in self.objective.split() if p.startswith("sigmoid:")), 1.0)
            return 1.0 / (1.0 + np.exp(-scale * raw))
        return raw

    def save(self, folder: Path) -> None:
        """`trees.json` in `folder`."""
        arrays = {k: v.tolist() for k, v in vars(self).items() if isinstance(v, np.ndarray)}
        meta = {"objective": self.objective, "n_features": self.n_features}
        (folder / TREES_FILE).write_text(json.dumps(arrays | meta))

    @classmethod
    def load(cls, folder: Path) -> Forest:
        """The forest saved in `folder`; ValueError naming the file when it is missing or malformed."""
        path = folder / TREES_FILE
        try:
            data = json.loads(path.read_text())
            types = {"feature": np.int64, "threshold": np.float64, "default_left": bool, "missing": np.int8}
            types |= {"left": np.int64, "right": np.int64, "leaf_value": np.float64, "roots": np.int64}
            arrays = {k: np.asarray(data[k], dtype=t) for k, t in types.items()}
            return cls(**arrays, objective=str(data["objective"]), n_features=int(data["n_features"]))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}: not a saved model ({exc})") from exc
