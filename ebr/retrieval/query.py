r"""The query language: S-expressions over terms with a first-class (nn) operator, and ranking operators.

    query := (rerank KEY :n N query) | (fuse :bm25 W expr) | (fuse :rrf K expr) | expr
    expr  := (term FIELD:VALUE [:min X] [:max Y] [:score])
           | (and expr*) | (or expr*) | (not expr)
           | (nn KEY :radius R [:nprobe N]) | (nn KEY :k K [:nprobe N])
           | $text | $anytext

`$text` stands for the query text's terms: (and (term text:a) (term text:b) ...), `$anytext` for
(or (term text:a) (term text:b) ...); both are (or) -- nothing -- when the text has no tokens. A term's
`:min` / `:max` keep only the postings whose payload (float32) lies within the bounds (inclusive; postings
without a payload fail any bound), and `:score` makes the document's payload of the term one of the
result's scores (see executor). The ranking operators (fuse, rerank; see executor) only re-score and cut
the results of their child, so they may appear only at the root of the query or under a rerank. Errors are
`QueryError`s carrying the 0-based offset of the problem; their message says `column <offset + 1>:
<problem>`. Limits (query length, depth, node count, nprobe, k, rerank's n, nodes and terms once `$text`
is expanded, term length) come from conf/engine/default.yaml.

Numbers have one grammar (JSON's): `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`, at most 32
characters and finite in float32 -- no underscores, `inf`, `nan`, hex or leading `+` / `.`. Counts (:k,
:nprobe, :n, :rrf) are its integers `0|[1-9][0-9]*`, checked against their range.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, replace

import numpy as np

from ebr.config import Limits, engine_defaults
from ebr.retrieval.terms import CLUSTER_FIELD_PREFIX, normalize_term, query_terms

NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")
INTEGER = re.compile(r"0|[1-9][0-9]*")
MAX_NUMBER_CHARS = 32
_KEY = re.compile(r"^[A-Za-z0-9_.+\-]+$")  # the keys of published versions (ebr.retrieval.retrievers.KEY)
RANKING_OPERATORS = ("fuse", "rerank")
OPERATORS = ("term", "and", "or", "not", "nn", *RANKING_OPERATORS)


class QueryError(ValueError):
    """A parse or validation error at `position` (0-based character offset) of the query."""

    def __init__(self, position: int, problem: str):
        super().__init__(f"column {position + 1}: {problem}")
        self.position = position
        self.problem = problem


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
    """`$text`: replaced by the AND of the query text's terms before execution."""

    pos: int = 0

    def __str__(self) -> str:
        return "$text"


@dataclass(frozen=True)
class AnyText:
    """`$anytext`: replaced by the OR of the query text's terms before execution."""

    pos: int = 0

    def __str__(self) -> str:
        return "$anytext"


@dataclass(frozen=True)
class Fuse:
    """The child's results scored by a fusion of BM25 and the child's score: linear with weight `bm25`, or
    reciprocal rank fusion with constant `rrf` (exactly one is set)."""

    child: Node
    bm25: float | None = None
    rrf: int | None = None
    pos: int = 0

    @property
    def method(self) -> str:
        return "bm25" if self.bm25 is not None else "rrf"

    def __str__(self) -> str:
        option = f":bm25 {self.bm25!r}" if self.bm25 is not None else f":rrf {self.rrf}"
        return f"(fuse {option} {self.child})"


@dataclass(frozen=True)
class Rerank:
    """The child's best `n` results, re-scored by the quantised cosine under embedding key `key`."""

    key: str
    n: int
    child: Node
    pos: int = 0

    def __str__(self) -> str:
        return f"(rerank {self.key} :n {self.n} {self.child})"


