"""Data contracts of the log tables: one Great Expectations suite per table (`suites/<table>.json`,
committed) and the code that runs them (`runner`), with the type conversions (`casting`) and the
cross-row checks computed in DuckDB (`checks`) that the suites test. The rules: docs/log_schema.md."""

from ebr.contracts.runner import (
    SUITES_DIR,
    Contract,
    ContractError,
    ContractRunner,
    RowFailure,
    load_contract,
)

__all__ = ["SUITES_DIR", "Contract", "ContractError", "ContractRunner", "RowFailure", "load_contract"]
