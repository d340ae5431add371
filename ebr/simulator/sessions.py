"""Search sessions: who searches, from where, for whom (the hidden intent), what they type, what the incumbent
shows, what they click, and the reformulations that follow failures.

Sessions are made in chunks of base sessions (each chunk with its own seed, so a chunk is reproducible on its
own); a failed session (target not clicked) is often followed within minutes by a reformulation by the same
searcher for the same target, up to `max_depth` in a row.
"""

from __future__ import annotations

import multiprocessing
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from omegaconf import DictConfig

from ebr.schema import VERTICALS
from ebr.simulator.documents import Vertical
from ebr.simulator.graph import csr_gather
from ebr.simulator.groups import Events, Groups, Topics
from ebr.simulator.population import Geography, Users
from ebr.simulator.queries import Query, QueryMaker
from ebr.simulator.retriever import Global, Located, Source
from ebr.simulator.sampling import Blocks, csr_contains, random_neighbour

TIME_KEY = 1 << 34  # seconds since the world's time origin fit below this
SOURCES = {
    "people": {"friends", "friends_of_friends", "city", "region", "global"},
    "groups": {"member", "city", "region", "global"},
    "events": {"member", "city", "region", "global"},
}
ARRAY_SOURCES = {"friends", "friends_of_friends", "member"}
MAX_TYPO_PAIRS = 20_000


@dataclass
class SearchWorld:
    """Everything the sessions draw on."""

    cfg: DictConfig
    geo: Geography
    users: Users
    friend_ptr: np.ndarray
    friends: np.ndarray
    groups: Groups
    events: Events
    topics: Topics
    verticals: dict[str, Vertical]
    user_group_ptr: np.ndarray
    user_groups: np.ndarray
    user_event_ptr: np.ndarray
    user_events: np.ndarray
    start: np.datetime64  # datetime64[s], time of the first possible session
    origin: np.datetime64  # datetime64[s], origin of time keys (no event is earlier)


@dataclass
class Batch:
    """Sessions of one chunk, before their final ids: one entry per session, impressions flattened."""

    temp: np.ndarray  # chunk << 32 | running number
    user: np.ndarray
    ts: np.ndarray  # seconds since world start
    vertical: np.ndarray  # index into VERTICALS
    city: np.ndarray  # the searcher's current city
    target: np.ndarray  # target entity (user, group or event index)
    kind: np.ndarray  # object: intent kind
    parent: np.ndarray  # temp id of the session this one reformulates, -1 if none
    query: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=object))
    form: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=object))
    target_doc: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    success: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=bool))
    imp_session: np.ndarray = field(
        default_factory=lambda: np.empty(0, dtype=np.int64)
    )  # index into the batch
    imp_doc: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    imp_position: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int32))
    imp_clicked: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=bool))

    def __len__(self) -> int:
        return len(self.temp)


@dataclass
class SessionStats:
    """End-of-run statistics gathered while generating (the logs alone cannot tell intent or typo source)."""

    sessions: Counter = field(default_factory=Counter)  # per vertical
    failed: Counter = field(default_factory=Counter)  # target not clicked
    no_results: Counter = field(default_factory=Counter)
    reformulations: Counter = field(default_factory=Counter)
    forms: dict[str, Counter] = field(default_factory=lambda: {v: Counter() for v in VERTICALS})
    kinds: dict[str, Counter] = field(default_factory=lambda: {v: Counter() for v in VERTICALS})
    misspelled: Counter = field(default_factory=Counter)  # per vertical
    typo_sources: Counter = field(default_factory=Counter)
    typo_pairs: list[tuple[str, str]] = field(default_factory=list)  # (word, typed) of keyboard-edit typos
    people_target_name_shared: int = 0
    headroom: dict[str, Counter] = field(default_factory=lambda: {v: Counter() for v in VERTICALS})

    def merge(self, other: SessionStats) -> None:
        """Add another chunk's statistics (typo pairs are kept up to MAX_TYPO_PAIRS)."""
        for name in ("sessions", "failed", "no_results", "reformulations", "misspelled", "typo_sources"):
            getattr(self, name).update(getattr(other, name))
        for v in VERTICALS:
            self.forms[v].update(other.forms[v])
            self.kinds[v].update(other.kinds[v])
            self.headroom[v].update(other.headroom[v])
        self.typo_pairs.extend(other.typo_pairs[: MAX_TYPO_PAIRS - len(self.typo_pairs)])
        self.people_target_name_shared += other.people_target_name_shared


