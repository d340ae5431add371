"""The Boolean retrieval engine of §4.2: one inverted index whose `(nn)` operator is built from its own terms.

Modules: `terms` (namespaced terms), `quantized` (one embedding key's faiss IVF index: cluster terms and PQ
payloads), `index` (term dictionary, posting lists, documents), `query` (the S-expression language),
`executor` (planner and evaluation), `reference` (brute-force evaluator for tests), `store` (durable
realtime updates), `build` (engine folder of a published version), `config` (typed settings), `service` and
`api` (serving). docs/engine.md is the reference.
"""
