"""The API's /docs (Swagger UI) and /redoc rendered in headless Chromium (Debian's package) from a real
`ebr serve` over a tiny published version, with every host but the server unreachable: the pages' scripts
must come from the server itself."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from retrieval.engine_fixtures import make_corpus, train_indexes, write_version

from ebr import home, registry

from . import browser
from .test_deployment import _free_port, _stop, _wait

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent
DATASET = "docs"
SERVING = {
    "retrievers": {"unified": {"name": "unified", "kind": "single", "keys": ["unified"]}},
    "serving": {
        "default_vertical": "people",
        "verticals": {
            v: {"retriever": "unified", "key": "unified", "expr": f"(and (term vertical:{v}) $text)"}
            for v in ("people", "groups")
        },
    },
}


def test_docs_and_redoc_render_offline(ebr_home: Path, tmp_path: Path) -> None:
    version = home.versions_dir(DATASET) / "v0001"
    write_version(version, make_corpus(seed=5, n=100), train_indexes(), SERVING)
    registry.set_served_version(DATASET, "v0001")
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115
    server = subprocess.Popen(
        [str(BIN / "ebr"), "serve", "--dataset", DATASET, "--port", str(port)],
        env=os.environ | {"EBR_HOME": str(ebr_home)}, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip

    def serving() -> bool:
        try:
            return httpx.get(f"{base}/healthz", timeout=2).json()["version"] == "v0001"
        except httpx.HTTPError:
            return False

    try:
        _wait(serving, 120, "ebr serve")
        swagger = browser.dom(f"{base}/docs", tmp_path / "chrome-docs", local_only=True)
        assert 'id="operations-search-search_search_post"' in swagger, "Swagger UI rendered no operation"
        assert "Search the served version" in swagger
        redoc = browser.dom(f"{base}/redoc", tmp_path / "chrome-redoc", local_only=True)
        assert re.search(r"<h1[^>]*>EBR retrieval engine", redoc), "ReDoc rendered no API title"
        assert "Search the served version" in redoc
    finally:
        _stop(server)
        log.close()
