"""The builder: a version's engine/ folder from its published files; clear errors for what it cannot use."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pandas as pd
import pytest
from engine_fixtures import D, clustered, corpus_index, make_corpus, write_version

from ebr.retrieval.build import build_engine, read_document_terms
from ebr.retrieval.executor import execute
from ebr.retrieval.index import EngineIndex
from ebr.retrieval.quantized import UnsupportedIndexError
from ebr.retrieval.query import parse

EXPR = parse("(and (term vertical:people) (or (term text:w1) (nn unified :radius 0.5 :nprobe 4)))")


def test_the_engine_folder_matches_an_in_memory_build(tmp_path: Path, trained) -> None:
    corpus = make_corpus(seed=41, n=300)
    version = write_version(tmp_path / "v0001", corpus, trained)
    assert sorted(p.name for p in (version / "engine").iterdir()) == [
        "doc_ids.npy",
        "forward.npy",
        "forward_offsets.npy",
        "meta.json",
        "nn",
        "postings.npy",
        "postings_offsets.npy",
        "terms.json",
    ]
    loaded = EngineIndex.load(version / "engine")
    q = {"unified": clustered(np.random.default_rng(1), 1)[0]}
    got, want = execute(loaded, EXPR, q), execute(corpus_index(corpus, trained), EXPR, q)
    assert got.doc_ids.tolist() == want.doc_ids.tolist() and got.total > 0
    np.testing.assert_array_equal(got.scores, want.scores)
    # the tuned faiss index, filled with the embeddings, holds the same codes under row ids as the engine's
    # nn field under internal ids (the engine quantises with the trained index: the only copy in a version)
    published = faiss.clone_index(trained["unified"])
    published.add(corpus.embeddings["unified"])
    lims, _, ids = published.range_search(
        q["unified"][None, :],
        0.5,
        params=faiss.SearchParametersPreTransform(index_params=faiss.SearchParametersIVF(nprobe=4)),
    )
    only_nn = execute(loaded, parse("(nn unified :radius 0.5 :nprobe 4)"), q)
    assert set(corpus.doc_ids[ids].tolist()) == set(only_nn.doc_ids.tolist())


def test_unusable_inputs_are_named(tmp_path: Path, trained) -> None:
    corpus = make_corpus(seed=42, n=50)
    version = write_version(tmp_path / "v0001", corpus, trained)
    with pytest.raises(FileExistsError, match="not empty"):
        build_engine(version / "engine", trained)
    l2 = faiss.index_factory(D, "IVF4,PQ4x4")
    l2.train(clustered(np.random.default_rng(0), 500))
    with pytest.raises(UnsupportedIndexError, match="'unified': the index must use METRIC_INNER_PRODUCT"):
        build_engine(tmp_path / "v0001" / "engine2", {"unified": l2})
    with pytest.raises(ValueError, match="'missing' has a faiss index but no embeddings"):
        build_engine(tmp_path / "v0001" / "engine4", {"missing": trained["unified"]})
    pd.read_parquet(version / "documents.parquet").iloc[1:].to_parquet(version / "documents.parquet")
    with pytest.raises(ValueError, match=f"doc_id {corpus.doc_ids[0]} of doc_ids.npy has no row"):
        build_engine(tmp_path / "v0001" / "engine3", trained)


def test_documents_parquet_may_give_payloads_in_an_aligned_column(tmp_path: Path, trained) -> None:
    path = tmp_path / "documents.parquet"
    terms = [["vertical:people", "text:anna", "text:lee"], ["vertical:people"], []]
    pd.DataFrame({"doc_id": [5, 6, 7], "terms": terms}).to_parquet(path, index=False)
    assert read_document_terms(path, np.array([6, 5, 7])) == [terms[1], terms[0], []]  # without: plain terms
    payloads = [np.array([np.nan, 2.0, np.nan], np.float32), np.array([np.nan], np.float32), None]
    pd.DataFrame({"doc_id": [5, 6, 7], "terms": terms, "payloads": payloads}).to_parquet(path, index=False)
    assert read_document_terms(path, np.array([5, 6, 7])) == [
        ["vertical:people", ("text:anna", 2.0), "text:lee"],
        ["vertical:people"],
        [],
    ]
    payloads[1] = np.array([1.0, 2.0], np.float32)
    pd.DataFrame({"doc_id": [5, 6, 7], "terms": terms, "payloads": payloads}).to_parquet(path, index=False)
    with pytest.raises(ValueError, match="doc_id 6: 1 terms but 2 payloads"):
        read_document_terms(path, np.array([5, 6]))
    # a published version with term frequencies: format 2, text lengths from them
    corpus = make_corpus(seed=43, n=20)
    version = write_version(tmp_path / "v0001", corpus, trained)
    frequencies = [np.array([np.nan, np.nan] + [3.0] * (len(t) - 2), np.float32) for t in corpus.terms]
    documents = pd.read_parquet(version / "documents.parquet").assign(payloads=frequencies)
    documents.to_parquet(version / "documents.parquet", index=False)
    index = EngineIndex.load(build_engine(version / "engine2", trained))
    assert index.has_payloads
    assert index.text_lengths.tolist() == [3.0 * (len(t) - 2) for t in corpus.terms]
