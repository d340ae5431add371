"""The HTTP API's cost limits: body and document sizes, limits checked at start, admission under a flood."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from ebr.retrieval.api import create_app
from ebr.retrieval.config import load_engine_config

TOKEN = "limits-token"
AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}


class SlowSwapper:
    """A stand-in for HotSwapper whose searches burn CPU for `seconds` (and count those running at once)."""

    version, read_only_reason, last_error = "v0001", None, None

    def __init__(self, seconds: float):
        self.seconds, self.running, self.peak = seconds, 0, 0
        self.lock = threading.Lock()

    def start(self) -> None: ...
    def check(self) -> None: ...
    def stop(self) -> None: ...

    @contextmanager
    def service(self):
        yield SimpleNamespace(
            search=self.search, version=self.version, verticals=[], describe=lambda ids: [{}] * len(ids)
        )

    def search(self, request, timeout_s=None):
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        end = time.monotonic() + self.seconds
        while time.monotonic() < end:
            sum(range(1000))
        with self.lock:
            self.running -= 1
        answer = {"version": self.version, "expr": request.expr, "total": 0, "took_ms": 0.0, "results": []}
        answer |= {"stages": [], "nn_skipped": False}
        return SimpleNamespace(to_dict=lambda explain: answer)


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("EBR_HOME", str(tmp_path))
    monkeypatch.setenv("EBR_API_TOKEN", TOKEN)


@pytest.mark.parametrize(
    "override, key",
    [
        ("engine.limits.max_k=abc", "engine.limits.max_k"),
        ("engine.limits.max_expanded_nodes=0", "engine.limits.max_expanded_nodes"),
        ("engine.serving.max_body_bytes=-1", "engine.serving.max_body_bytes"),
        ("engine.serving.request_timeout_s=0", "engine.serving.request_timeout_s"),
        ("engine.serving.max_concurrent_searches=true", "engine.serving.max_concurrent_searches"),
        ("engine.serving.port=70000", "engine.serving.port"),
    ],
)
def test_bad_limits_fail_at_start(override: str, key: str) -> None:
    with pytest.raises(Exception) as error:
        load_engine_config([override])
    assert key in str(error.value).splitlines()[0]


def test_bodies_and_documents_are_bounded() -> None:
    config = load_engine_config(
        ["engine.serving.max_body_bytes=1000", "engine.serving.max_document_bytes=200"]
    )
    with TestClient(create_app(config, watch=False, dataset="test")) as client:
        big = b'{"doc_id": 1, "terms": ["text:' + b"a" * 2000 + b'"]}'
        assert client.post("/documents", content=big, headers=AUTH).status_code == 413

        def chunks():  # no Content-Length: counted as it streams
            yield b'{"expr": "'
            for _ in range(50):
                yield b"x" * 100
            yield b'"}'

        streamed = client.post("/search", content=chunks(), headers={"Content-Type": "application/json"})
        assert streamed.status_code == 413
        doc = {"doc_id": 1, "terms": [f"text:w{i}" for i in range(40)]}
        refused = client.post("/documents", json=doc, headers=AUTH)
        assert refused.status_code == 413 and "over 200 bytes" in refused.json()["detail"]


def test_health_stays_responsive_under_a_flood_of_searches() -> None:
    swapper = SlowSwapper(seconds=1.0)
    config = load_engine_config(["engine.serving.max_concurrent_searches=2"])
    statuses: list[int] = []
    with TestClient(create_app(config, swapper=swapper, watch=False)) as client:

        def flood() -> None:
            statuses.append(client.post("/search", json={"expr": "(term a:b)"}).status_code)

        threads = [threading.Thread(target=flood) for _ in range(8)]
        for t in threads:
            t.start()
        time.sleep(0.2)
        latencies = []
        for _ in range(5):
            begun = time.monotonic()
            assert client.get("/healthz").status_code == 200
            latencies.append(time.monotonic() - begun)
        for t in threads:
            t.join()
    print(f"healthz under the flood: max {max(latencies) * 1000:.0f} ms")
    assert swapper.peak <= 2  # admission: never more than the pool at work
    assert statuses.count(200) >= 2 and statuses.count(503) >= 1 and set(statuses) <= {200, 503}
    assert max(latencies) < 0.5


def test_a_search_past_its_deadline_answers_504_and_keeps_its_slot() -> None:
    swapper = SlowSwapper(seconds=1.0)
    overrides = ["engine.serving.max_concurrent_searches=1", "engine.serving.request_timeout_s=0.3"]
    with TestClient(create_app(load_engine_config(overrides), swapper=swapper, watch=False)) as client:
        begun = time.monotonic()
        assert client.post("/search", json={"expr": "(term a:b)"}).status_code == 504
        assert time.monotonic() - begun < 0.9
        # the abandoned work still holds the only slot until it ends: no pile-up of threads
        assert client.post("/search", json={"expr": "(term a:b)"}).status_code == 503
        time.sleep(1.0)
        assert client.post("/search", json={"expr": "(term a:b)"}).status_code == 504
