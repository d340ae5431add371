"""Serve the retrain flow's deployments: `retrain/retrain` (manual) and `retrain/nightly` (paused schedule).

    python -m ebr.flows.deployments     # keeps running; runs what the UI or `prefect deployment run` asks

The deployments' defaults and parameters are the flow's, described in its run form (the flow's `Args:`);
each run reads and writes its dataset (`-p dataset=NAME`; by default the source's own: `-p scale=tiny` is
sim-tiny-s7). The nightly deployment is created paused (opt in with its toggle in the UI). `feedback/feedback`
(manual) rates served EBR results (ebr/flows/feedback.py)."""

from __future__ import annotations

import argparse

from prefect import serve

from ebr.flows.feedback import feedback
from ebr.flows.retrain import retrain


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m ebr.flows.deployments", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--cron", default="0 2 * * *", help="schedule of retrain/nightly (default: 02:00 daily)"
    )
    parser.add_argument("--limit", type=int, default=1, help="flow runs at a time (default 1)")
    args = parser.parse_args(argv)
    manual = retrain.to_deployment(
        name="retrain", description="Retrain on demand: parameters from the UI form or `-p key=value`."
    )
    nightly = retrain.to_deployment(
        name="nightly", cron=args.cron, paused=True, description="Nightly retrain; created paused (opt in)."
    )
    rating = feedback.to_deployment(
        name="feedback",
        description="Rate served EBR results: load the log, sample tasks, rate (docs/feedback.md).",
    )
    serve(manual, nightly, rating, limit=args.limit)


if __name__ == "__main__":
    main()
