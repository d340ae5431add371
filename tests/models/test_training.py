"""End to end on the tiny log: training raises recall far above an untrained model; the train-and-evaluate
step and `ebr train` write the report; evaluation helpers compute the paper's recall@K."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from omegaconf import DictConfig

from ebr.cli.train import command
from ebr.config import load_config
from ebr.evaluation.recall import evaluate, recall_by_group, recall_by_query_tag
from ebr.models.features import FeatureSet
from ebr.models.training import (
    TrainedTower,
    build_module,
    load_module,
    train_tower,
    variant,
)
from ebr.steps.train_eval import train_and_evaluate


def test_training_raises_recall_well_above_untrained(
    fast_cfg: DictConfig, tiny_features: FeatureSet, trained_unified: TrainedTower
) -> None:
    untrained, _ = build_module(fast_cfg, tiny_features, "unified_hnm")
    models = {"untrained": untrained, "trained": load_module(trained_unified.checkpoint)}
    report = evaluate(fast_cfg, tiny_features, models)
    before, after = report["recall"]["untrained"]["all"]["10"], report["recall"]["trained"]["all"]["10"]
    assert after > 0.6 and after > before + 0.3, (before, after)
    assert trained_unified.stats["triplets_per_s"] > 0 and trained_unified.stats["hard_negatives"] == 2
    # the logged incumbent shows every clicked document (clicks come from its impressions)
    assert report["recall"]["incumbent"]["all"]["10"] == pytest.approx(1.0)


def test_recall_formula() -> None:
    # session 0 (people): targets {7, 9}, ranking [9, 3, 7]: R@1 = 1/2, R@3 = 1; session 1: 5 missed
    ranked = np.array([[9, 3, 7], [1, 2, -1]])
    table = pd.DataFrame({"session_row": [0, 0, 1], "doc_row": [7, 9, 5]})
    out = recall_by_group(ranked, np.array([0, 1]), table, np.array([0, 1]), [1, 3], ("people", "groups"))
    assert out["people"] == {"1": 0.5, "3": 1.0}
    assert out["groups"] == {"1": 0.0, "3": 0.0}
    assert out["all"] == {"1": 0.25, "3": 0.5}


def _world_home(tmp_path: Path, tiny_db: Path, tiny_tables_: dict[str, pd.DataFrame]) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    (home / "datasets" / "sim-tiny-s7").mkdir(parents=True)  # the dataset of data.scale=tiny
    shutil.copy(tiny_db, home / "datasets" / "sim-tiny-s7" / "ebr.duckdb")
    intents = home / "worlds" / "sim-tiny-s7" / "ground_truth"
    intents.mkdir(parents=True)
    tiny_tables_["intents"].to_parquet(intents / "intents.parquet")
    return home


def test_train_and_evaluate_writes_the_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_db: Path, tiny_tables_: dict, fast_cfg: DictConfig
) -> None:
    home = _world_home(tmp_path, tiny_db, tiny_tables_)
    monkeypatch.setenv("EBR_HOME", str(home))
    cfg = fast_cfg.copy()
    cfg.train.models = ["text", "unified"]
    cfg.train.epochs = 2
    cfg.data.scale = "tiny"
    report = train_and_evaluate(cfg, home / "datasets" / "sim-tiny-s7" / "ebr.duckdb", tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "report.json").read_text())
    assert saved["recall"] == report["recall"]
    assert set(saved["recall"]) == {"incumbent", "bm25", "text", "unified"}
    for per_vertical in saved["recall"].values():
        assert set(per_vertical) == {"people", "groups", "events", "all"}
        assert all(set(r) == {"1", "10", "50", "100"} for r in per_vertical.values())
    assert set(saved["recall_intent_by_query_form"]["bm25"]) == {"full", "partial", "misspelled"}
    assert saved["sessions"]["intents_by_query_form"]["misspelled"] > 0
    assert saved["sessions"]["intents"]["all"] == 200  # the evaluate part of the split
    assert "| text | people |" in (tmp_path / "run" / "report.md").read_text()
    assert (tmp_path / "run" / "towers" / "unified" / "weights.npz").exists()
    assert np.load(tmp_path / "run" / "embeddings" / "text.npy").shape == (207, 16)


def test_ebr_train_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_db: Path, tiny_tables_: dict
) -> None:
    from tiny_logs import FAST

    home = _world_home(tmp_path, tiny_db, tiny_tables_)
    monkeypatch.setenv("EBR_HOME", str(home))
    args = [*FAST, "train.epochs=1", "train.models=[text]", "data.scale=tiny", "--json"]
    result = CliRunner().invoke(command, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{") :])
    run = home / "datasets" / "sim-tiny-s7" / "runs" / report["run_id"]
    assert (run / "config.yaml").exists() and (run / "report.json").exists()
    assert "text" in report["recall"] and "recall_intent" in report

    bad = CliRunner().invoke(command, ["model.no_such_key=1"])
    assert bad.exit_code != 0 and "OVERRIDES" in bad.output
    monkeypatch.setenv("EBR_HOME", str(tmp_path / "empty"))
    missing = CliRunner().invoke(command, FAST)
    assert missing.exit_code != 0 and "ebr.duckdb: no DuckDB file" in missing.output


def test_transfer_learning_and_model_names(
    tmp_path: Path, fast_cfg: DictConfig, tiny_features: FeatureSet, trained_unified: TrainedTower
) -> None:
    cfg = fast_cfg.copy()
    cfg.train.epochs = 1
    text = train_tower(cfg, tiny_features, "text", tmp_path / "text", init_from=trained_unified.checkpoint)
    # text tables and the text sub-tower's first layer match in name and shape (query and document side, 2 x 4
    # tensors); the last layer differs in shape (text_dim 8 in the unified model, 16 in the text model)
    assert text.stats["transferred_parameters"] == 8
    # variants come from config: unified_hnm takes model.hard_negatives, unified none
    assert (variant(cfg, "unified").hard_negatives, variant(cfg, "unified_hnm").hard_negatives) == (0, 2)
    assert variant(load_config(["model.hard_negatives=3"]), "unified_hnm").hard_negatives == 3
    with pytest.raises(ValueError, match="train.variants.unified_hnm.hard_negatives must be >= 0"):
        variant(load_config(["train.variants.unified_hnm.hard_negatives=-1"]), "unified_hnm")
    with pytest.raises(ValueError, match="unknown model 'bert'"):
        variant(cfg, "bert")


def test_recall_by_query_tag_counts_each_tag() -> None:
    ranked = np.array([[7, 1], [2, 3], [4, 5]])
    table = pd.DataFrame(
        {
            "session_row": [0, 1, 2],
            "doc_row": [7, 9, 5],
            "query_form": ["full", "partial+misspelled", "misspelled"],
        }
    )
    out = recall_by_query_tag(ranked, np.array([0, 1, 2]), table, [1, 2])
    assert out == {
        "full": {"1": 1.0, "2": 1.0},
        "partial": {"1": 0.0, "2": 0.0},
        "misspelled": {"1": 0.0, "2": 0.5},
    }


@pytest.mark.e2e
def test_ddp_spawn_splits_the_batches_between_two_processes(
    tiny_features: FeatureSet, tmp_path: Path
) -> None:
    """train.trainer.strategy: two CPU processes (gloo) each train on half the pairs; rank 0's weights come
    back."""
    from tiny_logs import FAST

    single, ddp = (
        load_config([*FAST, "train.epochs=1", *extra])
        for extra in (
            [],
            ["train.trainer.strategy=ddp_spawn", "train.trainer.devices=2", "train.trainer.accelerator=cpu"],
        )
    )
    steps = {}
    for name, cfg in (("single", single), ("ddp", ddp)):
        trained = train_tower(cfg, tiny_features, "text", tmp_path / name)
        steps[name] = torch.load(trained.checkpoint, map_location="cpu", weights_only=False)["global_step"]
        module = load_module(trained.checkpoint)
        recall = evaluate(cfg, tiny_features, {name: module})["recall"][name]["all"]["10"]
        assert recall > 0.3, (name, recall)
    batch, pairs = int(single.train.batch_size), trained.stats["positives"]
    assert steps["single"] == math.ceil(pairs / batch)
    assert steps["ddp"] == math.ceil(math.ceil(pairs / 2) / batch)  # DistributedSampler: half per rank
