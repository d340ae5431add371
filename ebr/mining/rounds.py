"""Mining rounds (paper §6.1): mine -> retrain -> mine again, for `mining.rounds` rounds, with transfer.

Round 0 mines the positives and random (easy) negatives and trains a model. Each round r >= 1 embeds the
training queries and the documents with the round r-1 model, mines offline hard negatives per vertical from
the configured rank window, mixes them with the easy negatives at `mining.easy_hard_ratio` (or keeps them
alone), validates the table against the mined-data contracts, stores it and retrains. With
`mining.transfer: easy_to_hard` a round starts from the previous model's weights; with `hard_to_easy` the
last model then continues on the easy table. The report carries each table's realised counts and ratio.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from ebr.contracts.mined import MinedContractError, MinedPromise, validate_mined
from ebr.io import atomic_write_text
from ebr.mining.hard import Embedded, offline_hard_negatives
from ebr.mining.negatives import ExcludedDocs, empty_negatives, mix, random_negatives, same_query_clicks
from ebr.mining.positives import POSITIVE_STRATEGIES, positives
from ebr.mining.stats import HardNegativeStats
from ebr.mining.store import save_round
from ebr.models.features import FeatureSet, Split
from ebr.runners import SERIAL, Shards

if TYPE_CHECKING:
    from ebr.models.training import TrainedTower

log = logging.getLogger(__name__)

NEGATIVE_STRATEGIES = ("random", "hard", "mixed")
TRANSFERS = ("none", "easy_to_hard", "hard_to_easy")


@dataclass(frozen=True)
class MinedTable:
    round: int
    positives: pd.DataFrame
    negatives: pd.DataFrame
    report: dict[str, Any]  # counts, realised ratio, hard-negative statistics, contract results, timing


def hard_per_positive(mcfg: DictConfig) -> int:
    """Hard negatives mined per positive: as configured, else enough for the easy:hard ratio."""
    if mcfg.hard.per_positive is not None:
        return int(mcfg.hard.per_positive)
    if mcfg.negatives == "hard":
        return max(int(mcfg.random_per_positive), 1)
    return max(math.ceil(int(mcfg.random_per_positive) / float(mcfg.easy_hard_ratio)), 1)


def check_config(mcfg: DictConfig) -> None:
    """One clear error naming the key for a bad mining setting."""
    if mcfg.model is None:
        raise ValueError("mining.model is null: no model to mine with (e.g. mining.model=unified)")
    if mcfg.negatives not in NEGATIVE_STRATEGIES:
        raise ValueError(f"mining.negatives must be one of {NEGATIVE_STRATEGIES}, got {mcfg.negatives!r}")
    if mcfg.transfer not in TRANSFERS:
        raise ValueError(f"mining.transfer must be one of {TRANSFERS}, got {mcfg.transfer!r}")
    if mcfg.positives not in POSITIVE_STRATEGIES:
        raise ValueError(f"mining.positives must be one of {POSITIVE_STRATEGIES}, got {mcfg.positives!r}")
    if mcfg.negatives == "mixed" and not 0 < float(mcfg.easy_hard_ratio) < math.inf:
        raise ValueError(f"mining.easy_hard_ratio must be a positive number, got {mcfg.easy_hard_ratio}")
    if int(mcfg.rounds) < 0:
        raise ValueError(f"mining.rounds must be >= 0, got {mcfg.rounds}")
    if mcfg.negatives != "hard" and int(mcfg.random_per_positive) < 1:
        raise ValueError(f"mining.random_per_positive must be >= 1, got {mcfg.random_per_positive}")


def promise(mcfg: DictConfig, negatives: str) -> MinedPromise:
    return MinedPromise(
        negatives=negatives,
        random_per_positive=int(mcfg.random_per_positive),
        hard_per_positive=hard_per_positive(mcfg),
        easy_hard_ratio=float(mcfg.easy_hard_ratio),
        window=(int(mcfg.hard.window[0]), int(mcfg.hard.window[1])),
        min_positives=int(mcfg.contracts.min_positives),
    )


def embed_for_mining(
    checkpoint: Path, features: FeatureSet, shards: Shards, session_ids: np.ndarray
) -> tuple[Embedded, Embedded]:
    """Query embeddings of `session_ids` and document embeddings of every document with a trained model."""
    from ebr.models.training import embed_documents, embed_queries, load_module

    module = load_module(checkpoint)
    rows = features.session_rows(session_ids)
    queries = Embedded(
        np.asarray(session_ids, np.int64), embed_queries(module, features, rows, shards=shards)
    )
    docs = Embedded(features.doc_ids, embed_documents(module, features, shards=shards))
    return queries, docs


def mine_table(
    db_path: Path,
    cfg: DictConfig,
    split: Split,
    round_: int,
    embed: Callable[[np.ndarray], tuple[Embedded, Embedded]] | None = None,
    shards: Shards = SERIAL,
) -> MinedTable:
    """Mine one table and validate it; `embed(session_ids) -> (queries, documents)` enables hard negatives.

    Without `embed` (round 0, or `mining.negatives: random`) the table holds easy negatives only.
    Raises MinedContractError (naming the failing rows) when the table breaks a contract.
    """
    mcfg = cfg.mining
    seed = int(mcfg.seed)
    negatives_kind = mcfg.negatives if embed is not None else "random"
    start = time.perf_counter()
    train_ids = split.train_session_ids
    with _read_logs(db_path) as con:
        pos = positives(con, train_ids, mcfg.positives, float(mcfg.hard_positive_window_minutes))
        documents = con.execute("SELECT doc_id, vertical FROM documents").df()
        easy = random_negatives(pos, documents, int(mcfg.random_per_positive), seed)
        hard_stats = None
        if negatives_kind == "random":
            negatives = easy
        else:
            sessions = np.unique(pos["session_id"].to_numpy(np.int64))
            excluded = same_query_clicks(con, train_ids, sessions) if mcfg.exclude_same_query_clicks else None
            embedded = embed(sessions)
            hard, hard_stats = _hard_negatives(
                pos, documents, embedded, mcfg, excluded, seed + round_, shards
            )
            ratio = float(mcfg.easy_hard_ratio) if negatives_kind == "mixed" else 0.0
            negatives = mix(easy, hard, ratio, seed + round_)
        max_positives = _max_positives(con, train_ids)
        mined_seconds = time.perf_counter() - start
        contracts = validate_mined(
            con, pos, negatives, split.heldout_session_ids, promise(mcfg, negatives_kind), max_positives
        )
        contract_seconds = time.perf_counter() - start - mined_seconds
    report = {
        "round": round_,
        "negatives": negatives_kind,
        "counts": table_counts(pos, negatives),
        "hard_negatives": hard_stats.to_dict() if hard_stats else None,
        "contracts": {
            t: contracts[t]["success"] for t in ("mined_positives", "mined_negatives", "mined_counts")
        },
        "mining_seconds": round(mined_seconds, 2),
        "contract_seconds": round(contract_seconds, 2),
    }
    if hard_stats:
        log.info("round %d\n%s", round_, hard_stats.format())
    log.info("round %d mined table: %s", round_, report["counts"])
    return MinedTable(round_, pos, negatives, report | {"contract_report": contracts})


def _read_logs(db_path: Path) -> duckdb.DuckDBPyConnection:
    """A read-only connection to the ingested logs (the mined tables are written afterwards)."""
    if not Path(db_path).is_file():
        raise FileNotFoundError(f"{db_path}: no DuckDB file (run `ebr ingest` first)")
    return duckdb.connect(str(db_path), read_only=True)


def _hard_negatives(
    pos: pd.DataFrame,
    documents: pd.DataFrame,
    embedded: tuple[Embedded, Embedded],
    mcfg: DictConfig,
    excluded: ExcludedDocs | None,
    seed: int,
    shards: Shards,
) -> tuple[pd.DataFrame, HardNegativeStats]:
    """Offline hard negatives, one ANN index per vertical (the document pool of the vertical)."""
    queries, docs = embedded
    doc_vertical = documents.set_index("doc_id")["vertical"].reindex(docs.ids).to_numpy()
    frames, stats = [], HardNegativeStats(window=tuple(mcfg.hard.window))
    for vertical in sorted(documents["vertical"].unique()):
        vpos = pos[pos["vertical"] == vertical]
        in_vertical = doc_vertical == vertical
        if vpos.empty or not in_vertical.any():
            continue
        q_keep = np.isin(queries.ids, vpos["session_id"].to_numpy(np.int64))
        frame, vstats = offline_hard_negatives(
            Embedded(queries.ids[q_keep], queries.vectors[q_keep]),
            Embedded(docs.ids[in_vertical], docs.vectors[in_vertical]),
            vpos,
            window=(int(mcfg.hard.window[0]), int(mcfg.hard.window[1])),
            per_positive=hard_per_positive(mcfg),
            strategy=str(mcfg.hard.strategy),
            shard=None if mcfg.hard.shard is None else float(mcfg.hard.shard),
            excluded=excluded,
            block_size=int(mcfg.block_size),
            index=str(mcfg.hard.index),
            nlist=int(mcfg.hard.nlist),
            nprobe=int(mcfg.hard.nprobe),
            seed=seed,
            progress=f"hard negatives {vertical}",
            shards=shards,
        )
        frames.append(frame)
        stats = stats + vstats
    hard = pd.concat(frames, ignore_index=True) if frames else empty_negatives()
    return hard, stats


def _max_positives(con: duckdb.DuckDBPyConnection, train_ids: np.ndarray) -> int:
    """Upper bound of the positive count: training impressions plus clicks (a hard positive is a click)."""
    con.register("_mine_bound_ids", pd.DataFrame({"session_id": np.asarray(train_ids, np.int64)}))
    row = con.execute(
        "SELECT count(*) + count(*) FILTER (WHERE clicked) "
        "FROM impressions JOIN _mine_bound_ids USING (session_id)"
    ).fetchall()
    return int(row[0][0])


def table_counts(positives: pd.DataFrame, negatives: pd.DataFrame) -> dict[str, Any]:
    """Realised counts of a mined table: positives by kind, easy and hard negatives, the easy:hard ratio."""
    kinds = positives["kind"].value_counts()
    neg = negatives["kind"].value_counts()
    easy, hard = int(neg.get("easy", 0)), int(neg.get("hard", 0))
    return {
        "positives": len(positives),
        "positives_by_kind": {k: int(v) for k, v in kinds.items()},
        "hard_positive_share": round(float(kinds.get("hard_positive", 0)) / max(len(positives), 1), 4),
        "sessions": int(positives["session_id"].nunique()),
        "easy_negatives": easy,
        "hard_negatives": hard,
        "easy_hard_ratio": (easy / hard) if hard else None,
    }


def run_mining(
    cfg: DictConfig, db_path: Path, out_dir: Path, run_id: str, features: FeatureSet, shards: Shards = SERIAL
) -> dict[str, Any]:
    """All mining rounds with their trainings; returns the report (one entry per trained stage).

    Tables are stored in `db_path` under `run_id` (ebr/mining/store.py); checkpoints under `out_dir`;
    inference and the hard-negative search run on `shards`.
    A contract failure records the failed round and re-raises (the flow stops with the failing rows named).
    """
    from ebr.models.training import train_tower

    mcfg = cfg.mining
    check_config(mcfg)
    config = OmegaConf.to_container(mcfg, resolve=True)
    rounds = 0 if mcfg.negatives == "random" else int(mcfg.rounds)
    stages: list[dict[str, Any]] = []
    checkpoint = Path(mcfg.start_from) if mcfg.start_from else None
    if checkpoint is not None and not checkpoint.is_file():
        raise FileNotFoundError(f"mining.start_from: no checkpoint at {checkpoint}")
    easy_table: MinedTable | None = None
    for round_ in range(rounds + 1):
        embed = partial(embed_for_mining, checkpoint, features, shards) if round_ > 0 else None
        try:
            table = mine_table(db_path, cfg, features.split, round_, embed, shards)
        except MinedContractError as err:
            save_round(db_path, run_id, round_, config, {}, {"failures": err.failures}, None, None, "failed")
            raise
        save_round(
            db_path, run_id, round_, config, table.report["counts"], table.report["contract_report"],
            table.positives, table.negatives,
        )  # fmt: skip
        easy_table = easy_table or table
        if round_ == 0 and checkpoint is not None and rounds > 0:
            stages.append(_stage(table, None, "round0", None) | {"checkpoint": str(checkpoint)})
            continue  # mine round 1 with the given model instead of training one on random negatives
        init = checkpoint if (round_ > 0 and mcfg.transfer == "easy_to_hard") else None
        trained = train_tower(
            cfg, features, str(mcfg.model), Path(out_dir) / f"round{round_}", init_from=init,
            triplets=(table.positives, table.negatives), shards=shards,
        )  # fmt: skip
        checkpoint = trained.checkpoint
        stages.append(_stage(table, trained, f"round{round_}", init))
    if mcfg.transfer == "hard_to_easy" and rounds > 0:
        trained = train_tower(
            cfg, features, str(mcfg.model), Path(out_dir) / "hard_to_easy", init_from=checkpoint,
            triplets=(easy_table.positives, easy_table.negatives), shards=shards,
        )  # fmt: skip
        checkpoint = trained.checkpoint
        stages.append(_stage(easy_table, trained, "hard_to_easy", stages[-1]["checkpoint"]))
    return {"run_id": run_id, "config": config, "stages": stages, "checkpoint": str(checkpoint)}


def _stage(table: MinedTable, trained: TrainedTower | None, name: str, init: Path | None) -> dict[str, Any]:
    report = {k: v for k, v in table.report.items() if k != "contract_report"}
    return report | {
        "stage": name,
        "init_from": str(init) if init else None,
        "checkpoint": str(trained.checkpoint) if trained else None,
        "training": trained.stats if trained else None,
    }


def mine_and_train(
    cfg: DictConfig, db_path: Path, run_id: str | None = None, shards: Shards = SERIAL
) -> dict[str, Any]:
    """`ebr mine`: split the sessions, build the features, run every mining round on the logs in `db_path`.

    The run folder runs/<run_id>/ gets the resolved config, the checkpoints and report.json.
    """
    from ebr.models.features import build_features, split_from_config
    from ebr.runs import start_run

    check_config(cfg.mining)
    run = start_run(cfg, "mine", cfg.data.dataset, run_id)
    split = split_from_config(db_path, cfg)
    features = build_features(db_path, cfg, split)
    report = run_mining(cfg, db_path, run.path, run.run_id, features, shards)
    report["split"] = split.summary()
    atomic_write_text(run.path / "report.json", json.dumps(report, indent=2, default=str))
    return report


def format_stage(stage: dict[str, Any]) -> str:
    """A few lines per trained stage: the mined table's realised counts and ratio, then the training."""
    c = stage["counts"]
    ratio = f"{c['easy_hard_ratio']:g}:1" if c["easy_hard_ratio"] else "no hard negatives"
    kinds = ", ".join(f"{k} {v:,}" for k, v in c["positives_by_kind"].items())
    lines = [
        f"[{stage['stage']}] positives {c['positives']:,} ({kinds}); easy {c['easy_negatives']:,}, "
        f"hard {c['hard_negatives']:,}, easy:hard {ratio}; contracts "
        + ("passed" if all(stage["contracts"].values()) else "FAILED")
    ]
    if stage.get("hard_negatives"):
        lines.append(HardNegativeStats.from_dict(stage["hard_negatives"]).format())
    if stage.get("training"):
        t = stage["training"]
        lines.append(
            f"trained {t['model']}, {t['epochs']} epochs, {t['seconds']}s, final loss {t['final_loss']:.4f}"
            + (f", from {stage['init_from']}" if stage["init_from"] else "")
        )
    return "\n".join(lines)