class SessionGenerator:
    """Makes the sessions of one world, chunk by chunk."""

    def __init__(self, world: SearchWorld, query_maker: QueryMaker, seed: int) -> None:
        self.w = world
        self.qm = query_maker
        self.seed = seed
        cfg = world.cfg
        self.sc = cfg.sessions
        for v, names in cfg.retriever.sources.items():
            unknown = set(names) - SOURCES[v]
            if unknown:
                raise ValueError(f"ebr.simulator.retriever.sources.{v}: unknown source(s) {sorted(unknown)}")
        self.sources = [list(cfg.retriever.sources[v]) for v in VERTICALS]
        self.fof_max_friends = int(cfg.retriever.fof_max_friends)
        self.k = int(cfg.retriever.k)
        self.headroom_stride = max(1, int(self.sc.count) // int(cfg.report.headroom_sample))

        geo, users, groups, events = world.geo, world.users, world.groups, world.events
        self.user_country = geo.city_country[users.city]
        active = np.flatnonzero(users.is_active)
        self.searchers = active
        self.searcher_cum = np.cumsum(users.activity[active])
        self.users_by_city = Blocks(users.city)
        self.users_by_country = Blocks(self.user_country)
        people = world.verticals["people"]
        self.people_by_country = Blocks(self.user_country, people.popularity)
        names = users.name
        _, inverse, counts = np.unique(names.astype(str), return_inverse=True, return_counts=True)
        self.name_shared = counts[inverse] > 1

        n_topics = len(world.topics.name)
        self.n_topics = n_topics
        g_region = geo.city_region[groups.city]
        g_country = geo.region_country[g_region]
        self.groups_by_city_topic = Blocks(groups.city * n_topics + groups.topic)
        self.groups_by_region_topic = Blocks(g_region * n_topics + groups.topic)
        self.groups_by_country_topic = Blocks(g_country * n_topics + groups.topic)
        gpop = world.verticals["groups"].popularity
        self.groups_by_city = Blocks(groups.city, gpop)
        self.groups_by_country = Blocks(g_country, gpop)
        self.groups_anywhere = Blocks(np.zeros(len(groups), dtype=np.int64), gpop)

        t = (events.time - world.origin).astype(np.int64)
        e_region = geo.city_region[events.city]
        epop = world.verticals["events"].popularity
        self.events_by_city = Blocks(events.city * TIME_KEY + t)
        self.events_by_region = Blocks(e_region * TIME_KEY + t)
        self.events_by_host = Blocks(events.host * TIME_KEY + t)
        self.events_by_country = Blocks(geo.region_country[e_region] * TIME_KEY + t, epop)
        self.events_anywhere = Blocks(t, epop)
        self.start_offset = int((world.start - world.origin).astype(np.int64))

    # ---- who searches, from where, for what -------------------------------------------------------------

    def base_batch(self, chunk: int, ts: np.ndarray, rng: np.random.Generator) -> Batch:
        """Searchers (by activity), where they are (home, or away), the vertical and the hidden intent."""
        n = len(ts)
        w = self.w
        user = self.searchers[
            np.searchsorted(self.searcher_cum, rng.random(n) * self.searcher_cum[-1], side="right")
        ]
        city = w.users.city[user].copy()
        away = rng.random(n) < self.sc.away_share
        same_country = away & (rng.random(n) < self.sc.away_same_country)
        far = away & ~same_country
        city[same_country] = w.users.city[
            self.users_by_country.draw(self.user_country[user[same_country]], rng)
        ]
        city[far] = w.users.city[rng.integers(0, len(w.users), int(far.sum()))]
        shares = np.array([self.sc.verticals[v] for v in VERTICALS], dtype=np.float64)
        vertical = rng.choice(len(VERTICALS), size=n, p=shares / shares.sum())
        target = np.full(n, -1, dtype=np.int64)
        kind = np.empty(n, dtype=object)
        for vi, v in enumerate(VERTICALS):
            sel = np.flatnonzero(vertical == vi)
            kinds = list(self.sc.intents[v])
            p = np.array(list(self.sc.intents[v].values()), dtype=np.float64)
            wanted = np.array(kinds, dtype=object)[rng.choice(len(kinds), size=len(sel), p=p / p.sum())]
            pick = getattr(self, f"_{v}_targets")
            target[sel], kind[sel] = pick(wanted, user[sel], city[sel], ts[sel], rng)
        return Batch(
            temp=(chunk << 32) + np.arange(n, dtype=np.int64),
            user=user,
            ts=ts,
            vertical=vertical,
            city=city,
            target=target,
            kind=kind,
            parent=np.full(n, -1, dtype=np.int64),
        )

    def _people_targets(
        self, wanted: np.ndarray, user: np.ndarray, city: np.ndarray, ts: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """(target user, intent kind): a friend, a friend of a friend (not a friend), someone in the city the
        searcher is in, or a popular person of its country; without friends, someone in the city."""
        w = self.w
        target = np.full(len(user), -1, dtype=np.int64)
        kind = wanted.copy()

        fof = np.flatnonzero(wanted == "friend_of_friend")
        for _ in range(3):
            todo = fof[target[fof] < 0]
            via = random_neighbour(w.friend_ptr, w.friends, user[todo], rng)
            cand = np.where(via >= 0, random_neighbour(w.friend_ptr, w.friends, np.maximum(via, 0), rng), -1)
            ok = (cand >= 0) & (cand != user[todo])
            ok[ok] = ~csr_contains(w.friend_ptr, w.friends, user[todo][ok], cand[ok])
            target[todo[ok]] = cand[ok]
        kind[(wanted == "friend_of_friend") & (target < 0)] = "friend"

        todo = np.flatnonzero((kind == "friend") & (target < 0))
        target[todo] = random_neighbour(w.friend_ptr, w.friends, user[todo], rng)
        kind[(kind == "friend") & (target < 0)] = "same_city"

        todo = np.flatnonzero(kind == "popular")
        target[todo] = self.people_by_country.draw(w.geo.city_country[city[todo]], rng)

        todo = np.flatnonzero((kind == "same_city") | (target < 0))
        kind[todo] = "same_city"
        target[todo] = self.users_by_city.draw(city[todo], rng)
        self_hit = np.flatnonzero(target == user)
        target[self_hit] = self.users_by_city.draw(city[self_hit], rng)
        return target, kind

    def _groups_targets(
        self, wanted: np.ndarray, user: np.ndarray, city: np.ndarray, ts: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """(target group, intent kind): a local group (interest first), one of a friend's or the searcher's
        own groups, or a popular group of the country."""
        w = self.w
        geo = w.geo
        target = np.full(len(user), -1, dtype=np.int64)
        kind = wanted.copy()
        todo = np.flatnonzero(wanted == "member_group")
        target[todo] = random_neighbour(w.user_group_ptr, w.user_groups, user[todo], rng)
        todo = np.flatnonzero(wanted == "friends_group")
        friend = random_neighbour(w.friend_ptr, w.friends, user[todo], rng)
        target[todo] = np.where(
            friend >= 0, random_neighbour(w.user_group_ptr, w.user_groups, np.maximum(friend, 0), rng), -1
        )
        kind[(kind != "popular_group") & (target < 0)] = "local_group"

        # Local: a group here about one of the searcher's interests, else any group here; then the same
        # interest further away.
        todo = np.flatnonzero(kind == "local_group")
        k = w.users.interests.shape[1]
        first = rng.integers(0, k, len(todo))
        for j in range(k):
            left = todo[target[todo] < 0]
            topic = w.users.interests[user[left], (first[target[todo] < 0] + j) % k]
            target[left] = self.groups_by_city_topic.draw(city[left] * self.n_topics + topic, rng)
        left = todo[target[todo] < 0]
        target[left] = self.groups_by_city.draw(city[left], rng)
        topic = w.users.interests[user[todo], first]
        region = geo.city_region[city[todo]]
        for blocks, place in (
            (self.groups_by_region_topic, region),
            (self.groups_by_country_topic, geo.region_country[region]),
        ):
            left = target[todo] < 0
            target[todo[left]] = blocks.draw(place[left] * self.n_topics + topic[left], rng)
            kind[todo[left]] = "interest_group"
        kind[target < 0] = "popular_group"
        todo = np.flatnonzero(kind == "popular_group")
        target[todo] = self.groups_by_country.draw(geo.city_country[city[todo]], rng)
        left = todo[target[todo] < 0]
        target[left] = self.groups_anywhere.draw(np.zeros(len(left), dtype=np.int64), rng)
        return target, kind

    def _events_targets(
        self, wanted: np.ndarray, user: np.ndarray, city: np.ndarray, ts: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """(target event, intent kind): an event taking place soon (event_window_days) in the searcher's city
        (else region), one hosted by one of their groups, or a popular one in the country."""
        w = self.w
        geo = w.geo
        lo_d, hi_d = self.sc.event_window_days
        now = self.start_offset + ts
        lo, hi = now + int(lo_d * 86400), now + int(hi_d * 86400)
        target = np.full(len(user), -1, dtype=np.int64)
        kind = wanted.copy()

        todo = np.flatnonzero(wanted == "group_event")
        group = random_neighbour(w.user_group_ptr, w.user_groups, user[todo], rng)
        has = group >= 0
        base = np.maximum(group, 0) * TIME_KEY
        got = self.events_by_host.draw_range(base + lo[todo], base + hi[todo], rng)
        target[todo] = np.where(has, got, -1)
        kind[(kind == "group_event") & (target < 0)] = "local_event"

        todo = np.flatnonzero(kind == "local_event")
        region = geo.city_region[city[todo]]
        for blocks, place in ((self.events_by_city, city[todo]), (self.events_by_region, region)):
            left = target[todo] < 0
            t = todo[left]
            target[t] = blocks.draw_range(place[left] * TIME_KEY + lo[t], place[left] * TIME_KEY + hi[t], rng)
        kind[target < 0] = "popular_event"
        todo = np.flatnonzero(kind == "popular_event")
        country = geo.city_country[city[todo]] * TIME_KEY
        target[todo] = self.events_by_country.draw_range(country + lo[todo], country + hi[todo], rng)
        left = todo[target[todo] < 0]
        target[left] = self.events_anywhere.draw_range(lo[left], hi[left], rng)
        left = left[target[left] < 0]
        target[left] = self.events_anywhere.draw_range(
            np.zeros(len(left), np.int64), np.full(len(left), TIME_KEY), rng
        )
        return target, kind

    # ---- what they type, see and click --------------------------------------------------------------------

    def _query(self, vi: int, target: int, corrected: bool, rnd: random.Random) -> Query:
        w = self.w
        geo = w.geo
        if vi == 0:
            first, last = w.users.first[target], w.users.last[target]
            if corrected:
                return self.qm.exact(f"{first} {last}", rnd)
            return self.qm.person(first, last, geo.city_name[w.users.city[target]], rnd)
        if vi == 1:
            title, topic, city = w.groups.title[target], w.groups.topic[target], w.groups.city[target]
        else:
            title, city = w.events.title[target], w.events.city[target]
            topic = w.groups.topic[w.events.host[target]]
        if corrected:
            return self.qm.exact(title, rnd)
        region = geo.city_region[city]
        places = (geo.city_name[city], geo.region_name[region], geo.region_code[region])
        return self.qm.titled(VERTICALS[vi], title, w.topics.name[topic], places, rnd)

    def _sources(self, vi: int, user: int, city: int) -> list[Source]:
        """The incumbent's candidate sources for this searcher, in rank order (array sources made lazily)."""
        w = self.w
        friends = w.friends[w.friend_ptr[user] : w.friend_ptr[user + 1]]
        people_row = w.verticals["people"].row
        make = {
            "friends": lambda: people_row[friends],
            "friends_of_friends": lambda: people_row[
                csr_gather(w.friend_ptr, w.friends, friends[: self.fof_max_friends])
            ],
            "member": (
                (
                    lambda: w.verticals["groups"].row[
                        w.user_groups[w.user_group_ptr[user] : w.user_group_ptr[user + 1]]
                    ]
                )
                if vi == 1
                else (
                    lambda: w.verticals["events"].row[
                        w.user_events[w.user_event_ptr[user] : w.user_event_ptr[user + 1]]
                    ]
                )
            ),
            "city": lambda: Located(int(city)),
            "region": lambda: Located(w.geo.n_cities + int(w.geo.city_region[city])),
            "global": Global,
        }
        return [make[name] if name in ARRAY_SOURCES else make[name]() for name in self.sources[vi]]

    def run(
        self,
        b: Batch,
        corrected: np.ndarray,
        headroom: np.ndarray,
        stats: SessionStats,
        rng: np.random.Generator,
    ) -> None:
        """Fill the batch's queries, impressions and clicks; sessions marked `headroom` are also searched
        text-only for the report."""
        w = self.w
        k = self.k
        rnd = random.Random(int(rng.integers(0, 2**63)))
        n = len(b)
        query = np.empty(n, dtype=object)
        form = np.empty(n, dtype=object)
        target_doc = np.empty(n, dtype=np.int64)
        shown_session, shown_doc, shown_pos = [], [], []
        hits_context = np.zeros(n, dtype=bool)
        for i in range(n):
            vi, t, u = int(b.vertical[i]), int(b.target[i]), int(b.user[i])
            vert = w.verticals[VERTICALS[vi]]
            q = self._query(vi, t, bool(corrected[i]), rnd)
            query[i], form[i] = q.text, q.form
            target_doc[i] = vert.doc_id[t]
            exclude = int(vert.row[u]) if vi == 0 else -1
            rows = vert.index.search(q.text, self._sources(vi, u, int(b.city[i])), k, exclude)
            docs = vert.doc_id[vert.entity[rows]]
            shown_session.append(np.full(len(docs), i, dtype=np.int64))
            shown_doc.append(docs)
            shown_pos.append(np.arange(1, len(docs) + 1, dtype=np.int32))
            hits_context[i] = vert.row[t] in rows
            self._count_query(stats, VERTICALS[vi], q, b.kind[i], t)
            if headroom[i]:
                text_only = vert.index.search(q.text, [Global()], k, exclude)
                h = stats.headroom[VERTICALS[vi]]
                h["sessions"] += 1
                h["text_only_hits"] += int(vert.row[t] in text_only)
                h["with_context_hits"] += int(hits_context[i])
        b.query, b.form, b.target_doc = query, form, target_doc
        b.imp_session = np.concatenate(shown_session) if n else np.empty(0, dtype=np.int64)
        b.imp_doc = np.concatenate(shown_doc) if n else np.empty(0, dtype=np.int64)
        b.imp_position = np.concatenate(shown_pos) if n else np.empty(0, dtype=np.int32)

        c = w.cfg.clicks
        is_target = b.imp_doc == target_doc[b.imp_session]
        examined = b.imp_position.astype(np.float64) ** -c.position_decay
        chance = np.where(is_target, c.target, c.other) * examined
        b.imp_clicked = rng.random(len(b.imp_doc)) < chance
        b.success = np.zeros(n, dtype=bool)
        b.success[b.imp_session[b.imp_clicked & is_target]] = True
        shown = np.bincount(b.imp_session, minlength=n)
        for vi, v in enumerate(VERTICALS):
            sel = b.vertical == vi
            stats.sessions[v] += int(sel.sum())
            stats.failed[v] += int((sel & ~b.success).sum())
            stats.no_results[v] += int((sel & (shown == 0)).sum())
            stats.reformulations[v] += int((sel & (b.parent >= 0)).sum())

    def _count_query(self, s: SessionStats, v: str, q: Query, kind: str, target: int) -> None:
        s.forms[v][q.form] += 1
        s.kinds[v][kind] += 1
        if v == "people" and self.name_shared[target]:
            s.people_target_name_shared += 1
        if q.typo is not None:
            s.misspelled[v] += 1
            s.typo_sources[q.typo[2]] += 1
            if q.typo[2] == "edit" and len(s.typo_pairs) < MAX_TYPO_PAIRS:
                s.typo_pairs.append((q.typo[0], q.typo[1]))

    def reformulations(
        self, parent: Batch, chunk: int, first_number: int, rng: np.random.Generator
    ) -> tuple[Batch, np.ndarray]:
        """Follow-up sessions of the failed sessions of `parent`, and which of them are corrected queries."""
        r = self.w.cfg.reformulation
        idx = np.flatnonzero(~parent.success & (rng.random(len(parent)) < r.probability))
        lo, hi = r.delay_seconds
        child = Batch(
            temp=(chunk << 32) + first_number + np.arange(len(idx), dtype=np.int64),
            user=parent.user[idx],
            ts=parent.ts[idx] + rng.integers(lo, hi + 1, len(idx)),
            vertical=parent.vertical[idx],
            city=parent.city[idx],
            target=parent.target[idx],
            kind=parent.kind[idx],
            parent=parent.temp[idx],
        )
        return child, rng.random(len(idx)) < r.corrected_share

    def chunk(self, chunk: int, first: int, ts: np.ndarray) -> tuple[list[Batch], SessionStats]:
        """The base sessions number first, first + 1, ... at times `ts` (seconds since start), all their
        reformulations, and the chunk's statistics."""
        rng = np.random.default_rng([self.seed, 7, chunk])
        stats = SessionStats()
        batch = self.base_batch(chunk, ts, rng)
        headroom = (first + np.arange(len(batch))) % self.headroom_stride == 0
        self.run(batch, np.zeros(len(batch), dtype=bool), headroom, stats, rng)
        batches, used = [batch], len(batch)
        for _ in range(int(self.w.cfg.reformulation.max_depth)):
            child, corrected = self.reformulations(batches[-1], chunk, used, rng)
            if not len(child):
                break
            self.run(child, corrected, np.zeros(len(child), dtype=bool), stats, rng)
            batches.append(child)
            used += len(child)
        return batches, stats


_worker_generator: SessionGenerator | None = None


def _work(job: tuple[int, int, np.ndarray]) -> tuple[list[Batch], SessionStats]:
    assert _worker_generator is not None
    return _worker_generator.chunk(*job)


def run_chunks(
    generator: SessionGenerator, jobs: list[tuple[int, int, np.ndarray]], workers: int
) -> Iterator[tuple[list[Batch], SessionStats]]:
    """Each job's (chunk, first, ts) sessions, in job order; with workers > 1, in forked worker processes
    (chunks have their own seeds, so the result does not depend on the number of workers)."""
    global _worker_generator
    if workers <= 1:
        for job in jobs:
            yield generator.chunk(*job)
        return
    _worker_generator = generator
    try:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            yield from pool.imap(_work, jobs)
    finally:
        _worker_generator = None
