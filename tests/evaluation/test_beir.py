"""The BEIR converter on a tiny synthetic BEIR folder written by the test (never a real dataset)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ebr.datasets import beir
from ebr.datasets.beir import convert_beir, read_split
from ebr.evaluation.metrics import evaluate

LONG = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen"
CORPUS = [
    {"_id": "d1", "title": "Graphene sheets", "text": "Graphene conducts heat."},
    {"_id": "d2", "title": "", "text": LONG},
    {"_id": "d3", "title": "Bees", "text": "Bees dance.", "metadata": {}},
    {"_id": "d4", "text": ""},
    {"_id": 5, "title": "Integer id", "text": "Ids may be numbers."},
]
QUERIES = [
    {"_id": "q1", "text": "how does graphene conduct heat"},
    {"_id": "q2", "text": "what do mitochondria do"},
    {"_id": "q3", "text": "why do bees dance"},
    {"_id": "q4", "text": "a query without qrels"},
]
QRELS = {
    "train": [("q1", "d1", 1), ("q1", "d3", 2)],  # graded: d3 is shown first
    "dev": [("q2", "d2", 1), ("q2", "d9", 1)],  # d9 is not in the corpus
    "test": [("q3", "d3", 1), ("q3", "d1", 0), ("qX", "d1", 1), ("q1", "d2", 1), ("q3", "5", 2)],
}


def write_beir(root: Path, corpus=CORPUS, queries=QUERIES, qrels=QRELS) -> Path:
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in corpus))
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    for split, rows in qrels.items():
        lines = ["query-id\tcorpus-id\tscore", *("\t".join(map(str, r)) for r in rows)]
        (root / "qrels" / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def converted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict]:
    monkeypatch.setattr(beir, "BATCH_ROWS", 2)  # the corpus is written in three batches
    out = tmp_path / "logs"
    return out, convert_beir(write_beir(tmp_path / "beir"), out, vertical="papers")


def rows(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def test_documents(converted) -> None:
    out, _ = converted
    table = pq.read_table(out / "documents.parquet")
    assert table.schema.field("doc_id").type == pa.int64()
    assert table.schema.field("created_at").type == pa.timestamp("us")
    docs = table.to_pylist()
    assert [d["doc_id"] for d in docs] == [1, 2, 3, 4, 5]
    assert [d["title"] for d in docs] == [
        "Graphene sheets",
        " ".join(LONG.split()[:12]),
        "Bees",
        "d4",
        "Integer id",
    ]
    assert [d["body"] for d in docs] == [d["text"] for d in CORPUS]
    assert {(d["vertical"], d["created_at"], d["popularity"]) for d in docs} == {
        ("papers", datetime(2020, 1, 1), 0.0)
    }
    assert json.loads((out / "schema.json").read_text()) == {"schema_version": 2}


def test_sessions_in_time_order(converted) -> None:
    out, _ = converted
    sessions = rows(out / "sessions.parquet")
    # train (q1), dev (q2), then test in the order of its first qrels row (q3, q1): q4 has no qrels
    assert [s["query"] for s in sessions] == [QUERIES[i]["text"] for i in (0, 1, 2, 0)]
    assert [s["session_id"] for s in sessions] == [1, 2, 3, 4]
    ts = [s["ts"] for s in sessions]
    assert ts == sorted(ts) and len(set(ts)) == len(ts)
    assert {(s["user_id"], s["vertical"]) for s in sessions} == {(None, "papers")}


def test_impressions_and_qrels(converted) -> None:
    out, _ = converted
    shown = [
        (i["session_id"], i["doc_id"], i["position"], i["clicked"]) for i in rows(out / "impressions.parquet")
    ]
    assert shown == [
        (1, 3, 1, True),
        (1, 1, 2, True),
        (2, 2, 1, True),
        (3, 5, 1, True),
        (3, 3, 2, True),
        (4, 2, 1, True),
    ]
    qrels = [tuple(r.values()) for r in rows(out / "ground_truth" / "qrels.parquet")]
    assert qrels == [
        (1, 3, 2, "train"),
        (1, 1, 1, "train"),
        (2, 2, 1, "dev"),
        (3, 5, 2, "test"),
        (3, 3, 1, "test"),
        (3, 1, 0, "test"),  # grade 0: judged, never shown
        (4, 2, 1, "test"),
    ]


def test_ids_mapping(converted) -> None:
    out, _ = converted
    ids = [tuple(r.values()) for r in rows(out / "ground_truth" / "ids.parquet")]
    docs = [("doc", i, name, None) for i, name in enumerate(["d1", "d2", "d3", "d4", "5"], 1)]
    queries = [
        ("query", 1, "q1", "train"),
        ("query", 2, "q2", "dev"),
        ("query", 3, "q3", "test"),
        ("query", 4, "q1", "test"),
    ]
    assert ids == docs + queries


def test_report(converted) -> None:
    out, report = converted
    assert json.loads((out / "report.json").read_text()) == report
    assert report["output"] == str(out.resolve())
    assert report["documents"] == 5
    assert report["empty_titles_filled"] == {"from_text": 1, "from_id": 1, "words": 12}
    assert report["splits"] == {
        "train": {"sessions": 1, "qrels": 2, "impressions": 2},
        "dev": {"sessions": 1, "qrels": 1, "impressions": 1},
        "test": {"sessions": 2, "qrels": 4, "impressions": 3},
    }
    assert report["qrels_dropped"] == {
        "unknown_query": {"count": 1, "first": "qrels/test.tsv:4: query 'qX' is not in queries.jsonl"},
        "unknown_doc": {"count": 1, "first": "qrels/dev.tsv:3: document 'd9' is not in corpus.jsonl"},
        "repeated_pairs": 0,
    }


def test_read_split_feeds_the_metrics(converted) -> None:
    out, _ = converted
    queries, qrels = read_split(out)
    assert queries == {3: "why do bees dance", 4: "how does graphene conduct heat"}
    assert qrels == {3: {5: 2, 3: 1, 1: 0}, 4: {2: 1}}
    perfect = {session: sorted(judged, key=lambda d: -judged[d]) for session, judged in qrels.items()}
    assert evaluate(qrels, perfect, ks=(10,)) == {"ndcg@10": 1.0, "recall@10": 1.0, "mrr@10": 1.0}
    assert read_split(out, "dev") == ({2: "what do mitochondria do"}, {2: {2: 1}})
    with pytest.raises(ValueError, match="no qrels of split 'validation'"):
        read_split(out, "validation")


def test_repeated_pair_keeps_the_last_grade(tmp_path: Path) -> None:
    beir_dir = write_beir(
        tmp_path / "beir", qrels={"test": [("q1", "d1", 1), ("q1", "d3", 1), ("q1", "d1", 2)]}
    )
    report = convert_beir(beir_dir, tmp_path / "logs", title_words=2)
    assert report["qrels_dropped"]["repeated_pairs"] == 1
    assert read_split(tmp_path / "logs")[1] == {1: {1: 2, 3: 1}}
    assert pq.read_table(tmp_path / "logs" / "documents.parquet")["title"][1].as_py() == "one two"


def _break(root: Path, name: str, line: int, text: str) -> None:
    lines = (root / name).read_text().splitlines()
    lines[line - 1] = text
    (root / name).write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    ("name", "line", "text", "error", "match"),
    [
        ("corpus.jsonl", 3, '{"_id": "d3", "title": ', ValueError, r"corpus.jsonl:3: malformed JSON line"),
        ("corpus.jsonl", 2, "", ValueError, r"corpus.jsonl:2: malformed JSON line"),
        ("corpus.jsonl", 2, '["d2"]', ValueError, r"corpus.jsonl:2: expected a JSON object"),
        ("corpus.jsonl", 2, '{"title": "no id"}', ValueError, r'corpus.jsonl:2: "_id" is missing'),
        (
            "corpus.jsonl",
            4,
            '{"_id": "d1", "text": "again"}',
            ValueError,
            r"corpus.jsonl:4: corpus id 'd1' again",
        ),
        ("queries.jsonl", 2, '{"_id": "q2", "text": 7}', ValueError, r'queries.jsonl:2: "text" is not text'),
        ("qrels/test.tsv", 3, "q3\td1\tyes", ValueError, r"test.tsv:3: score 'yes' is not an integer"),
        ("qrels/test.tsv", 2, "q3 d3 1", ValueError, r"test.tsv:2: expected 3 tab-separated fields"),
        ("qrels/train.tsv", 1, "q1\td1\t1", ValueError, r"train.tsv:1: expected a header row"),
    ],
)
def test_malformed_inputs(tmp_path: Path, name: str, line: int, text: str, error: type, match: str) -> None:
    beir_dir = write_beir(tmp_path / "beir")
    _break(beir_dir, name, line, text)
    with pytest.raises(error, match=match) as e:
        convert_beir(beir_dir, tmp_path / "logs")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "logs").exists() and not list(tmp_path.glob(".logs.tmp-*"))


@pytest.mark.parametrize("missing", ["corpus.jsonl", "queries.jsonl", "qrels"])
def test_missing_files(tmp_path: Path, missing: str) -> None:
    beir_dir = write_beir(tmp_path / "beir")
    path = beir_dir / missing
    if path.is_dir():
        for tsv in path.iterdir():
            tsv.unlink()
    else:
        path.unlink()
    with pytest.raises(FileNotFoundError, match=missing):
        convert_beir(beir_dir, tmp_path / "logs")


def test_refuses_a_non_empty_output(tmp_path: Path) -> None:
    beir_dir = write_beir(tmp_path / "beir")
    (tmp_path / "logs").mkdir()
    convert_beir(beir_dir, tmp_path / "logs")  # an empty folder is fine
    with pytest.raises(FileExistsError, match="not empty"):
        convert_beir(beir_dir, tmp_path / "logs")
