"""Groups and events: titles from topic, place and suffix words, members mostly local, events hosted by
groups.

A group is founded by a user in their city around one of their interests; titles reuse the same topic +
suffix patterns across cities ("Moms Club", "Mini Cooper Owners/Drivers Club"), sometimes with the place in
the title ("Louisville Moms Club"), and only some groups list their location. Members come as runs of
same-interest locals (whole hobby circles, so friends share groups), random locals, and a few from elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from omegaconf import DictConfig

from ebr.simulator.population import Geography, Users

DAY = 86_400


@dataclass(frozen=True)
class Topics:
    name: np.ndarray  # object
    category: np.ndarray  # int64
    weight: np.ndarray  # float64
    suffixes: tuple[tuple[str, ...], ...]  # per category
    event_kinds: tuple[tuple[str, ...], ...]  # per category


@dataclass
class Groups:
    city: np.ndarray  # home city (always known to the simulator)
    topic: np.ndarray
    title: np.ndarray  # object
    loc_city: np.ndarray  # explicit location listed on the document, -1 when none
    loc_region: np.ndarray
    loc_country: np.ndarray
    member_ptr: np.ndarray  # CSR: members of each group
    members: np.ndarray
    popularity: np.ndarray
    created_at: np.ndarray  # datetime64[s]

    def __len__(self) -> int:
        return len(self.city)


@dataclass
class Events:
    host: np.ndarray  # host group
    city: np.ndarray
    time: np.ndarray  # datetime64[s]
    title: np.ndarray  # object
    attendee_ptr: np.ndarray  # CSR: attendees of each event
    attendees: np.ndarray
    popularity: np.ndarray
    created_at: np.ndarray  # datetime64[s]

    def __len__(self) -> int:
        return len(self.host)


def make_topics(vocab: dict[str, Any], cfg: DictConfig) -> Topics:
    """The cfg.interests.topics most popular topics of the vocabulary, weighted by category weight and Zipf
    rank within the category (a modest topic pool makes the same group titles recur across cities)."""
    names, cats, weights, suffixes, kinds = [], [], [], [], []
    for c, cat in enumerate(vocab["categories"].values()):
        for rank, topic in enumerate(cat["topics"]):
            names.append(topic)
            cats.append(c)
            weights.append(cat["weight"] / (rank + 1) ** cfg.interests.category_zipf)
        suffixes.append(tuple(cat["suffixes"]))
        kinds.append(tuple(cat["events"]))
    keep = np.sort(np.argsort(-np.array(weights), kind="stable")[: int(cfg.interests.topics)])
    return Topics(
        name=np.array(names, dtype=object)[keep],
        category=np.array(cats, dtype=np.int64)[keep],
        weight=np.array(weights)[keep],
        suffixes=tuple(suffixes),
        event_kinds=tuple(kinds),
    )


def _ptr(owner: np.ndarray, n: int) -> np.ndarray:
    ptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(owner, minlength=n), out=ptr[1:])
    return ptr


def _pairs_csr(
    owner: np.ndarray, member: np.ndarray, n_owner: int, n_member: int
) -> tuple[np.ndarray, np.ndarray]:
    """Deduplicated (owner, member) pairs as CSR by owner, members sorted."""
    keys = np.unique(owner * n_member + member)
    return _ptr(keys // n_member, n_owner), keys % n_member


def _random_member(
    sorted_users: np.ndarray, start: np.ndarray, count: np.ndarray, r: np.ndarray
) -> np.ndarray:
    return sorted_users[start + (r * count).astype(np.int64)]


def _sorted_by(key: np.ndarray, n_keys: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(indices sorted by key, start of each key, count of each key)."""
    order = np.argsort(key, kind="stable")
    count = np.bincount(key, minlength=n_keys)
    return order, np.concatenate([[0], np.cumsum(count)[:-1]]), count


def _title(template: str, **parts: str) -> str:
    return " ".join(template.format(**parts).split())


