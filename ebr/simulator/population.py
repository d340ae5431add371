"""Places and people: real cities, users with real-frequency names, home, language, activity and interests."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from omegaconf import DictConfig

from ebr.simulator.assets import Assets


@dataclass(frozen=True)
class Geography:
    """The world's cities; regions and countries have their own ids (a region id is unique per country)."""

    city_name: np.ndarray  # object
    city_population: np.ndarray  # int64
    city_region: np.ndarray  # int64 region id
    region_name: np.ndarray  # object
    region_code: np.ndarray  # object (GeoNames admin1 code, e.g. KY)
    region_country: np.ndarray  # int64 country id
    country_code: np.ndarray  # object ISO code
    country_language: np.ndarray  # object ISO 639-1

    @property
    def city_country(self) -> np.ndarray:
        return self.region_country[self.city_region]

    @property
    def n_cities(self) -> int:
        return len(self.city_name)


@dataclass
class Users:
    """Users, indexed 0..n-1 (user_id = index + 1)."""

    city: np.ndarray  # int64 home city
    first: np.ndarray  # object
    last: np.ndarray  # object
    language: np.ndarray  # object
    activity: np.ndarray  # float64, relative search frequency
    is_active: np.ndarray  # bool
    sociability: np.ndarray  # float64, mean 1
    public_figure: np.ndarray  # bool
    interests: np.ndarray | None = None  # int64 (n, k) topic ids, set once hobby circles exist

    def __len__(self) -> int:
        return len(self.city)

    @property
    def name(self) -> np.ndarray:
        return self.first + " " + self.last


def make_geography(cfg: DictConfig, assets: Assets, rng: np.random.Generator) -> Geography:
    """Draw cfg.cities real cities, about cfg.cities * share per country, weighted by population."""
    cities = assets.cities
    chosen: list[np.ndarray] = []
    for code, share in cfg.countries.items():
        if code not in assets.countries:
            raise ValueError(f"simulator.countries: unknown country code {code!r}")
        pool = np.flatnonzero(cities["country"] == code)
        n = min(len(pool), max(1, round(cfg.cities * share)))
        weights = cities["population"][pool].astype(np.float64)
        chosen.append(np.sort(rng.choice(pool, size=n, replace=False, p=weights / weights.sum())))
    idx = np.concatenate(chosen)
    countries = list(cfg.countries)
    country_of = np.array([countries.index(c) for c in cities["country"][idx]], dtype=np.int64)
    region_keys = list(zip(country_of.tolist(), cities["region"][idx].tolist(), strict=True))
    regions = sorted(set(region_keys), key=region_keys.index)
    region_of = np.array([regions.index(k) for k in region_keys], dtype=np.int64)
    first_city_of_region = [region_keys.index(k) for k in regions]
    return Geography(
        city_name=cities["name"][idx],
        city_population=cities["population"][idx],
        city_region=region_of,
        region_name=np.array([r for _, r in regions], dtype=object),
        region_code=cities["region_code"][idx][first_city_of_region],
        region_country=np.array([c for c, _ in regions], dtype=np.int64),
        country_code=np.array(countries, dtype=object),
        country_language=np.array([assets.countries[c][1] for c in countries], dtype=object),
    )


def make_users(cfg: DictConfig, geo: Geography, assets: Assets, rng: np.random.Generator) -> Users:
    """cfg.users users with home city, real-frequency names, language, activity and sociability."""
    n = int(cfg.users)
    shares = np.array(list(cfg.countries.values()), dtype=np.float64)
    per_country = rng.multinomial(n, shares / shares.sum())
    counts = np.zeros(geo.n_cities, dtype=np.int64)
    for country, m in enumerate(per_country):
        in_country = np.flatnonzero(geo.city_country == country)
        w = geo.city_population[in_country].astype(np.float64) ** cfg.city_alpha
        counts[in_country] = rng.multinomial(m, w / w.sum())
    city = rng.permutation(np.repeat(np.arange(geo.n_cities), counts))

    language = geo.country_language[geo.city_country[city]].copy()
    speaks_en = (language != "en") & (rng.random(n) < cfg.english_speakers)
    language[speaks_en] = "en"

    first = np.empty(n, dtype=object)
    female = rng.random(n) < 0.5
    for sex, mask in (("F", female), ("M", ~female)):
        names, counts_ = assets.first_names[sex]
        names, w = names[: cfg.names.first_names_per_sex], counts_[: cfg.names.first_names_per_sex]
        first[mask] = names[rng.choice(len(names), size=int(mask.sum()), p=w / w.sum())]

    pool = int(cfg.names.surnames)
    surnames, pct = assets.surnames[:pool], assets.surname_pct[:pool]
    hispanic = np.nan_to_num(assets.surname_hispanic_pct[:pool]) / 100.0
    last = np.empty(n, dtype=object)
    by_hispanic = np.isin(language, list(cfg.names.hispanic_surnames_languages))
    for mask, w in ((by_hispanic, pct * hispanic), (~by_hispanic, pct)):
        if mask.any():
            last[mask] = surnames[rng.choice(pool, size=int(mask.sum()), p=w / w.sum())]

    act = cfg.activity
    sociability = rng.lognormal(0.0, cfg.graph.sociability_sigma, n)
    return Users(
        city=city,
        first=first,
        last=last,
        language=language,
        activity=rng.lognormal(0.0, act.sigma, n),
        is_active=rng.random(n) < act.active_share,
        sociability=sociability / sociability.mean(),
        public_figure=rng.random(n) < act.public_figure_share,
    )


def assign_interests(
    users: Users,
    hobby_circle: np.ndarray,
    topic_weights: np.ndarray,
    cfg: DictConfig,
    rng: np.random.Generator,
) -> None:
    """Interests: the first is usually the hobby circle's topic (friends share it), the rest by popularity."""
    p = topic_weights / topic_weights.sum()
    n, k = len(users), int(cfg.interests.per_user)
    circle_topic = rng.choice(len(p), size=int(hobby_circle.max()) + 1, p=p)
    interests = rng.choice(len(p), size=(n, k), p=p)
    from_circle = rng.random(n) < cfg.graph.hobby_interest_share
    interests[from_circle, 0] = circle_topic[hobby_circle[from_circle]]
    users.interests = interests
