"""`fusion check`: every kind of problem is found without data, as one line naming its key path.

Each case changes one thing in a small valid config written to tmp_path; the unchanged config is the
control (no problems), so every case fails if its check stops finding the problem.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel
from typer.testing import CliRunner

import fusion.core.settings
from fusion.cli import app
from fusion.core.errors import ConfigError
from tasks.check import Problem, check_config, checked_suites
from tasks.validate import load_suites

REPO = Path(__file__).resolve().parents[2]
Change = Callable[[dict[str, Any]], None]

SUITE = {
    "name": "events",
    "expectations": [
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "account"}},
        {"type": "expect_compound_columns_to_be_unique", "kwargs": {"column_list": ["id", "account"]}},
    ],
}


def base() -> dict[str, Any]:
    """A small config that uses every kind of reference the check follows, and has no problem."""
    return {
        "dataset": {
            "name": "toy",
            "source": {
                "primary": "events",
                "tables": {
                    "events": {
                        "uri": "events.csv",
                        "columns": {
                            "id": "int64",
                            "account": "str",
                            "ts": "datetime",
                            "day": "date",
                            "amount": "float64",
                            "label": "int32",
                            "channel": "str",
                        },
                    },
                    "accounts": {"uri": "accounts.csv", "columns": {"account": "str", "country": "str"}},
                    "rates": {"uri": "rates.csv", "columns": {"account": "str", "at": "datetime", "rate": "float64"}},
                },
            },
            "validation": {"suites": {"events": "events.json"}},
            "features": {
                "version": 1,
                "derived": {"log_amount": "LN(amount + 1)", "known": "ts + INTERVAL '1 minute' * 5"},
                "event_time": "ts",
                "calendar": ["hour"],
                "numeric": ["amount", "log_amount"],
                "categorical": ["channel"],
                "crosses": [{"name": "acct_channel", "columns": ["account", "channel"]}],
                "id_columns": ["id"],
                "asof": [
                    {
                        "table": "rates",
                        "left_on": "account",
                        "right_on": "account",
                        "right_time": "at",
                        "columns": ["rate"],
                    }
                ],
                "lookups": [
                    {"table": "accounts", "left_on": "account", "right_on": "account", "columns": {"country": "ctry"}}
                ],
                "rolling": [
                    {"name": "acct", "by": ["account"], "value": "amount", "known_at": "known", "windows_minutes": [60]}
                ],
                "previous": [{"name": "prev", "by": ["account"], "known_at": "ts", "columns": ["amount"]}],
            },
            "target": {"name": "fraud", "expr": "label = 1"},
            "split": {"train_end": "2024-01-01", "valid_end": "2024-02-01"},
            "model": {"registered_name": "toy"},
        }
    }


def put(path: str, value: Any) -> Change:
    """A change that sets one key: `dataset.features.rolling.0.value` (list items by number)."""

    def change(config: dict[str, Any]) -> None:
        *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        node: Any = config
        for part in parents:
            node = node[part]
        node[last] = value

    return change


def rename(path: str, new: str) -> Change:
    """A change that renames one key (a misspelt key)."""

    def change(config: dict[str, Any]) -> None:
        *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        node: Any = config
        for part in parents:
            node = node[part]
        node[new] = node.pop(last)

    return change


def write(folder: Path, config: dict[str, Any], suite: dict[str, Any] = SUITE) -> Path:
    """The config as YAML in `folder`, beside its (empty) source files and its suite."""
    for name in ("events.csv", "accounts.csv", "rates.csv"):
        (folder / name).touch()
    (folder / "events.json").write_text(json.dumps(suite))
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def lines_of(folder: Path, *changes: Change, suite: dict[str, Any] = SUITE) -> list[str]:
    config = base()
    for change in changes:
        change(config)
    _, problems = check_config(write(folder, config, suite))
    return sorted(p.line() for p in problems)


# (changes, expected lines), one case per kind of problem. `{folder}`: the config's folder; a line ending in
# "...": Polars' own words follow (they change between versions).
CASES = [
    # loading: the settings' own validation, one line per error
    pytest.param(
        [rename("dataset.features.rolling.0.value", "valeu")],
        [
            "dataset.features.rolling[0].valeu: unknown key 'valeu'; did you mean 'value'?",
            "dataset.features.rolling[0].value: required key is missing",
        ],
        id="unknown-key-in-list-item",
    ),
    pytest.param(
        [rename("dataset.source.tables.rates.columns", "colums")],
        [
            "dataset.source.tables.rates.colums: unknown key 'colums'; did you mean 'columns'?",
            "dataset.source.tables.rates.columns: required key is missing",
        ],
        id="unknown-key-in-dict-value",
    ),
    pytest.param(
        [put("datset", 1)],
        ["datset: unknown key 'datset'; did you mean 'dataset'?"],
        id="unknown-key-at-top",
    ),
    pytest.param(
        [put("dataset.features.rolling.0.windows_minutes", [60, 0])],
        ["dataset.features.rolling[0].windows_minutes[1]: input should be greater than 0, got 0"],
        id="bad-value",
    ),
    pytest.param(
        [put("dataset.validation.on_invalid_rows", "ignore")],
        ["dataset.validation.on_invalid_rows: input should be 'fail' or 'drop', got 'ignore'"],
        id="bad-choice",
    ),
    pytest.param(
        [put("dataset.source.tables.rates", None)],
        ["dataset.source.tables.rates: should be a mapping of keys to values, got None"],
        id="bad-type-names-no-class",
    ),
    pytest.param(
        [put("dataset.split.valid_end", "2023-06-01")],
        ["dataset.split: split.valid_end (2023-06-01) must be after split.train_end (2024-01-01)"],
        id="model-validator",
    ),
    # SQL expressions: parse, unknown columns, types
    pytest.param(
        [put("dataset.features.derived.broken", "amount +")],
        ["dataset.features.derived.broken: cannot parse SQL 'amount +': ..."],
        id="sql-parse-error",
    ),
    pytest.param(
        [put("dataset.features.derived.log_amount", "LN(amont + 1)")],
        ["dataset.features.derived.log_amount: unknown column 'amont'; did you mean 'amount'?"],
        id="unknown-column-in-derived",
    ),
    pytest.param(
        [put("dataset.features.derived", {"known": "ts + INTERVAL '1 minute'", "log_amount": "LN(amount + 1) + knwn"})],
        ["dataset.features.derived.log_amount: unknown column 'knwn'; did you mean 'known'?"],
        id="unknown-column-in-later-derived",
    ),
    pytest.param(
        [put("dataset.features.derived", {"log_amount": "LN(amount + 1) + known", "known": "ts"})],
        ["dataset.features.derived.log_amount: unknown column 'known'"],  # derived in order: not yet defined
        id="derived-uses-later-derived",
    ),
    pytest.param(
        [put("dataset.target.expr", "labl = 1")],
        ["dataset.target.expr: unknown column 'labl'; did you mean 'label'?"],
        id="unknown-column-in-target",
    ),
    pytest.param(
        [put("dataset.features.rolling.0.known_at", "knwn")],
        ["dataset.features.rolling[0].known_at: unknown column 'knwn'; did you mean 'known'?"],
        id="unknown-column-in-known-at",
    ),
    pytest.param(
        [put("dataset.features.rolling.0.value", "log_amout * 2")],
        ["dataset.features.rolling[0].value: unknown column 'log_amout'; did you mean 'log_amount'?"],
        id="unknown-column-in-value",
    ),
    pytest.param(
        [put("dataset.features.previous.0.known_at", "TS")],
        ["dataset.features.previous[0].known_at: unknown column 'TS'; did you mean 'ts'?"],
        id="unknown-column-in-previous-known-at",
    ),
    pytest.param(
        [put("dataset.features.derived.known", "channel + 1")],
        ["dataset.features.derived.known: 'channel + 1' does not type-check: arithmetic on dtypes str ..."],
        id="derived-type-error-reported-once",  # and not again where rolling[0].known_at uses it
    ),
    pytest.param(
        [put("dataset.target.expr", "label")],
        ["dataset.target.expr: 'label' is int32, not a boolean"],
        id="target-not-boolean",
    ),
    pytest.param(
        [put("dataset.features.rolling.0.known_at", "amount")],
        ["dataset.features.rolling[0].known_at: 'amount' is float64, not a datetime or date"],
        id="known-at-not-time",
    ),
    pytest.param(
        [put("dataset.features.previous.0.known_at", "channel")],
        ["dataset.features.previous[0].known_at: 'channel' is str, not a datetime or date"],
        id="previous-known-at-not-time",
    ),
    pytest.param(
        [put("dataset.features.rolling.0.value", "channel")],
        ["dataset.features.rolling[0].value: 'channel' is str, not a number"],
        id="value-not-numeric",
    ),
    pytest.param(
        [put("dataset.features.event_time", "log_amount")],
        ["dataset.features.event_time: column 'log_amount' is float64, not a datetime or date"],
        id="event-time-not-time",
    ),
    # plain column names
    pytest.param(
        [put("dataset.features.numeric", ["amount", "log_amout"])],
        ["dataset.features.numeric[1]: unknown column 'log_amout' of table 'events'; did you mean 'log_amount'?"],
        id="unknown-numeric",
    ),
    pytest.param(
        [put("dataset.features.event_time", "tss")],
        ["dataset.features.event_time: unknown column 'tss' of table 'events'; did you mean 'ts'?"],
        id="unknown-event-time",
    ),
    pytest.param(
        [put("dataset.features.rolling.0.by", ["acount"])],
        ["dataset.features.rolling[0].by[0]: unknown column 'acount' of table 'events'; did you mean 'account'?"],
        id="unknown-rolling-by",
    ),
    pytest.param(
        [put("dataset.features.previous.0.columns", ["amount", "chanel"])],
        ["dataset.features.previous[0].columns[1]: unknown column 'chanel' of table 'events'; did you mean 'channel'?"],
        id="unknown-previous-column",
    ),
    pytest.param(
        [put("dataset.features.crosses.0.columns", ["account", "country"])],  # a lookup's column, not the primary's
        ["dataset.features.crosses[0].columns[1]: unknown column 'country' of table 'events'; did you mean 'account'?"],
        id="unknown-cross-column",
    ),
    pytest.param(
        [put("dataset.split", {"method": "group", "group_by": ["acount"]})],
        ["dataset.split.group_by[0]: unknown column 'acount' of table 'events'; did you mean 'account'?"],
        id="unknown-group-by",
    ),
    pytest.param(
        # channel is a feature, so in the feature table; account is a primary column the table drops
        [put("dataset.split", {"method": "group", "group_by": ["channel", "account"]})],
        [
            "dataset.split.group_by[1]: column 'account' is not in the feature table the split reads:"
            " add it to dataset.features.id_columns"
        ],
        id="group-by-not-kept",
    ),
    pytest.param(
        [put("dataset.features.asof.0.table", "rate")],
        ["dataset.features.asof[0].table: unknown table 'rate'; did you mean 'rates'?"],
        id="unknown-asof-table",
    ),
    pytest.param(
        [put("dataset.features.asof.0.columns", ["rate", "label"])],  # a column of the primary table only
        ["dataset.features.asof[0].columns[1]: unknown column 'label' of table 'rates'"],
        id="asof-column-not-in-its-table",
    ),
    pytest.param(
        [put("dataset.features.asof.0.right_time", "rate")],
        ["dataset.features.asof[0].right_time: column 'rate' is float64, not a datetime or date"],
        id="asof-right-time-not-time",
    ),
    pytest.param(
        [put("dataset.features.lookups.0.columns", {"countri": "ctry"})],
        [
            "dataset.features.lookups[0].columns.countri: unknown column 'countri' of table 'accounts';"
            " did you mean 'country'?"
        ],
        id="lookup-column-not-in-its-table",
    ),
    pytest.param(
        [put("dataset.features.lookups.0.right_on", "acount")],
        ["dataset.features.lookups[0].right_on: unknown column 'acount' of table 'accounts'; did you mean 'account'?"],
        id="lookup-key-not-in-its-table",
    ),
    # feature names
    pytest.param(
        [put("dataset.features.lookups.0.columns", {"country": "amount"})],
        ["dataset.features: feature name 'amount' is made 2 times; each feature needs its own name"],
        id="duplicate-feature-name",
    ),
    pytest.param(
        [put("dataset.target.name", "prev_amount")],
        ["dataset.target.name: 'prev_amount' is also a feature's name"],
        id="target-is-a-feature-name",
    ),
    pytest.param(
        [put("dataset.target.name", "id")],
        ["dataset.target.name: 'id' is also an id or event-time column kept beside it"],
        id="target-is-an-id-column",
    ),
    # suites
    pytest.param(
        [put("dataset.validation.suites.events", "nope.json")],
        ["dataset.validation.suites.events: no such file {folder}/nope.json"],
        id="suite-missing",
    ),
    pytest.param(
        [put("dataset.validation.suites", {"evnts": "events.json"})],
        ["dataset.validation.suites.evnts: unknown table 'evnts'; did you mean 'events'?"],
        id="suite-for-undeclared-table",
    ),
    # local sources
    pytest.param(
        [put("dataset.source.tables.rates.uri", "data/rates.parquet")],
        ["dataset.source.tables.rates.uri: no such file {folder}/data/rates.parquet"],
        id="source-file-missing",
    ),
]


@pytest.mark.parametrize(("changes", "expected"), CASES)
def test_each_problem_is_one_line_naming_its_key(tmp_path: Path, changes: list[Change], expected: list[str]) -> None:
    folder = tmp_path.resolve()
    found = lines_of(folder, *changes)
    wanted = sorted(e.format(folder=folder) for e in expected)
    assert len(found) == len(wanted), found
    for line, want in zip(found, wanted, strict=True):
        assert line.startswith(want.removesuffix("...")) if want.endswith("...") else line == want, line


def test_the_unchanged_config_has_no_problems(tmp_path: Path) -> None:
    assert lines_of(tmp_path) == []


def test_what_needs_no_check_passes(tmp_path: Path) -> None:
    """Controls: a date event time, a URI with a scheme, a derived event time, an empty `by`."""
    assert (
        lines_of(
            tmp_path,
            put("dataset.features.event_time", "day"),
            put("dataset.source.tables.rates.uri", "s3://bucket/rates.parquet"),
            put("dataset.features.rolling.0.by", []),
        )
        == []
    )
    assert lines_of(tmp_path, put("dataset.features.event_time", "known")) == []


def test_suite_columns_are_declared_columns_of_its_table(tmp_path: Path) -> None:
    suite = {
        "name": "events",
        "expectations": [
            {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "acount"}},
            {"type": "expect_compound_columns_to_be_unique", "kwargs": {"column_list": ["id", "log_amount"]}},
            {"type": "expect_column_pair_values_a_to_be_greater_than_b", "kwargs": {"column_A": "id", "column_B": "x"}},
            {"kwargs": {"column": "id"}},
            {"type": "expect_column_values_to_be_unique", "kwargs": {"column": ["id"]}},
        ],
    }
    where = "dataset.validation.suites.events (events.json) expectations"
    assert lines_of(tmp_path, suite=suite) == [
        f"{where}[0].kwargs.column: unknown column 'acount' of table 'events'; did you mean 'account'?",
        # derived columns are not there yet when the suite runs: it validates the table as ingested
        f"{where}[1].kwargs.column_list[1]: unknown column 'log_amount' of table 'events'; did you mean 'amount'?",
        f"{where}[2].kwargs.column_B: unknown column 'x' of table 'events'",
        f"{where}[3]: an expectation needs a 'type' (and its 'kwargs')",
        f"{where}[4].kwargs.column: should be a column name, got list",
    ]


def test_a_suite_that_does_not_parse_is_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, base())
    (tmp_path / "events.json").write_text('{"name": "events", "expectations": [}')
    _, problems = check_config(path)
    assert [p.key for p in problems] == ["dataset.validation.suites.events"]
    assert "expectation suite" in problems[0].message and "\n" not in problems[0].message


def test_unreadable_configs_are_one_line(tmp_path: Path) -> None:
    assert check_config(tmp_path / "nope.yaml") == (None, [Problem("", f"config file not found: {tmp_path}/nope.yaml")])
    (tmp_path / "broken.yaml").write_text("dataset:\n  name: x\n   bad: [1\n")
    settings, problems = check_config(tmp_path / "broken.yaml")
    assert settings is None and [p.line() for p in problems] == [
        "not valid YAML at line 3, column 7: mapping values are not allowed here"
    ]
    (tmp_path / "list.yaml").write_text("- 1\n")
    settings, problems = check_config(tmp_path / "list.yaml")
    assert settings is None and len(problems) == 1 and problems[0].message.startswith("cannot load the config")


def test_messages_name_no_internals_and_hold_one_line(tmp_path: Path) -> None:
    """No class names (the loader's `BoundSettings`, the settings models), no pydantic, no query plans."""
    models = [
        name
        for name, value in vars(fusion.core.settings).items()
        if isinstance(value, type) and issubclass(value, BaseModel)
    ]
    internals = re.compile(rf"\b(BoundSettings|{'|'.join(models)})\b|pydantic|errors\.pydantic\.dev", re.IGNORECASE)
    seen = 0
    for case in CASES:
        changes, _ = case.values
        folder = tmp_path / str(case.id)
        folder.mkdir()
        for line in lines_of(folder, *changes):
            seen += 1
            assert "\n" not in line and "Resolved plan" not in line, line
            assert not internals.search(line), line
    assert seen >= len(CASES)


def test_shipped_configs_have_no_problems(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings, problems = check_config(REPO / "configs/flights.yaml")
    assert settings is not None and problems == []
    # card_transactions reads files `make example-data` writes: stand-ins here, so only the files differ
    for table in ("transactions", "accounts"):
        (tmp_path / f"{table}.csv").touch()
        monkeypatch.setenv(f"FUSION_DATASET__SOURCE__TABLES__{table.upper()}__URI", str(tmp_path / f"{table}.csv"))
    settings, problems = check_config(REPO / "configs/card_transactions.yaml")
    assert settings is not None and problems == []


def test_a_run_checks_first_and_then_reads_the_suites(tmp_path: Path) -> None:
    settings, _ = check_config(write(tmp_path, base()))
    assert settings is not None
    assert checked_suites(settings) == load_suites(settings) == {"events": SUITE}
    config = base()
    put("dataset.target.expr", "labl = 1")(config)
    put("dataset.features.numeric", ["amount", "amout"])(config)
    bad, problems = check_config(write(tmp_path, config))
    assert bad is not None and len(problems) == 2
    with pytest.raises(ConfigError) as failed:
        checked_suites(bad)
    assert str(failed.value) == "; ".join(p.line() for p in problems)


def test_cli_check(tmp_path: Path) -> None:
    runner = CliRunner()
    flights = runner.invoke(app, ["check", "--config", str(REPO / "configs/flights.yaml")])
    assert flights.exit_code == 0, flights.output
    assert re.fullmatch(r"ok: \S+flights\.yaml \(flights: 3 tables, \d+ features\)\n", flights.stderr)

    config = base()
    put("dataset.features.rolling.0.value", "amout")(config)
    path = write(tmp_path, config)
    bad = runner.invoke(app, ["check", "--config", str(path)])
    assert bad.exit_code == 2
    expected = f"{path}: dataset.features.rolling[0].value: unknown column 'amout'; did you mean 'amount'?"
    assert bad.stderr.splitlines() == [expected]  # [0] survives Rich's markup
    config = base()
    put("dataset.features.rolling.0.[b]", 1)(config)  # Rich markup, unless escaped
    marked = runner.invoke(app, ["check", "--config", str(write(tmp_path, config))])
    assert marked.exit_code == 2
    assert marked.stderr.splitlines() == [f"{path}: dataset.features.rolling[0].[b]: unknown key '[b]'"]
    config = base()
    put("dataset.features.rolling.0.value", "amout")(config)
    write(tmp_path, config)
    as_json = runner.invoke(app, ["check", "--config", str(path), "--json"])
    assert as_json.exit_code == 2
    assert json.loads(as_json.stdout) == {
        "ok": False,
        "problems": [
            {"key": "dataset.features.rolling[0].value", "message": "unknown column 'amout'; did you mean 'amount'?"}
        ],
        "warnings": [],
    }


def test_day_level_known_at_with_closed_left_is_warned_about_not_refused(tmp_path: Path) -> None:
    """The trap of issue 14: a day's value known when the day ends, asked at midnight, with closed left."""
    config = base()
    features = config["dataset"]["features"]
    features.update(event_time="day", calendar=[], asof=[])
    features["previous"] = [{"name": "yday", "known_at": "day + INTERVAL '1 day'", "columns": ["amount"]}]
    features["rolling"][0]["known_at"] = "day + INTERVAL '1 day'"
    config["dataset"]["prediction_time"] = {"offset_minutes": 0}
    runner = CliRunner()
    path = write(tmp_path, config)
    warned = runner.invoke(app, ["check", "--config", str(path), "--json"])
    assert warned.exit_code == 0, warned.output
    keys = [w["key"] for w in json.loads(warned.stdout)["warnings"]]
    assert keys == ["dataset.features.rolling[0].closed", "dataset.features.previous[0].closed"]
    assert "warning: " in warned.stderr and "closed: both" in warned.stderr
    for entry in (features["rolling"][0], features["previous"][0]):
        entry["closed"] = "both"
    quiet = runner.invoke(app, ["check", "--config", str(write(tmp_path, config)), "--json"])
    assert quiet.exit_code == 0 and json.loads(quiet.stdout)["warnings"] == []
    # dates in a zone with daylight saving time and a window of whole days
    features["timezone"] = "Europe/Berlin"
    features["rolling"][0]["windows_minutes"] = [60, 7 * 1440]
    dst = runner.invoke(app, ["check", "--config", str(write(tmp_path, config)), "--json"])
    assert [w["key"] for w in json.loads(dst.stdout)["warnings"]] == ["dataset.features.rolling[0].windows_minutes"]
    features["timezone"] = "UTC"
    # an hour before midnight the day just ended is not known yet: nothing to warn about
    config["dataset"]["prediction_time"] = {"offset_minutes": -60}
    for entry in (features["rolling"][0], features["previous"][0]):
        entry["closed"] = "left"
    early = runner.invoke(app, ["check", "--config", str(write(tmp_path, config)), "--json"])
    assert early.exit_code == 0 and json.loads(early.stdout)["warnings"] == []


def test_fusion_run_refuses_a_bad_config_before_prefect(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "fusion.runtime", None)  # importing it (the run going on) fails the test
    runner = CliRunner()
    config = base()
    put("dataset.features.rolling.0.value", "amout")(config)
    path = write(tmp_path, config)
    checked = runner.invoke(app, ["run", "--config", str(path)])
    assert checked.exit_code == 2, checked.output
    assert checked.stderr.splitlines() == [
        f"error: {path}: dataset.features.rolling[0].value: unknown column 'amout'; did you mean 'amount'?"
    ]
    config = base()
    put("dataset.split.valid_end", "2023-06-01")(config)
    loaded = runner.invoke(app, ["run", "--config", str(write(tmp_path, config)), "--json"])
    assert loaded.exit_code == 2, loaded.output
    assert json.loads(loaded.stdout) == {
        "error": f"{path}: dataset.split: split.valid_end (2023-06-01) must be after split.train_end (2024-01-01)"
    }


def test_check_imports_no_heavy_library() -> None:
    """`fusion check` answers in about a second: it never imports the orchestrator, model or GX libraries."""
    heavy = ["prefect", "mlflow", "great_expectations", "dask", "distributed", "ray", "lightgbm"]
    code = (
        "import sys; from fusion.cli import app; from tasks.check import check_config;"
        f" check_config({str(REPO / 'configs/flights.yaml')!r});"
        f" print(sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert done.stdout.strip() == "[]"
