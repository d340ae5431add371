"""The query language: S-expressions over terms with a first-class (nn) operator.

    expr  := (term FIELD:VALUE [:min X] [:max Y] [:score])
           | (and expr*) | (or expr*) | (not expr)
           | (nn KEY :radius R [:nprobe N]) | (nn KEY :k K [:nprobe N])
           | $text

`$text` stands for the query text's terms: (and (term text:a) (term text:b) ...), or (or) -- nothing --
when the text has no tokens. A term's `:min` / `:max` keep only the postings whose payload (float32) lies
within the bounds (inclusive; postings without a payload fail any bound), and `:score` makes the document's
payload of the term one of the result's scores (see executor). Errors are `QueryError`s carrying the
0-based offset of the problem; their message says `column <offset + 1>: <problem>`. Limits (query
length, depth, node count, nprobe, k) come from conf/engine/default.yaml.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass

import numpy as np

from ebr.retrieval.index import CLUSTER_FIELD_PREFIX
from ebr.retrieval.terms import normalize_term, query_terms

_KEY = re.compile(r"^[A-Za-z0-9_.+\-]+$")  # the keys of published versions (ebr.retrieval.retrievers.KEY)
OPERATORS = ("term", "and", "or", "not", "nn")


class QueryError(ValueError):
    """A parse or validation error at `position` (0-based character offset) of the query."""

    def __init__(self, position: int, problem: str):
        super().__init__(f"column {position + 1}: {problem}")
        self.position = position
        self.problem = problem


@dataclass(frozen=True)
class Limits:
    max_query_chars: int = 10_000
    max_depth: int = 32
    max_nodes: int = 1_000
    max_nprobe: int = 1_024
    max_k: int = 10_000
    default_nprobe: int = 16


@dataclass(frozen=True)
class Term:
    """A term's postings; with `low`/`high`, only those whose payload is within [low, high] (compared as
    float32); `score`: the document's payload of the term is a score of the result."""

    term: str
    pos: int = 0
    low: float | None = None
    high: float | None = None
    score: bool = False

    @property
    def bounded(self) -> bool:
        return self.low is not None or self.high is not None

    def __str__(self) -> str:
        options = "" if self.low is None else f" :min {self.low!r}"
        options += "" if self.high is None else f" :max {self.high!r}"
        return f"(term {self.term}{options}{' :score' if self.score else ''})"


@dataclass(frozen=True)
class And:
    children: tuple[Node, ...]
    pos: int = 0

    def __str__(self) -> str:
        return "(and" + "".join(f" {c}" for c in self.children) + ")"


@dataclass(frozen=True)
class Or:
    children: tuple[Node, ...]
    pos: int = 0

    def __str__(self) -> str:
        return "(or" + "".join(f" {c}" for c in self.children) + ")"


@dataclass(frozen=True)
class Not:
    child: Node
    pos: int = 0

    def __str__(self) -> str:
        return f"(not {self.child})"


@dataclass(frozen=True)
class NN:
    """Radius mode when `radius` is set (cosine distance), top-K mode when `k` is set."""

    key: str
    nprobe: int
    radius: float | None = None
    k: int | None = None
    pos: int = 0

    def __str__(self) -> str:
        mode = f":radius {self.radius!r}" if self.radius is not None else f":k {self.k}"
        return f"(nn {self.key} {mode} :nprobe {self.nprobe})"


@dataclass(frozen=True)
class Text:
    """`$text`: replaced by the query text's terms before execution."""

    pos: int = 0

    def __str__(self) -> str:
        return "$text"


Node = Term | And | Or | Not | NN | Text

_TOKEN = re.compile(r"\s+|\(|\)|[^\s()]+")


def _tokenize(text: str) -> list[tuple[str, int]]:
    out = []
    for match in _TOKEN.finditer(text):
        token = match.group()
        if not token.isspace():
            out.append((token, match.start()))
    return out


