"""Load the committed suites and run them with Great Expectations on pandas batches read from DuckDB.

Each suite (`suites/<table>.json`) holds three kinds of expectations:
- file scope (`meta.scope == "file"`): run on each file's columns and first row; a failure means the file
  is malformed and the ingestion stops;
- `parseable`: a row whose values do not parse as the schema types fails it, and is reported for it alone;
- the others: column rules natively, cross-row rules on check columns (ebr/contracts/checks.py).
Parameters (`$PARAMETER`) come from the settings; an expectation whose `meta.skip_if_null` parameter is null
is skipped (any vertical when no set is given). Rules in words name parameters as `{name}`.
Failing rows are named by the frame's `row_id` column (result_format COMPLETE with
unexpected_index_column_names). An expectation that raised is an error, never a pass.
The GX results are kept (their long lists cut) for the run's Data Docs (`validations`, ebr/contracts/docs.py).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import pandas as pd

from ebr.contracts.casting import excerpt
from ebr.contracts.checks import PARSEABLE
from ebr.contracts.docs import SUITES_DIR, Validation, combined, load_suite, trimmed

ROW_ID = "row_id"
_RESULT_FORMAT = {
    "result_format": "COMPLETE",
    "unexpected_index_column_names": [ROW_ID],
    "return_unexpected_index_query": False,
}


class ContractError(RuntimeError):
    """A suite could not be run (an expectation raised): a fault of the platform, not of the data."""


@dataclass(frozen=True)
class Expectation:
    type: str
    kwargs: dict[str, Any]
    meta: dict[str, Any]

    @property
    def column(self) -> str | None:
        return self.kwargs.get("column")

    @property
    def name(self) -> str:
        """How quarantine and reports name it: `type(column)`."""
        return f"{self.type}({self.column})" if self.column else self.type

    @property
    def check(self) -> str | None:
        """The cross-row check computing this expectation's column, if any (ebr/contracts/checks.py)."""
        return self.meta.get("check")


@dataclass(frozen=True)
class Contract:
    table: str
    expectations: tuple[Expectation, ...]

    @property
    def file_level(self) -> list[Expectation]:
        return [e for e in self.expectations if e.meta.get("scope") == "file"]

    @property
    def parseable(self) -> list[Expectation]:
        return [e for e in self.expectations if e.check == PARSEABLE]

    @property
    def row_level(self) -> list[Expectation]:
        return [e for e in self.expectations if e.meta.get("scope") != "file" and e.check != PARSEABLE]

    @property
    def checks(self) -> list[Expectation]:
        """Row-level expectations on check columns computed in DuckDB."""
        return [e for e in self.row_level if e.check]


@cache
def load_contract(table: str) -> Contract:
    """The committed suite of `table`."""
    path = SUITES_DIR / f"{table}.json"
    raw = json.loads(path.read_text())
    expectations = tuple(
        Expectation(e["type"], dict(e["kwargs"]), dict(e.get("meta") or {})) for e in raw["expectations"]
    )
    return Contract(table=raw["name"], expectations=expectations)


@dataclass(frozen=True)
class RowFailure:
    row_id: int
    expectation: str
    reason: str


@dataclass
class Outcome:
    """One expectation's result over a whole table (summed over files or batches)."""

    expectation: str
    rule: str
    checked: int = 0
    failed: int = 0
    samples: list[str] = field(default_factory=list)
    skipped: str | None = None

    def to_json(self) -> dict[str, Any]:
        out = {"expectation": self.expectation, "rule": self.rule, "success": self.failed == 0}
        if self.skipped:
            return out | {"skipped": self.skipped}
        return out | {"checked": self.checked, "failed": self.failed, "samples": self.samples}


def _show(value: Any) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)) or value is pd.NaT:
        return "null"
    if isinstance(value, str):
        return repr(value) if len(value) <= 40 else f"{value[:40]!r}... ({len(value)} characters)"
    return str(value)


def _param_text(value: Any) -> str:
    """A parameter as a rule shows it: a list joined, null as `not set`."""
    if value is None:
        return "not set"
    return ", ".join(map(str, value)) if isinstance(value, list | tuple) else str(value)


def _raised(result: Any) -> str | None:
    """The exception message if the expectation raised (GX reports it only in exception_info)."""
    info = result.exception_info or {}
    infos = [info] if "raised_exception" in info else list(info.values())
    for item in infos:
        if isinstance(item, dict) and item.get("raised_exception"):
            return str(item.get("exception_message") or "unknown error")
    return None


