"""Text features: normalisation, character trigrams with word-boundary marks, word unigrams and bigrams,
hashed into fixed bucket ranges with a keyed blake2b (stable across processes and machines), pooled into
weighted bags.

A bag is a weighted mean of its tokens' embeddings. With `weighting: uniform` every token of a text weighs the
same; with `weighting: idf` a token weighs its bucket's inverse document frequency over the documents
(`ln(1 + (N - df + 0.5) / (df + 0.5))`, as BM25), so that the rare tokens that decide relevance are not washed
out by the common ones in long texts. A document's text fields (title, body, ...) are pooled apart: each
non-empty field is a mean of its own tokens and the fields share the bag equally, so a 200-word body does not
drown a 10-word title.
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
WEIGHTINGS = ("uniform", "idf")

Rows = list[list[int]]  # bucket ids per text


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
    """Hashes texts into character-trigram and word n-gram buckets, each namespace in its own range."""

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

    def tokenize(self, texts: Iterable[str | None]) -> tuple[Rows, Rows]:
        """(trigram bucket ids, word n-gram bucket ids), one list per text."""
        trigram_rows: Rows = []
        word_rows: Rows = []
        for text in texts:
            normalized = normalize_text(text)
            trigram_rows.append([self.bucket(t, "trigram") for t in char_trigrams(normalized)])
            word_rows.append([self.bucket(w, "word") for w in word_ngrams(normalized)])
        return trigram_rows, word_rows

    def encode(self, texts: Iterable[str | None]) -> tuple[Bags, Bags]:
        """(trigram bags, word n-gram bags), one row per text, every token weighing the same."""
        trigrams, words = self.tokenize(texts)
        return pooled_bags([trigrams]), pooled_bags([words])

    def to_dict(self) -> dict[str, int]:
        return {k: v for k, v in asdict(self).items() if not k.startswith("_")}

    @classmethod
    def from_dict(cls, data: dict[str, int]) -> TextHasher:
        return cls(int(data["trigram_buckets"]), int(data["word_buckets"]), int(data["seed"]))


def document_frequencies(field_rows: Sequence[Rows], buckets: int) -> tuple[np.ndarray, int]:
    """(documents holding each bucket in any of their fields, number of documents)."""
    n_docs = len(field_rows[0]) if field_rows else 0
    rows, ids = [], []
    for field_ in field_rows:
        lengths = np.fromiter((len(r) for r in field_), dtype=np.int64, count=n_docs)
        rows.append(np.repeat(np.arange(n_docs, dtype=np.int64), lengths))
        ids.append(np.fromiter((i for r in field_ for i in r), dtype=np.int64, count=int(lengths.sum())))
    if not rows:
        return np.zeros(buckets, np.int64), n_docs
    pairs = np.unique(np.concatenate(rows) * buckets + np.concatenate(ids))
    return np.bincount(pairs % buckets, minlength=buckets).astype(np.int64), n_docs


def idf_weights(df: np.ndarray, n_docs: int) -> np.ndarray:
    """float32 BM25-style idf per bucket: ln(1 + (N - df + 0.5) / (df + 0.5)) (> 0, largest for df = 0)."""
    df = df.astype(np.float64)
    return np.log1p((n_docs - df + 0.5) / (df + 0.5)).astype(np.float32)


def pooled_bags(field_rows: Sequence[Rows], idf: np.ndarray | None = None) -> Bags:
    """One bag per text over one or more fields (row r of every field is the same document).

    Each non-empty field of a row weighs 1 / (its non-empty fields); within a field, tokens share that weight
    equally (`idf` None) or in proportion to their bucket's idf.
    """
    n_rows = len(field_rows[0]) if field_rows else 0
    all_rows, all_ids, all_weights, field_sums = [], [], [], []
    for field_ in field_rows:
        lengths = np.fromiter((len(r) for r in field_), dtype=np.int64, count=n_rows)
        ids = np.fromiter((i for r in field_ for i in r), dtype=np.int64, count=int(lengths.sum()))
        rows = np.repeat(np.arange(n_rows, dtype=np.int64), lengths)
        weights = np.ones(len(ids), np.float64) if idf is None else idf[ids].astype(np.float64)
        sums = np.bincount(rows, weights=weights, minlength=n_rows)
        all_rows.append(rows)
        all_ids.append(ids)
        all_weights.append(weights / np.maximum(sums[rows], 1e-12))
        field_sums.append(lengths > 0)
    if not all_rows:
        return Bags.empty(n_rows)
    non_empty = np.maximum(np.sum(field_sums, axis=0), 1)
    rows = np.concatenate(all_rows)
    weights = np.concatenate(all_weights) / non_empty[rows]
    return Bags.from_groups(n_rows, rows, np.concatenate(all_ids), weights.astype(np.float32)).merged()


def truncate(texts: Sequence[str | None], max_chars: int) -> tuple[list[str], int]:
    """Texts cut to `max_chars` characters (None as ""), and how many were cut."""
    out, cut = [], 0
    for text in texts:
        text = text or ""
        if len(text) > max_chars:
            text, cut = text[:max_chars], cut + 1
        out.append(text)
    return out, cut


@dataclass(frozen=True)
class TextFeaturizer:
    """The text bags of queries and documents: the hasher, the weighting and (for idf) the idf per bucket."""

    hasher: TextHasher
    weighting: str = "uniform"
    trigram_idf: np.ndarray | None = None
    word_idf: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"features.text.weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        if self.weighting == "idf" and (self.trigram_idf is None or self.word_idf is None):
            raise ValueError("idf weighting needs the idf of every bucket (TextFeaturizer.fit)")

    @classmethod
    def fit(cls, hasher: TextHasher, weighting: str, fields: Sequence[tuple[Rows, Rows]]) -> TextFeaturizer:
        """The featurizer; with idf weighting, the idf of each bucket over the documents, whose tokenized
        text fields are `fields` ((trigrams, words) per field, a row per document)."""
        if weighting != "idf":
            return cls(hasher, weighting)
        tri_df, n_docs = document_frequencies([f[0] for f in fields], hasher.trigram_buckets)
        word_df, _ = document_frequencies([f[1] for f in fields], hasher.word_buckets)
        return cls(hasher, weighting, idf_weights(tri_df, n_docs), idf_weights(word_df, n_docs))

    def bags(self, fields: Sequence[tuple[Rows, Rows]]) -> tuple[Bags, Bags]:
        """(trigram bags, word bags) of tokenized text fields (one (trigrams, words) pair per field)."""
        return (
            pooled_bags([f[0] for f in fields], self.trigram_idf),
            pooled_bags([f[1] for f in fields], self.word_idf),
        )

    def encode(self, texts: Sequence[str | None]) -> tuple[Bags, Bags]:
        """(trigram bags, word bags) of single-field texts (queries)."""
        return self.bags([self.hasher.tokenize(texts)])
