"""The Boolean retrieval engine of §4.2: one inverted index whose `(nn)` operator is built from its own terms.

Modules: `terms` (namespaced terms), `quantized` (one embedding key's faiss IVF index: cluster terms and PQ
payloads), `documents` (the index's validated inputs), `segment` (snapshot arrays), `reader` (the index's
look-ups), `index` (`EngineIndex`: building, changes, compaction, files), `query` (the S-expression language),
`executor` (planner and evaluation), `scoring` (BM25, fusions), `store` (durable realtime updates), `build`
(engine folder of a published version), `config` (typed settings), `retrievers` (what a version serves and
its expressions), `calibration` (templates tuned through the engine), `service` and `api` (serving).
docs/engine.md is the reference; the tests' brute-force evaluator is tests/retrieval/reference.py.
"""