Node = Term | And | Or | Not | NN | Text | AnyText | Fuse | Rerank

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

    def expr(self, depth: int, ranking: bool = False) -> Node:
        """One expression; `ranking`: a ranking operator may stand here."""
        token, pos = self.take("an expression such as (term field:value)")
        self.nodes += 1
        if self.nodes > self.limits.max_nodes:
            raise QueryError(pos, f"query has more than {self.limits.max_nodes} nodes")
        if token == "$text":
            return Text(pos)
        if token == "$anytext":
            return AnyText(pos)
        if token == ")":
            raise QueryError(pos, "unexpected ')': expected an expression")
        if token != "(":
            raise QueryError(
                pos, f"unexpected {token!r}: expected '(' starting an expression, $text or $anytext"
            )
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
        elif op in RANKING_OPERATORS and not ranking:
            raise QueryError(
                pos,
                f"({op} ...) is a ranking operator: only allowed at the root of the expression "
                "or under (rerank ...)",
            )
        elif op == "fuse":
            node = self.fuse(pos, depth)
        elif op == "rerank":
            node = self.rerank(pos, depth)
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

    def key(self, op: str) -> str:
        key, kpos = self.take(f"an embedding key after '{op}'")
        if key in ("(", ")") or key.startswith(":") or not _KEY.match(key):
            raise QueryError(kpos, f"{key!r} is not an embedding key (letters, digits, _ . + -)")
        return key

    def option(self, op: str, allowed: tuple[str, ...], options: dict[str, tuple[str, int]]) -> None:
        """Take one `:name value` option of `op` into `options`."""
        name, npos = self.take("an option")
        if name not in allowed:
            expected = allowed[0] if len(allowed) == 1 else f"{', '.join(allowed[:-1])} or {allowed[-1]}"
            raise QueryError(npos, f"unknown {op} option {name!r} (expected {expected})")
        if name in options:
            raise QueryError(npos, f"{op} option {name} given twice")
        value = self.take(f"a value after {name}")
        if value[0] in ("(", ")"):
            raise QueryError(value[1], f"unexpected {value[0]!r}: expected a value after {name}")
        options[name] = value

    def leading_options(self, op: str, allowed: tuple[str, ...]) -> dict[str, tuple[str, int]]:
        """The options of a ranking operator: every `:name value` before its child expression."""
        options: dict[str, tuple[str, int]] = {}
        while (tok := self.peek()) is not None and tok[0].startswith(":"):
            self.option(op, allowed, options)
        return options

    def nn(self, pos: int) -> NN:
        key = self.key("nn")
        options: dict[str, tuple[str, int]] = {}
        while (tok := self.peek()) is not None and tok[0] != ")":
            self.option("nn", (":radius", ":k", ":nprobe"), options)
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

    def fuse(self, pos: int, depth: int) -> Fuse:
        options = self.leading_options("fuse", (":bm25", ":rrf"))
        if len(options) != 1:
            raise QueryError(
                pos, "fuse needs exactly one of :bm25 W (linear) or :rrf K (reciprocal rank fusion)"
            )
        if ":bm25" in options:
            text, wpos = options[":bm25"]
            weight = _number(text)
            if not 0.0 <= weight <= 1.0:
                raise QueryError(wpos, f":bm25 must be a weight between 0 and 1, got {text!r}")
            return Fuse(self.expr(depth + 1), bm25=weight, pos=pos)
        return Fuse(self.expr(depth + 1), rrf=self.integer(options[":rrf"], ":rrf"), pos=pos)

    def rerank(self, pos: int, depth: int) -> Rerank:
        key = self.key("rerank")
        options = self.leading_options("rerank", (":n",))
        if ":n" not in options:
            raise QueryError(pos, "rerank needs :n N, the number of results to re-score")
        n = self.integer(options[":n"], ":n", self.limits.max_rerank)
        return Rerank(key, n, self.expr(depth + 1, ranking=True), pos)

    @staticmethod
    def integer(value: tuple[str, int], name: str, maximum: int | None = None) -> int:
        text, pos = value
        if len(text) > MAX_NUMBER_CHARS or not INTEGER.fullmatch(text):
            raise QueryError(pos, f"{name} must be a positive integer (plain digits), got {text!r}")
        number = int(text)
        if number < 1 or (maximum is not None and number > maximum):
            expected = "at least 1" if maximum is None else f"between 1 and {maximum}"
            raise QueryError(pos, f"{name} must be {expected}, got {number}")
        return number

    @staticmethod
    def bound(value: tuple[str, int], name: str) -> float:
        text, pos = value
        number = _number(text)
        if not math.isfinite(number) or abs(number) > float(np.finfo(np.float32).max):
            raise QueryError(pos, f"{name} must be a finite float32 number, got {text!r}")
        return number

    @staticmethod
    def radius(value: tuple[str, int]) -> float:
        text, pos = value
        number = _number(text)
        if not 0.0 <= number <= 2.0:
            raise QueryError(pos, f":radius must be a cosine distance between 0 and 2, got {text!r}")
        return number


def _number(text: str) -> float:
    """`text` as a float when it follows the grammar NUMBER; NaN otherwise (the caller names the problem)."""
    return float(text) if len(text) <= MAX_NUMBER_CHARS and NUMBER.fullmatch(text) else math.nan


def parse(text: str, limits: Limits | None = None) -> Node:
    """Parse one expression; raises QueryError with the position and the problem."""
    limits = limits or engine_defaults().limits
    if not isinstance(text, str):
        raise QueryError(0, "the query must be a string")
    if len(text) > limits.max_query_chars:
        raise QueryError(limits.max_query_chars, f"query longer than {limits.max_query_chars} characters")
    parser = _Parser(text, limits)
    if parser.peek() is None:
        raise QueryError(0, "empty query")
    node = parser.expr(depth=1, ranking=True)
    extra = parser.peek()
    if extra is not None:
        raise QueryError(extra[1], f"unexpected {extra[0]!r} after the end of the expression")
    return node


