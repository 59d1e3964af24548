"""Serving over real HTTP: Ray Serve in this process, the real Redis, the model the pipeline registered."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import polars as pl
import pytest

from tasks.features import build_features, feature_names
from tests.serving.conftest import Served

pytestmark = [pytest.mark.integration, pytest.mark.services]
MODEL = "flights_delay"


def registered_model(served: Served) -> Any:
    import mlflow.pyfunc

    uri = served.settings.resolved_mlflow_uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")


def as_signature(frame: pl.DataFrame, model: Any) -> pl.DataFrame:
    """The model's input columns, typed as its registered signature (string or double)."""
    inputs = [(c.name, c.type.name) for c in model.metadata.get_input_schema().inputs]
    return frame.select([pl.col(c).cast(pl.String if t == "string" else pl.Float64) for c, t in inputs])


def feature_rows(served: Served, n: int) -> pl.DataFrame:
    """Model-input rows of the run's feature table."""
    frame = pl.read_parquet(next((Path(served.settings.resolved_lake_uri) / "features" / "flights").rglob("*.parquet")))
    return as_signature(frame.sample(n, seed=7), registered_model(served))


def json_rows(frame: pl.DataFrame) -> list[list[Any]]:
    return [list(r) for r in frame.rows()]


def test_invocations_and_oip_equal_the_registered_models_predict(served: Served) -> None:
    rows = feature_rows(served, 64)
    expected = np.asarray(registered_model(served).predict(rows.to_pandas()), dtype=float)
    split = {"dataframe_split": {"columns": rows.columns, "data": json_rows(rows)}}
    got = httpx.post(f"{served.url}/invocations", json=split, timeout=30)
    assert got.status_code == 200, got.text
    assert got.headers["X-Fusion-Model-Version"] == served.summary.model_version
    np.testing.assert_allclose(got.json()["predictions"], expected, rtol=1e-9)

    records = {"dataframe_records": rows.to_dicts()}
    got = httpx.post(f"{served.url}/invocations", json=records, timeout=30)
    np.testing.assert_allclose(got.json()["predictions"], expected, rtol=1e-9)

    info = httpx.get(f"{served.url}/v2/models/{MODEL}", timeout=30).json()
    inputs = [
        {
            "name": spec["name"],
            "shape": [rows.height],
            "datatype": spec["datatype"],
            "data": rows[spec["name"]].to_list(),
        }
        for spec in info["inputs"]
    ]
    got = httpx.post(f"{served.url}/v2/models/{MODEL}/infer", json={"id": "7", "inputs": inputs}, timeout=30)
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["id"] == "7" and body["model_version"] == served.summary.model_version
    np.testing.assert_allclose(body["outputs"][0]["data"], expected, rtol=1e-9)


def test_v1_predict_computes_the_training_features_from_raw_records(served: Served, flights_tables: Any) -> None:
    """A record at the online state's time: serving's prediction equals the registered model on
    the features training would compute for it (history + this row)."""
    manifest = json.loads((Path(served.settings.resolved_lake_uri) / "online/flights/v1/current.json").read_text())
    as_of = dt.datetime.fromisoformat(manifest["as_of"])
    scheduled = as_of + dt.timedelta(hours=1)  # prediction time = scheduled departure - 60 min
    base = {"year": 2014, "month": 1, "day": 1, "flight": 1, "hour": scheduled.hour, "minute": 0}
    records = [
        {
            **base,
            "carrier": "UA",
            "tailnum": "N14228",
            "origin": "EWR",
            "dest": "IAH",
            "distance": 1400.0,
            "sched_arr_time": 900,
        },
        {
            **base,
            "carrier": "B6",
            "tailnum": "N804JB",
            "origin": "JFK",
            "dest": "BQN",
            "distance": 1576.0,
            "sched_arr_time": 1000,
        },
        {
            **base,
            "carrier": "ZZ",
            "tailnum": "NOPE",
            "origin": "LGA",
            "dest": "XXX",
            "distance": 300.0,
            "sched_arr_time": 700,
        },
    ]
    for r in records:
        r["time_hour"] = scheduled.isoformat()
        r["sched_dep_time"] = scheduled.hour * 100
    got = httpx.post(f"{served.url}/v1/predict", json={"records": records}, timeout=30)
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["model"] == MODEL and body["version"] == served.summary.model_version

    dataset = served.settings.dataset
    primary = flights_tables["flights"]
    others = {c: t for c, t in primary.schema.items() if c != "time_hour"}
    new = (
        pl.DataFrame([{c: r.get(c) for c in others} for r in records], schema=others, strict=False)
        .with_columns(pl.lit(scheduled).cast(primary.schema["time_hour"]).alias("time_hour"))
        .select(primary.columns)
    )
    offline = build_features(
        {**flights_tables, "flights": pl.concat([primary, new])},
        "flights",
        dataset.features,
        dataset.prediction_time,
        None,
    ).tail(len(records))
    model = registered_model(served)
    expected = model.predict(as_signature(offline, model).to_pandas())
    np.testing.assert_allclose(body["predictions"], np.asarray(expected, dtype=float), rtol=1e-9)
    assert len(feature_names(dataset.features)) == len(model.metadata.get_input_schema().inputs)


