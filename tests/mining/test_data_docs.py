"""Each mined-table validation, passed or failed, is published to the Data Docs beside the database."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ebr.contracts.mined import MinedContractError, validate_mined

from .test_contracts import HELDOUT, PROMISE, mined  # noqa: F401 (the fixture)

SUITES = {"mined_positives", "mined_negatives", "mined_counts"}


def _pages(index: Path) -> dict[str, str]:
    """Each validation page the index links -> its status there (Success or Failed)."""
    found = re.findall(
        r"'_table_row_link_path': '(validations/[^']+)', '_validation_success_text': '(\w+)'",
        index.read_text(),
    )
    return dict(found)


def test_mined_validations_are_published_passed_and_failed(hand_made_db, mined, tmp_path):  # noqa: F811
    pos, neg = mined
    index = tmp_path / "data_docs" / "index.html"  # hand_made_db is tmp_path/hand.duckdb
    report = validate_mined(hand_made_db, pos, neg, HELDOUT, PROMISE, max_positives=100)
    assert report["data_docs"] == str(index)
    assert {p.split("/")[1] for p in _pages(index)} == SUITES

    bad = neg.copy()
    bad.loc[3, "doc_id"] = pos.loc[pos.session_id == bad.loc[3, "session_id"], "doc_id"].iloc[0]
    with pytest.raises(MinedContractError) as err:
        validate_mined(hand_made_db, pos, bad, HELDOUT, PROMISE, max_positives=100)
    assert err.value.data_docs == str(index)
    pages = _pages(index)
    assert len(pages) == 6  # both validations are listed
    [failed] = [p for p, status in pages.items() if status == "Failed"]
    assert "/mined_negatives/" in failed
    text = (index.parent / failed).read_text()
    assert "is_positive" in text and f"doc {bad.loc[3, 'doc_id']} is a positive of session" in text
