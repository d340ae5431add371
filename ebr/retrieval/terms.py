"""Namespaced terms (`text:john`, `location:seattle`, `vertical:people`): normalisation and tokenisation.

A term is `field:value`. Both sides are normalised the same way at index time and at query time: Unicode
NFKD with accents removed, case folded, apostrophes dropped inside words, every other run of characters that
are not letters or digits turned into one `_` (values) or a token boundary (text).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

_APOSTROPHES = re.compile(r"['\u2019`]")
_NON_WORD = re.compile(r"[^0-9a-z]+")
_FIELD = re.compile(r"^[a-z0-9_.+\-]+$")


def fold(text: str) -> str:
    """Lower-case ASCII-folded text: accents stripped, case folded, apostrophes removed."""
    if not text.isascii():
        decomposed = unicodedata.normalize("NFKD", text)
        text = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return _APOSTROPHES.sub("", text.casefold())


def tokens(text: str) -> list[str]:
    """The word tokens of `text` after folding ("Kasie's Créations!" -> ["kasies", "creations"])."""
    return [t for t in _NON_WORD.split(fold(text)) if t]


def term_value(value: str) -> str:
    """A value normalised for a term: "Menlo Park" -> "menlo_park"."""
    return "_".join(tokens(value))


def normalize_term(term: str) -> str:
    """`Field:Value` -> `field:value`; raises ValueError naming the problem when the term is malformed."""
    field, sep, value = term.partition(":")
    field = field.strip().casefold()
    if not sep or not field or not _FIELD.match(field):
        raise ValueError(f"term {term!r} is not of the form field:value (field made of a-z, 0-9, _ . + -)")
    normalized = term_value(value)
    if not normalized:
        raise ValueError(f"term {term!r} has an empty value after normalisation")
    return f"{field}:{normalized}"


def query_terms(text: str | None) -> list[str]:
    """The `text:<token>` terms of a query, in order, without repeats."""
    return list(dict.fromkeys(f"text:{t}" for t in tokens(text or "")))


def document_terms(
    vertical: str,
    title: str,
    city: str | None = None,
    region: str | None = None,
    country: str | None = None,
    extra: Iterable[str] = (),
) -> list[str]:
    """The terms of a document: its vertical, the tokens of its title, its location, plus `extra` terms.

    `extra` are already namespaced (e.g. `user:42`) and are normalised like the others.
    """
    terms = [f"vertical:{term_value(vertical)}", *query_terms(title)]
    for field, value in (("location", city), ("region", region), ("country", country)):
        if value and term_value(value):
            terms.append(f"{field}:{term_value(value)}")
    terms.extend(normalize_term(t) for t in extra)
    return list(dict.fromkeys(terms))
