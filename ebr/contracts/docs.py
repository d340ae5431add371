"""Great Expectations Data Docs of the contract validations: GX's own static site, next to the database.

Every ingestion and every mining round stores its validation results (one per suite and batch, as GX
returned them) in a filesystem store under `<database folder>/data_docs/store/` and rebuilds the site
`<database folder>/data_docs/index.html`: the committed suites, and each run's results with their failed
expectations. Only the pages of the run are rendered (the index lists every run). A stored result keeps
GX's partial lists (`SHOWN` failing values and rows per expectation); the quarantine table holds them all.
GX's pages load their scripts from CDNs; the site gets local copies (`data_docs_assets/`), so it renders
without internet.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SUITES_DIR = Path(__file__).resolve().parent / "suites"
DATA_DOCS = "data_docs"
SITE = "local_site"
SHOWN = 20  # failing values and rows kept per expectation in a stored result, as GX's partial lists
_FULL_LISTS = ("unexpected_list", "unexpected_index_list")
ASSETS = Path(__file__).resolve().parent / "data_docs_assets"
_CDN = (  # the URLs in GX 1.24's page templates; the local copies in ASSETS have their file names
    "https://code.jquery.com/jquery-3.7.1.min.js",
    "https://cdnjs.cloudflare.com/ajax/libs/popper.js/1.12.9/umd/popper.min.js",
    "https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js",
    "https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css",
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.js",
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.css",
    "https://unpkg.com/bootstrap-table@1.19.1/dist/extensions/filter-control/bootstrap-table-filter-control.min.js",
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.min.css",
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.css",
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/js/bootstrap-datepicker.min.js",
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/css/bootstrap-datepicker.min.css",
)
# a local file loaded with crossorigin is refused under file://, and its integrity hash is then moot
_SRI = re.compile(r'\s+integrity="[^"]*"\s+crossorigin="anonymous"')


def data_docs_dir(db_path: Path | str) -> Path:
    """The Data Docs site of the database `db_path`: `data_docs/` in the database's folder."""
    return Path(db_path).resolve().parent / DATA_DOCS


def data_docs_index(db_path: Path | str) -> Path:
    """The site's index.html (it exists once a run has validated something)."""
    return data_docs_dir(db_path) / "index.html"


def load_suite(name: str) -> Any:
    """The committed suite `suites/<name>.json` as a gx.ExpectationSuite."""
    import great_expectations as gx

    return gx.ExpectationSuite(**json.loads((SUITES_DIR / f"{name}.json").read_text()))


@dataclass(frozen=True)
class Validation:
    """One GX validation to publish: a suite's ExpectationSuiteValidationResult on one batch."""

    suite: Any  # the gx.ExpectationSuite as committed (its page shows every expectation)
    batch: str  # the batch's name in the site, e.g. `rows` or `batch-2`
    result: Any  # the gx ExpectationSuiteValidationResult


def trimmed(result: Any) -> Any:
    """`result` (an ExpectationSuiteValidationResult) with each full unexpected list cut to `SHOWN` items,
    in place: a stored result stays small whatever the number of failing rows."""
    for r in result.results:
        for key in _FULL_LISTS:
            if isinstance(r.result.get(key), list):
                r.result[key] = r.result[key][:SHOWN]
        r.result.pop("unexpected_index_query", None)
    return result


def combined(suite_name: str, results: list[Any], meta: dict[str, Any]) -> Any:
    """An ExpectationSuiteValidationResult of `results` (ExpectationValidationResults of one suite, from
    several GX validations of the same table), with GX's statistics."""
    from great_expectations.core.expectation_validation_result import ExpectationSuiteValidationResult
    from great_expectations.validator.validation_statistics import calc_validation_statistics

    stats = calc_validation_statistics(results)
    return ExpectationSuiteValidationResult(
        success=stats.success,
        results=results,
        suite_name=suite_name,
        statistics={
            "evaluated_expectations": stats.evaluated_expectations,
            "successful_expectations": stats.successful_expectations,
            "unsuccessful_expectations": stats.unsuccessful_expectations,
            "success_percent": stats.success_percent,
        },
        meta=meta,
    )


def _context(root: Path) -> Any:
    """An ephemeral GX context whose suites, results and site are files under `root`."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import DataContextConfig, ProgressBarsConfig

    def files(folder: Path) -> dict[str, str]:
        return {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(folder)}

    memory = {"class_name": "InMemoryStoreBackend"}
    config = DataContextConfig(
        stores={  # GX's default store names (a context requires them)
            "expectations_store": {
                "class_name": "ExpectationsStore",
                "store_backend": files(root / "store" / "suites"),
            },
            "validation_results_store": {
                "class_name": "ValidationResultsStore",
                "store_backend": files(root / "store" / "results"),
            },
            "checkpoint_store": {"class_name": "CheckpointStore", "store_backend": memory},
            "validation_definition_store": {
                "class_name": "ValidationDefinitionStore",
                "store_backend": memory,
            },
        },
        expectations_store_name="expectations_store",
        validation_results_store_name="validation_results_store",
        checkpoint_store_name="checkpoint_store",
        data_docs_sites={
            SITE: {"class_name": "SiteBuilder", "show_how_to_buttons": False, "store_backend": files(root)}
        },
        analytics_enabled=False,
    )
    context = gx.get_context(project_config=config, mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


def publish(db_path: Path | str, run_name: str, validations: Iterable[Validation]) -> Path:
    """Store the validations of the run `run_name` beside `db_path` and rebuild the site; its index.html."""
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )

    root = data_docs_dir(db_path)
    context = _context(root)
    run_id = RunIdentifier(run_name=run_name, run_time=datetime.now(UTC))
    built: list[Any] = []
    for v in validations:
        if not any(k.name == v.suite.name for k in built if isinstance(k, ExpectationSuiteIdentifier)):
            context.suites.add_or_update(v.suite)
            built.append(ExpectationSuiteIdentifier(name=v.suite.name))
        v.result.meta["run_id"] = run_id
        key = ValidationResultIdentifier(ExpectationSuiteIdentifier(name=v.suite.name), run_id, v.batch)
        context.validation_results_store.set(key, trimmed(v.result))
        built.append(key)
    started = datetime.now().timestamp()
    context.build_data_docs(site_names=[SITE], resource_identifiers=built)
    _use_local_assets(root, [p for p in root.rglob("*.html") if p.stat().st_mtime >= started])
    return root / "index.html"


def publish_or_warn(db_path: Path | str, run_name: str, validations: list[Validation]) -> str | None:
    """`publish`, as an addition to a run: the index.html, or None (and a warning) when the files could not
    be written, or there was nothing to publish."""
    if not validations:
        return None
    try:
        return str(publish(db_path, run_name, validations))
    except OSError as e:
        log.warning("%s: Data Docs of %s not written: %s", data_docs_dir(db_path), run_name, e)
        return None


def _use_local_assets(root: Path, pages: list[Path]) -> None:
    """Copy ASSETS into the site (`static/vendor/`) and point `pages` at them instead of the CDNs."""
    vendor = root / "static" / "vendor"
    shutil.copytree(
        ASSETS, vendor, dirs_exist_ok=True, ignore=shutil.ignore_patterns("README.md", "LICENSE.*")
    )
    for page in pages:
        text = page.read_text()
        prefix = os.path.relpath(vendor, page.parent)
        for url in _CDN:
            text = text.replace(url, f"{prefix}/{url.rsplit('/', 1)[1]}")
        page.write_text(_SRI.sub("", text))