@functools.lru_cache(maxsize=4096)
def parse_cached(text: str, limits: Limits) -> Node:
    """`parse` memoised (expressions are immutable): serving sees the same templates again and again."""
    return parse(text, limits)


def expand_text(node: Node, query_text: str | None, limits: Limits | None = None) -> Node:
    """Replace every `$text` and `$anytext` with the query text's terms; raises QueryError when the text has
    more than `limits.max_query_terms` terms, one longer than `max_term_chars`, or the expanded expression
    would have more than `max_expanded_nodes` nodes (checked before anything is built)."""
    limits = limits or engine_defaults().limits
    terms = query_terms(query_text)
    if len(terms) > limits.max_query_terms:
        raise QueryError(0, f"query text has {len(terms)} terms, the limit is {limits.max_query_terms}")
    if any(len(t) > limits.max_term_chars for t in terms):
        raise QueryError(0, f"a query text term is longer than {limits.max_term_chars} characters")
    size = node_count(node) + len(terms) * text_count(node)
    if size > limits.max_expanded_nodes:
        raise QueryError(0, f"expression expands to {size} nodes, the limit is {limits.max_expanded_nodes}")
    return _expand(node, terms)


def _expand(node: Node, terms: list[str]) -> Node:
    if isinstance(node, (Text, AnyText)):
        leaves = tuple(Term(t, node.pos) for t in terms)
        return And(leaves, node.pos) if leaves and isinstance(node, Text) else Or(leaves, node.pos)
    if isinstance(node, (And, Or)):
        return replace(node, children=tuple(_expand(c, terms) for c in node.children))
    if isinstance(node, (Not, Fuse, Rerank)):
        return replace(node, child=_expand(node.child, terms))
    return node


def node_count(node: Node) -> int:
    """The nodes of an expression."""
    return 1 + sum(node_count(c) for c in children(node))


def text_count(node: Node) -> int:
    """The `$text` and `$anytext` of an expression."""
    return int(isinstance(node, (Text, AnyText))) + sum(text_count(c) for c in children(node))


def children(node: Node) -> tuple[Node, ...]:
    """The sub-expressions of a node."""
    if isinstance(node, (And, Or)):
        return node.children
    if isinstance(node, (Not, Fuse, Rerank)):
        return (node.child,)
    return ()


def scored_terms(node: Node) -> list[str]:
    """The terms marked `:score` in an expression, in text order without repeats."""
    if isinstance(node, Term):
        return [node.term] if node.score else []
    return list(dict.fromkeys(t for c in children(node) for t in scored_terms(c)))


def nn_nodes(node: Node) -> list[NN]:
    """Every nn operator of an expression, in text order."""
    if isinstance(node, NN):
        return [node]
    return [n for c in children(node) for n in nn_nodes(c)]


def vector_nodes(node: Node) -> list[NN | Rerank]:
    """The operators of an expression that need a query embedding for their key (nn, rerank), in text
    order."""
    own: list[NN | Rerank] = [node] if isinstance(node, (NN, Rerank)) else []
    return own + [n for c in children(node) for n in vector_nodes(c)]


NOTHING = Or(())  # matches no document


def matches_nothing(node: Node) -> bool:
    """An (or) without children: what an nn-free rewrite or an empty `$anytext` leaves."""
    return isinstance(node, Or) and not node.children


def without_nn(node: Node) -> Node:
    """The expression as term matching alone would answer it: every (nn) matches nothing and every (rerank)
    keeps its child's order; simplified (an (or) drops the children that match nothing, an (and) with one
    such child matches nothing, a (not) of nothing is dropped from its (and)). `NOTHING` when no term part is
    left."""
    if isinstance(node, NN):
        return NOTHING
    if isinstance(node, Rerank):
        return without_nn(node.child)
    if isinstance(node, Or):
        kept = tuple(c for c in (without_nn(c) for c in node.children) if not matches_nothing(c))
        return replace(node, children=kept) if kept else NOTHING
    if isinstance(node, And):
        parts = [without_nn(c) for c in node.children]
        if any(matches_nothing(p) for p in parts):
            return NOTHING
        kept = tuple(p for p in parts if not (isinstance(p, Not) and matches_nothing(p.child)))
        return replace(node, children=kept) if kept else node  # only (not (nn)): left as it was
    if isinstance(node, Fuse):
        child = without_nn(node.child)
        return NOTHING if matches_nothing(child) else replace(node, child=child)
    if isinstance(node, Not):
        return replace(node, child=without_nn(node.child))
    return node
