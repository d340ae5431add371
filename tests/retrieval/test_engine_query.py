"""The query language: the paper's expressions, error positions, limits, and fuzzing (only QueryError)."""

from __future__ import annotations

import contextlib
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ebr.config import engine_defaults
from ebr.retrieval.query import (
    NN,
    And,
    AnyText,
    Fuse,
    Or,
    QueryError,
    Rerank,
    Term,
    Text,
    expand_text,
    nn_nodes,
    parse,
    vector_nodes,
)
from ebr.retrieval.terms import document_terms, normalize_term, query_terms, text_terms, tokens

PAPER_TERMS = (
    "(and (or (term location:seattle) (term location:menlo_park)) (and (term text:john) (term text:smithe)))"
)
PAPER_HYBRID = (
    "(and (or (term location:seattle) (term location:menlo_park)) (or (and (term text:john) "
    "(term text:smithe)) (nn model-141795009 :radius 0.24 :nprobe 16)))"
)


def test_the_papers_expressions_parse_as_written() -> None:
    assert str(parse(PAPER_TERMS)) == PAPER_TERMS
    hybrid = parse(PAPER_HYBRID)
    assert str(hybrid) == PAPER_HYBRID
    (nn,) = nn_nodes(hybrid)
    assert nn == NN("model-141795009", 16, radius=0.24, pos=nn.pos)
    assert PAPER_HYBRID[nn.pos :].startswith("(nn model-141795009")


def test_term_payload_options_parse_and_print_back() -> None:
    node = parse("(term Text:John :score :max 2 :min -0.5)")
    assert node == Term("text:john", 0, -0.5, 2.0, True)
    assert str(node) == "(term text:john :min -0.5 :max 2.0 :score)" and parse(str(node)) == node
    assert parse("(term a:b :min 0.35 :max 0.35)").bounded  # equal bounds: one value
    assert not parse("(term a:b :score)").bounded


FUSED = "(fuse :bm25 0.3 (and (term vertical:papers) (or $anytext (nn text :k 100 :nprobe 16))))"
RERANKED = "(rerank unified :n 200 (and (term vertical:people) (nn text :k 200 :nprobe 16)))"


def test_ranking_operators_parse_and_print_back() -> None:
    fused = parse(FUSED)
    assert isinstance(fused, Fuse) and (fused.bm25, fused.rrf, fused.method) == (0.3, None, "bm25")
    assert str(fused) == FUSED and parse(str(fused)) == fused
    assert isinstance(fused.child.children[1].children[0], AnyText)
    reranked = parse(RERANKED)
    assert isinstance(reranked, Rerank) and (reranked.key, reranked.n) == ("unified", 200)
    assert str(reranked.child) == RERANKED[23:-1]
    assert str(reranked) == RERANKED
    nested = "(rerank a :n 5 (rerank b :n 50 (fuse :rrf 60 $text)))"
    assert str(parse(nested)) == nested and parse(nested).child.child.rrf == 60
    assert str(parse("(fuse :bm25 1 $anytext)")) == "(fuse :bm25 1.0 $anytext)"
    # the keys that need a query embedding: nn keys and rerank keys, in text order
    assert [n.key for n in vector_nodes(parse(RERANKED))] == ["unified", "text"]
    assert [n.key for n in nn_nodes(parse(RERANKED))] == ["text"]


def test_top_k_mode_default_nprobe_and_normalised_terms() -> None:
    node = parse("(nn unified :k 50)", replace(engine_defaults().limits, default_nprobe=8))
    assert (node.k, node.radius, node.nprobe) == (50, None, 8)
    assert parse("(term Location:Menlo_Park)") == Term("location:menlo_park")
    assert parse("( and\n(term text:Café) )") == And((Term("text:cafe", 6),), 0)


