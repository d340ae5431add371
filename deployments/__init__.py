"""Prefect deployments of the retrain flow (see deployments/README.md)."""
