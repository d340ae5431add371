"""Pipeline steps: one plain function per step (ingest, mine, train, evaluate, quantise, gate, publish)."""
