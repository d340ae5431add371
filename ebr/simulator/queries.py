"""How searchers type: a query formed from the target's name or title with realistic variation.

People: full name, first name only, partial (a prefix of the surname), surname only, "surname, first" or the
name plus a place. Groups and events: full title, the place left out, words dropped, an optional word added
("mini cooper nw"), abbreviations, or an unfinished last word. On top: one misspelled word (a real misspelling
when the list has one, else phonetic or keyboard edits with the Birkbeck statistics), two words typed
together, and the case the searcher happens to type in. The form is recorded as e.g. "first_name+misspelled".
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ebr.simulator.typos import TypoModel


@dataclass(frozen=True)
class Query:
    text: str
    form: str
    typo: tuple[str, str, str] | None  # (word, misspelled word, source) when a word was misspelled


def _pick(rnd: random.Random, table: tuple[tuple[str, ...], tuple[float, ...]]) -> str:
    return rnd.choices(table[0], weights=table[1])[0]


def _table(mapping: Mapping[str, float]) -> tuple[tuple[str, ...], tuple[float, ...]]:
    return tuple(mapping), tuple(float(v) for v in mapping.values())


class QueryMaker:
    """Turns a target into a query; every draw comes from the `random.Random` it is given."""

    def __init__(
        self,
        forms: Mapping[str, Mapping[str, float]],
        misspelled: Mapping[str, float],
        typo_model: TypoModel,
        spacing: float,
        case: Mapping[str, float],
        abbreviations: Mapping[str, str],
        optional_words: Sequence[str],
    ) -> None:
        self.forms = {v: _table(f) for v, f in forms.items()}
        self.misspelled = dict(misspelled)
        self.typo_model = typo_model
        self.spacing = spacing
        self.case = _table(case)
        self.abbreviations = [
            (re.compile(rf"(?<![a-z]){re.escape(k)}(?![a-z])"), v)
            for k, v in sorted(abbreviations.items(), key=lambda kv: -len(kv[0]))
        ]
        self.optional_words = tuple(optional_words)

    def person(self, first: str, last: str, city: str, rnd: random.Random) -> Query:
        form = _pick(rnd, self.forms["people"])
        if form == "full":
            words = [first, last]
        elif form == "first_name":
            words = [first]
        elif form == "last_name":
            words = [last]
        elif form == "partial":
            words = [first, last[: rnd.randint(1, max(1, len(last) - 2))]]
        elif form == "reversed":
            words = [f"{last},", first]
        else:  # extra_words: the name and the place the searcher thinks of
            words = [first, last, city]
        return self._finish("people", form, words, rnd)

    def titled(
        self, vertical: str, title: str, topic: str, places: Sequence[str], rnd: random.Random
    ) -> Query:
        """A group or event query; `places` are the target's city, region and region code."""
        form = _pick(rnd, self.forms[vertical])
        text = title
        if form == "place_omitted":
            text = _without_places(title, places)
            if text == title:
                form = "dropped_words"
        if form == "abbreviated":
            text = self._abbreviate(title, places)
            if text == title.lower():
                form = "dropped_words"
        words = text.split()
        if form == "dropped_words" and len(words) > 1:
            words.pop(rnd.randrange(len(words)))
        elif form == "extra_words":
            words = (topic.split() if rnd.random() < 0.5 else words) + [rnd.choice(self.optional_words)]
        elif form == "partial":
            keep = words[: rnd.randint(1, len(words))]
            last = keep[-1]
            keep[-1] = last[: rnd.randint(min(2, len(last)), len(last))]
            words = keep
        return self._finish(vertical, form, words, rnd)

    def _abbreviate(self, title: str, places: Sequence[str]) -> str:
        text = title.lower()
        city, region, code = places
        if region and code.isalpha():
            text = re.sub(rf"(?<![a-z]){re.escape(region.lower())}(?![a-z])", code.lower(), text)
        for pattern, short in self.abbreviations:
            text = pattern.sub(short, text)
        return text

    def _finish(self, vertical: str, form: str, words: list[str], rnd: random.Random) -> Query:
        typo = None
        if rnd.random() < self.misspelled[vertical]:
            candidates = [
                i
                for i, w in enumerate(words)
                if len(w.strip(",()").lower()) >= 3 and w.strip(",()").isalpha()
            ]
            if candidates:
                i = rnd.choice(candidates)
                word = words[i].strip(",()").lower()
                typed, source = self.typo_model.misspell(word, rnd)
                if typed != word:
                    words[i] = words[i].lower().replace(word, typed)
                    typo = (word, typed, source)
                    form += "+misspelled"
        if len(words) > 1 and rnd.random() < self.spacing:
            i = rnd.randrange(len(words) - 1)
            words[i : i + 2] = [words[i] + words[i + 1]]
            form += "+spacing"
        return Query(self._case(" ".join(words), rnd), form, typo)

    def exact(self, text: str, rnd: random.Random) -> Query:
        """The full name or title, correctly spelled, in the searcher's case (a corrected reformulation)."""
        return Query(self._case(text, rnd), "full", None)

    def _case(self, text: str, rnd: random.Random) -> str:
        case = _pick(rnd, self.case)
        if case == "lower":
            return text.lower()
        if case == "upper":
            return text.upper()
        if case == "title":
            return " ".join(w[:1].upper() + w[1:].lower() for w in text.split(" "))
        return text


def _without_places(title: str, places: Sequence[str]) -> str:
    """The title with its place words removed ("Louisville Moms Club" -> "Moms Club")."""
    city, region, code = places
    text = title
    for pattern in (f"of {city}", f"{city} Area", city, region, f"({code})"):
        if pattern and pattern in text:
            text = text.replace(pattern, " ")
    return " ".join(text.split()) or title
