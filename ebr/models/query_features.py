"""Query-side features, computed the same way at training time (from DuckDB sessions) and at serving time
(from `QueryInput`s, with only an exported tower folder): text bags, context vocabularies, and the searcher's
lookups (home city, social vector, social-cluster bag).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ebr.models.fields import Bags, Fields
from ebr.models.social import lookup_rows
from ebr.models.text_features import TextFeaturizer, TextHasher
from ebr.models.vocab import Vocab

if TYPE_CHECKING:
    from ebr.models.pretrained import FrozenEncoder  # torch: imported only for a tower that has one

CONTEXT = ("city", "region", "country", "language")


@dataclass(frozen=True)
class QueryInput:
    """One search: the query text, the searcher (None if anonymous or unknown) and the search context."""

    query_text: str
    user_id: int | None = None
    city: str | None = None
    region: str | None = None
    country: str | None = None
    language: str | None = None


@dataclass(frozen=True)
class UserLookup:
    """Per-user features the query side needs, rows in `user_ids` order (sorted)."""

    user_ids: np.ndarray  # int64, sorted
    home_city: np.ndarray  # int64 city-vocabulary ids
    social: np.ndarray  # float32 n_users x social_dim
    social_clusters: Bags  # weighted multi-hot over social clusters

    def rows(self, user_ids: np.ndarray) -> np.ndarray:
        return lookup_rows(self.user_ids, user_ids)


@dataclass(frozen=True)
class QueryFeaturizer:
    text: TextFeaturizer
    vocabs: dict[str, Vocab]  # city, region, country, language (documents use city, region, country)
    users: UserLookup
    n_clusters: int
    encoder: FrozenEncoder | None = None  # the pretrained encoder of `text_pretrained`, when a model uses it

    def featurize(
        self,
        texts: Sequence[str | None],
        user_ids: np.ndarray,
        context: dict[str, Sequence[object]],
    ) -> Fields:
        """Feature columns of queries; `user_ids` holds -1 for unknown searchers, `context` one column per
        name in CONTEXT (None for missing values)."""
        trigrams, words = self.text.encode(texts)
        rows = self.users.rows(np.asarray(user_ids, dtype=np.int64))
        u = self.users
        # unknown searchers point at an appended row: OOV home city, zero social vector, empty cluster bag
        pointer = np.where(rows >= 0, rows, len(u.user_ids))
        fields: Fields = {"text_trigrams": trigrams, "text_words": words}
        fields["text_raw"] = np.array([t or "" for t in texts], dtype=object)
        if self.encoder is not None:
            fields["text_pretrained"] = self.encoder.encode(list(fields["text_raw"]))
        for name in CONTEXT:
            fields[name] = self.vocabs[name].lookup(context[name])
        known = rows >= 0
        safe = np.where(known, rows, 0)
        if len(u.user_ids):
            fields["home_city"] = np.where(known, u.home_city[safe], 0).astype(np.int64)
            fields["social"] = (u.social[safe] * known[:, None]).astype(np.float32)
        else:
            fields["home_city"] = np.zeros(len(rows), np.int64)
            fields["social"] = np.zeros((len(rows), u.social.shape[1]), np.float32)
        clusters = u.social_clusters
        fields["social_clusters"] = Bags(
            np.r_[clusters.indptr, clusters.indptr[-1]], clusters.ids, clusters.weights
        ).take(pointer)
        return fields

    def featurize_inputs(self, queries: Sequence[QueryInput]) -> Fields:
        user_ids = np.array([-1 if q.user_id is None else int(q.user_id) for q in queries], dtype=np.int64)
        context = {name: [getattr(q, name) for q in queries] for name in CONTEXT}
        return self.featurize([q.query_text for q in queries], user_ids, context)

    def save(self, folder: Path) -> None:
        """hashing.json (with the weighting), idf.npz (idf weighting only), vocabs.json, users.npz and, with a
        pretrained encoder, pretrained.json (its folder and weights' sha256, verified when loaded)."""
        folder.mkdir(parents=True, exist_ok=True)
        if self.encoder is not None:
            self.encoder.save(folder)
        hashing = self.text.hasher.to_dict() | {"weighting": self.text.weighting}
        (folder / "hashing.json").write_text(json.dumps(hashing, indent=2))
        if self.text.weighting == "idf":
            np.savez(folder / "idf.npz", trigrams=self.text.trigram_idf, words=self.text.word_idf)
        vocabs = {name: v.to_list() for name, v in self.vocabs.items()}
        (folder / "vocabs.json").write_text(json.dumps(vocabs, ensure_ascii=False))
        u = self.users
        np.savez(
            folder / "users.npz",
            user_ids=u.user_ids,
            home_city=u.home_city,
            social=u.social,
            clusters_indptr=u.social_clusters.indptr,
            clusters_ids=u.social_clusters.ids,
            clusters_weights=u.social_clusters.weights,
            n_clusters=np.int64(self.n_clusters),
        )

    @classmethod
    def load(cls, folder: Path) -> QueryFeaturizer:
        hashing = json.loads((folder / "hashing.json").read_text())
        hasher, weighting = TextHasher.from_dict(hashing), hashing.get("weighting", "uniform")
        if weighting == "idf":
            with np.load(folder / "idf.npz") as z:
                text = TextFeaturizer(hasher, weighting, z["trigrams"], z["words"])
        else:
            text = TextFeaturizer(hasher, weighting)
        vocabs = {k: Vocab.from_list(v) for k, v in json.loads((folder / "vocabs.json").read_text()).items()}
        with np.load(folder / "users.npz") as z:
            users = UserLookup(
                z["user_ids"],
                z["home_city"],
                z["social"],
                Bags(z["clusters_indptr"], z["clusters_ids"], z["clusters_weights"]),
            )
            n_clusters = int(z["n_clusters"])
        encoder = None
        if (folder / "pretrained.json").is_file():
            from ebr.models.pretrained import FrozenEncoder

            encoder = FrozenEncoder.load(folder)
        return cls(text, vocabs, users, n_clusters, encoder)
