"""Publication: version format, checksums on load, registry and rollback, and kills at every step."""

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
from publish_pieces import GATE, in_memory, load_encoder, make_pieces, make_world, passing_gate

from ebr import home, registry
from ebr.cli import rollback as rollback_cmd
from ebr.cli import versions as versions_cmd
from ebr.retrieval.retrievers import load_version
from ebr.steps import publish
from ebr.steps.gate import GateFailedError, enforce, evaluate_gate, measure_recall, run_gate

HERE = Path(__file__).parent


def _entries() -> list[str]:
    """What is in versions/ besides the lock file."""
    folder = home.versions_dir()
    return sorted(p.name for p in folder.iterdir() if p.name != ".lock") if folder.exists() else []


@pytest.fixture(scope="module")
def world():
    return make_world()


@pytest.fixture
def published(ebr_home, tmp_path, world):
    """A home with v0001 published and served."""
    pieces = make_pieces(world, tmp_path, seed=1)
    return publish.publish_version(pieces, passing_gate(), {"eval": {"recall": 0.5}}, {"seed": 1}, "run-1")


def test_published_version_has_everything_serving_needs(published, world):
    assert published.version == "v0001" and registry.served_version() == "v0001"
    files = set(published.manifest["files"])
    assert {
        "doc_ids.npy",
        "documents.parquet",
        "embeddings/unified.npy",
        "faiss/unified.faiss",
        "towers/unified/projection.npy",
        "towers/unified/config.json",
        "engine/postings.json",
    } <= files
    m = published.manifest
    assert m["gate"]["passed"] and m["run_id"] == "run-1" and m["config"] == {"seed": 1}
    assert m["indexes"]["unified"]["nprobe"] == 8 and m["indexes"]["unified"]["metric"] == "inner_product"
    assert set(m["code_version"]) == {"package", "git_commit", "git_dirty"} and "digest" in m["data_version"]
    assert registry.verify_version(published.path)["version"] == "v0001"
    # the loaded version retrieves exactly what the in-memory candidate did
    loaded = load_version(published.path, encoder_loader=load_encoder)
    queries = world.sessions["people"].queries
    np.testing.assert_array_equal(
        loaded.search(queries, 5),
        in_memory(make_pieces(world, published.path.parent / "x", seed=1)).search(queries, 5),
    )


def test_listing_rollback_and_history(published, tmp_path, world):
    second = publish.publish_version(make_pieces(world, tmp_path, seed=2), passing_gate(), {}, {}, "run-2")
    assert second.version == "v0002" and registry.served_version() == "v0002"
    listed = publish.list_versions()
    assert [(v["version"], v["served"]) for v in listed] == [("v0001", False), ("v0002", True)]
    assert listed[0]["gate_metrics"]["people"] == {
        "metric": "recall@5",
        "value": 0.9,
        "floor": 0.2,
        "published": None,
    }
    assert publish.rollback("v0001") == "v0002" and registry.served_version() == "v0001"
    with pytest.raises(publish.UnknownVersionError, match="unknown version 'v0009'.*v0001, v0002"):
        publish.rollback("v0009")
    with duckdb.connect(str(home.db_path()), read_only=True) as con:
        events = con.execute("SELECT action, version, previous FROM serving_events ORDER BY ts").fetchall()
    assert events == [
        ("publish", "v0001", None),
        ("publish", "v0002", "v0001"),
        ("rollback", "v0001", "v0002"),
    ]


def test_tampered_file_is_refused_on_load_and_rollback(published, tmp_path, world):
    publish.publish_version(make_pieces(world, tmp_path, seed=2), passing_gate(), {}, {}, "run-2")
    target = published.path / "embeddings" / "unified.npy"
    os.chmod(target, 0o644)
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(registry.CorruptVersionError, match=r"embeddings/unified.npy: checksum mismatch"):
        load_version(published.path, encoder_loader=load_encoder)
    with pytest.raises(registry.CorruptVersionError, match="checksum mismatch"):
        publish.rollback("v0001")
    assert registry.served_version() == "v0002"
    assert {v["version"]: v["verified"] for v in publish.list_versions(verify=True)} == {
        "v0001": False,
        "v0002": True,
    }
    result = CliRunner().invoke(rollback_cmd.command, ["v0001"])
    assert result.exit_code != 0 and "refusing to serve corrupted version v0001" in result.output
    assert "unified.npy" in result.output


def test_failed_gate_publishes_nothing(ebr_home, tmp_path, world):
    failing = evaluate_gate({"people": 0.1, "groups": 0.9, "events": 0.9}, None, GATE)
    with pytest.raises(
        GateFailedError, match="refusing to publish: gate failed: vertical=people recall@5=0.1000"
    ):
        publish.publish_version(make_pieces(world, tmp_path), failing, {}, {}, "run-x")
    assert publish.list_versions() == [] and registry.served_version() is None
    assert _entries() == []


