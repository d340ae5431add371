"""Text features: normalisation, character trigrams with word-boundary marks, word unigrams and bigrams,
hashed into fixed bucket ranges with a keyed blake2b (stable across processes and machines).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from ebr.models.fields import Bags

_APOSTROPHES = re.compile(r"['\u2019`\u00b4]")
_NON_WORD = re.compile(r"[\W_]+")
BOUNDARY = "#"


def normalize_text(text: str | None) -> str:
    """Case-folded, accent-free text; apostrophes dropped ("Kasie's" -> "kasies"), punctuation -> space."""
    if not text:
        return ""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(_NON_WORD.sub(" ", _APOSTROPHES.sub("", stripped)).split())


def char_trigrams(normalized: str) -> list[str]:
    """Trigrams of each word with boundary marks: "john" -> #jo, joh, ohn, hn#."""
    grams: list[str] = []
    for word in normalized.split():
        marked = f"{BOUNDARY}{word}{BOUNDARY}"
        grams.extend(marked[i : i + 3] for i in range(len(marked) - 2))
    return grams


def word_ngrams(normalized: str) -> list[str]:
    """Word unigrams and bigrams ("mini cooper nw" -> mini, cooper, nw, "mini cooper", "cooper nw")."""
    words = normalized.split()
    return words + [f"{a} {b}" for a, b in zip(words, words[1:], strict=False)]


def stable_hash(token: str, seed: int, namespace: str) -> int:
    """A 64-bit hash of `token`, keyed by `seed` and `namespace`; the same on every machine and process."""
    digest = hashlib.blake2b(
        token.encode("utf-8"),
        digest_size=8,
        key=seed.to_bytes(8, "little", signed=False),
        person=namespace.encode("utf-8")[:16],
    ).digest()
    return int.from_bytes(digest, "little")


@dataclass
class TextHasher:
    """Hashes texts into two bags: character trigrams and word n-grams, each in its own bucket range.

    Every token of a bag has weight 1/len(bag) (the bag's embedding is the mean of its tokens' embeddings).
    """

    trigram_buckets: int
    word_buckets: int
    seed: int
    _cache: dict[tuple[str, str], int] = field(default_factory=dict, repr=False, compare=False)

    def bucket(self, token: str, namespace: str) -> int:
        key = (namespace, token)
        hit = self._cache.get(key)
        if hit is None:
            size = self.trigram_buckets if namespace == "trigram" else self.word_buckets
            hit = self._cache[key] = stable_hash(token, self.seed, namespace) % size
        return hit

    def encode(self, texts: Iterable[str | None]) -> tuple[Bags, Bags]:
        """(trigram bags, word n-gram bags), one row per text."""
        trigram_rows: list[list[int]] = []
        word_rows: list[list[int]] = []
        for text in texts:
            normalized = normalize_text(text)
            trigram_rows.append([self.bucket(t, "trigram") for t in char_trigrams(normalized)])
            word_rows.append([self.bucket(w, "word") for w in word_ngrams(normalized)])
        return _mean_bags(trigram_rows), _mean_bags(word_rows)

    def to_dict(self) -> dict[str, int]:
        return {k: v for k, v in asdict(self).items() if not k.startswith("_")}

    @classmethod
    def from_dict(cls, data: dict[str, int]) -> TextHasher:
        return cls(int(data["trigram_buckets"]), int(data["word_buckets"]), int(data["seed"]))


def _mean_bags(rows: Sequence[list[int]]) -> Bags:
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    ids = np.fromiter((i for r in rows for i in r), dtype=np.int64, count=int(lengths.sum()))
    weights = np.repeat(1.0 / np.maximum(lengths, 1), lengths).astype(np.float32)
    return Bags.from_lengths(lengths, ids, weights)
