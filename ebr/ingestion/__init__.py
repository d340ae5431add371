"""Ingestion of a folder of log tables into DuckDB under the data contracts (docs/ingestion.md).

Modules: `ingest` (`ingest_logs`: the run, in one transaction), `config` (conf/ingest, checked), `discover`
(the tables of a folder and its schema_version), `stage` (the tables' DDL, the files read into staging
tables), `validate` (the contracts: accepted and quarantined rows, the bad-share threshold), `write` (the
accepted rows, quarantine records and run record), `results` and `errors` (what a run gives back).
"""
