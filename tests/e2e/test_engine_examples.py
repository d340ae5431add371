"""docs/engine.md's examples run as written on the demo's published version.

`make demo`'s version (the `small` world, `ebr retrain` with the defaults) is built in a temporary home, then
every `$ ebr search ...` line of docs/engine.md runs as a command: each must parse, execute and match
something. The output shown under each example in the docs is this version's. The first test (each example
parses, and the operators each have one) is of the default tier.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from ebr.home import PROJECT_ROOT
from ebr.retrieval.query import parse

DOC = PROJECT_ROOT / "docs" / "engine.md"
CLI = "import sys; from ebr.cli import main; sys.exit(main())"


def examples(text: str) -> list[str]:
    """The `$ ebr search ...` lines of the doc's code blocks (a trailing backslash continues a line)."""
    commands, blocks = [], re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M)
    for block in blocks:
        for match in re.finditer(r"^\$ (ebr search (?:[^\n]*\\\n)*[^\n]*)", block, flags=re.M):
            commands.append(match.group(1).replace("\\\n", " "))
    return commands


def test_the_doc_examples_parse_and_cover_the_operators() -> None:
    found = examples(DOC.read_text())
    for command in found:
        args = shlex.split(command)
        if "--expr" in args:
            parse(args[args.index("--expr") + 1])
    for operator in ("(nn ", "(term ", "(and ", "(or ", "(not ", "(fuse ", "(rerank ", "$text"):
        assert any(operator in command for command in found), f"docs/engine.md: no example with {operator}"


@pytest.fixture(scope="module")
def demo_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("demo-home")
    env = os.environ | {"EBR_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-c", CLI, "retrain", "--json"]
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1500)
    assert run.returncode == 0, run.stderr[-3000:]
    return home


@pytest.mark.e2e
def test_every_example_matches_something_on_the_demo_version(demo_home: Path) -> None:
    env = os.environ | {"EBR_HOME": str(demo_home)}
    commands = examples(DOC.read_text())
    assert len(commands) >= 8
    for command in commands:
        args = shlex.split(command)[2:]  # after `ebr search`
        out = subprocess.run(
            [sys.executable, "-c", CLI, "search", *args, "--json"], env=env, capture_output=True, text=True
        )
        assert out.returncode == 0, f"{command}: {out.stderr.strip()}"
        assert json.loads(out.stdout), f"{command}: matches nothing on the demo version"


@pytest.mark.e2e
def test_a_search_imports_neither_torch_nor_pandas_nor_the_flows(demo_home: Path) -> None:
    """What keeps `ebr search` cold under 2 s (docs/benchmarks.md#ebr-search-cold-start)."""
    code = (
        "import sys; from ebr.cli import main; main(standalone_mode=False); "
        "heavy = ('torch', 'pandas', 'scipy', 'lightning', 'prefect', 'great_expectations', 'duckdb'); "
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    args = ["search", "--query-text", "john smith", "--vertical", "people", "--json"]
    env = os.environ | {"EBR_HOME": str(demo_home)}
    out = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[0])  # the results
    assert out.stdout.splitlines()[-1] == "[]"
