"""Validate: run each table's Great Expectations suite (from configs/) over the batch.

A failing batch goes to quarantine with its validation result; with policy
`drop`, rows that fail row-level expectations are removed and kept in
quarantine instead, as long as they are few enough.
"""

from __future__ import annotations

import copy
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


# Row-level expectations whose verdict on a row depends on that row alone: a table larger than
# `validation.batch_rows` runs them slice by slice and adds their results up. Every other expectation
# (aggregates, and row-level ones that compare rows: unique, increasing, z-scores, outliers; types,
# whose pandas dtype can differ between slices; any custom one) runs once over all rows of the columns
# it names.
ROW_LOCAL = frozenset(
    {
        "expect_column_pair_values_a_to_be_greater_than_b",
        "expect_column_pair_values_to_be_equal",
        "expect_column_pair_values_to_be_in_set",
        "expect_column_value_lengths_to_be_between",
        "expect_column_value_lengths_to_equal",
        "expect_column_values_to_be_between",
        "expect_column_values_to_be_dateutil_parseable",
        "expect_column_values_to_be_in_set",
        "expect_column_values_to_be_json_parseable",
        "expect_column_values_to_be_null",
        "expect_column_values_to_match_json_schema",
        "expect_column_values_to_match_like_pattern",
        "expect_column_values_to_match_like_pattern_list",
        "expect_column_values_to_match_regex",
        "expect_column_values_to_match_regex_list",
        "expect_column_values_to_match_strftime_format",
        "expect_column_values_to_not_be_in_set",
        "expect_column_values_to_not_be_null",
        "expect_column_values_to_not_match_like_pattern",
        "expect_column_values_to_not_match_like_pattern_list",
        "expect_column_values_to_not_match_regex",
        "expect_column_values_to_not_match_regex_list",
        "expect_multicolumn_sum_to_equal",
        "expect_multicolumn_values_to_be_equal",
        "expect_select_column_values_to_be_unique_within_record",
    }
)
ROW_COUNT = frozenset({"expect_table_row_count_to_be_between", "expect_table_row_count_to_equal"})
SCHEMA = frozenset(  # need the table's columns, none of its rows
    {
        "expect_table_columns_to_match_ordered_list",
        "expect_table_columns_to_match_set",
        "expect_table_column_count_to_equal",
        "expect_table_column_count_to_be_between",
        "expect_column_to_exist",
    }
)
PARTIAL_UNEXPECTED = 20  # GX's partial_unexpected_count, the length of its partial lists
ROWS_ONLY = "_fusion_row"  # the one column of a frame that only carries the table's row count


@dataclass(frozen=True)
class Unit:
    """One GX run: some of the suite's expectations (positions in it) over rows [start, stop) of some columns
    (None: all of them)."""

    expectations: list[int]
    start: int
    stop: int
    columns: list[str] | None


def named_columns(kwargs: dict[str, Any]) -> list[str] | None:
    """The columns an expectation reads; None when they cannot be told (a row_condition, or none named)."""
    if "row_condition" in kwargs:
        return None
    names = [kwargs[k] for k in ("column", "column_A", "column_B") if isinstance(kwargs.get(k), str)]
    names += [c for c in kwargs.get("column_list") or [] if isinstance(c, str)]
    return names or None


def plan_units(expectations: list[dict[str, Any]], rows: int, batch_rows: int) -> list[Unit]:
    """How to run a suite over a table of `rows` rows: one run when it fits in `batch_rows`; otherwise the
    row-local expectations slice by slice, the schema ones on no rows, the rest once on the whole table."""
    if rows <= batch_rows:
        return [Unit(list(range(len(expectations))), 0, rows, None)]
    local: list[int] = []
    schema: list[int] = []
    whole: list[int] = []
    for i, item in enumerate(expectations):
        kind = item["type"]
        (local if kind in ROW_LOCAL else schema if kind in SCHEMA else whole).append(i)
    units = []
    if local:
        columns = _union([named_columns(expectations[i].get("kwargs", {})) for i in local])
        units += [Unit(local, a, min(a + batch_rows, rows), columns) for a in range(0, rows, batch_rows)]
    if schema:
        units.append(Unit(schema, 0, 0, None))
    if whole:
        named = [
            [] if expectations[i]["type"] in ROW_COUNT else named_columns(expectations[i].get("kwargs", {}))
            for i in whole
        ]
        columns = _union(named)
        units.append(Unit(whole, 0, rows, columns if columns != [] else [ROWS_ONLY]))
    return units


