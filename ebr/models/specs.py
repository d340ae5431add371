"""Tower specifications: the fields of each side, their kinds and sizes, groups and dimensions (no torch, so
that serving can read a tower's spec without importing it)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

BAG, CAT, DENSE, TEXT = "bag", "cat", "dense", "text"
PRETRAINED_FIELDS = {"text_pretrained": DENSE, "text_raw": TEXT}  # frozen feature | fine-tuned encoder

QUERY_KINDS = {
    "text_trigrams": BAG,
    "text_words": BAG,
    "city": CAT,
    "region": CAT,
    "country": CAT,
    "language": CAT,
    "home_city": CAT,
    "social": DENSE,
    "social_clusters": BAG,
    **PRETRAINED_FIELDS,
}
DOCUMENT_KINDS = {
    "text_trigrams": BAG,
    "text_words": BAG,
    "host_trigrams": BAG,
    "vertical": CAT,
    "city": CAT,
    "region": CAT,
    "country": CAT,
    "member_cities": BAG,
    "social": DENSE,
    "social_clusters": BAG,
    **PRETRAINED_FIELDS,
}
EXTRA_KINDS = {"cat_": CAT, "num_": DENSE}  # declared document columns (ebr.models.features.extra_field_name)
TEXT_FIELDS = ("text_trigrams", "text_words")
SOCIAL_FIELDS = ("social", "social_clusters")
MEMBER_FIELDS = ("member_cities",)
TOWER_KINDS = ("text", "unified")


@dataclass(frozen=True)
class FieldSpec:
    name: str
    kind: str  # bag | cat | dense | text
    size: int  # hash buckets, vocabulary size (OOV included), input dimension or encoder dimension
    table: str | None = None  # reuse the embedding table of this field on the same side
    encoder: dict[str, Any] | None = None  # text fields: the pretrained encoder (PretrainedRef.to_dict())


@dataclass(frozen=True)
class GroupSpec:
    """A sub-tower over fields both sides have (text, location, social): `dim` outputs."""

    name: str
    fields: tuple[str, ...]
    dim: int


@dataclass(frozen=True)
class TowerSpec:
    fields: tuple[FieldSpec, ...]
    embedding_dim: int
    hidden_dims: tuple[int, ...]
    output_dim: int
    groups: tuple[GroupSpec, ...] = ()  # outputs first; the rest from the MLP over all fields
    passthrough: str | None = None  # the output is this field's embedding, normalised (no other parameters)
    sparse: bool = False  # sparse gradients of the embedding tables (training only)

    @property
    def free_dim(self) -> int:
        if self.passthrough is not None:
            return 0
        return self.output_dim - sum(g.dim for g in self.groups)

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "fields": [asdict(f) for f in self.fields],
            "groups": [{**asdict(g), "fields": list(g.fields)} for g in self.groups],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TowerSpec:
        return cls(
            tuple(FieldSpec(**f) for f in data["fields"]),
            int(data["embedding_dim"]),
            tuple(int(h) for h in data["hidden_dims"]),
            int(data["output_dim"]),
            tuple(GroupSpec(g["name"], tuple(g["fields"]), int(g["dim"])) for g in data["groups"]),
            data.get("passthrough"),
            bool(data.get("sparse", False)),
        )


def field_kind(name: str, kinds: Mapping[str, str]) -> str:
    """The kind of a field: from `kinds`, or by prefix for a declared categorical / numeric column."""
    if name in kinds:
        return kinds[name]
    prefix = next((p for p in EXTRA_KINDS if name.startswith(p)), None)
    if prefix is None:
        raise ValueError(f"unknown feature field {name!r}")
    return EXTRA_KINDS[prefix]


def field_specs(
    names: Sequence[str],
    kinds: Mapping[str, str],
    sizes: Mapping[str, int],
    encoder: dict[str, Any] | None = None,
) -> tuple[FieldSpec, ...]:
    """Specs of the named fields; the host title shares the trigram table; text fields get `encoder`."""
    specs = []
    for name in names:
        table = "text_trigrams" if name == "host_trigrams" and "text_trigrams" in names else None
        kind = field_kind(name, kinds)
        specs.append(FieldSpec(name, kind, int(sizes[name]), table, encoder if kind == TEXT else None))
    return tuple(specs)
