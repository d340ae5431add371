"""Publish a tiny candidate and SIGKILL this process at a named step: `publish_child.py STEP`."""

from __future__ import annotations

import os
import signal
import sys
import tempfile
from pathlib import Path

from publish_pieces import DATASET, make_pieces, make_world, passing_gate

from ebr.registry import publication


def main(step: str) -> None:
    def kill_at(name: str) -> None:
        if name == step:
            os.kill(os.getpid(), signal.SIGKILL)

    pieces = make_pieces(make_world(), Path(tempfile.mkdtemp()), seed=2)
    publication.STEP_HOOK = kill_at
    publication.publish_version(
        pieces, passing_gate(), metrics={}, config={"child": True}, run_id="run-child", dataset=DATASET
    )


if __name__ == "__main__":
    main(sys.argv[1])