@pytest.mark.parametrize(
    ("query", "column", "problem"),
    [
        ("", 1, "empty query"),
        ("(and (term a:b)", 16, "expected ')' closing (and ...)"),
        ("(adn (term a:b))", 2, "unknown operator 'adn'"),
        ("(term)", 6, "expected field:value"),
        ("(term john)", 7, "not of the form field:value"),
        ("(term text:!!)", 7, "empty value"),
        ("(and (term a:b)) (term c:d)", 18, "after the end of the expression"),
        ("(not (term a:b) (term c:d))", 17, "expected ')' closing (not ...)"),
        ("(nn unified)", 1, "exactly one of :radius"),
        ("(nn unified :radius 0.2 :k 5)", 1, "exactly one of :radius"),
        ("(nn unified :radius 2.5)", 21, "between 0 and 2"),
        ("(nn unified :radius nan)", 21, "between 0 and 2"),
        ("(nn unified :k 0)", 16, "between 1 and"),
        ("(nn unified :k 1.5)", 16, "positive integer"),
        ("(nn unified :k 5 :nprobe 5000)", 26, "between 1 and 1024"),
        ("(nn unified :k 5 :k 6)", 18, "given twice"),
        ("(nn unified :rdius 0.2)", 13, "unknown nn option"),
        ("(nn :k 5)", 5, "not an embedding key"),
        ("(term a:b))", 11, "after the end"),
        ("(term a:b :min)", 15, "expected a number after :min"),
        ("(term a:b :min x)", 16, ":min must be a finite float32 number"),
        ("(term a:b :max 1e39)", 16, ":max must be a finite float32 number"),
        ("(term a:b :min 0.5 :max 0.4)", 25, ":max 0.4 is below :min 0.5"),
        ("(term a:b :min 1 :min 2)", 18, "given twice"),
        ("(term a:b :score :score)", 18, "given twice"),
        ("(term a:b :weight 2)", 11, "unknown term option ':weight'"),
        ("(term a:b (term c:d))", 11, "unknown term option '('"),
        ("(term nn.unified:3 :min 0)", 20, "cluster terms carry PQ codes"),
        ("term a:b", 1, "expected '('"),
        (
            "(and $text (fuse :bm25 0.5 (term a:b)))",
            12,
            "(fuse ...) is a ranking operator: only allowed at the root",
        ),
        ("(not (rerank u :n 5 (term a:b)))", 6, "(rerank ...) is a ranking operator"),
        ("(fuse :rrf 60 (rerank u :n 5 (term a:b)))", 15, "(rerank ...) is a ranking operator"),
        ("(fuse :rrf 60 (fuse :rrf 60 (term a:b)))", 15, "(fuse ...) is a ranking operator"),
        ("(fuse :bm25 0.5 :rrf 60 (term a:b))", 1, "exactly one of :bm25 W (linear) or :rrf K"),
        ("(fuse (term a:b))", 1, "exactly one of :bm25 W (linear) or :rrf K"),
        ("(fuse :bm25 1.5 (term a:b))", 13, ":bm25 must be a weight between 0 and 1, got '1.5'"),
        ("(fuse :bm25 -0.1 (term a:b))", 13, ":bm25 must be a weight between 0 and 1"),
        ("(fuse :bm25 nan (term a:b))", 13, ":bm25 must be a weight between 0 and 1"),
        ("(fuse :rrf 0 (term a:b))", 12, ":rrf must be at least 1, got 0"),
        ("(fuse :rrf 2.5 (term a:b))", 12, ":rrf must be a positive integer"),
        ("(fuse :bm25 0.5 :bm25 0.5 (term a:b))", 17, "fuse option :bm25 given twice"),
        ("(fuse :weight 1 (term a:b))", 7, "unknown fuse option ':weight' (expected :bm25 or :rrf)"),
        ("(fuse :bm25 0.5 (term a:b) (term c:d))", 28, "expected ')' closing (fuse ...)"),
        ("(rerank u (term a:b))", 1, "rerank needs :n N"),
        ("(rerank u :n 0 (term a:b))", 14, ":n must be between 1 and 10000"),
        ("(rerank u :k 5 (term a:b))", 11, "unknown rerank option ':k' (expected :n)"),
        ("(rerank :n 5 (term a:b))", 9, "not an embedding key"),
        ("(rerank u :n 5)", 15, "expected an expression"),
    ],
)
def test_errors_name_the_position_and_the_problem(query: str, column: int, problem: str) -> None:
    with pytest.raises(QueryError) as err:
        parse(query)
    assert err.value.position == column - 1
    assert problem in err.value.problem
    assert str(err.value).startswith(f"column {column}: ")