def make_groups(
    users: Users,
    hobby_circle: np.ndarray,
    geo: Geography,
    topics: Topics,
    start: np.datetime64,
    cfg: DictConfig,
    rng: np.random.Generator,
) -> Groups:
    gc = cfg.groups
    n_groups, n_users = int(gc.count), len(users)
    founder = rng.integers(0, n_users, n_groups)
    city = users.city[founder]
    topic = users.interests[founder, rng.integers(0, users.interests.shape[1], n_groups)]
    region = geo.city_region[city]
    country = geo.region_country[region]

    templates = list(gc.title_templates)
    which = rng.choice(len(templates), size=n_groups, p=np.array(list(gc.title_templates.values())))
    suffix_pick = rng.random(n_groups)
    suffix_cum = [np.cumsum(1.0 / np.arange(1, len(x) + 1) ** gc.suffix_zipf) for x in topics.suffixes]
    listed = rng.random(n_groups) < gc.explicit_location_share
    titles = np.empty(n_groups, dtype=object)
    loc_city, loc_region = np.full(n_groups, -1), np.full(n_groups, -1)
    for g in range(n_groups):
        template = templates[which[g]]
        code = geo.region_code[region[g]]
        if "{region_code}" in template and not code.isalpha():
            template = "{topic} {suffix}"
        cat = topics.category[topic[g]]
        titles[g] = _title(
            template,
            topic=topics.name[topic[g]],
            suffix=topics.suffixes[cat][
                np.searchsorted(suffix_cum[cat], suffix_pick[g] * suffix_cum[cat][-1])
            ],
            city=geo.city_name[city[g]],
            region=geo.region_name[region[g]],
            region_code=code,
        )
        if "{city}" in template or ("{region" not in template and listed[g]):
            loc_city[g], loc_region[g] = city[g], region[g]
        elif "{region" in template:
            loc_region[g] = region[g]
    loc_country = np.where(loc_region >= 0, country, -1)

    # Members: the founder, runs of same-interest locals (hobby circles), random locals, a few from afar.
    size = np.maximum(
        1,
        np.round(
            rng.lognormal(np.log(gc.members_mean) - gc.members_sigma**2 / 2, gc.members_sigma, n_groups)
        ),
    ).astype(np.int64)
    slot_group = np.repeat(np.arange(n_groups), size - 1)
    slot_rank = np.arange(len(slot_group)) - np.repeat(np.cumsum(size - 1) - (size - 1), size - 1)
    kind = rng.random(len(slot_group))
    by_circle = kind < gc.circle_share
    from_afar = kind >= 1.0 - gc.nonlocal_share

    k = users.interests.shape[1]
    pool_user = np.repeat(np.arange(n_users), k)
    pool_topic = users.interests.ravel()
    n_topics = len(topics.name)
    pool_key = users.city[pool_user] * n_topics + pool_topic
    order = np.lexsort((pool_user, hobby_circle[pool_user], pool_key))
    pool_user, pool_key = pool_user[order], pool_key[order]
    group_key = city * n_topics + topic
    lo, hi = np.searchsorted(pool_key, group_key), np.searchsorted(pool_key, group_key, side="right")
    window = np.minimum(size - 1, hi - lo)
    window_start = lo + (rng.random(n_groups) * (hi - lo - window + 1)).astype(np.int64)
    by_circle &= slot_rank < window[slot_group]

    member = np.empty(len(slot_group), dtype=np.int64)
    member[by_circle] = pool_user[window_start[slot_group[by_circle]] + slot_rank[by_circle]]
    for mask, group_of_user, group_of_slot in (
        (~by_circle & ~from_afar, users.city, city),
        (~by_circle & from_afar, geo.city_country[users.city], country),
    ):
        sorted_users, start_of, count_of = _sorted_by(group_of_user, int(group_of_user.max()) + 1)
        target = group_of_slot[slot_group[mask]]
        member[mask] = _random_member(
            sorted_users, start_of[target], count_of[target], rng.random(int(mask.sum()))
        )
    member_ptr, members = _pairs_csr(
        np.concatenate([np.arange(n_groups), slot_group]),
        np.concatenate([founder, member]),
        n_groups,
        n_users,
    )
    n_members = np.diff(member_ptr)
    created = start - (rng.uniform(30, 1500, n_groups) * DAY).astype("timedelta64[s]")
    return Groups(
        city=city,
        topic=topic,
        title=titles,
        loc_city=loc_city,
        loc_region=loc_region,
        loc_country=loc_country,
        member_ptr=member_ptr,
        members=members,
        popularity=n_members * rng.lognormal(0.0, 0.3, n_groups),
        created_at=created,
    )


