"""The inputs of the index: documents and changes, their terms with payloads, doc ids and vectors, validated.

A document's terms are "field:value" strings and (term, payload) pairs, or a mapping term -> payload or None
(`TermsInput`). A payload is a float32 (a term weight, a static score, ...); the payload of a `text:` term
is its frequency in the document (1 without a payload; see `frequencies`). Invalid input raises ValueError,
or `UpdateError` (with its HTTP status) for realtime changes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from ebr.retrieval.terms import CLUSTER_FIELD_PREFIX, normalize_term

_FLOAT32_MAX = float(np.finfo(np.float32).max)

# A document's terms: "field:value" strings and (term, payload) pairs, or a mapping term -> payload or None
TermsInput = Iterable[str | tuple[str, float | None]] | Mapping[str, float | None]


class UpdateError(ValueError):
    """An update that cannot be applied; `status` is the HTTP status that describes it."""

    status = 400


class DocumentExistsError(UpdateError):
    status = 409


class DocumentNotFoundError(UpdateError):
    status = 404


@dataclass
class Document:
    """A validated document version: normalised terms, their payloads (float32 values, only the terms that
    carry one) and unit-length embeddings per key."""

    doc_id: int
    terms: list[str]
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)
    payloads: dict[str, float] = field(default_factory=dict)


@dataclass
class Update:
    """A validated change of a document: terms (with their payloads) replaced when given, embeddings
    replaced per given key."""

    doc_id: int
    terms: list[str] | None
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)
    payloads: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Delete:
    doc_id: int


Change = Document | Update | Delete


def frequencies(payloads: np.ndarray) -> np.ndarray:
    """float64 term frequencies of `text:` postings from their payloads: the payload (below 0: 0), 1 where
    there is none."""
    values = payloads.astype(np.float64)
    return np.where(np.isnan(values), 1.0, np.maximum(values, 0.0))


def document_term(raw: str) -> str:
    """A normalised document term; the cluster-term fields `nn.<key>` are reserved for the nn fields."""
    term = normalize_term(raw)
    if term.startswith(CLUSTER_FIELD_PREFIX):
        raise ValueError(f"term {raw!r} uses the reserved field prefix {CLUSTER_FIELD_PREFIX!r}")
    return term


def parse_terms(terms: TermsInput) -> tuple[list[str], dict[str, float]]:
    """Normalised terms (first occurrence order) and the float32 payloads of those that carry one.

    `terms` is a list of "field:value" strings and (term, payload) pairs, or a mapping term -> payload
    (None: no payload). A term repeated with another payload is an error.
    """
    if isinstance(terms, str):
        raise ValueError("terms must be a list of strings or [term, payload] pairs, not one string")
    items = terms.items() if isinstance(terms, Mapping) else (_term_item(t) for t in terms)
    names: dict[str, float | None] = {}
    for raw, payload in items:
        if not isinstance(raw, str):
            raise ValueError(f"term {raw!r} is not a string")
        term = document_term(raw)
        value = None if payload is None else _payload(term, payload)
        if term in names and names[term] != value:
            raise ValueError(f"term {term!r} is given twice, with payloads {names[term]} and {value}")
        names[term] = value
    return list(names), {t: v for t, v in names.items() if v is not None}


def _term_item(item: object) -> tuple[object, object]:
    if isinstance(item, (list, tuple)):
        if len(item) != 2:
            raise ValueError(f"term {item!r} is not a string or a [term, payload] pair")
        return item[0], item[1]
    return item, None


def _payload(term: str, value: object) -> float:
    """A payload as the float32 value stored, or ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"payload of term {term!r} must be a number, got {value!r}")
    if not math.isfinite(float(value)) or abs(float(value)) > _FLOAT32_MAX:
        raise ValueError(f"payload of term {term!r} must be a finite float32, got {value!r}")
    return float(np.float32(value))


def check_doc_id(doc_id: object) -> int:
    """`doc_id` as an int, or UpdateError when it is not a 64-bit integer."""
    if isinstance(doc_id, bool) or not isinstance(doc_id, (int, np.integer)):
        raise UpdateError(f"doc_id {doc_id!r} is not an integer")
    if not -(2**63) <= int(doc_id) < 2**63:
        raise UpdateError(f"doc_id {doc_id} does not fit in 64 bits")
    return int(doc_id)


def _unit(vector: np.ndarray, d: int, what: str, error: type[Exception]) -> np.ndarray:
    """`vector` scaled to unit length, or `error` naming what is wrong with it."""
    if vector.shape != (d,):
        raise error(f"{what} has {vector.size} dimensions, the index has {d}")
    if not np.all(np.isfinite(vector)):
        raise error(f"{what} has NaN or infinite values")
    norm = float(np.linalg.norm(vector.astype(np.float64)))
    if norm == 0.0 or not math.isfinite(norm):
        raise error(f"{what} has norm 0 and no direction")
    return (vector / norm).astype(np.float32)


def unit_vector(values: object, d: int, what: str, error: type[Exception]) -> np.ndarray:
    """Validate and normalise one query or document vector (public for the service)."""
    try:
        vector = np.asarray(values, dtype=np.float32).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise error(f"{what} is not a list of numbers") from exc
    return _unit(vector, d, what, error)