def test_limits_on_length_depth_nodes_nprobe_and_k() -> None:
    limits = replace(
        engine_defaults().limits, max_query_chars=200, max_depth=3, max_nodes=5, max_nprobe=8, max_k=10
    )
    with pytest.raises(QueryError, match="longer than 200"):
        parse("(or" + " (term a:b)" * 30 + ")", limits)
    with pytest.raises(QueryError, match="deeper than 3") as err:
        parse("(not (not (not (term a:b))))", limits)
    assert err.value.position == 15
    with pytest.raises(QueryError, match="more than 5 nodes"):
        parse("(or (term a:b) (term a:c) (term a:d) (term a:e) (term a:f))", limits)
    with pytest.raises(QueryError, match="between 1 and 8"):
        parse("(nn u :k 3 :nprobe 9)", limits)
    with pytest.raises(QueryError, match="between 1 and 10"):
        parse("(nn u :k 11)", limits)
    with pytest.raises(QueryError, match=":n must be between 1 and 3"):
        parse("(rerank u :n 4 (term a:b))", replace(engine_defaults().limits, max_rerank=3))
    with pytest.raises(QueryError, match="more than 2 nodes"):  # ranking operators are nodes
        parse("(rerank u :n 4 (fuse :rrf 1 (term a:b)))", replace(engine_defaults().limits, max_nodes=2))
    assert parse("(not (not (term a:b)))", limits)


def test_deeply_nested_input_is_an_error_not_a_crash() -> None:
    with pytest.raises(QueryError, match="deeper than"):
        parse(
            "(not " * 5000 + "(term a:b)" + ")" * 5000,
            replace(engine_defaults().limits, max_query_chars=100_000),
        )


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("()  :.-_$abcdefklmnoprstuxyi0123456789é\n")), max_size=80))
def test_anything_typed_parses_or_raises_query_error(text: str) -> None:
    try:
        parse(text)
    except QueryError as err:
        assert 0 <= err.position <= len(text)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=60))
def test_arbitrary_unicode_parses_or_raises_query_error(text: str) -> None:
    with contextlib.suppress(QueryError):
        parse(text)


def test_text_placeholder_expands_to_the_query_terms() -> None:
    node = parse("(or $text (nn u :k 5))")
    assert isinstance(node.children[0], Text)
    expanded = expand_text(node, "John  SMITHE john")
    assert str(expanded) == "(or (and (term text:john) (term text:smithe)) (nn u :k 5 :nprobe 16))"
    assert expand_text(parse("$text"), "  ?! ") == Or((), 0)
    under_ranking = expand_text(parse("(rerank u :n 3 (fuse :rrf 5 (or $text $anytext)))"), "a b")
    assert str(under_ranking) == (
        "(rerank u :n 3 (fuse :rrf 5 (or (and (term text:a) (term text:b)) "
        "(or (term text:a) (term text:b)))))"
    )


def test_term_normalisation() -> None:
    assert tokens("Kasie's Créations!") == ["kasies", "creations"]
    assert normalize_term("LOCATION: Menlo  Park") == "location:menlo_park"
    assert query_terms("mini cooper nw mini") == ["text:mini", "text:cooper", "text:nw"]
    assert document_terms("people", "John Smith", city="Seattle", country="US", extra=["user:42"]) == [
        "vertical:people",
        "text:john",
        "text:smith",
        "location:seattle",
        "country:us",
        "user:42",
    ]
    assert text_terms(["John Smith", "john's dog, John"]) == {
        "text:john": 2,
        "text:smith": 1,
        "text:johns": 1,
        "text:dog": 1,
    }
    # several text fields (title and body): a repeated token comes with its frequency, as a payload
    assert document_terms("groups", ["Seattle Hikers", "Hikers of Seattle hike"], city="Seattle") == [
        "vertical:groups",
        ("text:seattle", 2),
        ("text:hikers", 2),
        "text:of",
        "text:hike",
        "location:seattle",
    ]
    assert document_terms("people", "Anna Anna", extra=["text:anna"]) == ["vertical:people", ("text:anna", 2)]
    for bad in ("nocolon", ":value", "fi eld:x", "field:"):
        with pytest.raises(ValueError):
            normalize_term(bad)
