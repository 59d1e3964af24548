"""Validate: run each table's Great Expectations suite (from configs/) over the batch.

A failing batch goes to quarantine with its validation result; with policy
`drop`, rows that fail row-level expectations are removed and kept in
quarantine instead, as long as they are few enough.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import polars as pl

from fusion.core.errors import ConfigError, ValidationFailed
from fusion.core.lake import Lake
from fusion.core.settings import Settings, ValidationConfig
from tasks.data_docs import localize
from tasks.ingest import IngestedBatch


@dataclass(frozen=True)
class ExpectationOutcome:
    table: str
    expectation: str
    column: str | None
    success: bool
    unexpected_count: int
    row_level: bool  # failures point at rows (droppable) rather than at the table


@dataclass(frozen=True)
class ValidatedBatch:
    dataset: str
    batch_id: str
    tables: dict[str, str]
    rows_in: int  # rows of the primary table as ingested
    rows_rejected: int  # rows of the primary table dropped by the `drop` policy, so comparable with rows_in
    report_uri: str
    docs_index: str | None
    outcomes: list[ExpectationOutcome] = field(default_factory=list)
    rejected_by_table: dict[str, int] = field(default_factory=dict)  # dropped rows of every validated table


@dataclass(frozen=True)
class SuiteRun:
    success: bool
    outcomes: list[ExpectationOutcome]
    bad_rows: list[int]  # positions of rows failing any row-level expectation
    raw: dict[str, Any]


def load_suite(path: Path) -> dict[str, Any]:
    try:
        suite: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"expectation suite {path}: {exc}") from exc
    if not isinstance(suite, dict) or "name" not in suite or not isinstance(suite.get("expectations"), list):
        raise ConfigError(f"{path}: a suite needs 'name' and a list of 'expectations'")
    return suite


def load_suites(settings: Settings) -> dict[str, dict[str, Any]]:
    """Each table's suite (paths relative to the config file's folder), read before any data is."""
    return {table: load_suite(settings.suite_path(table)) for table in settings.dataset.validation.suites}


def _gx_context(gx_root: Path) -> Any:
    """A file-backed GX context: suites, results and Data Docs persist in <gx_root>/gx."""
    import great_expectations as gx  # slow import (~8 s): only when validation runs
    from great_expectations.data_context.types.base import ProgressBarsConfig

    gx_root.mkdir(parents=True, exist_ok=True)
    context = gx.get_context(mode="file", project_root_dir=str(gx_root))
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


def run_suite(context: Any, dataset: str, table: str, frame: pl.DataFrame, suite_json: dict[str, Any]) -> SuiteRun:
    """Validate one table with GX; the result is stored and rendered into Data Docs."""
    import great_expectations as gx
    from great_expectations.core.expectation_suite import ExpectationSuite
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    name = f"{dataset}.{table}"
    suite = ExpectationSuite(name=name)
    for item in suite_json["expectations"]:
        suite.add_expectation_configuration(ExpectationConfiguration(type=item["type"], kwargs=item.get("kwargs", {})))
    suite = context.suites.add_or_update(suite)
    source = context.data_sources.add_or_update_pandas(f"fusion_{dataset}")
    asset = source.get_asset(table) if table in source.get_asset_names() else source.add_dataframe_asset(table)
    batch_def = next(iter(asset.batch_definitions), None) or asset.add_batch_definition_whole_dataframe("batch")
    validation = context.validation_definitions.add_or_update(
        gx.ValidationDefinition(name=name, data=batch_def, suite=suite)
    )
    checkpoint = context.checkpoints.add_or_update(
        gx.Checkpoint(
            name=name,
            validation_definitions=[validation],
            actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs")],
            result_format={"result_format": "COMPLETE"},
        )
    )
    result = checkpoint.run(batch_parameters={"dataframe": frame.to_pandas()})
    outcomes: list[ExpectationOutcome] = []
    bad_rows: set[int] = set()
    raw: dict[str, Any] = {}
    for run in result.run_results.values():
        raw = run.to_json_dict()
        for r in run.results:
            details = r.result or {}
            index = details.get("unexpected_index_list")
            row_level = index is not None
            if not r.success and index is not None:
                bad_rows.update(int(i) for i in index)
            outcomes.append(
                ExpectationOutcome(
                    table=table,
                    expectation=r.expectation_config.type,
                    column=r.expectation_config.kwargs.get("column"),
                    success=bool(r.success),
                    unexpected_count=int(details.get("unexpected_count") or 0),
                    row_level=row_level,
                )
            )
    return SuiteRun(bool(result.success), outcomes, sorted(bad_rows), raw)


def describe_failures(outcomes: list[ExpectationOutcome]) -> str:
    failed = [o for o in outcomes if not o.success]
    parts = [
        f"{o.table}.{o.column or '*'} {o.expectation}" + (f" ({o.unexpected_count} rows)" if o.row_level else "")
        for o in failed[:5]
    ]
    more = f" and {len(failed) - 5} more" if len(failed) > 5 else ""
    return "; ".join(parts) + more


def run_suites(
    context: Any, dataset: str, frames: dict[str, pl.DataFrame], suites: dict[str, dict[str, Any]]
) -> dict[str, SuiteRun]:
    """Run each table's suite; a table without a suite is not validated. The Data Docs pages written
    load their CSS/JS from copies in the site, not from CDNs (tasks.data_docs)."""
    started = time.time() - 1  # file times are as fine as the clock, but a second's slack costs nothing
    runs = {t: run_suite(context, dataset, t, frames[t], suites[t]) for t in suites}
    index = docs_index(context)
    if index is not None:
        localize(Path(unquote(urlparse(index).path)).parent, since=started)
    return runs


def docs_index(context: Any) -> str | None:
    """The local Data Docs site's index page (a file:// URL), if the project has one."""
    sites = context.get_docs_sites_urls()
    return sites[0]["site_url"] if sites else None


