"""The simulated social network and its search logs: the platform's embedded default data.

`ebr.simulator.world.simulate(scale, seed, out_dir)` writes a world (docs/simulator.md): the log tables of
`ebr/schema.py` as Parquet, the ground-truth intents beside them, and a report. Real ingredients (names,
cities, misspellings, typo statistics) ship compacted in `ebr/simulator/assets/` (its README: sources and
licences); `python -m ebr.simulator.derive_assets` rebuilds them from the shared data folder.
"""
