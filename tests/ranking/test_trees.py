"""The served forest (ebr/ranking/trees.py) gives what LightGBM's own predict gives, missing values and
zeros included, for the ranker's and the filter's objectives, and survives save/load."""

from __future__ import annotations

from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest

from ebr.ranking.trees import Forest


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1500, 5))
    x[rng.random(x.shape) < 0.15] = np.nan  # NaN features: a document added since, no context
    x[rng.random(x.shape) < 0.1] = 0.0
    y = (np.nan_to_num(x[:, 0]) + 0.5 * np.nan_to_num(x[:, 1]) - 0.3 * np.isnan(x[:, 2]) > 0).astype(float)
    return x, y


@pytest.mark.parametrize("objective", ["binary", "lambdarank"])
def test_the_forest_predicts_what_lightgbm_predicts(objective: str, tmp_path: Path) -> None:
    x, y = _data()
    params = {"objective": objective, "verbosity": -1, "num_leaves": 15, "min_data_in_leaf": 5, "seed": 1}
    group = np.full(75, 20) if objective == "lambdarank" else None
    valid = lgb.Dataset(*_data(1), group=group)
    booster = lgb.train(
        params | ({"metric": "ndcg", "eval_at": [10]} if group is not None else {}),
        lgb.Dataset(x, y, group=group),
        200,
        valid_sets=[valid],
        callbacks=[lgb.early_stopping(10, verbose=False)],
    )
    forest = Forest.from_booster(booster)
    assert len(forest.roots) == (booster.best_iteration or booster.current_iteration())
    np.testing.assert_allclose(forest.predict(x), booster.predict(x), rtol=0, atol=1e-12)
    forest.save(tmp_path)
    np.testing.assert_array_equal(Forest.load(tmp_path).predict(x), forest.predict(x))
    with pytest.raises(ValueError, match="takes 5 features"):
        forest.predict(x[:, :4])


def test_a_malformed_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "trees.json").write_text("{}")
    with pytest.raises(ValueError, match="trees.json: not a saved model"):
        Forest.load(tmp_path)
