"""Mining rounds on the simulator's tiny world: tables mined, validated, stored per run and trained on."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from ebr.config import load_config
from ebr.contracts.mined import MinedContractError
from ebr.mining.hard import Embedded, offline_hard_negatives
from ebr.mining.rounds import mine_table, run_mining
from ebr.mining.store import load_round, save_round
from ebr.models.features import build_features, split_from_config
from ebr.models.mined_data import MinedTripletDataModule

FAST = ["train.epochs=1", "train.min_steps=1", "train.batch_size=1024",
        "train.trainer.enable_progress_bar=false", "train.trainer.accelerator=cpu", "train.torch_threads=1",
        "data.split.tune=500", "data.split.evaluate=500",
        "mining.hard.window=[5,40]", "mining.easy_hard_ratio=10"]  # fmt: skip


@pytest.fixture(scope="module")
def tiny(tiny_world):
    _, db = tiny_world
    cfg = load_config(FAST)
    split = split_from_config(db, cfg)
    return db, split, build_features(db, cfg, split)


def _random_embed(features, dim: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    docs = rng.normal(size=(len(features.doc_ids), dim)).astype(np.float32)
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)

    def embed(session_ids):
        q = docs[rng.integers(0, len(docs), len(session_ids))]  # any fixed vectors do
        return Embedded(np.asarray(session_ids), q), Embedded(features.doc_ids, docs)

    return embed


def _copy(db: Path, tmp_path: Path) -> Path:
    target = tmp_path / "ebr.duckdb"
    target.write_bytes(db.read_bytes())
    return target


def test_mining_twice_with_the_same_seed_gives_the_same_table(tiny):
    db, split, features = tiny
    cfg = load_config([*FAST, "mining.positives=clicks+hard"])
    a = mine_table(db, cfg, split, 1, _random_embed(features))
    b = mine_table(db, cfg, split, 1, _random_embed(features))
    pd.testing.assert_frame_equal(a.negatives, b.negatives)
    pd.testing.assert_frame_equal(a.positives, b.positives)
    counts = a.report["counts"]
    assert counts["easy_hard_ratio"] == 10.0 and counts["easy_negatives"] == 10 * counts["hard_negatives"]
    assert counts["positives_by_kind"]["hard_positive"] > 0
    assert set(a.negatives["session_id"]).isdisjoint(split.heldout_session_ids)
    other = mine_table(db, load_config([*FAST, "mining.positives=clicks+hard", "mining.seed=5"]), split, 1,
                       _random_embed(features))  # fmt: skip
    assert not other.negatives["doc_id"].equals(a.negatives["doc_id"])


def test_a_contract_failure_stops_the_round_and_names_the_rows(tiny, monkeypatch):
    db, split, features = tiny
    cfg = load_config(FAST)
    real = offline_hard_negatives

    def leaky(*args, **kwargs):  # plant a hard negative outside the window
        frame, stats = real(*args, **kwargs)
        frame.loc[0, "rank"] = 41
        return frame, stats

    monkeypatch.setattr("ebr.mining.rounds.offline_hard_negatives", leaky)
    with pytest.raises(MinedContractError, match=r"rank window.*row \d+ \(session_id="):
        mine_table(db, cfg, split, 1, _random_embed(features))


def test_store_keeps_rounds_atomic_and_versioned(tiny, tmp_path):
    db, split, features = tiny
    db = _copy(db, tmp_path)
    table = mine_table(db, load_config(FAST), split, 0)
    save_round(db, "run-a", 0, {"k": 1}, table.report["counts"], {}, table.positives, table.negatives)
    save_round(db, "run-a", 1, {"k": 1}, {}, {"failures": ["x"]}, None, None, status="failed")
    pos, neg, record = load_round(db, "run-a")
    assert record["round"] == 0 and record["config"] == {"k": 1}
    pd.testing.assert_frame_equal(
        pos, table.positives.sort_values(["session_id", "doc_id"]).reset_index(drop=True)
    )
    assert len(neg) == len(table.negatives)
    with pytest.raises(LookupError, match="run-a"):
        load_round(db, "run-a", 1)  # failed rounds are never read
    broken = table.negatives.drop(columns="score")
    with pytest.raises(KeyError):
        save_round(db, "run-a", 2, {}, {}, {}, table.positives, broken)
    with duckdb.connect(str(db), read_only=True) as con:
        rounds = con.execute("SELECT round, status FROM mined_runs ORDER BY round").fetchall()
        leftover = con.execute("SELECT count(*) FROM mined_positives WHERE round = 2").fetchall()[0][0]
    assert rounds == [(0, "ok"), (1, "failed")] and leftover == 0


def test_datamodule_gives_each_positive_exactly_its_negatives(tiny):
    db, split, features = tiny
    table = mine_table(db, load_config(FAST), split, 1, _random_embed(features))
    data = MinedTripletDataModule(features, ["text_trigrams"], ["text_trigrams"], table.positives,
                                  table.negatives, batch_size=len(table.positives), seed=0)  # fmt: skip
    assert data.n_pairs == len(table.positives)
    batch = data.collator(list(range(data.n_pairs)))
    mask = batch["negative_mask"].numpy()
    per_pair = table.negatives.groupby(["session_id", "positive_doc_id"]).size()
    pos = table.positives.sort_values(["session_id", "doc_id"])
    expected = per_pair.reindex(pd.MultiIndex.from_frame(pos[["session_id", "doc_id"]])).fillna(0).to_numpy()
    assert np.array_equal(mask.sum(axis=1), expected)
    assert mask.sum() == len(table.negatives)


def test_rounds_mine_train_and_mine_again(tiny, tmp_path):
    db, split, features = tiny
    db = _copy(db, tmp_path)
    cfg = load_config(
        [*FAST, "mining.rounds=2", "mining.transfer=easy_to_hard", "mining.positives=clicks+hard"]
    )
    report = run_mining(cfg, db, tmp_path / "run", "run-b", features)
    assert [s["stage"] for s in report["stages"]] == ["round0", "round1", "round2"]
    first, second = report["stages"][1], report["stages"][2]
    assert first["init_from"] == report["stages"][0]["checkpoint"]
    assert second["counts"]["easy_hard_ratio"] == 10.0
    assert second["hard_negatives"]["rank_histogram"] and all(second["contracts"].values())
    assert second["training"]["transferred_parameters"] > 0
    # tables differ between rounds: round 2 mined with the round 1 model
    _, neg1, _ = load_round(db, "run-b", 1)
    _, neg2, _ = load_round(db, "run-b", 2)
    assert not neg1.loc[neg1.kind == "hard", "doc_id"].equals(neg2.loc[neg2.kind == "hard", "doc_id"])
    assert Path(report["checkpoint"]).is_file()


@pytest.mark.e2e
def test_hard_to_easy_transfer_ends_on_the_easy_table(tiny, tmp_path):
    db, split, features = tiny
    db = _copy(db, tmp_path)
    cfg = load_config([*FAST, "mining.negatives=hard", "mining.transfer=hard_to_easy"])
    report = run_mining(cfg, db, tmp_path / "run", "run-c", features)
    stages = report["stages"]
    assert [s["stage"] for s in stages] == ["round0", "round1", "hard_to_easy"]
    assert stages[1]["counts"]["easy_negatives"] == 0 and stages[1]["counts"]["hard_negatives"] > 0
    assert stages[2]["counts"]["hard_negatives"] == 0
    assert stages[2]["init_from"] == stages[1]["checkpoint"]
    # start_from reuses a trained model for round 1 instead of training round 0
    again = run_mining(load_config([*FAST, f"mining.start_from={stages[0]['checkpoint']}"]), db,
                       tmp_path / "run2", "run-d", features)  # fmt: skip
    assert again["stages"][0]["training"] is None and len(again["stages"]) == 2


@pytest.mark.parametrize(
    ("override", "key"),
    [("mining.negatives=some", "mining.negatives"), ("mining.transfer=sideways", "mining.transfer"),
     ("mining.easy_hard_ratio=0", "mining.easy_hard_ratio"), ("mining.positives=likes", "mining.positives")],
)  # fmt: skip
def test_bad_settings_name_the_key(tiny, tmp_path, override, key):
    db, split, features = tiny
    with pytest.raises(ValueError, match=key):
        run_mining(load_config([*FAST, override]), db, tmp_path, "run-e", features)
