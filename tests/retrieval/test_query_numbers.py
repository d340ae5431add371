"""Numbers of the query language: one grammar, errors at the offending token; $text expansion bounds."""

from __future__ import annotations

import pytest

from ebr.config import engine_defaults
from ebr.retrieval.query import QueryError, expand_text, parse


@pytest.mark.parametrize("good", ["0", "0.25", "1", "2", "1e-3", "2E0", "0.5e+0", "1.0"])
def test_radius_numbers(good: str) -> None:
    assert parse(f"(nn k :radius {good})").radius == float(good)


@pytest.mark.parametrize(
    "bad", ["0_1", "1_0", ".5", "+1", "01", "1.", "inf", "nan", "0x1", "1e", "١", "0.5" + "0" * 40, "--1"]
)
def test_numbers_outside_the_grammar(bad: str) -> None:
    expr = f"(nn k :radius {bad})"
    with pytest.raises(QueryError) as error:
        parse(expr)
    assert error.value.position == expr.index(bad)


@pytest.mark.parametrize("bad", ["007", "1_0", "+3", "3.0", "1e3", "99999999999999999999999999999999999"])
def test_counts_are_plain_integers(bad: str) -> None:
    with pytest.raises(QueryError, match=":k"):
        parse(f"(nn k :k {bad})")


def test_bounds_and_weights_use_the_grammar() -> None:
    assert parse("(term a:b :min -1.5e2 :max 3)").low == -150.0
    for expr in ("(term a:b :min 1_0)", "(term a:b :max 1e39)", "(fuse :bm25 0_5 (term a:b))"):
        with pytest.raises(QueryError):
            parse(expr)


def test_text_expansion_is_bounded() -> None:
    limits = engine_defaults().limits
    text = " ".join(f"w{i}" for i in range(limits.max_query_terms))
    assert len(expand_text(parse("$anytext"), text).children) == limits.max_query_terms
    with pytest.raises(QueryError, match="terms"):
        expand_text(parse("$anytext"), text + " extra")
    with pytest.raises(QueryError, match="longer"):
        expand_text(parse("$text"), "x" * (limits.max_term_chars + 1))
    many = "(or " + " ".join(["$text"] * 200) + ")"
    with pytest.raises(QueryError, match="expands to"):
        expand_text(parse(many), text)