class _Parser:
    def __init__(self, text: str, limits: Limits):
        self.text = text
        self.limits = limits
        self.tokens = _tokenize(text)
        self.i = 0
        self.nodes = 0

    def peek(self) -> tuple[str, int] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def end_pos(self) -> int:
        return len(self.text)

    def take(self, what: str) -> tuple[str, int]:
        tok = self.peek()
        if tok is None:
            raise QueryError(self.end_pos(), f"unexpected end of query: expected {what}")
        self.i += 1
        return tok

    def expr(self, depth: int) -> Node:
        token, pos = self.take("an expression such as (term field:value)")
        self.nodes += 1
        if self.nodes > self.limits.max_nodes:
            raise QueryError(pos, f"query has more than {self.limits.max_nodes} nodes")
        if token == "$text":
            return Text(pos)
        if token == ")":
            raise QueryError(pos, "unexpected ')': expected an expression")
        if token != "(":
            raise QueryError(pos, f"unexpected {token!r}: expected '(' starting an expression or $text")
        if depth > self.limits.max_depth:
            raise QueryError(pos, f"query nests deeper than {self.limits.max_depth} levels")
        op, op_pos = self.take("an operator (" + ", ".join(OPERATORS) + ")")
        if op in ("(", ")"):
            raise QueryError(
                op_pos, f"unexpected {op!r}: expected an operator (" + ", ".join(OPERATORS) + ")"
            )
        if op == "term":
            node: Node = self.term(pos)
        elif op in ("and", "or"):
            children = []
            while (tok := self.peek()) is not None and tok[0] != ")":
                children.append(self.expr(depth + 1))
            node = And(tuple(children), pos) if op == "and" else Or(tuple(children), pos)
        elif op == "not":
            node = Not(self.expr(depth + 1), pos)
        elif op == "nn":
            node = self.nn(pos)
        else:
            raise QueryError(op_pos, f"unknown operator {op!r} (expected one of: {', '.join(OPERATORS)})")
        self.close(op)
        return node

    def close(self, op: str) -> None:
        token, pos = self.take(f"')' closing ({op} ...)")
        if token != ")":
            raise QueryError(pos, f"unexpected {token!r}: expected ')' closing ({op} ...)")

    def term(self, pos: int) -> Term:
        token, tpos = self.take("field:value after 'term'")
        if token in ("(", ")"):
            raise QueryError(tpos, f"unexpected {token!r}: expected field:value after 'term'")
        try:
            term = normalize_term(token)
        except ValueError as exc:
            raise QueryError(tpos, str(exc)) from exc
        bounds: dict[str, tuple[float, int]] = {}
        score = False
        while (tok := self.peek()) is not None and tok[0] != ")":
            name, npos = self.take("a term option")
            if name not in (":min", ":max", ":score"):
                raise QueryError(npos, f"unknown term option {name!r} (expected :min, :max or :score)")
            if name in bounds or (name == ":score" and score):
                raise QueryError(npos, f"term option {name} given twice")
            if term.startswith(CLUSTER_FIELD_PREFIX):
                raise QueryError(npos, f"{name}: cluster terms carry PQ codes, not float payloads")
            if name == ":score":
                score = True
                continue
            value = self.take(f"a number after {name}")
            if value[0] in ("(", ")"):
                raise QueryError(value[1], f"unexpected {value[0]!r}: expected a number after {name}")
            bounds[name] = (self.bound(value, name), value[1])
        low = bounds[":min"][0] if ":min" in bounds else None
        high = bounds[":max"][0] if ":max" in bounds else None
        if low is not None and high is not None and np.float32(low) > np.float32(high):
            raise QueryError(bounds[":max"][1], f":max {high!r} is below :min {low!r}")
        return Term(term, pos, low, high, score)

    def nn(self, pos: int) -> NN:
        key, kpos = self.take("an embedding key after 'nn'")
        if key in ("(", ")") or key.startswith(":") or not _KEY.match(key):
            raise QueryError(kpos, f"{key!r} is not an embedding key (letters, digits, _ . + -)")
        options: dict[str, tuple[str, int]] = {}
        while (tok := self.peek()) is not None and tok[0] != ")":
            name, npos = self.take("an option")
            if name not in (":radius", ":k", ":nprobe"):
                raise QueryError(npos, f"unknown nn option {name!r} (expected :radius, :k or :nprobe)")
            if name in options:
                raise QueryError(npos, f"nn option {name} given twice")
            value = self.take(f"a value after {name}")
            if value[0] in ("(", ")"):
                raise QueryError(value[1], f"unexpected {value[0]!r}: expected a value after {name}")
            options[name] = value
        if (":radius" in options) == (":k" in options):
            raise QueryError(pos, "nn needs exactly one of :radius (radius mode) or :k (top-K mode)")
        nprobe = (
            self.integer(options[":nprobe"], ":nprobe", self.limits.max_nprobe)
            if ":nprobe" in options
            else self.limits.default_nprobe
        )
        if ":radius" in options:
            return NN(key, nprobe, radius=self.radius(options[":radius"]), pos=pos)
        return NN(key, nprobe, k=self.integer(options[":k"], ":k", self.limits.max_k), pos=pos)

    @staticmethod
    def integer(value: tuple[str, int], name: str, maximum: int) -> int:
        text, pos = value
        if not re.fullmatch(r"[0-9]{1,10}", text):
            raise QueryError(pos, f"{name} must be a positive integer, got {text!r}")
        number = int(text)
        if not 1 <= number <= maximum:
            raise QueryError(pos, f"{name} must be between 1 and {maximum}, got {number}")
        return number

    @staticmethod
    def bound(value: tuple[str, int], name: str) -> float:
        text, pos = value
        try:
            number = float(text) if len(text) <= 32 else math.nan
        except ValueError:
            number = math.nan
        if not math.isfinite(number) or abs(number) > float(np.finfo(np.float32).max):
            raise QueryError(pos, f"{name} must be a finite float32 number, got {text!r}")
        return number

    @staticmethod
    def radius(value: tuple[str, int]) -> float:
        text, pos = value
        try:
            number = float(text) if len(text) <= 32 else math.nan
        except ValueError:
            number = math.nan
        if not math.isfinite(number) or not 0.0 <= number <= 2.0:
            raise QueryError(pos, f":radius must be a cosine distance between 0 and 2, got {text!r}")
        return number