def test_invalid_pieces_leave_nothing_behind(ebr_home, tmp_path, world):
    pieces = make_pieces(world, tmp_path)
    pieces.embeddings = {"unified": pieces.embeddings["unified"][:-1]}
    with pytest.raises(ValueError, match=r"embeddings\['unified'\] has 299 rows for 300 doc_ids"):
        publish.publish_version(pieces, passing_gate(), {}, {}, "run-x")
    assert _entries() == []


def test_cli_versions_json_and_rollback(published, tmp_path, world):
    publish.publish_version(make_pieces(world, tmp_path, seed=2), passing_gate(), {}, {}, "run-2")
    runner = CliRunner()
    out = runner.invoke(versions_cmd.command, ["--json"])
    assert out.exit_code == 0, out.output
    listed = json.loads(out.output)
    assert [v["version"] for v in listed if v["served"]] == ["v0002"]
    assert listed[0]["gate_passed"] is True and "people" in listed[0]["gate_metrics"]
    text = runner.invoke(versions_cmd.command, [])
    assert "* v0002" in text.output and "people recall@5=0.9000" in text.output
    back = runner.invoke(rollback_cmd.command, ["v0001"])
    assert back.exit_code == 0 and "serving v0001 (was v0002)" in back.output
    unknown = runner.invoke(rollback_cmd.command, ["v0042"])
    assert unknown.exit_code == 2 and "unknown version 'v0042'" in unknown.output


def test_cli_registers_versions_and_rollback():
    from ebr.cli import main

    assert {"versions", "rollback"} <= set(main.commands)


KILL_STEPS = ["staged", "wrote:embeddings/unified.npy", *[s for s in publish.STEPS if s != "staged"]]


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
    committed = publish.STEPS.index(step) >= publish.STEPS.index("served") if step in publish.STEPS else False
    expected = ["v0001", "v0002"] if committed else ["v0001"]
    assert registry.served_version() == expected[-1]
    listed = publish.list_versions(verify=True)
    assert [v["version"] for v in listed] == expected and all(v["verified"] for v in listed)
    load_version(registry.served_version_dir(), encoder_loader=load_encoder)  # serving still loads
    # the next publication cleans up and succeeds
    nxt = publish.publish_version(make_pieces(world, tmp_path, seed=3), passing_gate(), {}, {}, "run-3")
    assert nxt.version == f"v000{len(expected) + 1}"
    assert _entries() == [*expected, nxt.version]
    with duckdb.connect(str(home.db_path()), read_only=True) as con:
        registered = [
            r[0] for r in con.execute("SELECT version FROM published_versions ORDER BY 1").fetchall()
        ]
    assert registered == [*expected, nxt.version]


def test_staging_leftovers_are_invisible_and_cleaned(published, tmp_path, world):
    staging = home.versions_dir() / ".staging-v0002-999"
    shutil.copytree(published.path, staging)
    (staging / "half.npy").write_bytes(b"partial")
    assert [v["version"] for v in publish.list_versions()] == ["v0001"]
    publish.publish_version(make_pieces(world, tmp_path, seed=2), passing_gate(), {}, {}, "run-2")
    assert not staging.exists()


def test_gate_against_the_served_version(published, tmp_path, world):
    """The published index's recall on the gate sessions decides a regression."""
    from ebr.steps.gate import served_recall

    version, old = served_recall(world.sessions, GATE, encoder_loader=load_encoder)
    assert version == "v0001"
    same = in_memory(make_pieces(world, tmp_path, seed=1))
    assert measure_recall(same.search, world.sessions, GATE) == old
    worse = in_memory(make_pieces(world, tmp_path, doc_noise=0.6, seed=1))
    new = measure_recall(worse.search, world.sessions, GATE)
    assert all(new[v] < old[v] - GATE.tolerance for v in old) and min(new.values()) > 0.2  # above the floors
    result = evaluate_gate(new, old, GATE, published_version=version)
    assert not result.passed
    assert result.reason.startswith("gate failed: vertical=people recall@5=")
    assert "< published v0001" in result.reason and "\n" not in result.reason
    assert evaluate_gate(measure_recall(same.search, world.sessions, GATE), old, GATE, version).passed


def test_run_gate_measures_both_sides_and_leaves_a_report(published, tmp_path, world):
    worse = in_memory(make_pieces(world, tmp_path, doc_noise=0.6, seed=1))
    result = run_gate(worse.search, world.sessions, GATE, tmp_path / "run", encoder_loader=load_encoder)
    assert not result.passed and result.published_version == "v0001"
    assert result.sessions == {"people": 40, "groups": 40, "events": 40}
    assert json.loads((tmp_path / "run" / "gate.json").read_text())["reason"] == result.reason
    with pytest.raises(GateFailedError):
        enforce(result)
    assert registry.served_version() == "v0001"