class ContractRunner:
    """Runs suites in an ephemeral Great Expectations context (nothing written to disk)."""

    def __init__(self, params: Mapping[str, Any], sample_failures: int = 5) -> None:
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self._gx = gx
        self._context = gx.get_context(mode="ephemeral")
        self._context.variables.progress_bars = ProgressBarsConfig(globally=False)
        asset = self._context.data_sources.add_pandas("ingest").add_dataframe_asset("batch")
        self._batch_definition = asset.add_batch_definition_whole_dataframe("whole")
        self.params = dict(params)
        self.sample_failures = sample_failures
        self.outcomes: dict[str, dict[str, Outcome]] = {}
        self._results: dict[str, list[tuple[str, Any]]] = {}  # table -> (file | rows, GX suite result)

    def rule(self, expectation: Expectation) -> str:
        params = {name: _param_text(value) for name, value in self.params.items()}
        return str(expectation.meta.get("rule", expectation.name)).format(**params)

    def outcome(self, table: str, expectation: Expectation) -> Outcome:
        per_table = self.outcomes.setdefault(table, {})
        if expectation.name not in per_table:
            per_table[expectation.name] = Outcome(expectation.name, self.rule(expectation))
        return per_table[expectation.name]

    def skip(self, table: str, expectation: Expectation, why: str) -> None:
        self.outcome(table, expectation).skipped = why

    def _validate(
        self, table: str, expectations: list[Expectation], frame: pd.DataFrame
    ) -> tuple[list[Any], Any]:
        """(expectation, GX result) pairs and the GX suite result; ContractError if any expectation raised."""
        by_name = {e.name: e for e in expectations}
        suite = self._gx.ExpectationSuite(
            name=table,
            expectations=[
                {"type": e.type, "kwargs": e.kwargs, "meta": e.meta | {"name": e.name}} for e in expectations
            ],
        )
        batch = self._batch_definition.get_batch(batch_parameters={"dataframe": frame})
        result = batch.validate(suite, result_format=_RESULT_FORMAT, expectation_parameters=self.params)
        pairs = []
        for r in result.results:
            expectation = by_name[r.expectation_config.meta["name"]]
            error = _raised(r)
            if error:
                raise ContractError(f"{table}: {expectation.name} raised instead of validating: {error}")
            pairs.append((expectation, r))
        if len(pairs) != len(expectations):
            raise ContractError(f"{table}: {len(expectations)} expectations run, {len(pairs)} results")
        return pairs, result

    def _keep(self, table: str, kind: str, result: Any) -> None:
        """Keep a GX suite result (once read: its long lists are cut) for the Data Docs."""
        self._results.setdefault(table, []).append((kind, trimmed(result)))

    def check_file(self, table: str, sample: pd.DataFrame) -> list[str]:
        """Run the file-scope expectations on a file's columns and first row; the failed rules, readable."""
        contract = load_contract(table)
        problems = []
        pairs, result = self._validate(table, contract.file_level, sample)
        for expectation, r in pairs:
            outcome = self.outcome(table, expectation)
            outcome.checked += 1
            if r.success:
                continue
            outcome.failed += 1
            if expectation.type == "expect_table_columns_to_match_set":
                missing = sorted(set(expectation.kwargs["column_set"]) - set(sample.columns))
                problems.append(
                    f"missing columns {', '.join(missing)} "
                    f"(found: {excerpt(', '.join(map(str, sample.columns)), 200)})"
                )
            elif expectation.type == "expect_table_row_count_to_be_between":
                problems.append("no rows")
            else:
                problems.append(f"expected {self.rule(expectation)}")
        self._keep(table, "file", result)
        return problems

    def check_rows(self, table: str, frame: pd.DataFrame, skip: Iterable[str] = ()) -> list[RowFailure]:
        """Validate one batch of rows (`row_id`, schema columns, check columns); the failing rows.

        A row failing `parseable` is reported for that alone: its other failures stem from the values that
        did not parse. Expectations named in `skip` (checks that cannot run, marked skipped) and those whose
        `skip_if_null` parameter is null (marked skipped here) are left out.
        """
        contract = load_contract(table)
        skip = set(skip)
        for e in contract.row_level:
            param = e.meta.get("skip_if_null")
            if param and self.params.get(param) is None:
                self.skip(table, e, f"{param} not set: any value is accepted")
                skip.add(e.name)
        expectations = contract.parseable + [e for e in contract.row_level if e.name not in skip]
        unparsed = set(frame.loc[frame[contract.parseable[0].column].notna(), ROW_ID].tolist())
        failures: list[RowFailure] = []
        pairs, result = self._validate(table, expectations, frame)
        for expectation, r in pairs:
            outcome = self.outcome(table, expectation)
            parse_rule = expectation.check == PARSEABLE
            outcome.checked += len(frame) if parse_rule else len(frame) - len(unparsed)
            for row in r.result.get("unexpected_index_list") or []:
                row_id = int(row[ROW_ID])
                if row_id in unparsed and not parse_rule:
                    continue
                value = row.get(expectation.column)
                reason = str(value) if expectation.check else f"expected {outcome.rule}, got {_show(value)}"
                failures.append(RowFailure(row_id, expectation.name, reason))
                outcome.failed += 1
                if len(outcome.samples) < self.sample_failures:
                    outcome.samples.append(reason)
        self._keep(table, "rows", result)
        return failures

    def results(self) -> dict[str, list[dict[str, Any]]]:
        """Per table, every expectation's outcome so far (the run's contract results)."""
        return {t: [o.to_json() for o in per.values()] for t, per in self.outcomes.items()}

    def validations(self) -> list[Validation]:
        """The run's GX results as Data Docs pages, per table: the file-scope expectations (each one's first
        failing file, else its first) with the rows (`rows`), or one page per batch of rows (`batch-<k>`)."""
        pages = []
        for table, kept in self._results.items():
            files = [r for kind, r in kept if kind == "file"]
            batches = [r for kind, r in kept if kind == "rows"]
            per_file: dict[str, Any] = {}
            for suite_result in files:
                for r in suite_result.results:
                    name = r.expectation_config.meta["name"]
                    if name not in per_file or (per_file[name].success and not r.success):
                        per_file[name] = r
            sources = batches or files[:1]
            suite = load_suite(table)
            for k, source in enumerate(sources):
                results = ([*per_file.values()] if k == 0 else []) + (source.results if batches else [])
                batch = "rows" if len(batches) == 1 else f"batch-{k + 1}" if batches else "files"
                pages.append(Validation(suite, batch, combined(table, results, dict(source.meta))))
        return pages
