"""Check: a static check of a dataset config, before any data is read (`fusion check`, every run's start).

Without a row of data it finds what would otherwise fail minutes into a run: unknown keys and bad
values (the settings' own validation, one line per error), SQL expressions that do not parse, name
unknown columns or have the wrong type (evaluated on an empty frame of the declared column types),
column names no table declares, duplicate feature names, suites that are missing or name undeclared
columns, and local source files that do not exist. Each problem is one line naming the key path
(`dataset.features.rolling[0].value`), with "did you mean" for misspelt keys and columns.

Import-light on purpose (Polars, pydantic, YAML; no orchestrator, model or validation library), so
that the check answers in about a second.
"""

from __future__ import annotations

import datetime as dt
import difflib
import re
import traceback
import types
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import polars as pl
import yaml
from pydantic import BaseModel, ValidationError
from pydantic_settings import SettingsError

from fusion.core.errors import ConfigError
from fusion.core.settings import DatasetConfig, Settings, has_scheme, load_settings
from tasks.features import feature_names
from tasks.schema import POLARS_TYPES
from tasks.validate import load_suite, load_suites

# What `load_settings` raises for a config it cannot use (anything else is a bug, not a bad config).
LOAD_ERRORS = (FileNotFoundError, ValidationError, yaml.YAMLError, SettingsError)
# Expectation kwargs that name one column, and the one that names several.
SUITE_COLUMN_KWARGS = ("column", "column_A", "column_B")
SUITE_COLUMN_LIST_KWARGS = ("column_list",)
# Pydantic schema tags that can appear in an error's location (`function-after[...]`): not keys.
_SCHEMA_TAG = re.compile(r"^[a-z][a-z-]*\[.*\]$")
_PYDANTIC_PREFIXES = ("Value error, ", "Assertion failed, ")
# Event times and the times values become known.
_TIMES = (pl.Datetime, pl.Date)
_TIME = "a datetime or date"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config: where (`dataset.features.rolling[0].value`) and what, in one line."""

    key: str
    message: str
    detail: str | None = None  # the full underlying error (Polars' query plan, a traceback): `--verbose`

    def line(self) -> str:
        return f"{self.key}: {self.message}" if self.key else self.message


# The primary table's columns an expression or a key may name, with their types (None: the column's own
# definition failed, which is reported once, where it is).
Columns = dict[str, pl.DataType | None]


# --- loading -------------------------------------------------------------------------------------


def check_config(path: Path | str) -> tuple[Settings | None, list[Problem]]:
    """Load a config and check it: the settings (None if they did not load) and every problem found."""
    try:
        settings = load_settings(path)
    except LOAD_ERRORS as exc:
        return None, load_problems(exc)
    except Exception as exc:  # e.g. a YAML file whose top level is a list: still one line, not a traceback
        first = _first_line(str(exc))
        return None, [Problem("", f"cannot load the config: {type(exc).__name__}: {first}", traceback.format_exc())]
    return settings, check_settings(settings)


def load_problems(exc: Exception) -> list[Problem]:
    """Why `load_settings` refused a config (one of LOAD_ERRORS), one problem per cause."""
    if isinstance(exc, ValidationError):
        return validation_problems(exc)
    if isinstance(exc, FileNotFoundError):
        return [Problem("", str(exc))]
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        return [Problem("", f"not valid YAML{where}: {exc.problem or exc.context}", _detail(str(exc)))]
    return [Problem("", _first_line(str(exc)), _detail(str(exc)))]


def validation_problems(exc: ValidationError) -> list[Problem]:
    """A settings ValidationError as one problem per error, keyed by the path of the key at fault."""
    problems = []
    for error in exc.errors(include_url=False):
        loc = tuple(part for part in error["loc"] if not (isinstance(part, str) and _SCHEMA_TAG.match(part)))
        problems.append(Problem(key_path(loc), _clean(_validation_message(error, loc))))
    return problems


def key_path(loc: Sequence[str | int]) -> str:
    """('dataset', 'features', 'rolling', 0, 'value') -> 'dataset.features.rolling[0].value'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _validation_message(error: Any, loc: tuple[str | int, ...]) -> str:
    kind, message, given = error["type"], error["msg"], error.get("input")
    if kind == "extra_forbidden":
        model = _model_at(loc[:-1])
        known = list(model.model_fields) if model else []
        return f"unknown key {loc[-1]!r}{did_you_mean(str(loc[-1]), known)}"
    if kind == "missing":
        return "required key is missing"
    if kind in ("model_type", "model_attributes_type", "dict_type"):  # pydantic names the model class here
        return f"should be a mapping of keys to values, got {_shown(given)}"
    if kind == "path_type":
        return f"should be a path, got {_shown(given)}"
    for prefix in _PYDANTIC_PREFIXES:
        if message.startswith(prefix):
            return message.removeprefix(prefix)
    message = message[:1].lower() + message[1:]
    return f"{message}, got {_shown(given)}" if _scalar(given) else message