def _union(named: list[list[str] | None]) -> list[str] | None:
    if any(n is None for n in named):
        return None
    return sorted({c for n in named for c in n or []})


def unit_frame(frame: pl.DataFrame, unit: Unit) -> Any:
    """The unit's rows and columns as the pandas frame GX reads, indexed by row position in the table."""
    import pandas as pd

    part = frame.slice(unit.start, unit.stop - unit.start)
    if unit.columns == [ROWS_ONLY]:
        part = pl.DataFrame({ROWS_ONLY: pl.zeros(part.height, pl.Int8, eager=True)})
    elif unit.columns is not None:
        part = part.select(unit.columns)
    pdf = part.to_pandas()
    pdf.index = pd.RangeIndex(unit.start, unit.start + part.height)
    return pdf


def run_suite(
    context: Any,
    dataset: str,
    table: str,
    frame: pl.DataFrame,
    suite_json: dict[str, Any],
    batch_rows: int,
) -> SuiteRun:
    """Validate one table with GX (in slices of `batch_rows` rows when larger: `plan_units`); the combined
    result is stored and rendered into Data Docs as one run."""
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
    expectations = suite.expectations  # as GX keeps them (it merges ones it sees as the same)
    configs = [{"type": e.expectation_type, "kwargs": e.configuration.kwargs} for e in expectations]
    results: dict[int, list[Any]] = {}
    first = None
    for unit in plan_units(configs, frame.height, batch_rows):
        part = ExpectationSuite(name=name, expectations=[copy.copy(expectations[i]) for i in unit.expectations])
        batch = batch_def.get_batch(batch_parameters={"dataframe": unit_frame(frame, unit)})
        run = batch.validate(part, result_format={"result_format": "COMPLETE"})
        first = first or run
        mine = {_config_key(e.configuration): i for e, i in zip(part.expectations, unit.expectations, strict=True)}
        for result in run.results:  # GX may return them in another order
            results.setdefault(mine[_config_key(result.expectation_config)], []).append(result)
    assert first is not None
    combined = [combine_results(results[i]) for i in range(len(expectations))]
    validation = store_and_render(context, first, combined, name)
    outcomes: list[ExpectationOutcome] = []
    bad_rows: set[int] = set()
    for r in combined:
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
    return SuiteRun(bool(validation.success), outcomes, sorted(bad_rows), validation.to_json_dict())


def _config_key(config: Any) -> str:
    """An expectation's type and arguments (without the batch id GX adds to its result's copy)."""
    kwargs = {k: v for k, v in config.kwargs.items() if k != "batch_id"}
    return json.dumps([config.type, kwargs], sort_keys=True, default=str)


def combine_results(parts: list[Any]) -> Any:
    """One expectation's results over consecutive slices of a table, as one result over the whole table
    (counts added, lists joined, shares and `mostly` worked out again as GX does)."""
    from great_expectations.constants import MAX_RESULT_RECORDS

    first = parts[0]
    if len(parts) == 1:
        return first
    failed = next((p for p in parts if p.exception_info and p.exception_info.get("raised_exception")), None)
    if failed is not None:
        return failed
    details = [p.result or {} for p in parts]
    merged: dict[str, Any] = {}
    for key in ("element_count", "unexpected_count", "missing_count"):
        if key in details[0]:
            merged[key] = sum(int(d.get(key) or 0) for d in details)
    for key in ("unexpected_list", "unexpected_index_list"):
        if key in details[0]:
            merged[key] = [v for d in details for v in d.get(key) or []]
    if "unexpected_list" in merged:  # GX keeps the first MAX_RESULT_RECORDS values (all the indices)
        merged["unexpected_list"] = merged["unexpected_list"][:MAX_RESULT_RECORDS]
    elements, unexpected = merged.get("element_count", 0), merged.get("unexpected_count", 0)
    considered = elements - merged.get("missing_count", 0)
    merged["unexpected_percent"] = share(unexpected, considered if "missing_count" in merged else elements)
    if "missing_count" in merged:
        merged["missing_percent"] = share(merged["missing_count"], elements)
        merged["unexpected_percent_total"] = share(unexpected, elements)
        merged["unexpected_percent_nonmissing"] = share(unexpected, considered)
    partial = PARTIAL_UNEXPECTED  # GX's partial lists are the first 20
    if "partial_unexpected_list" in details[0]:
        values = merged.get("unexpected_list") or [v for d in details for v in d["partial_unexpected_list"]]
        merged["partial_unexpected_list"] = values[:partial]
    if "partial_unexpected_index_list" in details[0]:
        merged["partial_unexpected_index_list"] = merged.get("unexpected_index_list", [])[:partial]
    if "partial_unexpected_counts" in details[0]:
        merged["partial_unexpected_counts"] = _value_counts(merged.get("unexpected_list") or [], partial)
    if "unexpected_index_query" in details[0]:
        merged["unexpected_index_query"] = f"df.filter(items={merged.get('unexpected_index_list', [])}, axis=0)"
    for key, value in details[0].items():  # anything else (e.g. unexpected_index_column_names) as the first
        merged.setdefault(key, value)
    mostly = float(first.expectation_config.kwargs.get("mostly", 1.0))
    success = unexpected == 0 or considered <= 0 or (considered - unexpected) / considered >= mostly
    return type(first)(
        success=success,
        expectation_config=first.expectation_config,
        result={k: merged[k] for k in details[0]},
        meta=first.meta,
        exception_info=first.exception_info,
    )


