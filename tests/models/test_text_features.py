"""Text normalisation, trigrams, word n-grams and the stability of the feature hash."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from ebr.models.text_features import (
    TextFeaturizer,
    TextHasher,
    char_trigrams,
    document_frequencies,
    idf_weights,
    normalize_text,
    stable_hash,
    truncate,
    word_ngrams,
)


def test_normalize_case_accents_punctuation() -> None:
    assert normalize_text("Kasie's  Créations!") == "kasies creations"
    assert normalize_text("MINI-Cooper_NW") == "mini cooper nw"
    assert normalize_text("Straße Zoë") == "strasse zoe"
    assert normalize_text(None) == "" and normalize_text("  ?! ") == ""


def test_trigrams_have_word_boundaries() -> None:
    assert char_trigrams("john li") == ["#jo", "joh", "ohn", "hn#", "#li", "li#"]
    assert char_trigrams("a") == ["#a#"]


def test_word_unigrams_and_bigrams() -> None:
    assert word_ngrams("mini cooper nw") == ["mini", "cooper", "nw", "mini cooper", "cooper nw"]


def test_buckets_in_range_and_mean_weights() -> None:
    hasher = TextHasher(trigram_buckets=97, word_buckets=13, seed=5)
    trigrams, words = hasher.encode(["John Smith", "", None])
    assert trigrams.ids.max() < 97 and words.ids.max() < 13
    tokens, word_tokens = hasher.tokenize(["John Smith"])
    assert (len(tokens[0]), len(word_tokens[0])) == (9, 3)  # #jo ... th#; john, smith, "john smith"
    # a bucket repeated in a text (two tokens colliding) is one entry with the summed weight
    for bags, row in ((trigrams, tokens[0]), (words, word_tokens[0])):
        counts = {b: row.count(b) for b in row}
        assert np.diff(bags.indptr).tolist() == [len(counts), 0, 0]
        np.testing.assert_allclose(bags.weights, [counts[b] / len(row) for b in bags.ids])


def test_idf_weighting_and_fields_pooled_apart() -> None:
    hasher = TextHasher(trigram_buckets=4096, word_buckets=4096, seed=5)
    titles = ["deep learning", "protein folding", "deep sea"]
    bodies = ["the model learns features", "the protein folds", ""]
    fields = [hasher.tokenize(titles), hasher.tokenize(bodies)]
    featurizer = TextFeaturizer.fit(hasher, "idf", fields)
    _, words = featurizer.bags(fields)
    rows = words.rows()
    # every row's weights sum to 1; the title and the body each hold half of a two-field document
    assert [sum(w for _, w in r) for r in rows] == pytest.approx([1.0, 1.0, 1.0])
    title_words = {hasher.bucket(w, "word") for w in word_ngrams("deep learning")}
    assert sum(w for b, w in rows[0] if b in title_words) == pytest.approx(0.5, abs=1e-6)
    assert sum(w for _, w in rows[2]) == pytest.approx(1.0)  # no body: the title holds everything
    # within a field, weights follow idf: "deep" (2 of 3 documents) weighs less than "learning" (1 of 3)
    weight = dict(rows[0])
    assert weight[hasher.bucket("deep", "word")] < weight[hasher.bucket("learning", "word")]
    df, n = document_frequencies([f[1] for f in fields], 4096)
    assert n == 3 and df[hasher.bucket("deep", "word")] == 2 and df[hasher.bucket("the", "word")] == 2
    np.testing.assert_allclose(idf_weights(np.array([0, 3]), 3), np.log1p([3.5 / 0.5, 0.5 / 3.5]), rtol=1e-6)
    with pytest.raises(ValueError, match="features.text.weighting"):
        TextFeaturizer(hasher, "bm42")


def test_long_texts_are_cut_and_counted() -> None:
    texts, cut = truncate(["a" * 10, "b" * 3, None], 5)
    assert texts == ["aaaaa", "bbb", ""] and cut == 1


def test_hash_depends_on_seed_and_namespace() -> None:
    assert stable_hash("joh", 1, "trigram") != stable_hash("joh", 2, "trigram")
    assert stable_hash("joh", 1, "trigram") != stable_hash("joh", 1, "word")


def test_hashing_identical_across_processes() -> None:
    code = (
        "from ebr.models.text_features import TextHasher;"
        "t, w = TextHasher(131072, 65536, 17).encode(['Kasie\\'s creations', 'mini cooper nw']);"
        "print(t.ids.tolist(), w.ids.tolist())"
    )
    runs = [
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed},
        ).stdout
        for seed in ("1", "2")
    ]
    trigrams, words = TextHasher(131072, 65536, 17).encode(["Kasie's creations", "mini cooper nw"])
    assert runs[0] == runs[1] == f"{trigrams.ids.tolist()} {words.ids.tolist()}\n"
