"""Rebuild ebr/simulator/assets/ from the real data in the shared data folder.

    python -m ebr.simulator.derive_assets --data ../shared/data --out ebr/simulator/assets

Writes compact, attributed derivatives (ebr/simulator/assets/README.md): first names and surnames with their
real frequencies, cities with region, country and population, countries with their main language, the
Wikipedia list of common misspellings, and edit statistics measured on the Birkbeck corpus (only the numbers
ship, never the corpus). group_vocab.json is written by hand and left alone.
"""

from __future__ import annotations

import argparse
import copy
import csv
import gzip
import io
import json
import random
from collections import defaultdict
from pathlib import Path

from ebr.simulator.typos import TypoModel, edit_statistics

DEFAULT_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
DEFAULT_OUT = Path(__file__).resolve().parent / "assets"
SKIPPED_FEATURES = {"PPLX", "PPLH", "PPLQ", "PPLW"}  # sections of cities, historical or abandoned places


def _write_gz_csv(path: Path, header: list[str], rows: list[list], delimiter: str = ",") -> None:
    """A gzip file with a fixed mtime so that rebuilding gives identical bytes."""
    text = io.StringIO()
    writer = csv.writer(text, delimiter=delimiter, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    with (
        open(path, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as f,
    ):
        f.write(text.getvalue().encode("utf-8"))


def first_names(data: Path, per_sex: int) -> list[list]:
    """The `per_sex` most frequent SSA first names of each sex (births 1940-2005) with their counts."""
    by_sex: dict[str, list[tuple[int, str]]] = defaultdict(list)
    with open(data / "names" / "ssa_first_names_1940_2005_agg.csv", newline="") as f:
        for row in csv.DictReader(f):
            by_sex[row["sex"]].append((int(row["count_1940_2005"]), row["name"]))
    rows = []
    for sex in sorted(by_sex):
        for count, name in sorted(by_sex[sex], key=lambda t: (-t[0], t[1]))[:per_sex]:
            rows.append([name, sex, count])
    return rows


def surnames(data: Path, top: int) -> list[list]:
    """The `top` most frequent 1990 Census surnames with their share (%) and, where the 2010 top-1000 has it,
    the Hispanic share of their bearers (%)."""
    hispanic: dict[str, str] = {}
    with open(data / "names" / "census2010_surnames_top1000.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["pcthispanic"] not in ("", "(S)"):
                hispanic[row["name"]] = row["pcthispanic"]
    rows = []
    with open(data / "names" / "dist.all.last") as f:
        for line in f:
            name, pct, _, rank = line.split()
            if int(rank) > top:
                break
            rows.append([name.title(), float(pct), hispanic.get(name, "")])
    return rows


def cities(data: Path, min_population: int) -> list[list]:
    """GeoNames cities of at least `min_population` people, biggest first."""
    rows = []
    with open(data / "cities" / "cities15000_compact.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            pop = int(row["population"])
            if pop < min_population or row["feature_code"] in SKIPPED_FEATURES:
                continue
            region = row["admin1_name"] or row["country_name"]
            rows.append(
                [
                    int(row["geonameid"]),
                    row["name"],
                    region,
                    row["admin1_code"],
                    row["country_code"],
                    pop,
                ]
            )
    rows.sort(key=lambda r: (-r[5], r[0]))
    return rows


def countries(data: Path) -> list[list]:
    """Country code, name, main language (ISO 639-1) and population from GeoNames countryInfo."""
    rows = []
    with open(data / "cities" / "countryInfo.tsv", encoding="utf-8") as f:
        header = f.readline().lstrip("#").rstrip("\n").split("\t")
        for line in f:
            if not line.strip():
                continue
            rec = dict(zip(header, line.rstrip("\n").split("\t"), strict=False))
            language = (rec.get("Languages") or "en").split(",")[0].split("-")[0] or "en"
            rows.append([rec["ISO"], rec["Country"], language, int(rec["Population"] or 0)])
    return rows


def wikipedia_misspellings(data: Path) -> list[list]:
    """Lower-case single-word (misspelling, correction) pairs of the Wikipedia list."""
    pairs = set()
    with open(data / "misspellings" / "wikipedia_common_misspellings_2012.tsv", encoding="utf-8") as f:
        next(f)
        for line in f:
            wrong, right = line.rstrip("\n").split("\t")
            wrong, right = wrong.lower(), right.lower()
            if wrong.isalpha() and right.isalpha() and wrong != right:
                pairs.add((wrong, right))
    return [list(p) for p in sorted(pairs)]


def birkbeck_statistics(data: Path, rounds: int = 6, samples: int = 20000) -> dict:
    """Edit statistics of the Birkbeck corpus (the corpus itself may not ship), and the keyboard-edit
    parameters calibrated so that TypoModel's output on the corpus's words reproduces them."""
    with open(data / "misspellings" / "birkbeck_pairs.tsv", encoding="utf-8") as f:
        next(f)
        pairs = [tuple(line.rstrip("\n").lower().split("\t")) for line in f]
    measured = edit_statistics((right, wrong) for wrong, right in pairs)
    words = sorted({right for _, right in pairs if right.isalpha() and len(right) >= 3})
    rnd = random.Random(0)
    params = copy.deepcopy(measured)
    for _ in range(rounds):
        model = TypoModel({}, params, 0.0)
        sample = [rnd.choice(words) for _ in range(samples)]
        got = edit_statistics((w, model.keyboard_edits(w, rnd)) for w in sample)
        _calibrate(params, measured, got)
    return {
        "source": "Birkbeck spelling error corpus (R. Mitton), native-speaker section: statistics only",
        "measured": measured,
        "generator": params,
    }


def _calibrate(params: dict, target: dict, got: dict) -> None:
    """One multiplicative step of every share towards its target, renormalised."""

    def step(p: dict | list, t: dict | list, g: dict | list) -> dict | list:
        keys = list(p) if isinstance(p, dict) else range(len(p))
        new = [p[k] * (t[k] / g[k] if g[k] > 0 else 1.0) for k in keys]
        total = sum(new) or 1.0
        out = [round(x / total, 5) for x in new]
        return dict(zip(keys, out, strict=True)) if isinstance(p, dict) else out

    params["op_share"] = step(params["op_share"], target["op_share"], got["op_share"])
    params["position_bins"] = step(params["position_bins"], target["position_bins"], got["position_bins"])
    for kind in ("vowel", "consonant"):
        params["substitution"][kind] = step(
            params["substitution"][kind], target["substitution"][kind], got["substitution"][kind]
        )
    for b, shares in params["edit_count_by_length"].items():
        params["edit_count_by_length"][b] = step(
            shares, target["edit_count_by_length"][b], got["edit_count_by_length"][b]
        )
    for key in ("insertion_doubles_neighbour", "deletion_of_doubled_letter"):
        ratio = target[key] / got[key] if got[key] > 0 else 1.0
        params[key] = round(min(1.0, params[key] * ratio), 5)


def derive(data: Path, out: Path, first_per_sex: int, top_surnames: int, min_population: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    _write_gz_csv(out / "first_names.csv.gz", ["name", "sex", "count"], first_names(data, first_per_sex))
    _write_gz_csv(out / "surnames.csv.gz", ["name", "pct", "pct_hispanic"], surnames(data, top_surnames))
    _write_gz_csv(
        out / "cities.csv.gz",
        ["geonameid", "name", "region", "region_code", "country_code", "population"],
        cities(data, min_population),
    )
    _write_gz_csv(out / "countries.csv.gz", ["code", "name", "language", "population"], countries(data))
    _write_gz_csv(
        out / "misspellings.tsv.gz",
        ["misspelling", "correction"],
        wikipedia_misspellings(data),
        delimiter="\t",
    )
    (out / "typo_stats.json").write_text(
        json.dumps(birkbeck_statistics(data), indent=1, sort_keys=True) + "\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the assets folder to write")
    parser.add_argument("--first-names-per-sex", type=int, default=3000)
    parser.add_argument("--surnames", type=int, default=10000)
    parser.add_argument("--min-city-population", type=int, default=50000)
    args = parser.parse_args()
    derive(args.data, args.out, args.first_names_per_sex, args.surnames, args.min_city_population)


if __name__ == "__main__":
    main()
