"""Prefect flows: thin wiring of the steps in ebr/steps/ (ingest, retrain, ...)."""
