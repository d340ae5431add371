"""A BEIR dataset folder as a search-log folder (schema version 2), and its held-out queries for scoring.

A BEIR folder holds `corpus.jsonl` (`{"_id", "title", "text"}` per line), `queries.jsonl` (`{"_id", "text"}`)
and `qrels/{train,dev,test}.tsv` (a header, then `query-id`, `corpus-id`, `score` separated by tabs; at least
one split). `convert_beir` writes (docs/beir.md):

- `documents.parquet`: doc_id = the line number in corpus.jsonl (1-based), vertical, title, body (the text),
  created_at (`CREATED_AT`), popularity 0.0. An empty title becomes the first `title_words` words of the text
  (the corpus id when the text is empty too), counted in the report;
- `sessions.parquet`: one anonymous session (user_id null) per query and split with qrels: train first, then
  dev, then test, each in the order of its first qrels row, one second apart from `FIRST_SESSION`, so that a
  split by time holds out the test queries;
- `impressions.parquet`: one clicked impression per qrels pair of grade > 0, positions 1..n by grade
  descending, then qrels order;
- `ground_truth/qrels.parquet` (session_id, doc_id, relevance, split) and `ground_truth/ids.parquet` (kind
  "doc" or "query", id = doc_id or session_id, beir_id, split): never ingested;
- `schema.json` and `report.json` (the returned report).

A qrels pair whose query or document is unknown is dropped (counted, first example kept); a pair given twice
in a split keeps its last grade, as BEIR's loader does. The corpus is streamed in batches: only the ids of the
documents the qrels name are held, to resolve them.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA_VERSION = 2
SPLITS = ("train", "dev", "test")
CREATED_AT = datetime(2020, 1, 1)
FIRST_SESSION = datetime(2020, 1, 2)
TITLE_WORDS = 12
BATCH_ROWS = 8192

_TS = pa.timestamp("us")  # UTC without a zone, as the simulator writes
DOCUMENTS = pa.schema(
    [
        pa.field("doc_id", pa.int64(), nullable=False),
        pa.field("vertical", pa.string(), nullable=False),
        pa.field("title", pa.string(), nullable=False),
        pa.field("body", pa.string()),
        pa.field("created_at", _TS, nullable=False),
        pa.field("popularity", pa.float64(), nullable=False),
    ]
)
SESSIONS = pa.schema(
    [
        pa.field("session_id", pa.int64(), nullable=False),
        pa.field("user_id", pa.int64()),
        pa.field("ts", _TS, nullable=False),
        pa.field("vertical", pa.string(), nullable=False),
        pa.field("query", pa.string(), nullable=False),
    ]
)
IMPRESSIONS = pa.schema(
    [
        pa.field("session_id", pa.int64(), nullable=False),
        pa.field("doc_id", pa.int64(), nullable=False),
        pa.field("position", pa.int32(), nullable=False),
        pa.field("clicked", pa.bool_(), nullable=False),
    ]
)
QRELS = pa.schema(
    [
        pa.field("session_id", pa.int64(), nullable=False),
        pa.field("doc_id", pa.int64(), nullable=False),
        pa.field("relevance", pa.int64(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
    ]
)
IDS = pa.schema(
    [
        pa.field("kind", pa.string(), nullable=False),
        pa.field("id", pa.int64(), nullable=False),
        pa.field("beir_id", pa.string(), nullable=False),
        pa.field("split", pa.string()),
    ]
)

QrelsRow = tuple[str, int, str, str, int]  # split, line, query id, corpus id, grade
Pairs = dict[tuple[str, str], dict[int, int]]  # (split, query id) -> doc_id -> grade, in session order


def _json_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each line of a JSONL file; ValueError naming the line that is not one."""
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{line_no}: malformed JSON line ({e.msg})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{line_no}: expected a JSON object, got {type(obj).__name__}")
            yield line_no, obj


def _id(path: Path, line_no: int, obj: dict[str, Any]) -> str:
    value = obj.get("_id")
    if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        return str(value)
    raise ValueError(f'{path}:{line_no}: "_id" is missing or not a string')


def _text(path: Path, line_no: int, obj: dict[str, Any], key: str) -> str:
    value = obj.get(key)
    if value is None or isinstance(value, str):
        return value or ""
    raise ValueError(f'{path}:{line_no}: "{key}" is not text')


def read_queries(path: Path) -> dict[str, str]:
    """queries.jsonl as query id -> text."""
    return {_id(path, n, obj): _text(path, n, obj, "text") for n, obj in _json_lines(path)}


