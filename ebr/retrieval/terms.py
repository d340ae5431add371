"""Namespaced terms (`text:john`, `location:seattle`, `vertical:people`): normalisation and tokenisation.

A term is `field:value`. Both sides are normalised the same way at index time and at query time: Unicode
NFKD with accents removed, case folded, apostrophes dropped inside words, every other run of characters that
are not letters or digits turned into one `_` (values) or a token boundary (text). A text's tokens are its
`text:` terms; in a document, one that occurs more than once carries its frequency as its payload.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence

_APOSTROPHES = re.compile(r"['\u2019`]")
_NON_WORD = re.compile(r"[^0-9a-z]+")
_FIELD = re.compile(r"^[a-z0-9_.+\-]+$")
TEXT_PREFIX = "text:"  # the field of a text's tokens, the terms BM25 scores
CLUSTER_FIELD_PREFIX = "nn."  # `nn.<key>:<list>`: the cluster terms of an nn field, reserved in documents


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
    return list(text_terms([text or ""]))


def text_terms(texts: Sequence[str]) -> dict[str, int]:
    """The `text:<token>` terms of one or more texts with their counts, in first occurrence order."""
    return dict(Counter(f"{TEXT_PREFIX}{t}" for text in texts for t in tokens(text)))


def document_terms(
    vertical: str,
    title: str | Sequence[str],
    city: str | None = None,
    region: str | None = None,
    country: str | None = None,
    extra: Iterable[str] = (),
) -> list[str | tuple[str, int]]:
    """The terms of a document: its vertical, the tokens of its text fields, its location, plus `extra` terms.

    `title` is one text or several (e.g. title and body); a text term that occurs more than once comes as a
    (term, frequency) pair, its payload. `extra` are already namespaced (e.g. `user:42`) and are normalised
    like the others. A term is kept once, at its first occurrence.
    """
    texts = [title] if isinstance(title, str) else title
    terms: list[str | tuple[str, int]] = [f"vertical:{term_value(vertical)}"]
    terms += [t if count == 1 else (t, count) for t, count in text_terms(texts).items()]
    for field, value in (("location", city), ("region", region), ("country", country)):
        if value and term_value(value):
            terms.append(f"{field}:{term_value(value)}")
    terms.extend(normalize_term(t) for t in extra)
    first: dict[str, str | tuple[str, int]] = {}
    for term in terms:
        first.setdefault(term if isinstance(term, str) else term[0], term)
    return list(first.values())
