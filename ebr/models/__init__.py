"""torch / Lightning: features, towers, losses, miners, training data, ensembles, export of query towers."""