def make_events(
    groups: Groups,
    friend_ptr: np.ndarray,
    friends: np.ndarray,
    geo: Geography,
    topics: Topics,
    vocab: dict[str, Any],
    start: np.datetime64,
    cfg: DictConfig,
    rng: np.random.Generator,
) -> Events:
    ec = cfg.events
    n_events, n_users = int(ec.count), len(friend_ptr) - 1
    n_members = np.diff(groups.member_ptr)
    w = n_members.astype(np.float64) ** ec.host_weight_power
    host = rng.choice(len(groups), size=n_events, p=w / w.sum())
    city = groups.city[host]
    span = (int(cfg.days) + ec.before_days + ec.after_days) * DAY
    time = (
        start
        - np.timedelta64(int(ec.before_days * DAY), "s")
        + rng.integers(0, span, n_events).astype("timedelta64[s]")
    )
    months = time.astype("datetime64[M]").astype(np.int64) % 12 + 1

    templates = list(ec.title_templates)
    which = rng.choice(len(templates), size=n_events, p=np.array(list(ec.title_templates.values())))
    kind_pick = rng.random(n_events)
    titles = np.empty(n_events, dtype=object)
    for e in range(n_events):
        topic = groups.topic[host[e]]
        kinds = topics.event_kinds[topics.category[topic]]
        titles[e] = _title(
            templates[which[e]],
            group=groups.title[host[e]],
            topic=topics.name[topic],
            event=kinds[int(kind_pick[e] * len(kinds))],
            season=vocab["seasons"][str(months[e])],
            month=vocab["months"][months[e] - 1],
            city=geo.city_name[city[e]],
        )

    # Attendees: some of the host's members, plus friends they bring.
    count = np.maximum(1, rng.binomial(n_members[host], ec.attend_share))
    slot_event = np.repeat(np.arange(n_events), count)
    h = host[slot_event]
    attendee = groups.members[groups.member_ptr[h] + (rng.random(len(h)) * n_members[h]).astype(np.int64)]
    guests = rng.random(len(attendee)) < ec.friend_guest_share
    inviter = attendee[guests]
    deg = np.diff(friend_ptr)[inviter]
    has = deg > 0
    guest = friends[friend_ptr[inviter[has]] + (rng.random(int(has.sum())) * deg[has]).astype(np.int64)]
    ptr, attendees = _pairs_csr(
        np.concatenate([slot_event, slot_event[guests][has]]),
        np.concatenate([attendee, guest]),
        n_events,
        n_users,
    )
    created = time - (rng.uniform(*ec.created_days, n_events) * DAY).astype("timedelta64[s]")
    return Events(
        host=host,
        city=city,
        time=time,
        title=titles,
        attendee_ptr=ptr,
        attendees=attendees,
        popularity=np.diff(ptr) * rng.lognormal(0.0, 0.3, n_events),
        created_at=created,
    )


def memberships_of_users(ptr: np.ndarray, members: np.ndarray, n_users: int) -> tuple[np.ndarray, np.ndarray]:
    """Invert owner -> members CSR into user -> owners CSR (owners sorted)."""
    owner = np.repeat(np.arange(len(ptr) - 1), np.diff(ptr))
    order = np.lexsort((owner, members))
    return _ptr(members, n_users), owner[order]