def parse(text: str, limits: Limits | None = None) -> Node:
    """Parse one expression; raises QueryError with the position and the problem."""
    limits = limits or Limits()
    if not isinstance(text, str):
        raise QueryError(0, "the query must be a string")
    if len(text) > limits.max_query_chars:
        raise QueryError(limits.max_query_chars, f"query longer than {limits.max_query_chars} characters")
    parser = _Parser(text, limits)
    if parser.peek() is None:
        raise QueryError(0, "empty query")
    node = parser.expr(depth=1)
    extra = parser.peek()
    if extra is not None:
        raise QueryError(extra[1], f"unexpected {extra[0]!r} after the end of the expression")
    return node


@functools.lru_cache(maxsize=4096)
def parse_cached(text: str, limits: Limits) -> Node:
    """`parse` memoised (expressions are immutable): serving sees the same templates again and again."""
    return parse(text, limits)


def expand_text(node: Node, query_text: str | None) -> Node:
    """Replace every `$text` with the query text's terms."""
    if isinstance(node, Text):
        terms = tuple(Term(t, node.pos) for t in query_terms(query_text))
        return And(terms, node.pos) if terms else Or((), node.pos)
    if isinstance(node, And):
        return And(tuple(expand_text(c, query_text) for c in node.children), node.pos)
    if isinstance(node, Or):
        return Or(tuple(expand_text(c, query_text) for c in node.children), node.pos)
    if isinstance(node, Not):
        return Not(expand_text(node.child, query_text), node.pos)
    return node


def scored_terms(node: Node) -> list[str]:
    """The terms marked `:score` in an expression, in text order without repeats."""
    if isinstance(node, Term):
        return [node.term] if node.score else []
    if isinstance(node, (And, Or)):
        return list(dict.fromkeys(t for c in node.children for t in scored_terms(c)))
    if isinstance(node, Not):
        return scored_terms(node.child)
    return []


def nn_nodes(node: Node) -> list[NN]:
    """Every nn operator of an expression, in text order."""
    if isinstance(node, NN):
        return [node]
    if isinstance(node, (And, Or)):
        return [n for c in node.children for n in nn_nodes(c)]
    if isinstance(node, Not):
        return nn_nodes(node.child)
    return []