def validate_tables(
    frames: dict[str, pl.DataFrame], suites: dict[str, dict[str, Any]], dataset: str, gx_root: Path
) -> dict[str, SuiteRun]:
    """Each table's suite run on frames in memory (a notebook's tables), with the GX project under
    `gx_root`; nothing is written to the lake or quarantined."""
    return run_suites(_gx_context(gx_root), dataset, frames, suites)


def build_report(
    batch: IngestedBatch, runs: dict[str, SuiteRun], policy: str, docs_index: str | None
) -> dict[str, Any]:
    """The JSON validation report kept beside the batch and copied into quarantine."""
    outcomes = [o for run in runs.values() for o in run.outcomes]
    return {
        "dataset": batch.dataset,
        "batch_id": batch.batch_id,
        "success": all(r.success for r in runs.values()),
        "policy": policy,
        "failures": [o.__dict__ for o in outcomes if not o.success],
        "data_docs": docs_index,
        "results": {t: r.raw for t, r in runs.items()},
    }


def rejection_reason(
    runs: dict[str, SuiteRun], frames: dict[str, pl.DataFrame], config: ValidationConfig
) -> str | None:
    """Why the whole batch must be rejected, or None when it passed or its bad rows may be dropped."""
    if all(run.success for run in runs.values()):
        return None
    outcomes = [o for run in runs.values() for o in run.outcomes]
    failures = describe_failures(outcomes)
    # A table-level failure (row count, schema) has no rows to drop, so only failing the batch can answer it.
    if config.on_invalid_rows == "fail" or any(not o.success and not o.row_level for o in outcomes):
        return f"validation failed: {failures}"
    for table, run in runs.items():
        height = frames[table].height
        share = len(run.bad_rows) / max(height, 1)
        if share > config.max_dropped_fraction:
            return (
                f"validation failed: {len(run.bad_rows)} of {height} {table} rows "
                f"({share:.1%}) fail, over max_dropped_fraction {config.max_dropped_fraction:.1%}: {failures}"
            )
    return None


def split_bad_rows(
    frames: dict[str, pl.DataFrame], runs: dict[str, SuiteRun]
) -> tuple[dict[str, pl.DataFrame], dict[str, pl.DataFrame]]:
    """(kept, dropped) frames: each table without the rows that failed a row-level expectation, and those rows."""
    kept = dict(frames)
    dropped: dict[str, pl.DataFrame] = {}
    for table, run in runs.items():
        if run.bad_rows:
            mask = pl.Series(range(frames[table].height)).is_in(run.bad_rows)
            dropped[table] = frames[table].filter(mask)
            kept[table] = frames[table].filter(~mask)
    return kept, dropped


def write_quarantine(
    lake: Lake, uri: str, frames: dict[str, pl.DataFrame], suffix: str, report: dict[str, Any], reason: str
) -> None:
    """Keep the quarantined frames (a whole batch, or only its dropped rows) together with the reason."""
    for table, frame in frames.items():
        lake.write_parquet(frame, f"{uri}/{table}{suffix}.parquet")
    lake.write_json({**report, "stage": "validate", "reason": reason}, f"{uri}/reason.json")


def write_validated(lake: Lake, batch: IngestedBatch, frames: dict[str, pl.DataFrame]) -> dict[str, str]:
    """Write the tables that passed; table -> lake path."""
    return {
        t: lake.write_parquet(f, lake.path("validated", batch.dataset, batch.batch_id, f"{t}.parquet"))
        for t, f in frames.items()
    }


def validate_batch(
    batch: IngestedBatch,
    suites: dict[str, dict[str, Any]],
    config: ValidationConfig,
    primary: str,
    lake: Lake,
    gx_root: Path,
) -> ValidatedBatch:
    """Validate a batch; raise ValidationFailed with the batch in quarantine, or return the validated tables."""
    context = _gx_context(gx_root)
    frames = {t: lake.read_parquet(p) for t, p in batch.tables.items()}
    runs = run_suites(context, batch.dataset, frames, suites)
    index = docs_index(context)
    report = build_report(batch, runs, config.on_invalid_rows, index)
    report_uri = lake.path("validation", batch.dataset, batch.batch_id, "report.json")
    quarantine = lake.path("quarantine", batch.dataset, batch.batch_id)

    reason = rejection_reason(runs, frames, config)
    if reason is not None:
        write_quarantine(lake, quarantine, frames, "", report, reason)
        lake.write_json(report, report_uri)
        raise ValidationFailed(reason, quarantine)
    kept, dropped = split_bad_rows(frames, runs)
    outcomes = [o for run in runs.values() for o in run.outcomes]
    if not report["success"]:
        write_quarantine(lake, quarantine, dropped, ".rejected", report, f"rows dropped: {describe_failures(outcomes)}")
    lake.write_json(report, report_uri)
    return ValidatedBatch(
        dataset=batch.dataset,
        batch_id=batch.batch_id,
        tables=write_validated(lake, batch, kept),
        rows_in=batch.rows[primary],
        rows_rejected=dropped[primary].height if primary in dropped else 0,
        report_uri=report_uri,
        docs_index=index,
        outcomes=outcomes,
        rejected_by_table={t: dropped[t].height if t in dropped else 0 for t in runs},
    )
