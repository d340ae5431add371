"""Step `publish`: promote the staged candidate the gate measured (ebr/registry/publication.py): a new
version, served atomically; a run that already published gets its version back (resume publishes nothing)."""

from __future__ import annotations

from pathlib import Path

from ebr.evaluation.gate import GateResult
from ebr.registry.publication import promote


def publish_candidate(candidate: Path, gate: GateResult, run_id: str, dataset: str) -> str:
    """The version name the candidate is served as in `dataset`."""
    return promote(candidate, gate.to_dict(), run_id, dataset).version
