"""The real ingredients shipped in ebr/simulator/assets/ (sources and licences in its README.md)."""

from __future__ import annotations

import csv
import gzip
import json
from collections import defaultdict
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

ASSETS = Path(__file__).resolve().parent / "assets"


@dataclass(frozen=True)
class Assets:
    first_names: dict[str, tuple[np.ndarray, np.ndarray]]  # sex -> (names, counts), most frequent first
    surnames: np.ndarray  # most frequent first
    surname_pct: np.ndarray  # share of the population (%)
    surname_hispanic_pct: np.ndarray  # share of bearers who are Hispanic (%), NaN where unknown
    cities: dict[str, np.ndarray]  # columns of cities.csv.gz, biggest first
    countries: dict[str, tuple[str, str]]  # ISO code -> (name, main language)
    misspellings: dict[str, tuple[str, ...]]  # correct word -> real misspellings (lower case)
    typo_stats: dict[str, Any]
    vocab: dict[str, Any]  # group_vocab.json


def _rows(name: str, delimiter: str = ",") -> list[dict[str, str]]:
    with gzip.open(ASSETS / name, "rt", encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter=delimiter))


@cache
def load_assets() -> Assets:
    """Read every asset once per process."""
    first: dict[str, tuple[list[str], list[int]]] = defaultdict(lambda: ([], []))
    for r in _rows("first_names.csv.gz"):
        first[r["sex"]][0].append(r["name"])
        first[r["sex"]][1].append(int(r["count"]))
    last = _rows("surnames.csv.gz")
    city_rows = _rows("cities.csv.gz")
    misspellings: dict[str, list[str]] = defaultdict(list)
    for r in _rows("misspellings.tsv.gz", delimiter="\t"):
        misspellings[r["correction"]].append(r["misspelling"])
    return Assets(
        first_names={
            s: (np.array(n, dtype=object), np.array(c, dtype=np.float64)) for s, (n, c) in first.items()
        },
        surnames=np.array([r["name"] for r in last], dtype=object),
        surname_pct=np.array([float(r["pct"]) for r in last]),
        surname_hispanic_pct=np.array([float(r["pct_hispanic"] or "nan") for r in last]),
        cities={
            "name": np.array([r["name"] for r in city_rows], dtype=object),
            "region": np.array([r["region"] for r in city_rows], dtype=object),
            "region_code": np.array([r["region_code"] for r in city_rows], dtype=object),
            "country": np.array([r["country_code"] for r in city_rows], dtype=object),
            "population": np.array([int(r["population"]) for r in city_rows], dtype=np.int64),
        },
        countries={r["code"]: (r["name"], r["language"]) for r in _rows("countries.csv.gz")},
        misspellings={k: tuple(v) for k, v in misspellings.items()},
        typo_stats=json.loads((ASSETS / "typo_stats.json").read_text()),
        vocab=json.loads((ASSETS / "group_vocab.json").read_text()),
    )
