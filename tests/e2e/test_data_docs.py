"""The Great Expectations Data Docs of an ingestion with bad rows, rendered offline in headless Chromium
(Debian's package): the index's tables (built in JavaScript from the site's local copies of GX's scripts)
list every suite, and a validation page shows the failed expectation with its reason."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ebr.flows.ingest import publish_data_docs
from ebr.schema import LOG_TABLES
from tests.ingest.logs import run_ingest, write_logs
from tests.ingest.test_data_docs import bad_logs, validation_pages

from . import browser

pytestmark = pytest.mark.e2e


def rendered_text(url: str, profile: Path) -> str:
    """The page's text once Chromium ran its scripts (script and style bodies left out)."""
    dom = browser.dom(url, profile, budget_ms=5000)
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))


def test_data_docs_render_suites_and_a_failed_expectation(tmp_path: Path) -> None:
    db = tmp_path / "dataset" / "ebr.duckdb"
    result = run_ingest(write_logs(tmp_path / "logs", bad_logs()), db, max_bad_fraction=0.6)
    publish_data_docs(result)  # as the ingest and retrain flows do
    index = Path(result.data_docs)

    text = rendered_text(index.as_uri(), tmp_path / "chrome-index")
    assert "Showing 1 to 6 of 6 rows" in text, text[:2000]  # bootstrap-table ran: the rows are in the DOM
    for table in LOG_TABLES:
        assert f" {table.name} " in text
    assert result.run_id in text and "Failed" in text

    [(page, _)] = validation_pages(index)["impressions"]
    text = rendered_text(page.as_uri(), tmp_path / "chrome-page")
    assert "Expectation Suite: impressions" in text and "Status: Failed" in text
    assert "ref_doc_id" in text and "doc_id 999 is not in documents" in text
    assert "session_id 1003 is not in sessions" in text  # the session of an unknown vertical took its rows
    assert "Unsuccessful Expectations 2" in text