def share(n: int, of: int) -> float | None:
    return n / of * 100 if of > 0 else None


def _value_counts(values: list[Any], limit: int) -> list[dict[str, Any]]:
    """GX's partial_unexpected_counts: the most common unexpected values, by count then value."""
    from collections import Counter

    try:
        common = Counter(values).most_common(limit)
        return [{"value": v, "count": n} for v, n in sorted(common, key=lambda x: (-x[1], x[0]))]
    except TypeError:
        return [{"error": "partial_exception_counts requires a hashable type"}]


def store_and_render(context: Any, first: Any, results: list[Any], name: str) -> Any:
    """The whole table's validation result, kept in the project's store and rendered into Data Docs as a
    checkpoint with a Data Docs action would."""
    import datetime as dt

    from great_expectations.core.expectation_validation_result import ExpectationSuiteValidationResult
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )

    run_id = RunIdentifier(run_time=dt.datetime.now(dt.UTC))
    successful = sum(bool(r.success) for r in results)
    validation = ExpectationSuiteValidationResult(
        results=results,
        success=successful == len(results),
        suite_name=name,
        statistics={
            "evaluated_expectations": len(results),
            "successful_expectations": successful,
            "unsuccessful_expectations": len(results) - successful,
            "success_percent": successful / len(results) * 100 if results else None,
        },
        meta={**first.meta, "run_id": run_id, "validation_time": run_id.run_time},
        batch_id=first.batch_id,
    )
    suite_id = ExpectationSuiteIdentifier(name=name)
    key = ValidationResultIdentifier(suite_id, run_id, first.batch_id)
    context.validation_results_store.store_validation_results(validation, key, suite_id)
    context.build_data_docs(resource_identifiers=[key, suite_id])
    return validation


def describe_failures(outcomes: list[ExpectationOutcome]) -> str:
    failed = [o for o in outcomes if not o.success]
    parts = [
        f"{o.table}.{o.column or '*'} {o.expectation}" + (f" ({o.unexpected_count} rows)" if o.row_level else "")
        for o in failed[:5]
    ]
    more = f" and {len(failed) - 5} more" if len(failed) > 5 else ""
    return "; ".join(parts) + more


def run_suites(
    context: Any,
    dataset: str,
    frames: dict[str, pl.DataFrame],
    suites: dict[str, dict[str, Any]],
    batch_rows: int,
) -> dict[str, SuiteRun]:
    """Run each table's suite; a table without a suite is not validated. The Data Docs pages written
    load their CSS/JS from copies in the site, not from CDNs (tasks.data_docs)."""
    started = time.time() - 1  # file times are as fine as the clock, but a second's slack costs nothing
    runs = {t: run_suite(context, dataset, t, frames[t], suites[t], batch_rows) for t in suites}
    index = docs_index(context)
    if index is not None:
        localize(Path(unquote(urlparse(index).path)).parent, since=started)
    return runs


def docs_index(context: Any) -> str | None:
    """The local Data Docs site's index page (a file:// URL), if the project has one."""
    sites = context.get_docs_sites_urls()
    return sites[0]["site_url"] if sites else None


def validate_tables(
    frames: dict[str, pl.DataFrame],
    suites: dict[str, dict[str, Any]],
    dataset: str,
    gx_root: Path,
    batch_rows: int,
) -> dict[str, SuiteRun]:
    """Each table's suite run on frames in memory (a notebook's tables), with the GX project under
    `gx_root`; nothing is written to the lake or quarantined."""
    return run_suites(_gx_context(gx_root), dataset, frames, suites, batch_rows)


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
    runs = run_suites(context, batch.dataset, frames, suites, config.batch_rows)
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
