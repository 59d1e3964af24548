"""A failing run names the stage that failed, and I/O stages retry as `pipeline.retries` says: the real
flow (Prefect, Dask LocalCluster in threads) on the generated card-transactions data, with one stage's
work made to fail."""

from __future__ import annotations

from pathlib import Path

import pytest

from fusion.core.errors import SourceUnavailable, TrainingError
from fusion.core.summary import RunSummary

pytestmark = pytest.mark.integration
CONFIG = Path("configs/card_transactions.yaml")


@pytest.fixture
def card_data(fusion_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from tests.datasets.card_transactions import write

    paths = write(fusion_home / "examples")
    monkeypatch.setenv("FUSION_DATASET__SOURCE__TABLES__TRANSACTIONS__URI", str(paths["transactions"]))
    monkeypatch.setenv("FUSION_DATASET__SOURCE__TABLES__ACCOUNTS__URI", str(paths["accounts"]))
    monkeypatch.setenv("FUSION_DATASET__MODEL__NUM_BOOST_ROUND", "30")
    return fusion_home


def failed_run() -> RunSummary:
    from flows.training_pipeline import RunFailed, run_pipeline

    with pytest.raises(RunFailed) as failure:
        run_pipeline(CONFIG)
    return RunSummary.model_validate_json(failure.value.summary_json)


def test_the_stage_that_failed_names_itself(card_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tasks.pipeline_tasks

    def no_evaluation(*args: object) -> None:
        raise TrainingError("the test split has one class")

    with monkeypatch.context() as patched:
        patched.setattr(tasks.pipeline_tasks, "evaluate_model", no_evaluation)
        summary = failed_run()
    assert summary.error == "evaluate: the test split has one class"  # once labelled "train:"
    assert [s.stage for s in summary.stages][-1] == "train"  # evaluate never finished

    def no_promotion(*args: object) -> None:
        raise TrainingError("no test rows to compare on")

    with monkeypatch.context() as patched:
        patched.setattr(tasks.pipeline_tasks, "promote_if_better", no_promotion)
        summary = failed_run()  # the stages before evaluate come from the cache
    assert summary.error == "promote: no test rows to compare on"  # once labelled "register:"
    assert summary.model_version == "1" and summary.validation_success


@pytest.mark.parametrize("retries", [0, 2])
def test_io_stages_retry_as_the_settings_say(card_data: Path, monkeypatch: pytest.MonkeyPatch, retries: int) -> None:
    import tasks.pipeline_tasks

    attempts = card_data / "attempts.log"  # a file: Dask ships the task (and this function) as a copy

    def unreachable(uri: str) -> str:
        with attempts.open("a") as log:
            log.write(uri + "\n")
        raise SourceUnavailable(f"cannot stat source {uri}: connection reset")

    monkeypatch.setattr(tasks.pipeline_tasks, "source_fingerprint", unreachable)
    monkeypatch.setenv("FUSION_PIPELINE__RETRIES", str(retries))
    monkeypatch.setenv("FUSION_PIPELINE__RETRY_DELAY_S", "0")
    summary = failed_run()
    assert summary.error and summary.error.startswith("fingerprint: cannot stat source")
    assert len(attempts.read_text().splitlines()) == retries + 1  # every attempt fails on the first table


def test_an_event_that_cannot_be_sent_fails_the_run_and_no_later_event_leaves(
    card_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Events are sent while the next stage runs, but in the stages' order, and one that fails for good
    (retries spent) still fails the run: at the next announcement, before any later event is sent."""
    from fusion.core.events import CloudEvent, EventSink

    sent = card_data / "sent.log"  # a file: Dask ships the task (and this class) as a copy

    class Broken:
        def publish(self, event: CloudEvent) -> None:
            if event.type == "fusion.features.ready":
                raise ConnectionError("broker gone")
            with sent.open("a") as log:
                log.write(event.type + "\n")

    monkeypatch.setattr(EventSink, "bus", lambda self: Broken())
    monkeypatch.setenv("FUSION_PIPELINE__RETRIES", "0")
    from flows.training_pipeline import run_pipeline

    with pytest.raises(ConnectionError, match="broker gone"):
        run_pipeline(CONFIG)
    assert sent.read_text().splitlines() == ["fusion.data.ready", "fusion.data.validated"]
