"""A run's story for the Prefect UI: what validation found, the model beside its baseline and the
champion, the gate's decision, where the run and the model are in MLflow, and why a run failed.

Pure: these functions only shape the stages' results into the markdown and tables that
tasks/pipeline_run.py publishes as Prefect artifacts. Each artifact has a key per dataset
(`<dataset>-validation`, `-metrics`, `-gate`, `-mlflow`, `-failure`), so the UI's Artifacts page keeps
its history across runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tasks.evaluate import Evaluation
from tasks.register import GateDecision, Registration
from tasks.validate import ValidatedBatch


@dataclass(frozen=True)
class Artifact:
    kind: str  # "markdown", "table" or "link"
    key: str
    description: str
    body: Any  # markdown text, table rows (list of dicts), or a URL
    link_text: str | None = None


def artifact_key(dataset: str, what: str) -> str:
    """Prefect artifact keys are lowercase letters, digits and dashes; dataset names have underscores."""
    return f"{dataset.replace('_', '-')}-{what}"


def _cell(text: object) -> str:
    """A value for a markdown table cell: pipes and line breaks would end the cell or the row."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def validation_story(dataset: str, valid: ValidatedBatch) -> Artifact:
    """Every expectation with its outcome, the failures first, the rows dropped per table, Data Docs."""
    outcomes = sorted(valid.outcomes, key=lambda o: (o.success, o.table, o.expectation, o.column or ""))
    failed = [o for o in outcomes if not o.success]
    lines = [
        f"## Validation of batch `{valid.batch_id}`",
        "",
        f"**{len(outcomes) - len(failed)} of {len(outcomes)} expectations met**;"
        f" {valid.rows_rejected:,} of {valid.rows_in:,} primary rows dropped.",
        "",
    ]
    if valid.rejected_by_table:
        dropped = ", ".join(f"{table}: {n:,}" for table, n in sorted(valid.rejected_by_table.items()))
        lines += [f"Rows dropped by table: {dropped}.", ""]
    lines += ["| table | expectation | column | outcome | unexpected |", "|---|---|---|---|---|"]
    lines += [
        f"| {_cell(o.table)} | {_cell(o.expectation)} | {_cell(o.column or '')} |"
        f" {'met' if o.success else '**failed**'} | {o.unexpected_count:,} |"
        for o in outcomes
    ]
    lines += ["", f"Report: `{valid.report_uri}`"]
    if valid.docs_index:
        lines.append(f"Great Expectations Data Docs: [{valid.docs_index}]({valid.docs_index})")
    return Artifact("markdown", artifact_key(dataset, "validation"), "validation summary", "\n".join(lines))


def metrics_story(dataset: str, evaluation: Evaluation, decision: GateDecision | None) -> Artifact:
    """The challenger's test metrics beside the baseline's and, when there is one, the champion's AUC
    (re-scored on the same test split by the gate)."""
    champion = decision.champion_auc if decision is not None and decision.champion_version else None
    values: list[tuple[str, float, float | None, float | None]] = [
        ("test ROC AUC", evaluation.test_auc, evaluation.baseline_auc, champion),
        ("test PR AUC", evaluation.test_pr_auc, evaluation.baseline_pr_auc, None),
        ("test log loss", evaluation.test_logloss, evaluation.baseline_logloss, None),
        ("valid ROC AUC", evaluation.valid_auc, None, None),
    ]

    def shown(value: float | None) -> float | None:
        return None if value is None else round(float(value), 4)

    rows = [
        {"metric": metric, "model": shown(model), "baseline": shown(baseline), "champion": shown(best)}
        for metric, model, baseline, best in values
    ]
    description = (
        f"test metrics on {evaluation.test_rows:,} rows (positive rate {evaluation.test_positive_rate:.3f});"
        f" baseline: {evaluation.baseline_kind}"
    )
    return Artifact("table", artifact_key(dataset, "metrics"), description, rows)


def gate_story(dataset: str, registration: Registration, decision: GateDecision) -> Artifact:
    verdict = "promoted to `champion`" if decision.promoted else "not promoted"
    before = f"v{decision.champion_version}" if decision.champion_version else "none"
    lines = [
        f"## {registration.model_name} v{registration.version}: {verdict}",
        "",
        f"Reason: {decision.reason}",
        "",
        f"Champion before the decision: {before}. Aliases of v{registration.version} now:"
        f" {', '.join(decision.aliases) or 'none'}.",
    ]
    return Artifact("markdown", artifact_key(dataset, "gate"), "promotion gate", "\n".join(lines))


def mlflow_links(dataset: str, tracking_uri: str, registration: Registration) -> list[Artifact]:
    """Links to the MLflow run and model version when MLflow is a server (its UI is at the same URL);
    for a local registry, where the IDs are and how to open its UI."""
    name, version, run_id = registration.model_name, registration.version, registration.run_id
    if tracking_uri.startswith(("http://", "https://")):
        base = tracking_uri.rstrip("/")
        return [
            Artifact("link", artifact_key(dataset, "mlflow-run"), "MLflow run", f"{base}/#/runs/{run_id}", run_id),
            Artifact(
                "link",
                artifact_key(dataset, "mlflow-model"),
                "MLflow model version",
                f"{base}/#/models/{name}/versions/{version}",
                f"{name} v{version}",
            ),
        ]
    text = (
        f"MLflow run `{run_id}`, model `{name}` version {version}, in the local registry `{tracking_uri}`"
        " (open its UI with `make mlflow-ui`)."
    )
    return [Artifact("markdown", artifact_key(dataset, "mlflow"), "MLflow run and model", text)]


def failure_story(dataset: str, stage: str, error: str, quarantine_uri: str | None) -> Artifact:
    lines = [f"## The run failed in stage `{stage}`", "", f"    {error}"]
    if quarantine_uri:
        lines += ["", f"The batch is in quarantine: `{quarantine_uri}` (reason.json says why)."]
    return Artifact("markdown", artifact_key(dataset, "failure"), f"failed in {stage}", "\n".join(lines))
