"""Text normalisation shared by the incumbent retriever and the query generator."""

from __future__ import annotations

import re
import unicodedata

_NON_ALNUM = re.compile(r"[^0-9a-z]+")


def normalise(text: str) -> str:
    """Lower case, accents stripped, every run of non-alphanumerics replaced by one space."""
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii").lower()
    return _NON_ALNUM.sub(" ", folded).strip()


def tokens(text: str) -> list[str]:
    """The exact terms a term-matching engine indexes: normalised, split on spaces."""
    return normalise(text).split()