def read_qrels(path: Path, split: str) -> list[QrelsRow]:
    """The rows of one qrels file after its header; ValueError naming the line of one that does not parse."""
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_MINIMAL)  # as BEIR's loader reads it
        header = next(reader, None)
        if header is None or (len(header) == 3 and header[2].strip().lstrip("-").isdigit()):
            raise ValueError(f"{path}:1: expected a header row (query-id, corpus-id, score)")
        rows = []
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if len(row) != 3:
                raise ValueError(f"{where}: expected 3 tab-separated fields (query-id, corpus-id, score)")
            try:
                grade = int(row[2])
            except ValueError:
                raise ValueError(f"{where}: score {row[2]!r} is not an integer") from None
            rows.append((split, reader.line_num, row[0], row[1], grade))
    return rows


def _title(title: str, text: str, doc: str, words: int) -> tuple[str, str | None]:
    """The title to write and what filled an empty one ("from_text", "from_id" or None)."""
    if title.strip():
        return title, None
    head = text.split(maxsplit=words)[:words]
    return (" ".join(head), "from_text") if head else (doc, "from_id")


def _write_corpus(
    path: Path, out: Path, vertical: str, title_words: int, wanted: set[str], ids: pq.ParquetWriter
) -> tuple[dict[str, int], dict[str, int]]:
    """Stream corpus.jsonl into documents.parquet and the "doc" rows of ids.parquet, BATCH_ROWS at a time.

    Returns the doc_id of each corpus id in `wanted` and the counts (documents, titles filled).
    """
    doc_of: dict[str, int] = {}
    counts = {"documents": 0, "from_text": 0, "from_id": 0}
    rows: list[tuple[int, str, str, str]] = []  # doc_id, corpus id, title, body

    def flush(writer: pq.ParquetWriter) -> None:
        n = len(rows)
        doc_id, beir_id, title, body = (list(column) for column in zip(*rows, strict=True))
        const = {"vertical": [vertical] * n, "created_at": [CREATED_AT] * n, "popularity": [0.0] * n}
        docs = {"doc_id": doc_id, "title": title, "body": body, **const}
        writer.write_table(pa.Table.from_pydict(docs, schema=DOCUMENTS))
        names = {"kind": ["doc"] * n, "id": doc_id, "beir_id": beir_id, "split": [None] * n}
        ids.write_table(pa.Table.from_pydict(names, schema=IDS))
        rows.clear()

    with pq.ParquetWriter(out / "documents.parquet", DOCUMENTS) as writer:
        for line_no, obj in _json_lines(path):
            doc, text = _id(path, line_no, obj), _text(path, line_no, obj, "text")
            if doc in wanted:
                if doc in doc_of:
                    raise ValueError(f"{path}:{line_no}: corpus id {doc!r} again (line {doc_of[doc]})")
                doc_of[doc] = line_no
            title, filled = _title(_text(path, line_no, obj, "title"), text, doc, title_words)
            counts["documents"] += 1
            if filled:
                counts[filled] += 1
            rows.append((line_no, doc, title, text))
            if len(rows) == BATCH_ROWS:
                flush(writer)
        if rows:
            flush(writer)
    if not counts["documents"]:
        raise ValueError(f"{path}: no documents")
    return doc_of, counts


def _drop(dropped: dict[str, dict[str, Any]], reason: str, example: str) -> None:
    dropped[reason]["count"] += 1
    dropped[reason]["first"] = dropped[reason]["first"] or example


def _resolve(
    rows: list[QrelsRow], queries: dict[str, str], doc_of: dict[str, int]
) -> tuple[Pairs, dict[str, Any]]:
    """The qrels pairs kept (a repeated pair keeps its last grade) and those dropped, counted."""
    pairs: Pairs = {}
    dropped: dict[str, Any] = {
        reason: {"count": 0, "first": None} for reason in ("unknown_query", "unknown_doc")
    }
    dropped["repeated_pairs"] = 0
    for split, line_no, query, doc, grade in rows:
        where = f"qrels/{split}.tsv:{line_no}"
        if query not in queries:
            _drop(dropped, "unknown_query", f"{where}: query {query!r} is not in queries.jsonl")
        elif doc not in doc_of:
            _drop(dropped, "unknown_doc", f"{where}: document {doc!r} is not in corpus.jsonl")
        else:
            judged = pairs.setdefault((split, query), {})
            dropped["repeated_pairs"] += doc_of[doc] in judged
            judged[doc_of[doc]] = grade
    return pairs, dropped


