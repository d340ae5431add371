"""The simulated social network and its search logs: the platform's embedded default data.

`simulator.world.simulate(scale, seed, out_dir)` writes a world (docs/simulator.md): the log tables of
`ebr/schema.py` as Parquet, the ground-truth intents beside them, and a report. Real ingredients (names,
cities, misspellings, typo statistics) ship compacted in `simulator/assets/` (see its README for sources and
licences); `python -m simulator.derive_assets` rebuilds them from the shared data folder.
"""
