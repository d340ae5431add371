"""One path: the gate's recall of a staged candidate equals the recall computed from `ebr search --json` and
from the HTTP API on the version once published, session by session, for a single model (people), a
weighted-concatenation ensemble (groups) and a cascade (events), encoding through the version's towers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from publish_pieces import DATASET, GATE, VERTICALS, make_world, passing_gate, projection

from ebr.ann.quantize import build_index, set_nprobe
from ebr.cli.search import command as search_command
from ebr.models.ensembles import l2_normalize, weighted_concat_docs
from ebr.registry import publication
from ebr.retrieval.api import create_app
from ebr.retrieval.build import build_engine
from ebr.retrieval.calibration import Sessions, recall
from ebr.retrieval.config import load_engine_config
from ebr.retrieval.retrievers import RetrieverSpec, expression, single
from ebr.retrieval.service import SearchRequest, SearchService
from ebr.steps.gate import served_recall

SPECS = {
    "people": single("u"),
    "groups": RetrieverSpec("u+v", "ensemble", ("u", "v"), weights=(1.0, 0.5)),
    "events": RetrieverSpec("u>v", "cascade", ("u", "v"), n=40),
}
SEEDS = {"u": 1, "v": 2}


class ProjectionEncoder:
    """A tower stand-in: the query text is the raw vector (comma-separated), projected by the folder's."""

    def __init__(self, path: Path) -> None:
        self.matrix = np.load(path / "projection.npy")

    def encode(self, queries: list) -> np.ndarray:
        raw = np.array([[float(x) for x in q.query_text.split(",")] for q in queries], dtype=np.float32)
        return l2_normalize(raw @ self.matrix)


@pytest.fixture
def towers(monkeypatch: pytest.MonkeyPatch) -> None:
    import ebr.models.export

    monkeypatch.setattr(ebr.models.export, "load_query_encoder", ProjectionEncoder)


def _pieces(world, tmp: Path) -> publication.VersionPieces:
    import pandas as pd

    docs = {k: l2_normalize(world.raw_docs @ projection(seed)) for k, seed in SEEDS.items()}
    docs["u+v"] = weighted_concat_docs([docs["u"], docs["v"]], normalize=True)
    indexes = {}
    for key, matrix in docs.items():
        indexes[key] = build_index("IVF8,PQ4x4", matrix, "inner_product")
        set_nprobe(indexes[key], 2)
    towers = {}
    for key, seed in SEEDS.items():
        towers[key] = tmp / f"tower-{key}"
        towers[key].mkdir(parents=True, exist_ok=True)
        np.save(towers[key] / "projection.npy", projection(seed))
    serving = {
        v: {"retriever": s.name, "key": s.index_key, "expr": expression(s, v, 1, radius=0.5)}
        for v, s in SPECS.items()
    }
    documents = pd.DataFrame(
        {
            "doc_id": world.doc_ids,
            "vertical": [VERTICALS[i % 3] for i in range(len(world.doc_ids))],
            "title": [f"doc {i}" for i in world.doc_ids],
            "terms": [[f"text:doc{i}", f"vertical:{VERTICALS[n % 3]}"] for n, i in enumerate(world.doc_ids)],
        }
    )
    return publication.VersionPieces(
        doc_ids=world.doc_ids,
        documents=documents,
        embeddings=docs,
        indexes=indexes,
        towers=towers,
        retrievers={s.name: s.to_dict() for s in SPECS.values()},
        serving={"default_vertical": "people", "verticals": serving},
        build_engine=build_engine,
    )


def _sessions(world) -> dict[str, Sessions]:
    return {
        v: Sessions(
            [
                SearchRequest(vertical=v, query_text=",".join(f"{x:.6f}" for x in q))
                for q in world.raw_queries[v]
            ],
            world.targets[v],
        )
        for v in VERTICALS
    }


def test_gate_cli_and_http_measure_the_same_recall(ebr_home: Path, tmp_path: Path, towers: None) -> None:
    world, engine = make_world(), load_engine_config()
    staged = tmp_path / "candidate"
    publication.stage_version(_pieces(world, tmp_path), staged, {}, {}, "run-1", {})
    sessions = _sessions(world)
    service = SearchService.open(staged, engine, writable=False, dataset=DATASET)
    try:
        gated = served_recall(service, sessions, GATE)
    finally:
        service.close()
    assert set(gated) == set(VERTICALS) and all(0.3 < r < 1.0 for r in gated.values())  # not trivially 1
    publication.promote(staged, passing_gate(), "run-1", DATASET)

    runner, k = CliRunner(), GATE.verticals["people"].k
    with TestClient(create_app(engine, watch=False, dataset=DATASET)) as client:
        for vertical, s in sessions.items():
            from_cli, from_http = [], []
            for request in s.requests:
                args = ["--dataset", DATASET, "--vertical", vertical, "--query-text", request.query_text]
                args += ["--k", str(k), "--json"]
                out = runner.invoke(search_command, args)
                assert out.exit_code == 0, out.output
                from_cli.append(np.array([h["doc_id"] for h in json.loads(out.output)]))
                body = {"vertical": vertical, "query_text": request.query_text, "limit": k}
                answer = client.post("/search", json=body)
                assert answer.status_code == 200, answer.text
                from_http.append(np.array([h["doc_id"] for h in answer.json()["results"]]))
            assert recall(from_cli, s.targets, k) == gated[vertical], vertical
            assert recall(from_http, s.targets, k) == gated[vertical], vertical
    # the cascade re-ranks in the engine: its template is a (rerank ...) of the first stage
    assert SPECS["events"].kind == "cascade" and "(rerank v :n 40" in expression(
        SPECS["events"], "events", 2, radius=0.8
    )