def test_second_identical_request_is_answered_from_the_cache_without_the_model(served: Served) -> None:
    rows = feature_rows(served, 5)
    payload = {"dataframe_split": {"columns": rows.columns, "data": json_rows(rows)}}
    first = httpx.post(f"{served.url}/invocations", json=payload, timeout=30).json()
    names = ("fusion_serving_cache_hits_total", "fusion_serving_cache_misses_total", "fusion_serving_batch_rows_count")
    hits, misses, model_calls = (metric(served, n) for n in names)
    second = httpx.post(f"{served.url}/invocations", json=payload, timeout=30).json()
    assert second == first
    assert metric(served, names[0]) - hits == 5
    # the hit path ends before the model stage: no row computed, no model call (batch) made
    assert metric(served, names[1]) == misses and metric(served, names[2]) == model_calls


def test_metrics_count_every_replicas_requests(served: Served) -> None:
    """/metrics answers for all replicas, whichever answers the scrape: N requests show as N."""
    rows = json_rows(feature_rows(served, 1))
    columns = feature_rows(served, 1).columns

    def counts() -> tuple[dict[str, float], float]:
        from prometheus_client.parser import text_string_to_metric_families

        by_replica: dict[str, float] = {}
        observed = 0.0
        for family in text_string_to_metric_families(httpx.get(f"{served.url}/metrics", timeout=30).text):
            for sample in family.samples:
                if sample.labels.get("route") != "/invocations":
                    continue
                if sample.name == "fusion_serving_requests_total":
                    by_replica[sample.labels["replica"]] = by_replica.get(sample.labels["replica"], 0) + sample.value
                elif sample.name == "fusion_serving_request_seconds_count":
                    observed += sample.value
        return by_replica, observed

    before, observed_before = counts()
    sent = 48

    def send(worker: int) -> None:
        with httpx.Client(timeout=30) as http:
            for i in range(sent // 4):
                data = [[*rows[0][:-1], float(worker * 1000 + i)]]
                got = http.post(
                    f"{served.url}/invocations", json={"dataframe_split": {"columns": columns, "data": data}}
                )
                assert got.status_code == 200, got.text

    workers = [threading.Thread(target=send, args=(w,)) for w in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    after, observed_after = counts()
    assert sum(after.values()) - sum(before.values()) == sent
    assert observed_after - observed_before == sent  # the latency histogram saw each request once
    assert len(after) == served.settings.serving.replicas  # each replica's own series, labelled


def metric(served: Served, name: str) -> float:
    text = httpx.get(f"{served.url}/metrics", timeout=30).text
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith(name + " ") or line.startswith(name + "{")
    )


@pytest.mark.parametrize(
    ("path", "payload", "status", "named"),
    [
        ("/v1/predict", {"records": [{"carrier": 7, "dep_delay": "late"}]}, 422, "records.0.dep_delay"),
        ("/v1/predict", {"records": [{"carrier": "UA", "colour": "red"}]}, 422, "records.0.colour"),
        ("/v1/predict", {"records": []}, 422, "records"),
        ("/v1/predict", {"model": "other", "records": [{"carrier": "UA"}]}, 404, "other"),
        ("/invocations", {"dataframe_split": {"columns": ["distance"], "data": [["far"]]}}, 422, "distance"),
        ("/invocations", {"instances": [{"no_such_feature": 1.0}]}, 422, "no_such_feature"),
        ("/invocations", {"rows": []}, 422, "dataframe_split"),
        (
            "/v2/models/other/infer",
            {"inputs": [{"name": "distance", "shape": [1], "datatype": "FP64", "data": [1.0]}]},
            404,
            "other",
        ),
        (
            "/v2/models/flights_delay/infer",
            {"inputs": [{"name": "distance", "shape": [2], "datatype": "FP64", "data": [1.0]}]},
            422,
            "distance",
        ),
        (
            "/v2/models/flights_delay/infer",
            {"inputs": [{"name": "carrier", "shape": [1], "datatype": "FP64", "data": [1.0]}]},
            422,
            "carrier",
        ),
    ],
)
def test_bad_input_is_a_4xx_that_names_the_field(
    served: Served, path: str, payload: Any, status: int, named: str
) -> None:
    got = httpx.post(f"{served.url}{path}", json=payload, timeout=30)
    assert got.status_code == status, got.text
    assert named in got.text


def test_a_bad_record_is_named_by_its_place_in_the_request_even_after_cached_ones(served: Served) -> None:
    good = {"carrier": "UA", "origin": "EWR", "dest": "IAH", "distance": 1234.5, "time_hour": "2013-06-01T10:00:00Z"}
    assert httpx.post(f"{served.url}/v1/predict", json={"records": [good]}, timeout=30).status_code == 200
    bad = {**good, "distance": "far"}
    got = httpx.post(f"{served.url}/v1/predict", json={"records": [good, good, bad]}, timeout=30)
    assert got.status_code == 422, got.text
    assert got.json()["error"].startswith("records.2.distance: expected float64") and "'far'" in got.text


def test_json_sent_as_a_form_is_415_saying_what_to_send(served: Served) -> None:
    """`curl -d '{...}'` without a Content-Type header sends a form type."""
    body = json.dumps({"records": [{"carrier": "UA"}]})
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    got = httpx.post(f"{served.url}/v1/predict", content=body, headers=form, timeout=30)
    assert got.status_code == 415 and "send application/json" in got.json()["error"], got.text
    untyped = httpx.post(f"{served.url}/v1/predict", content=body, timeout=30)  # no Content-Type: read as JSON
    assert untyped.status_code == 200, untyped.text


def test_body_over_the_limit_is_413_and_health_docs_metrics_answer(served: Served) -> None:
    huge = b'{"records": [' + b'{"carrier": "UA"},' * 200_000 + b'{"carrier": "UA"}]}'
    assert httpx.post(f"{served.url}/v1/predict", content=huge, timeout=30).status_code == 413
    health = httpx.get(f"{served.url}/healthz", timeout=30).json()
    assert health["ready"] is True and health["version"] == served.summary.model_version
    assert httpx.get(f"{served.url}/v2/health/ready", timeout=30).status_code == 200
    assert httpx.get(f"{served.url}/docs", timeout=30).status_code == 200
    schema = httpx.get(f"{served.url}/openapi.json", timeout=30).json()
    assert {"/v1/predict", "/invocations", "/v2/models/{model_name}/infer"} <= set(schema["paths"])
    text = httpx.get(f"{served.url}/metrics", timeout=30).text
    assert "fusion_serving_requests_total" in text and "fusion_serving_model_version" in text


def test_promotion_under_load_switches_version_with_no_failed_request(served: Served) -> None:
    from mlflow import MlflowClient

    uri = served.settings.resolved_mlflow_uri
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    old = served.summary.model_version
    rows = feature_rows(served, 3)
    statuses: list[int] = []
    versions: list[str] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=30) as http:
            i = 0
            while not stop.is_set():
                i += 1
                data = [[*r[:-1], float(i)] for r in json_rows(rows)]  # new rows: no cache hits
                got = http.post(
                    f"{served.url}/invocations", json={"dataframe_split": {"columns": rows.columns, "data": data}}
                )
                statuses.append(got.status_code)
                versions.append(got.headers.get("X-Fusion-Model-Version", "?"))

    workers = [threading.Thread(target=load) for _ in range(4)]
    for w in workers:
        w.start()
    time.sleep(1.0)
    new = client.copy_model_version(f"models:/{MODEL}/{old}", MODEL)
    client.set_registered_model_alias(MODEL, "champion", str(new.version))
    deadline = time.monotonic() + 30
    # every replica has switched once the last answers all come from the new version
    while time.monotonic() < deadline and (len(versions) < 20 or set(versions[-20:]) != {str(new.version)}):
        time.sleep(0.2)
    stop.set()
    for w in workers:
        w.join()
    client.set_registered_model_alias(MODEL, "champion", old)
    wait_for_version(served.url, old)  # leave the app as the other tests expect it
    assert statuses and set(statuses) == {200}
    assert versions[0] == old and versions[-1] == str(new.version)


def wait_for_version(url: str, version: str, timeout_s: float = 30, answers: int = 12) -> None:
    """Until `answers` health checks in a row (spread over the replicas by Serve) name `version`."""
    deadline = time.monotonic() + timeout_s
    agreeing = 0
    while agreeing < answers:
        agreeing = agreeing + 1 if httpx.get(f"{url}/healthz", timeout=30).json()["version"] == version else 0
        assert time.monotonic() < deadline, f"{url} still not serving version {version} on every replica"
        if not agreeing:
            time.sleep(0.2)