def _write_logs(
    out: Path, pairs: Pairs, queries: dict[str, str], vertical: str, ids: pq.ParquetWriter
) -> dict[str, dict[str, int]]:
    """Sessions, impressions, ground-truth qrels and the "query" rows of ids.parquet; counts per split."""
    keys = list(pairs)
    n = len(keys)
    session_ids = list(range(1, n + 1))
    sessions = {
        "session_id": session_ids,
        "user_id": [None] * n,
        "ts": [FIRST_SESSION + timedelta(seconds=i) for i in range(n)],
        "vertical": [vertical] * n,
        "query": [queries[query] for _, query in keys],
    }
    pq.write_table(pa.Table.from_pydict(sessions, schema=SESSIONS), out / "sessions.parquet")
    names = {"kind": ["query"] * n, "id": session_ids, "beir_id": [q for _, q in keys]}
    ids.write_table(pa.Table.from_pydict({**names, "split": [s for s, _ in keys]}, schema=IDS))
    qrels, shown, counts = [], [], {}
    for session_id, (split, query) in zip(session_ids, keys, strict=True):
        judged = sorted(pairs[split, query].items(), key=lambda pair: -pair[1])  # stable: qrels order kept
        relevant = [doc for doc, grade in judged if grade > 0]
        qrels += [{"session_id": session_id, "doc_id": d, "relevance": g, "split": split} for d, g in judged]
        shown += [
            {"session_id": session_id, "doc_id": doc, "position": position, "clicked": True}
            for position, doc in enumerate(relevant, 1)
        ]
        count = counts.setdefault(split, {"sessions": 0, "qrels": 0, "impressions": 0})
        count["sessions"] += 1
        count["qrels"] += len(judged)
        count["impressions"] += len(relevant)
    pq.write_table(pa.Table.from_pylist(shown, schema=IMPRESSIONS), out / "impressions.parquet")
    pq.write_table(pa.Table.from_pylist(qrels, schema=QRELS), out / "ground_truth" / "qrels.parquet")
    return counts


def convert_beir(
    beir_dir: Path, out_dir: Path, vertical: str = "papers", title_words: int = TITLE_WORDS
) -> dict[str, Any]:
    """Write the BEIR folder `beir_dir` as a search-log folder `out_dir` (see the module docstring).

    Returns the report (also written as report.json). Raises FileNotFoundError for a missing input file,
    ValueError naming the file and line of a malformed one, FileExistsError when out_dir is not empty.
    Nothing is left in out_dir when it fails.
    """
    beir_dir, out_dir = Path(beir_dir), Path(out_dir)
    corpus, queries_file = beir_dir / "corpus.jsonl", beir_dir / "queries.jsonl"
    for path in (corpus, queries_file):
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: no such file (a BEIR folder has corpus.jsonl, queries.jsonl, qrels/)"
            )
    splits = [s for s in SPLITS if (beir_dir / "qrels" / f"{s}.tsv").is_file()]
    if not splits:
        raise FileNotFoundError(f"{beir_dir / 'qrels'}: no train.tsv, dev.tsv or test.tsv")
    if not vertical or title_words < 1:
        raise ValueError(f"need a vertical name and title_words >= 1, got {vertical!r} and {title_words}")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists and is not empty; not replacing it")
    queries = read_queries(queries_file)
    rows = [row for s in splits for row in read_qrels(beir_dir / "qrels" / f"{s}.tsv", s)]

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "ground_truth").mkdir(parents=True)
    try:
        with pq.ParquetWriter(tmp / "ground_truth" / "ids.parquet", IDS) as ids:
            doc_of, counts = _write_corpus(corpus, tmp, vertical, title_words, {r[3] for r in rows}, ids)
            pairs, dropped = _resolve(rows, queries, doc_of)
            written = _write_logs(tmp, pairs, queries, vertical, ids)
        report = {
            "output": str(out_dir.resolve()),
            "source": str(beir_dir.resolve()),
            "vertical": vertical,
            "documents": counts["documents"],
            "empty_titles_filled": {k: counts[k] for k in ("from_text", "from_id")} | {"words": title_words},
            "splits": {s: written.get(s, {"sessions": 0, "qrels": 0, "impressions": 0}) for s in splits},
            "qrels_dropped": dropped,
        }
        (tmp / "report.json").write_text(json.dumps(report, indent=1) + "\n")
        (tmp / "schema.json").write_text(json.dumps({"schema_version": SCHEMA_VERSION}) + "\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out_dir.exists():
        out_dir.rmdir()
    tmp.rename(out_dir)
    return report


def read_split(log_dir: Path, split: str = "test") -> tuple[dict[int, str], dict[int, dict[int, int]]]:
    """The queries of `split` in a converted folder and their qrels, as ebr.evaluation.metrics takes them.

    Returns ({session_id: query}, {session_id: {doc_id: relevance}}), in session order. ValueError when the
    folder has no qrels of that split.
    """
    path = Path(log_dir) / "ground_truth" / "qrels.parquet"
    table = pq.read_table(path, filters=[("split", "=", split)])
    if not table.num_rows:
        raise ValueError(f"{path}: no qrels of split {split!r}")
    qrels: dict[int, dict[int, int]] = {}
    for session_id, doc_id, relevance in zip(*(table[c].to_pylist() for c in QRELS.names[:3]), strict=True):
        qrels.setdefault(session_id, {})[doc_id] = relevance
    sessions = pq.read_table(Path(log_dir) / "sessions.parquet", columns=["session_id", "query"])
    text = dict(zip(sessions["session_id"].to_pylist(), sessions["query"].to_pylist(), strict=True))
    return {s: text[s] for s in qrels}, qrels
