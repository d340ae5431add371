"""An ingestion with bad rows publishes Great Expectations Data Docs beside its database (each table's suite,
its validation page naming the failed expectation), and `ebr quarantine` lists the bad rows with their
reasons, counted as the ingestion counted them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from ebr.cli import main
from ebr.flows.ingest import publish_data_docs
from ebr.ingestion.results import IngestResult
from ebr.schema import LOG_TABLES

from .logs import clean_logs, run_ingest, write_logs


def bad_logs() -> dict[str, pd.DataFrame]:
    """The clean logs with an impression of an unknown document and a session of an unknown vertical."""
    logs = clean_logs()
    dangling = pd.DataFrame({"session_id": [1001], "doc_id": [999], "position": [4], "clicked": [False]})
    logs["impressions"] = pd.concat([logs["impressions"], dangling], ignore_index=True)
    logs["sessions"].loc[2, "vertical"] = "videos"  # session 1003: its impressions go with it
    return logs


@pytest.fixture(scope="module")
def ingested(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, IngestResult]:
    tmp = tmp_path_factory.mktemp("docs")
    db = tmp / "dataset" / "ebr.duckdb"
    result = run_ingest(write_logs(tmp / "logs", bad_logs()), db, max_bad_fraction=0.6)
    assert result.data_docs is None  # ingest_logs writes no file from Python: the flows publish the docs
    publish_data_docs(result)
    return db, result


def validation_pages(index: Path) -> dict[str, list[tuple[Path, str]]]:
    """Suite name -> its validation pages with their status (Success or Failed), as the index lists them."""
    pages: dict[str, list[tuple[Path, str]]] = {}
    pattern = r"'_table_row_link_path': '(validations/[^']+)', '_validation_success_text': '(\w+)'"
    for link, status in re.findall(pattern, index.read_text()):
        pages.setdefault(link.split("/")[1], []).append((index.parent / link, status))
    return pages


def test_data_docs_beside_the_database_name_each_suite_and_the_failed_expectation(ingested):
    db, result = ingested
    index = db.parent / "data_docs" / "index.html"
    assert result.data_docs == str(index) and result.summary()["data_docs"] == str(index)
    pages = validation_pages(index)
    assert set(pages) == {t.name for t in LOG_TABLES}, pages
    for table in pages:
        assert (index.parent / "expectations" / f"{table}.html").is_file()  # the suite's own page
    [(impressions, status)] = pages["impressions"]
    assert result.run_id in str(impressions) and status == "Failed"
    page = impressions.read_text()
    assert "ref_doc_id" in page and "doc_id 999 is not in documents" in page
    assert {status for t, [(_, status)] in pages.items() if t not in ("sessions", "impressions")} == {
        "Success"
    }
    vendor = index.parent / "static" / "vendor"  # GX's CDN scripts as local copies: it renders offline
    for page in (index, impressions):
        text = page.read_text()
        assert "code.jquery.com" not in text and "unpkg.com" not in text
        for src in re.findall(r'src="([^"]*static/vendor/[^"]+)"', text):
            assert (page.parent / src).resolve().is_file(), src
    assert (vendor / "bootstrap-table.min.js").is_file()


def test_quarantine_lists_the_bad_rows_with_reasons_and_the_ingestion_counts(ingested):
    db, result = ingested
    out = CliRunner().invoke(main, ["quarantine", "--db", str(db), "--run", result.run_id, "--json"])
    assert out.exit_code == 0, out.output
    found = json.loads(out.output)
    assert found["rows"] == sum(c.quarantined for c in result.tables.values()) == 4
    reasons = {(r["table_name"], r["source_row"], r["reason"]) for r in found["shown"]}
    assert ("impressions", 8, "doc_id 999 is not in documents") in reasons
    assert ("sessions", 3, "vertical videos is not in documents") in reasons
    assert all(r["row_json"] and r["source_file"].endswith(".parquet") for r in found["shown"])
    per_table: dict[str, int] = {}
    for c in found["counts"]:
        per_table[c["table"]] = per_table.get(c["table"], 0) + c["rows"]
    assert per_table == {t: c.quarantined for t, c in result.tables.items() if c.quarantined}

    one = CliRunner().invoke(main, ["quarantine", "--db", str(db), "--table", "impressions", "--limit", "1"])
    assert one.exit_code == 0, one.output
    assert "doc_id" in one.output and "... 2 more records" in one.output
    assert "3 quarantined rows (3 records)" in one.output


def test_unwritable_data_docs_leave_the_run_as_it_is(tmp_path, caplog):
    db = tmp_path / "ebr.duckdb"
    result = run_ingest(write_logs(tmp_path / "logs", clean_logs()), db)
    (tmp_path / "data_docs").write_text("not a folder")
    publish_data_docs(result)
    assert result.data_docs is None and result.status == "succeeded"
    assert "Data Docs of " + result.run_id + " not written" in caplog.text


def test_quarantine_of_a_missing_database_is_one_line(tmp_path):
    out = CliRunner().invoke(main, ["quarantine", "--db", str(tmp_path / "none.duckdb")])
    assert out.exit_code == 1 and "none.duckdb: no database" in out.output


@pytest.mark.usefixtures("prefect_harness")
def test_ingest_json_report_and_artifacts_link_the_data_docs(ebr_home: Path, tmp_path: Path) -> None:
    from prefect.artifacts import Artifact

    from ebr.cli.ingest import command

    logs = write_logs(tmp_path / "weblogs", bad_logs())
    out = CliRunner().invoke(command, ["--logs", str(logs), "--json", "ingest.max_bad_fraction=0.6"])
    assert out.exit_code == 0, out.output
    summary = json.loads(out.output.strip().splitlines()[-1])
    index = ebr_home / "datasets" / "weblogs" / "data_docs" / "index.html"
    assert summary["data_docs"] == str(index) and index.is_file()
    report = json.loads(
        (ebr_home / "datasets" / "weblogs" / "runs" / summary["run_id"] / "report.json").read_text()
    )
    assert report["data_docs"] == str(index)
    link = Artifact.get("ingest-data-docs")
    assert link is not None and link.data == f"[Data Docs]({index.as_uri()})"
    contracts = Artifact.get("ingest-contracts")
    assert index.as_uri() in contracts.data
