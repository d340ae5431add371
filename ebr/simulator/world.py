"""`simulate(scale, seed, out_dir)`: generate a world and write it (log tables, ground truth, report).

The same scale, seed and config give byte-identical files. The world is written to a temporary sibling folder
and renamed into place at the end, so a crash leaves any earlier world at `out_dir` intact.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from ebr.runners import Progress
from ebr.schema import DOCUMENTS, FRIENDSHIPS, MEMBERSHIPS, SCHEMA_VERSION, USERS
from ebr.simulator.assets import load_assets
from ebr.simulator.config import load_scale
from ebr.simulator.documents import Vertical, make_vertical
from ebr.simulator.graph import csr, make_friendships
from ebr.simulator.groups import (
    DAY,
    Events,
    Groups,
    make_events,
    make_groups,
    make_topics,
    memberships_of_users,
)
from ebr.simulator.population import Geography, Users, assign_interests, make_geography, make_users
from ebr.simulator.queries import QueryMaker
from ebr.simulator.report import build_report, render_markdown
from ebr.simulator.sessions import SearchWorld, SessionGenerator, SessionStats, run_chunks
from ebr.simulator.tables import SessionWriter, write_table
from ebr.simulator.typos import TypoModel

log = logging.getLogger(__name__)

StageHook = Callable[[str, float], None]
STAGES = ("users", "friendships", "groups_events", "documents_index", "write_tables", "sessions", "report")


def simulate(
    scale: str,
    seed: int,
    out_dir: Path,
    overrides: Sequence[str] = (),
    on_stage: StageHook | None = None,
    progress: Progress | None = None,
) -> Path:
    """Write the world of `scale` (conf/simulator/<scale>.yaml, with Hydra `overrides`) and `seed` to out_dir.

    `on_stage(name, seconds)` is told how long each stage took (timings never enter the world's files);
    `progress("simulate <scale>", fraction)` the share of the stages (STAGES) done, the sessions stage chunk
    by chunk; each stage is logged.
    Raises FileExistsError when out_dir exists and is not a world (no schema.json); ValueError for bad config.
    """
    cfg = load_scale(scale, overrides)
    out_dir = Path(out_dir).resolve()
    if out_dir.exists() and not (out_dir / "schema.json").is_file():
        raise FileExistsError(
            f"{out_dir} exists and is not a simulated world (no schema.json); not replacing it"
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        generate(cfg, scale, seed, tmp, on_stage or (lambda name, seconds: None), progress)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old)
    else:
        os.replace(tmp, out_dir)
    return out_dir


class _Stages:
    """Times the stages (in STAGES order), logs each and reports the share done to `progress`."""

    def __init__(self, hook: StageHook, progress: Progress | None, what: str) -> None:
        self.hook, self.progress, self.what = hook, progress, what
        self.finished = 0
        self.t = time.perf_counter()
        self.report(0.0)

    def report(self, within: float) -> None:
        """The current stage is `within` (0 to 1) done."""
        if self.progress is not None:
            self.progress(self.what, (self.finished + within) / len(STAGES))

    def done(self, name: str) -> None:
        now = time.perf_counter()
        self.hook(name, now - self.t)
        self.finished += 1
        log.info("%s: %s in %.1f s (stage %d/%d)", self.what, name, now - self.t, self.finished, len(STAGES))
        self.report(0.0)
        self.t = now


def generate(
    cfg: DictConfig, scale: str, seed: int, out: Path, hook: StageHook, progress: Progress | None = None
) -> None:
    """Generate the world into the (empty) folder `out`."""
    stages = _Stages(hook, progress, f"simulate {scale}")
    assets = load_assets()
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(7)]
    start = np.datetime64(cfg.start, "s")

    geo = make_geography(cfg, assets, rngs[0])
    users = make_users(cfg, geo, assets, rngs[1])
    n = len(users)
    stages.done("users")
    edges, hobby = make_friendships(users, geo, cfg, rngs[2])
    friend_ptr, friends = csr(n, edges)
    stages.done("friendships")

    topics = make_topics(assets.vocab, cfg)
    assign_interests(users, hobby, topics.weight, cfg, rngs[3])
    groups = make_groups(users, hobby, geo, topics, start, cfg, rngs[4])
    events = make_events(groups, friend_ptr, friends, geo, topics, assets.vocab, start, cfg, rngs[4])
    user_group_ptr, user_groups = memberships_of_users(groups.member_ptr, groups.members, n)
    user_event_ptr, user_events = memberships_of_users(events.attendee_ptr, events.attendees, n)
    stages.done("groups_events")

    r = rngs[5]
    degree = np.diff(friend_ptr)
    people_popularity = (
        (degree + 1)
        * r.lognormal(0.0, 0.5, n)
        * np.where(users.public_figure, cfg.activity.public_figure_boost, 1.0)
    )
    people_created = start - (r.uniform(30, 3000, n) * DAY).astype("timedelta64[s]")
    block = int(cfg.retriever.scan_block)
    home_region = geo.city_region[users.city]
    people = make_vertical(
        "people", n + 1, users.name, users.city, home_region, people_popularity, geo, block
    )
    group_docs = make_vertical(
        "groups", n + 1 + n, groups.title, groups.loc_city, groups.loc_region, groups.popularity, geo, block
    )
    event_docs = make_vertical(
        "events",
        n + 1 + n + len(groups),
        events.title,
        events.city,
        geo.city_region[events.city],
        events.popularity,
        geo,
        block,
    )
    stages.done("documents_index")

    _write_users(out, users, geo)
    write_table(
        out / "friendships.parquet",
        FRIENDSHIPS,
        {"user_id": edges[:, 0] + 1, "friend_id": edges[:, 1] + 1},
        {},
    )
    memberships = _write_memberships(out, groups, events, group_docs.doc_id, event_docs.doc_id)
    _write_documents(out, users, geo, groups, events, people, group_docs, event_docs, people_created)
    stages.done("write_tables")

    world = SearchWorld(
        cfg=cfg,
        geo=geo,
        users=users,
        friend_ptr=friend_ptr,
        friends=friends,
        groups=groups,
        events=events,
        topics=topics,
        verticals={"people": people, "groups": group_docs, "events": event_docs},
        user_group_ptr=user_group_ptr,
        user_groups=user_groups,
        user_event_ptr=user_event_ptr,
        user_events=user_events,
        start=start,
        origin=start - np.timedelta64(int(cfg.events.before_days * DAY), "s"),
    )
    sc = cfg.sessions
    typo_model = TypoModel(
        assets.misspellings, assets.typo_stats["generator"], float(sc.real_misspelling_share)
    )
    query_maker = QueryMaker(
        sc.query_forms,
        sc.misspelled,
        typo_model,
        float(sc.spacing),
        sc.case,
        assets.vocab["abbreviations"],
        assets.vocab["optional_words"],
    )
    generator = SessionGenerator(world, query_maker, seed)
    writer = SessionWriter(out, users, geo, start)
    count, step = int(sc.count), int(sc.chunk)
    ts = np.sort(rngs[6].integers(0, int(cfg.days) * DAY, count))
    chunks = [(c, a, ts[a : a + step]) for c, a in enumerate(range(0, count, step))]
    stats = SessionStats()
    for done, ((_, a, _), (batches, chunk_stats)) in enumerate(
        zip(chunks, run_chunks(generator, chunks, int(sc.workers)), strict=True), 1
    ):
        b = a + step
        writer.add(batches, until=int(ts[b]) if b < count else None)
        stats.merge(chunk_stats)
        stages.report(done / len(chunks))
    writer.close()
    stages.done("sessions")

    report = build_report(
        scale=scale,
        seed=seed,
        names=users.name,
        group_titles=groups.title,
        event_titles=events.title,
        n_users=n,
        edges=edges,
        memberships=memberships,
        written=writer.counts,
        stats=stats,
        typo_reference=assets.typo_stats["measured"],
        clustering_sample=int(cfg.graph.clustering_sample),
        reference_graph=str(cfg.report.reference_graph),
        rng=np.random.default_rng([seed, 11]),
    )
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "report.md").write_text(render_markdown(report))
    (out / "schema.json").write_text(json.dumps({"schema_version": SCHEMA_VERSION}) + "\n")
    (out / "config.yaml").write_text(
        OmegaConf.to_yaml(OmegaConf.create({"scale": scale, "seed": seed, "simulator": cfg}))
    )
    stages.done("report")


def _write_users(out: Path, users: Users, geo: Geography) -> None:
    region = geo.city_region[users.city]
    write_table(
        out / "users.parquet",
        USERS,
        {
            "user_id": np.arange(1, len(users) + 1, dtype=np.int64),
            "name": users.name,
            "city": geo.city_name[users.city],
            "region": geo.region_name[region],
            "country": geo.country_code[geo.region_country[region]],
            "language": users.language,
            "is_active": users.is_active,
        },
        {},
    )


def _write_memberships(
    out: Path, groups: Groups, events: Events, group_doc_id: np.ndarray, event_doc_id: np.ndarray
) -> dict[str, int]:
    g_owner = np.repeat(np.arange(len(groups)), np.diff(groups.member_ptr))
    e_owner = np.repeat(np.arange(len(events)), np.diff(events.attendee_ptr))
    write_table(
        out / "memberships.parquet",
        MEMBERSHIPS,
        {
            "user_id": np.concatenate([groups.members, events.attendees]) + 1,
            "doc_id": np.concatenate([group_doc_id[g_owner], event_doc_id[e_owner]]),
        },
        {},
    )
    return {"groups": int(len(g_owner)), "events": int(len(e_owner))}


def _write_documents(
    out: Path,
    users: Users,
    geo: Geography,
    groups: Groups,
    events: Events,
    people: Vertical,
    group_docs: Vertical,
    event_docs: Vertical,
    people_created: np.ndarray,
) -> None:
    n, ng, ne = len(users), len(groups), len(events)
    loc_city = np.concatenate([users.city, groups.loc_city, events.city])
    loc_region = np.concatenate(
        [geo.city_region[users.city], groups.loc_region, geo.city_region[events.city]]
    )
    no_city, no_region = loc_city < 0, loc_region < 0
    safe_region = np.maximum(loc_region, 0)
    is_event = np.concatenate([np.zeros(n + ng, dtype=bool), np.ones(ne, dtype=bool)])
    never = np.datetime64(0, "s")
    write_table(
        out / "documents.parquet",
        DOCUMENTS,
        {
            "doc_id": np.concatenate([people.doc_id, group_docs.doc_id, event_docs.doc_id]),
            "vertical": np.repeat(np.array(["people", "groups", "events"], dtype=object), [n, ng, ne]),
            "title": np.concatenate([people.title, group_docs.title, event_docs.title]),
            "city": geo.city_name[np.maximum(loc_city, 0)],
            "region": geo.region_name[safe_region],
            "country": geo.country_code[geo.region_country[safe_region]],
            "user_id": np.concatenate([np.arange(1, n + 1), np.zeros(ng + ne, dtype=np.int64)]),
            "parent_doc_id": np.concatenate(
                [np.zeros(n + ng, dtype=np.int64), group_docs.doc_id[events.host]]
            ),
            "event_time": np.concatenate([np.full(n + ng, never), events.time]),
            "created_at": np.concatenate([people_created, groups.created_at, events.created_at]),
            "popularity": np.concatenate([people.popularity, group_docs.popularity, event_docs.popularity]),
        },
        {
            "city": no_city,
            "region": no_region,
            "country": no_region,
            "user_id": np.arange(n + ng + ne) >= n,
            "parent_doc_id": ~is_event,
            "event_time": ~is_event,
        },
    )