def _model_at(loc: Sequence[str | int]) -> type[BaseModel] | None:
    """The settings model class at a location (dict values and list items map to their item's model)."""
    annotation: Any = Settings
    for part in loc:
        annotation = _unwrap(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = annotation.model_fields.get(part) if isinstance(part, str) else None
            if field is None:
                return None
            annotation = field.annotation
        elif get_origin(annotation) is list and isinstance(part, int):
            annotation = get_args(annotation)[0]
        elif get_origin(annotation) is dict:
            annotation = get_args(annotation)[1]
        else:
            return None
    annotation = _unwrap(annotation)
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _unwrap(annotation: Any) -> Any:
    """`X | None` and `Annotated[X, ...]` -> X (a model among union members first)."""
    while get_origin(annotation) in (Union, types.UnionType, Annotated):
        members = [a for a in get_args(annotation) if a is not type(None)]
        if get_origin(annotation) is Annotated:
            members = members[:1]
        models = [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)]
        annotation = (models or members)[0]
    return annotation


def _scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool) or value is None


def _shown(value: Any) -> str:
    return repr(value) if _scalar(value) else type(value).__name__


def _first_line(text: str) -> str:
    """The first meaningful line of a library's message (Polars appends its query plan)."""
    return next((line.strip() for line in text.splitlines() if line.strip()), text.strip())


def _detail(text: str) -> str | None:
    """The full text of an error, where it says more than its first line."""
    return text if len([line for line in text.splitlines() if line.strip()]) > 1 else None


