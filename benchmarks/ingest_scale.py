"""Ingestion at a few million rows: time and peak memory of `ingest_logs`, against a plain DuckDB load.

    python benchmarks/ingest_scale.py --sessions 300000 --out /tmp/ingest_bench

Writes synthetic, valid logs (about 10 impressions per session, 0.1% bad rows), then runs in separate
processes: a plain load (read_parquet into tables, no contracts: the baseline), the ingestion of a fresh
database, the same files again (everything skipped), and a new day (10% more sessions as another part).
Prints one markdown table; the figures are in docs/ingestion.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def write_logs(out: Path, sessions: int, seed: int) -> None:
    """Synthetic logs: users, documents, memberships, friendships, sessions, impressions (parts per day)."""
    rng = np.random.default_rng(seed)
    n_users, n_docs = max(sessions // 3, 10), max(sessions // 2, 20)
    t0 = pd.Timestamp("2024-03-01")
    out.mkdir(parents=True)
    users = pd.DataFrame(
        {"user_id": np.arange(n_users), "name": [f"user {i}" for i in range(n_users)], "city": "Seattle",
         "region": "WA", "country": "US", "language": "en", "is_active": True}
    )  # fmt: skip
    no_id = pd.array([None] * n_docs, dtype="Int64")
    docs = pd.DataFrame(
        {"doc_id": np.arange(n_docs), "vertical": rng.choice(["people", "groups", "events"], n_docs),
         "title": [f"document {i}" for i in range(n_docs)], "city": "Seattle", "region": "WA",
         "country": "US",
         "user_id": no_id, "parent_doc_id": no_id, "event_time": pd.NaT, "created_at": t0,
         "popularity": rng.random(n_docs)}
    )  # fmt: skip
    a = rng.integers(0, n_users, 3 * n_users)
    b = rng.integers(0, n_users, 3 * n_users)
    friends = pd.DataFrame({"user_id": np.minimum(a, b), "friend_id": np.maximum(a, b)})
    friends = friends[friends.user_id != friends.friend_id].drop_duplicates()
    members = pd.DataFrame(
        {"user_id": rng.integers(0, n_users, n_users), "doc_id": rng.integers(0, n_docs, n_users)}
    )
    for name, frame in [
        ("users", users),
        ("documents", docs),
        ("friendships", friends),
        ("memberships", members),
    ]:
        frame.to_parquet(out / f"{name}.parquet", index=False)
    for day, (lo, hi) in enumerate([(0, sessions), (sessions, sessions + sessions // 10)], start=1):
        n = hi - lo
        ids = np.arange(lo, hi)
        vertical = rng.choice(["people", "groups", "events"], n)
        vertical[rng.random(n) < 0.001] = "videos"  # 0.1% bad rows
        sess = pd.DataFrame(
            {"session_id": ids, "user_id": rng.integers(0, n_users, n),
             "ts": t0 + pd.to_timedelta(ids, unit="s"),
             "vertical": vertical, "query": [f"query {i % 5000}" for i in ids], "city": "Seattle",
             "region": "WA", "country": "US", "language": "en"}
        )  # fmt: skip
        shown = 10
        imp = pd.DataFrame(
            {"session_id": np.repeat(ids, shown), "doc_id": rng.integers(0, n_docs, n * shown),
             "position": np.tile(np.arange(1, shown + 1), n), "clicked": rng.random(n * shown) < 0.1}
        )  # fmt: skip
        for name, frame in [("sessions", sess), ("impressions", imp)]:
            part = out / "new_day" / name if day == 2 else out / name
            part.mkdir(parents=True, exist_ok=True)
            frame.to_parquet(part / f"day-{day}.parquet", index=False)


def run_step(step: str, logs: Path, db: Path) -> dict:
    """One measured step, in this process (called in a child process)."""
    import duckdb

    from ebr.config import load_config
    from ebr.ingestion.ingest import ingest_logs

    limits = {"title": 256, "query": 256, "name": 128}  # the text maxima the figures were measured with
    overrides = [f"ingest.text_max_chars.{name}={n}" for name, n in limits.items()]
    cfg = load_config(overrides, config_name="ingest/default").ingest
    start = time.perf_counter()
    if step == "baseline":
        con = duckdb.connect(str(db))
        for f in sorted(logs.glob("*.parquet")) + sorted(logs.glob("*/day-*.parquet")):
            name = f.stem if f.parent == logs else f.parent.name
            con.execute(f"CREATE TABLE IF NOT EXISTS {name} AS SELECT * FROM read_parquet('{f}') LIMIT 0")
            con.execute(f"INSERT INTO {name} SELECT * FROM read_parquet('{f}')")
        con.close()
        rows = None
    else:
        result = ingest_logs(logs, db, cfg)
        rows = {t: [c.read, c.loaded, c.quarantined, c.skipped_existing] for t, c in result.tables.items()}
    seconds = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"step": step, "seconds": round(seconds, 1), "peak_rss_mib": round(peak_mib), "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=300_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("/tmp/ingest_bench"))
    parser.add_argument("--step", help=argparse.SUPPRESS)
    parser.add_argument("--logs", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--db", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        print(json.dumps(run_step(args.step, args.logs, args.db)))
        return

    shutil.rmtree(args.out, ignore_errors=True)
    logs = args.out / "logs"
    write_logs(logs, args.sessions, args.seed)
    new_day = logs / "new_day"
    new_day.rename(args.out / "new_day")

    def child(step: str, db: Path) -> dict:
        cmd = [sys.executable, __file__, "--step", step, "--logs", str(logs), "--db", str(db)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        return json.loads(done.stdout.strip().splitlines()[-1])

    results = [child("baseline", args.out / "baseline.duckdb"), child("ingest", args.out / "ebr.duckdb")]
    again = child("ingest", args.out / "ebr.duckdb")
    results.append(again | {"step": "same files again"})
    for name in ("sessions", "impressions"):
        (args.out / "new_day" / name / "day-2.parquet").rename(logs / name / "day-2.parquet")
    results.append(child("ingest", args.out / "ebr.duckdb") | {"step": "new day (+10% sessions)"})

    rows = results[1]["rows"]
    total = sum(r[0] for r in rows.values())
    impressions = rows["impressions"][0]
    print(f"sessions={args.sessions}: {total:,} rows in {len(rows)} tables ({impressions:,} impressions)")
    print("| step | seconds | peak RSS (MiB) | rows loaded | quarantined | skipped |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in results:
        counts = r["rows"] or {}
        loaded = sum(c[1] for c in counts.values()) if counts else total
        quarantined = sum(c[2] for c in counts.values())
        skipped = sum(c[3] for c in counts.values())
        figures = [
            r["step"],
            r["seconds"],
            r["peak_rss_mib"],
            f"{loaded:,}",
            f"{quarantined:,}",
            f"{skipped:,}",
        ]
        print("| " + " | ".join(map(str, figures)) + " |")


if __name__ == "__main__":
    main()
