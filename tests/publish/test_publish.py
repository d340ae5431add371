"""Publication: version format, checksums on load, registry and rollback, kills at every step, the staged
candidate measured as it is served, and publication idempotent per run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pytest
from click.testing import CliRunner
from publish_pieces import DATASET, GATE, VERTICALS, make_pieces, make_world, passing_gate, sessions

from ebr import home, registry
from ebr.cli import rollback as rollback_cmd
from ebr.cli import versions as versions_cmd
from ebr.config import GcConfig
from ebr.evaluation.gate import GateFailedError, enforce, evaluate_gate
from ebr.registry import catalogue, publication
from ebr.registry.gc import collect
from ebr.retrieval.config import load_engine_config
from ebr.retrieval.service import SearchService
from ebr.steps.gate import published_recall, served_recall

HERE = Path(__file__).parent
ENGINE = load_engine_config()


def _entries() -> list[str]:
    """What is in versions/ besides the lock file."""
    folder = home.versions_dir(DATASET)
    return sorted(p.name for p in folder.iterdir() if p.name != ".lock") if folder.exists() else []


def _recall(version_dir: Path, world) -> dict[str, float]:
    service = SearchService.open(version_dir, ENGINE, writable=False, dataset=DATASET)
    try:
        return served_recall(service, sessions(world), GATE)
    finally:
        service.close()


@pytest.fixture(scope="module")
def world():
    return make_world()


@pytest.fixture
def published(ebr_home, tmp_path, world):
    """A home with v0001 published and served."""
    pieces = make_pieces(world, tmp_path, seed=1)
    return publication.publish_version(
        pieces, passing_gate(), {"eval": {"recall": 0.5}}, {"seed": 1}, "run-1", DATASET
    )


def test_published_version_has_everything_serving_needs(published, world):
    assert published.version == "v0001" and registry.served_version(DATASET) == "v0001"
    files = set(published.manifest["files"])
    assert {
        "doc_ids.npy",
        "documents.parquet",
        "embeddings/unified.npy",
        "engine/nn/unified.faiss",
        "towers/unified/projection.npy",
        "towers/unified/config.json",
        "engine/meta.json",
    } <= files
    assert not any(f.startswith("faiss/") for f in files)  # one copy of each quantised index: the engine's
    m = published.manifest
    assert m["format"] == publication.FORMAT and m["gate"]["passed"] and m["run_id"] == "run-1"
    assert m["config"] == {"seed": 1} and m["retrievers"]["unified"]["kind"] == "single"
    assert m["indexes"]["unified"]["nprobe"] == 8 and m["indexes"]["unified"]["metric"] == "inner_product"
    assert set(m["serving"]["verticals"]) == set(VERTICALS)
    assert set(m["code_version"]) == {"package", "git_commit", "git_dirty"} and "digest" in m["data_version"]
    assert registry.verify_version(published.path)["version"] == "v0001"
    # served through the engine, every vertical finds most targets (the tiny index scans everything)
    assert min(_recall(published.path, world).values()) > 0.8


def test_staged_candidate_is_measured_and_promoted_as_it_is(ebr_home, tmp_path, world):
    staged = tmp_path / "run" / "candidate"
    manifest = publication.stage_version(
        make_pieces(world, tmp_path), staged, {}, {}, "run-7", {"digest": "x"}
    )
    assert (
        manifest["version"] is None and manifest["gate"] is None and registry.served_version(DATASET) is None
    )
    before = _recall(staged, world)  # the gate measures the staged folder itself
    done = publication.promote(staged, passing_gate(), "run-7", DATASET)
    assert done.version == "v0001" and registry.served_version(DATASET) == "v0001"
    assert _recall(done.path, world) == before  # what was measured is what is served
    assert done.manifest["gate"]["passed"] and done.manifest["version"] == "v0001"
    # resuming the run after it published publishes nothing new
    again = publication.promote(staged, passing_gate(), "run-7", DATASET)
    assert again.version == "v0001" and _entries() == ["v0001"]
    assert staged.is_dir() and registry.verify_version(staged)["version"] is None  # the staged copy untouched


def test_listing_rollback_and_history(published, tmp_path, world):
    second = publication.publish_version(
        make_pieces(world, tmp_path, seed=2), passing_gate(), {}, {}, "run-2", DATASET
    )
    assert second.version == "v0002" and registry.served_version(DATASET) == "v0002"
    listed = catalogue.list_versions(DATASET)
    assert [(v["version"], v["served"]) for v in listed] == [("v0001", False), ("v0002", True)]
    assert listed[0]["gate_metrics"]["people"] == {
        "metric": "recall@5",
        "value": 0.9,
        "floor": 0.2,
        "published": None,
    }
    assert catalogue.rollback(DATASET, "v0001") == "v0002" and registry.served_version(DATASET) == "v0001"
    with pytest.raises(catalogue.UnknownVersionError, match="unknown version 'v0009'.*v0001, v0002"):
        catalogue.rollback(DATASET, "v0009")
    with duckdb.connect(str(home.db_path(DATASET)), read_only=True) as con:
        events = con.execute("SELECT action, version, previous FROM serving_events ORDER BY ts").fetchall()
    assert events == [
        ("publish", "v0001", None),
        ("publish", "v0002", "v0001"),
        ("rollback", "v0001", "v0002"),
    ]


def test_tampered_file_is_refused_on_load_and_rollback(published, tmp_path, world):
    publication.publish_version(
        make_pieces(world, tmp_path, seed=2), passing_gate(), {}, {}, "run-2", DATASET
    )
    target = published.path / "embeddings" / "unified.npy"
    os.chmod(target, 0o644)
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(registry.CorruptVersionError, match=r"embeddings/unified.npy: checksum mismatch"):
        SearchService.open(published.path, ENGINE, writable=False, dataset=DATASET)
    with pytest.raises(registry.CorruptVersionError, match="checksum mismatch"):
        catalogue.rollback(DATASET, "v0001")
    assert registry.served_version(DATASET) == "v0002"
    assert {v["version"]: v["verified"] for v in catalogue.list_versions(DATASET, verify=True)} == {
        "v0001": False,
        "v0002": True,
    }
    result = CliRunner().invoke(rollback_cmd.command, ["--dataset", DATASET, "v0001"])
    assert result.exit_code != 0 and "refusing to serve corrupted version v0001" in result.output
    assert "unified.npy" in result.output


def test_failed_gate_publishes_nothing(ebr_home, tmp_path, world):
    failing = evaluate_gate({"people": 0.1, "groups": 0.9, "events": 0.9}, None, GATE).to_dict()
    with pytest.raises(
        publication.PublicationRefusedError,
        match="refusing to publish: gate failed: vertical=people recall@5=0.1000",
    ):
        publication.publish_version(make_pieces(world, tmp_path), failing, {}, {}, "run-x", DATASET)
    staged = tmp_path / "staged"
    publication.stage_version(make_pieces(world, tmp_path), staged, {}, {}, "run-y", {})
    with pytest.raises(publication.PublicationRefusedError):
        publication.promote(staged, failing, "run-y", DATASET)
    assert catalogue.list_versions(DATASET) == [] and registry.served_version(DATASET) is None
    assert _entries() == []


def test_invalid_pieces_leave_nothing_behind(ebr_home, tmp_path, world):
    pieces = make_pieces(world, tmp_path)
    pieces.embeddings = {"unified": pieces.embeddings["unified"][:-1]}
    with pytest.raises(ValueError, match=r"embeddings\['unified'\] has 299 rows for 300 doc_ids"):
        publication.publish_version(pieces, passing_gate(), {}, {}, "run-x", DATASET)
    assert _entries() == []


def test_cli_versions_json_and_rollback(published, tmp_path, world):
    publication.publish_version(
        make_pieces(world, tmp_path, seed=2), passing_gate(), {}, {}, "run-2", DATASET
    )
    runner = CliRunner()
    out = runner.invoke(versions_cmd.command, ["--dataset", DATASET, "--json"])
    assert out.exit_code == 0, out.output
    listed = json.loads(out.output)
    assert [v["version"] for v in listed if v["served"]] == ["v0002"]
    assert listed[0]["gate_passed"] is True and "people" in listed[0]["gate_metrics"]
    text = runner.invoke(versions_cmd.command, ["--dataset", DATASET])
    assert "* v0002" in text.output and "people recall@5=0.9000" in text.output
    back = runner.invoke(rollback_cmd.command, ["--dataset", DATASET, "v0001"])
    assert back.exit_code == 0 and "serving v0001 (was v0002)" in back.output
    unknown = runner.invoke(rollback_cmd.command, ["--dataset", DATASET, "v0042"])
    assert unknown.exit_code == 2 and "unknown version 'v0042'" in unknown.output


def test_cli_registers_versions_and_rollback():
    from ebr.cli import main

    assert {"versions", "rollback", "gc"} <= set(main.commands)


KILL_STEPS = ["staged", "wrote:embeddings/unified.npy", *[s for s in publication.STEPS if s != "staged"]]


@pytest.mark.parametrize("step", KILL_STEPS)
def test_kill_during_publication_keeps_the_previous_version(published, tmp_path, world, step):
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(HERE), str(home.PROJECT_ROOT)]), OMP_NUM_THREADS="1"
    )
    child = subprocess.run(
        [sys.executable, str(HERE / "publish_child.py"), step],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == -9, child.stderr  # killed at the step, not finished or failed
    steps = publication.STEPS
    committed = steps.index(step) >= steps.index("served") if step in steps else False
    unpromoted = ["v0002"] if step == "renamed" else []  # complete, never served: kept and reported
    expected = ["v0001", "v0002"] if committed else ["v0001"]
    assert registry.served_version(DATASET) == expected[-1]
    listed = catalogue.list_versions(DATASET, verify=True)
    assert [v["version"] for v in listed if v["status"] != "unregistered"] == expected
    assert [v["version"] for v in listed if v["status"] == "unregistered"] == unpromoted
    assert all(v["verified"] for v in listed)
    SearchService.open(
        registry.served_version_dir(DATASET), ENGINE, writable=False, dataset=DATASET
    ).close()  # serving still loads
    # the next publication deletes nothing and succeeds under a fresh name
    nxt = publication.publish_version(
        make_pieces(world, tmp_path, seed=3), passing_gate(), {}, {}, "run-3", DATASET
    )
    assert nxt.version == f"v000{len(expected) + len(unpromoted) + 1}"
    left = [e for e in _entries() if e.startswith(".staging-")]
    assert bool(left) == (not committed and not unpromoted)  # a kill while staging leaves its folder
    assert [e for e in _entries() if e not in left] == sorted([*expected, *unpromoted, nxt.version])
    with duckdb.connect(str(home.db_path(DATASET)), read_only=True) as con:
        registered = [
            r[0] for r in con.execute("SELECT version FROM published_versions ORDER BY 1").fetchall()
        ]
    assert registered == [*expected, nxt.version]
    if unpromoted:  # the unpromoted version verifies and can be registered (and rolled back to)
        catalogue.adopt(DATASET, "v0002")
        assert catalogue.rollback(DATASET, "v0002") == nxt.version
    report = collect(GcConfig(keep_versions=5, keep_runs=10, keep_checkpoints=3), DATASET)
    assert [d.name for d in report.deletions] == left and not any(e in left for e in _entries())


def test_staging_leftovers_are_invisible_and_only_gc_deletes_them(published, tmp_path, world):
    staging = home.versions_dir(DATASET) / ".staging-v0002-999"
    shutil.copytree(published.path, staging)
    (staging / "half.npy").write_bytes(b"partial")
    assert [v["version"] for v in catalogue.list_versions(DATASET)] == ["v0001"]
    publication.publish_version(
        make_pieces(world, tmp_path, seed=2), passing_gate(), {}, {}, "run-2", DATASET
    )
    assert staging.exists()  # only gc deletes
    assert [
        d.kind
        for d in collect(GcConfig(keep_versions=5, keep_runs=10, keep_checkpoints=3), DATASET).deletions
    ] == ["staging"]
    assert not staging.exists() and _entries() == ["v0001", "v0002"]


def test_gate_against_the_served_version(published, tmp_path, world):
    """The published version and the candidate are measured the same way on the same sessions."""
    version, old = published_recall(sessions(world), GATE, ENGINE, DATASET)
    assert version == "v0001" and old == _recall(published.path, world)
    same = tmp_path / "same"
    publication.stage_version(make_pieces(world, tmp_path, seed=1), same, {}, {}, "run-2", {})
    assert _recall(same, world) == old
    worse = tmp_path / "worse"
    publication.stage_version(make_pieces(world, tmp_path, doc_noise=1.0, seed=1), worse, {}, {}, "run-3", {})
    new = _recall(worse, world)
    assert all(new[v] < old[v] - GATE.tolerance for v in old) and min(new.values()) > 0.2  # above the floors
    result = evaluate_gate(new, old, GATE, published_version=version)
    assert not result.passed
    assert result.reason.startswith("gate failed: vertical=people recall@5=")
    assert "< published v0001" in result.reason and "\n" not in result.reason
    with pytest.raises(GateFailedError):
        enforce(result)
    assert evaluate_gate(_recall(same, world), old, GATE, version).passed
    assert np.isfinite(list(new.values())).all()