def _clean(message: str) -> str:
    # load_settings validates through a class made at run time; its name means nothing to the reader.
    return " ".join(message.replace("BoundSettings", "settings").split())


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """A hint naming the closest candidate (one differing only in case first), or nothing."""
    pool = list(dict.fromkeys(candidates))
    same = [c for c in pool if c.lower() == word.lower()]
    close = same or difflib.get_close_matches(word, pool, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


# --- semantic checks -------------------------------------------------------------------------------


def checked_suites(settings: Settings) -> dict[str, dict[str, Any]]:
    """A run's first step: the config passes the check (else ConfigError with every problem), then each
    table's suite, as `load_suites` returns them."""
    problems = check_settings(settings)
    if problems:
        raise ConfigError("; ".join(p.line() for p in problems))
    return load_suites(settings)


def check_settings(settings: Settings, files: bool = True) -> list[Problem]:
    """Every problem of loaded settings that needs no data: expressions, column names, feature names,
    suites, and (`files`) local source files: not where the data is read on another machine."""
    dataset = settings.dataset
    columns, derive_problems = derive_columns(dataset)
    return [
        *derive_problems,
        *_expression_problems(dataset, columns),
        *_column_problems(dataset, columns),
        *_join_problems(dataset),
        *_name_problems(dataset),
        *_split_problems(dataset, columns),
        *_suite_problems(settings),
        *(_source_problems(dataset) if files else []),
    ]


def check_warnings(settings: Settings) -> list[Problem]:
    """What is allowed but is likely not what was meant; reported, never refused.

    Dates in a zone with daylight saving time and windows of whole days: the week that springs forward
    is 167 hours, so a 7-day window holds 8 days there.
    Day-level data with `closed: left`: a value known when its day ends (`day + INTERVAL '1 day'`) is
    known exactly at the next day's prediction time, and `left` counts only rows known strictly before
    it, so "the previous day" is two days back and a window misses its last day."""
    dataset = settings.dataset
    spec = dataset.features
    columns, problems = derive_columns(dataset)
    if problems or spec.event_time is None or columns.get(spec.event_time) != pl.Date:
        return []
    warnings = [
        Problem(
            f"dataset.features.rolling[{i}].windows_minutes",
            f"whole days over dates in features.timezone {spec.timezone!r}, which has daylight saving time: a"
            " the day it springs forward is 23 hours, so a window over it holds one day more"
            " (give timezone: UTC for a series of dates)",
        )
        for i, r in enumerate(spec.rolling)
        if _has_dst(spec.timezone) and any(w % 1440 == 0 for w in r.windows_minutes)
    ]
    if dataset.prediction_time.offset_minutes % 1440:
        return warnings
    entries = [
        *[(f"dataset.features.rolling[{i}]", r.known_at, r.closed) for i, r in enumerate(spec.rolling)],
        *[(f"dataset.features.previous[{i}]", e.known_at, e.closed) for i, e in enumerate(spec.previous)],
    ]
    for key, known_at, closed in entries:
        dtype, found = _expression_type(known_at, columns, f"{key}.known_at")
        if not found and dtype == pl.Date and closed == "left":
            warnings.append(
                Problem(
                    f"{key}.closed",
                    f"known_at {known_at!r} and the prediction time are both whole days: with closed 'left' a"
                    " row known at the start of day D does not count for day D (use closed: both if it should)",
                )
            )
    return warnings


def _has_dst(timezone: str) -> bool:
    """Whether the zone's offset from UTC changes in the year (an unknown zone: the settings refuse it)."""
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return dt.datetime(2024, 1, 15, tzinfo=zone).utcoffset() != dt.datetime(2024, 7, 15, tzinfo=zone).utcoffset()


def derive_columns(dataset: DatasetConfig) -> tuple[Columns, list[Problem]]:
    """The primary table's columns after `features.derived` (declared, then each derived one in order, each
    expression seeing only the columns before it), and the derived expressions' problems."""
    declared = dataset.source.tables[dataset.source.primary].columns
    columns: Columns = {name: POLARS_TYPES[kind] for name, kind in declared.items()}
    problems: list[Problem] = []
    for name, expr in dataset.features.derived.items():
        columns[name], found = _expression_type(expr, columns, f"dataset.features.derived.{name}")
        problems += found
    return columns, problems


def _expression_problems(dataset: DatasetConfig, columns: Columns) -> list[Problem]:
    """The other expressions over the derived table, and the types the features need of them."""
    spec = dataset.features
    wanted: list[tuple[str, str, tuple[type[pl.DataType], ...] | None, str]] = [
        ("dataset.target.expr", dataset.target.expr, (pl.Boolean,), "a boolean"),
        *[(f"dataset.features.rolling[{i}].value", r.value, None, "a number") for i, r in enumerate(spec.rolling)],
        *[(f"dataset.features.rolling[{i}].known_at", r.known_at, _TIMES, _TIME) for i, r in enumerate(spec.rolling)],
        *[(f"dataset.features.previous[{i}].known_at", p.known_at, _TIMES, _TIME) for i, p in enumerate(spec.previous)],
    ]
    problems: list[Problem] = []
    for key, expr, kinds, what in wanted:
        dtype, found = _expression_type(expr, columns, key)
        problems += found
        if dtype is not None and not _is(dtype, kinds):
            problems.append(Problem(key, f"{expr!r} is {type_name(dtype)}, not {what}"))
    event_time = columns.get(spec.event_time) if spec.event_time is not None else None
    if event_time is not None and not _is(event_time, _TIMES):
        problems.append(
            Problem(
                "dataset.features.event_time", f"column {spec.event_time!r} is {type_name(event_time)}, not {_TIME}"
            )
        )
    return problems


def _is(dtype: pl.DataType, kinds: tuple[type[pl.DataType], ...] | None) -> bool:
    """Of one of these kinds; None: numeric."""
    return dtype.is_numeric() if kinds is None else isinstance(dtype, kinds)


def _expression_type(expr: str, columns: Columns, key: str) -> tuple[pl.DataType | None, list[Problem]]:
    """A SQL expression's type over the columns, evaluated on an empty frame; None and the problems when it
    does not parse, names an unknown column or does not type-check (None and no problem when it names a
    column whose own definition failed)."""
    try:
        parsed = pl.sql_expr(expr)
    except Exception as exc:  # Polars raises its SQL errors and plain ones alike
        return None, [Problem(key, f"cannot parse SQL {expr!r}: {_first_line(str(exc))}", _detail(str(exc)))]
    named = list(dict.fromkeys(parsed.meta.root_names()))
    unknown = [c for c in named if c not in columns]
    if unknown:
        return None, [Problem(key, f"unknown column {c!r}{did_you_mean(c, columns)}") for c in unknown]
    if any(columns[c] is None for c in named):
        return None, []
    frame = pl.LazyFrame(schema={name: dtype for name, dtype in columns.items() if dtype is not None})
    try:
        return frame.select(parsed.alias("_x")).collect_schema()["_x"], []
    except Exception as exc:
        return None, [Problem(key, f"{expr!r} does not type-check: {_first_line(str(exc))}", _detail(str(exc)))]


def type_name(dtype: pl.DataType) -> str:
    """A Polars type by its config name (`datetime`, `str`) where it has one."""
    if isinstance(dtype, pl.Datetime):
        return "datetime"
    named = [name for name, known in POLARS_TYPES.items() if dtype == known]
    return named[0] if named else type(dtype).__name__.lower()


def _column_problems(dataset: DatasetConfig, columns: Columns) -> list[Problem]:
    """Plain column names of the primary table (raw or derived)."""
    spec, primary = dataset.features, dataset.source.primary
    single = {
        "dataset.features.event_time": spec.event_time,
        **{f"dataset.features.asof[{i}].left_on": j.left_on for i, j in enumerate(spec.asof)},
        **{f"dataset.features.lookups[{i}].left_on": j.left_on for i, j in enumerate(spec.lookups)},
    }
    lists = {
        "dataset.features.numeric": spec.numeric,
        "dataset.features.categorical": spec.categorical,
        "dataset.features.id_columns": spec.id_columns,
        **{f"dataset.features.crosses[{i}].columns": x.columns for i, x in enumerate(spec.crosses)},
        **{f"dataset.features.rolling[{i}].by": r.by for i, r in enumerate(spec.rolling)},
        **{f"dataset.features.previous[{i}].by": p.by for i, p in enumerate(spec.previous)},
        **{f"dataset.features.previous[{i}].columns": p.columns for i, p in enumerate(spec.previous)},
        "dataset.split.group_by": dataset.split.group_by,
    }
    named = [
        *[(key, c) for key, c in single.items() if c is not None],
        *[kc for key, names in lists.items() for kc in _each(key, names)],
    ]
    return [
        Problem(key, f"unknown column {c!r} of table {primary!r}{did_you_mean(c, columns)}")
        for key, c in named
        if c not in columns
    ]


def _join_problems(dataset: DatasetConfig) -> list[Problem]:
    """As-of joins and lookups name a declared table, and columns that table declares."""
    spec, tables = dataset.features, dataset.source.tables
    asof = "dataset.features.asof"
    lookups = "dataset.features.lookups"
    joins = [
        *[
            (
                f"{asof}[{i}]",
                j.table,
                [("right_on", j.right_on), ("right_time", j.right_time), *_each("columns", j.columns)],
            )
            for i, j in enumerate(spec.asof)
        ],
        *[
            (f"{lookups}[{i}]", j.table, [("right_on", j.right_on), *[(f"columns.{c}", c) for c in j.columns]])
            for i, j in enumerate(spec.lookups)
        ],
    ]
    problems = []
    for where, table, refs in joins:
        if table not in tables:
            problems.append(Problem(f"{where}.table", f"unknown table {table!r}{did_you_mean(table, tables)}"))
            continue
        declared = tables[table].columns
        problems += [
            Problem(f"{where}.{key}", f"unknown column {c!r} of table {table!r}{did_you_mean(c, declared)}")
            for key, c in refs
            if c not in declared
        ]
    for i, j in enumerate(spec.asof):
        kind = tables[j.table].columns.get(j.right_time) if j.table in tables else None
        if kind is not None and kind not in ("datetime", "date"):
            problems.append(Problem(f"{asof}[{i}].right_time", f"column {j.right_time!r} is {kind}, not {_TIME}"))
    return problems


def _each(key: str, names: Sequence[str]) -> list[tuple[str, str]]:
    return [(f"{key}[{i}]", name) for i, name in enumerate(names)]


def _name_problems(dataset: DatasetConfig) -> list[Problem]:
    """Feature names are unique, and none is the target's or a kept column's name."""
    spec, target = dataset.features, dataset.target.name
    names = feature_names(spec)
    problems = [
        Problem("dataset.features", f"feature name {name!r} is made {n} times; each feature needs its own name")
        for name, n in Counter(names).items()
        if n > 1
    ]
    if target in names:
        problems.append(Problem("dataset.target.name", f"{target!r} is also a feature's name"))
    kept = {*spec.id_columns, *([spec.event_time] if spec.event_time else [])}
    if target in kept:
        problems.append(Problem("dataset.target.name", f"{target!r} is also an id or event-time column kept beside it"))
    return problems


def _split_problems(dataset: DatasetConfig, columns: Columns) -> list[Problem]:
    """A group split reads its `group_by` columns from the feature table: each must be kept there (an id
    column, the event time or a feature). Unknown columns are reported once, as unknown."""
    spec = dataset.features
    in_table = {*spec.id_columns, *([spec.event_time] if spec.event_time else []), *feature_names(spec)}
    return [
        Problem(
            f"dataset.split.group_by[{i}]",
            f"column {c!r} is not in the feature table the split reads: add it to dataset.features.id_columns",
        )
        for i, c in enumerate(dataset.split.group_by)
        if c in columns and c not in in_table
    ]


def _suite_problems(settings: Settings) -> list[Problem]:
    """Each suite file exists, parses, is for a declared table and names only that table's columns."""
    problems = []
    tables = settings.dataset.source.tables
    for table in settings.dataset.validation.suites:
        key, path = f"dataset.validation.suites.{table}", settings.suite_path(table)
        if table not in tables:
            problems.append(Problem(key, f"unknown table {table!r}{did_you_mean(table, tables)}"))
        if not path.is_file():
            problems.append(Problem(key, f"no such file {path}"))
            continue
        try:
            suite = load_suite(path)
        except ConfigError as exc:
            problems.append(Problem(key, _first_line(str(exc)), _detail(str(exc))))
            continue
        if table in tables:
            shown = path.relative_to(settings.config_dir) if path.is_relative_to(settings.config_dir) else path
            problems += _expectation_problems(f"{key} ({shown})", suite["expectations"], table, tables[table].columns)
    return problems


def _expectation_problems(where: str, items: list[Any], table: str, declared: Mapping[str, str]) -> list[Problem]:
    problems = []
    for i, item in enumerate(items):
        key = f"{where} expectations[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("type"), str):
            problems.append(Problem(key, "an expectation needs a 'type' (and its 'kwargs')"))
            continue
        kwargs = item.get("kwargs", {})
        if not isinstance(kwargs, dict):
            problems.append(Problem(f"{key}.kwargs", f"should be a mapping, got {_shown(kwargs)}"))
            continue
        named = [(f"{key}.kwargs.{k}", kwargs[k]) for k in SUITE_COLUMN_KWARGS if k in kwargs]
        for k in SUITE_COLUMN_LIST_KWARGS:
            given = kwargs.get(k, [])
            named += _each(f"{key}.kwargs.{k}", given) if isinstance(given, list) else [(f"{key}.kwargs.{k}", given)]
        problems += [
            Problem(path, f"unknown column {c!r} of table {table!r}{did_you_mean(str(c), declared)}")
            if isinstance(c, str)
            else Problem(path, f"should be a column name, got {_shown(c)}")
            for path, c in named
            if not isinstance(c, str) or c not in declared
        ]
    return problems


def _source_problems(dataset: DatasetConfig) -> list[Problem]:
    """Local source files exist (URIs with a scheme are not checked: no network here)."""
    return [
        Problem(f"dataset.source.tables.{name}.uri", f"no such file {table.uri}")
        for name, table in dataset.source.tables.items()
        if not has_scheme(table.uri) and not Path(table.uri).expanduser().exists()
    ]
