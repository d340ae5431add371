"""Text normalisation, trigrams, word n-grams and the stability of the feature hash."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from ebr.models.text_features import TextHasher, char_trigrams, normalize_text, stable_hash, word_ngrams


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
    assert np.diff(trigrams.indptr).tolist() == [9, 0, 0]
    assert np.diff(words.indptr).tolist() == [3, 0, 0]
    np.testing.assert_allclose(trigrams.weights, 1 / 9)


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
