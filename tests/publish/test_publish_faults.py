"""Fault injection at every write, flush, fsync and rename of a publication, a promotion, a staging and a
rollback (tests/faults.py): whichever call fails, the previously served version is still served and
verifies, no half version is registered or left in versions/, and a retry succeeds. Only a failure of the
last fsync, after serving.json was replaced, leaves the new version served (the rename is the commit)."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest
from faults import count_calls, inject
from publish_pieces import DATASET, make_pieces, make_world, passing_gate

from ebr import home, registry
from ebr.registry import catalogue, publication

WORLD = make_world(n_docs=120)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A home with v0001 published and served, copied afresh for every injected fault."""
    root = tmp_path_factory.mktemp("template")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EBR_HOME", str(root / "home"))
        publication.publish_version(
            make_pieces(WORLD, root, seed=1), passing_gate(), {}, {}, "run-1", DATASET
        )
    yield root / "home"


@pytest.fixture
def fresh(template: Path, ebr_home: Path) -> Callable[[], None]:
    def reset() -> None:
        shutil.rmtree(ebr_home, ignore_errors=True)
        shutil.copytree(template, ebr_home)

    reset()
    return reset


def _folders() -> list[str]:
    """versions/ without its lock: version folders and any staging leftover."""
    return sorted(p.name for p in home.versions_dir(DATASET).iterdir() if p.name != ".lock")


def _published() -> set[str]:
    with duckdb.connect(str(home.db_path(DATASET)), read_only=True) as con:
        return catalogue.published(con)


def _assert_served_and_verifies(version: str) -> None:
    assert registry.served_version(DATASET) == version
    registry.served_version_dir(DATASET, verify=True)


def _sweep(
    reset: Callable[[], None],
    action: Callable[[], Any],
    check: Callable[[bool, Any], None],
    sticky: bool = False,
) -> tuple[int, int]:
    """Fail the N-th counted call of `action` for every N; `check(raised, faults)` judges each outcome.
    Returns (calls swept, failures that surfaced as errors)."""
    reset()
    n = count_calls(action)
    assert n > 0
    surfaced = 0
    for fail_at in range(1, n + 1):
        reset()
        with inject(fail_at, sticky=sticky) as faults:
            try:
                action()
                raised = False
            except OSError:
                raised = True
        assert faults.failed is not None, (fail_at, faults.calls)
        surfaced += raised
        check(raised, faults)
    return n, surfaced


def _after_failed_publish(new: str) -> Callable[[bool, Any], None]:
    def check(raised: bool, faults: Any) -> None:
        if raised and registry.served_version(DATASET) == "v0001":
            assert _folders() == ["v0001"], faults.failed  # nothing half-written left, no staging folder
            assert _published() == {"v0001"}
        else:  # absorbed (a refused hard link is copied), or the pointer was already replaced
            assert not raised or faults.failed[0] == "fsync", faults.failed
            assert _folders() == ["v0001", new]
        _assert_served_and_verifies(registry.served_version(DATASET))
        retry = publication.publish_version(
            make_pieces(WORLD, home.home().parent, seed=3), passing_gate(), {}, {}, "run-retry", DATASET
        )
        _assert_served_and_verifies(retry.version)
        listed = catalogue.list_versions(DATASET, verify=True)
        assert all(v["verified"] and v["status"] == "published" for v in listed), listed
        assert [v["version"] for v in listed] == sorted(_folders())

    return check


@pytest.mark.parametrize("sticky", [False, True], ids=["one-call", "full-disk"])
def test_every_failing_call_of_publish_version_keeps_the_last_good_state(fresh, tmp_path, sticky):
    pieces = make_pieces(WORLD, tmp_path, seed=2)
    n, surfaced = _sweep(
        fresh,
        lambda: publication.publish_version(pieces, passing_gate(), {}, {}, "run-2", DATASET),
        _after_failed_publish("v0002"),
        sticky,
    )
    assert n >= 40 and surfaced == n  # every injected failure is reported to the caller


def test_every_failing_call_of_promote_keeps_the_last_good_state(fresh, tmp_path):
    staged = tmp_path / "candidate"  # outside the home: the home is reset for every fault
    publication.stage_version(make_pieces(WORLD, tmp_path, seed=2), staged, {}, {}, "run-2", {})
    n, _ = _sweep(
        fresh,
        lambda: publication.promote(staged, passing_gate(), "run-2", DATASET),
        _after_failed_publish("v0002"),
    )
    assert n >= 20
    assert registry.verify_version(staged)["version"] is None  # the staged candidate is never changed


def test_every_failing_call_of_staging_leaves_nothing_promotable_half_written(fresh, tmp_path):
    pieces = make_pieces(WORLD, tmp_path, seed=2)
    staged = tmp_path / "candidate"

    def stage() -> None:
        shutil.rmtree(staged, ignore_errors=True)
        publication.stage_version(pieces, staged, {}, {}, "run-2", {})

    def check(raised: bool, faults: Any) -> None:
        assert raised, faults.failed
        try:  # a candidate that verifies may be promoted; one that does not is refused
            done = publication.promote(staged, passing_gate(), "run-2", DATASET)
            _assert_served_and_verifies(done.version)
        except registry.CorruptVersionError:
            _assert_served_and_verifies("v0001")
            assert _folders() == ["v0001"]

    n, _ = _sweep(fresh, stage, check)
    assert n >= 20


def test_every_failing_call_of_a_rollback_keeps_a_served_version(fresh, tmp_path):
    def reset() -> None:
        fresh()
        publication.publish_version(
            make_pieces(WORLD, tmp_path, seed=2), passing_gate(), {}, {}, "run-2", DATASET
        )

    def events() -> list[tuple[str, str]]:
        with duckdb.connect(str(home.db_path(DATASET)), read_only=True) as con:
            return con.execute("SELECT action, version FROM serving_events ORDER BY ts").fetchall()

    def check(raised: bool, faults: Any) -> None:
        assert raised
        served = registry.served_version(DATASET)
        assert served == "v0002" or faults.failed[0] == "fsync"  # switched only if the last fsync failed
        _assert_served_and_verifies(served)
        assert events()[-1] == (("rollback", "v0001") if served == "v0001" else ("publish", "v0002"))
        assert catalogue.rollback(DATASET, "v0001") == served
        _assert_served_and_verifies("v0001")
        assert _folders() == ["v0001", "v0002"] and _published() == {"v0001", "v0002"}

    n, _ = _sweep(reset, lambda: catalogue.rollback(DATASET, "v0001"), check)
    assert n == 5  # serving.json: write, flush, fsync, rename, fsync of the home
