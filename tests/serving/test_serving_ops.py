"""Serving under operations, over real HTTP: clients nobody here wrote (tritonclient, schemathesis),
Redis killed mid-load, bearer JWT, promotions arriving as Kafka events."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from tests.conftest import services
from tests.serving.conftest import Served
from tests.serving.test_serving import MODEL, feature_rows, json_rows, metric, registered_model, wait_for_version

pytestmark = [pytest.mark.integration, pytest.mark.services]


def test_tritonclient_speaks_open_inference_protocol(served: Served) -> None:
    import tritonclient.http as triton

    client = triton.InferenceServerClient(served.url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)
    metadata = client.get_model_metadata(MODEL)
    assert metadata["name"] == MODEL and metadata["versions"] == [served.summary.model_version]
    rows = feature_rows(served, 400).drop_nulls().head(16)  # tritonclient sends None as "None"
    assert rows.height == 16
    inputs = []
    for spec in metadata["inputs"]:
        values = rows[spec["name"]].to_list()
        tensor = triton.InferInput(spec["name"], [rows.height], spec["datatype"])
        data = np.array(values, dtype=object if spec["datatype"] == "BYTES" else np.float64)
        tensor.set_data_from_numpy(data, binary_data=False)  # JSON tensors (binary extension: 400)
        inputs.append(tensor)
    output = triton.InferRequestedOutput("probability", binary_data=False)
    result = client.infer(MODEL, inputs, outputs=[output], request_id="triton-1")
    assert result.get_response()["id"] == "triton-1"
    expected = np.asarray(registered_model(served).predict(rows.to_pandas()), dtype=float)
    np.testing.assert_allclose(result.as_numpy("probability"), expected, rtol=1e-9)


def test_schemathesis_finds_no_server_error(served: Served) -> None:
    """Every operation of /openapi.json, with generated valid and invalid inputs: never a 5xx.
    (Operations are driven one by one: schemathesis' pytest fixture support needs a pytest < 9 node.)"""
    schema = schemathesis.openapi.from_url(f"{served.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10, [f"{o.method} {o.path}" for o in operations]
    failures = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None
        )
        def no_server_error(case: Any) -> None:
            case.call_and_validate(checks=[not_a_server_error])

        try:
            no_server_error()
        except Exception as exc:  # collect every operation's failure, not only the first
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}")
    assert not failures, "\n\n".join(failures)


def test_redis_killed_mid_load_costs_no_request_and_the_cache_comes_back(served: Served) -> None:
    frame = feature_rows(served, 50)
    rows, columns = json_rows(frame), frame.columns
    statuses: list[int] = []
    stop = threading.Event()

    def load(worker: int) -> None:
        with httpx.Client(timeout=30) as http:
            i = 0
            while not stop.is_set():
                i += 1
                data = [rows[(worker * 7 + i) % len(rows)]]  # rows repeat: hits while Redis is up
                body = {"dataframe_split": {"columns": columns, "data": data}}
                statuses.append(http.post(f"{served.url}/invocations", json=body).status_code)
                records = {"records": [{"carrier": "UA", "origin": "EWR", "dest": "IAH", "distance": 1400.0 + i}]}
                statuses.append(http.post(f"{served.url}/v1/predict", json=records).status_code)

    failures_before = metric(served, "fusion_serving_redis_failures")
    workers = [threading.Thread(target=load, args=(w,)) for w in range(3)]
    for w in workers:
        w.start()
    try:
        time.sleep(1.5)
        services("down", "redis", timeout=60)
        down_at = len(statuses)
        time.sleep(3.0)
        during = len(statuses) - down_at
    finally:
        stop.set()
        for w in workers:
            w.join()
    # every replica's circuit opened, and no request reaches them until it has closed again (below)
    assert metric(served, "fusion_serving_breaker_open") == served.settings.serving.replicas
    services("up", "redis", timeout=120)
    # Redis from infra/local keeps nothing across a restart: the replicas load the online state
    # from the lake snapshot again at their next alias poll (poll_s 0.5 here).
    import redis

    current = f"fusion:online:flights:v{served.settings.dataset.features.version}:current"
    client = redis.Redis.from_url(served.redis_url)
    deadline = time.monotonic() + 30
    while not client.exists(current) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert client.exists(current), "online state not reloaded into Redis after the restart"

    assert statuses and set(statuses) == {200}, sorted(set(statuses))
    assert during > 10  # requests kept being answered while Redis was down
    assert metric(served, "fusion_serving_redis_failures") > failures_before
    # with no requests at all, every replica's circuit closes again: its alias poll is the breaker's trial call
    # (without it, an idle replica's circuit stayed half open, and its gauge at 1, until its next request)
    deadline = time.monotonic() + served.settings.serving.breaker_cooldown_s + 10
    while metric(served, "fusion_serving_breaker_open") > 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert metric(served, "fusion_serving_breaker_open") == 0
    # once the breaker's cooldown has passed, a repeated row is a cache hit again
    time.sleep(served.settings.serving.breaker_cooldown_s + 0.5)
    body = {"dataframe_split": {"columns": columns, "data": [[*rows[0][:-1], 12345.0]]}}
    deadline = time.monotonic() + 20
    while True:
        httpx.post(f"{served.url}/invocations", json=body, timeout=30).raise_for_status()
        before = metric(served, "fusion_serving_cache_hits_total")
        httpx.post(f"{served.url}/invocations", json=body, timeout=30).raise_for_status()
        if metric(served, "fusion_serving_cache_hits_total") > before or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    assert metric(served, "fusion_serving_cache_hits_total") > before


@pytest.fixture(scope="module")
def secured(served: Served, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A second app on the same Serve instance under /secured: RS256 bearer JWT (public key from a
    file), promotion events from Kafka, and an alias poll so slow that only an event can explain
    a switch."""
    from cryptography.hazmat.primitives import serialization
    from ray import serve

    from fusion.core.events import KafkaEventBus
    from fusion.core.settings import with_overrides
    from serving.app import build_app, serving_args

    key = rsa_key()
    public = tmp_path_factory.mktemp("auth") / "public.pem"
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    settings_ = with_overrides(
        served.settings,
        {
            "kafka_bootstrap_servers": kafka_bootstrap,
            "serving": {
                "replicas": 1,
                "poll_s": 3600,
                "auth": {"enabled": True, "algorithm": "RS256", "key_file": str(public)},
            },
        },
    )
    bus = KafkaEventBus(kafka_bootstrap, settings_.events)  # creates the topics before the replica subscribes
    serve.run(build_app(serving_args(settings_)), name="fusion-secured", route_prefix="/secured")
    try:
        yield {"url": f"{served.url}/secured", "key": key, "bus": bus, "settings": settings_}
    finally:
        serve.delete("fusion-secured")
        bus.close()


def bearer(key: Any, **claims: Any) -> dict[str, str]:
    token = jwt.encode({"exp": int(time.time()) + 60, "scope": "predict", **claims}, key, algorithm="RS256")
    return {"Authorization": f"Bearer {token}"}


def test_jwt_guards_predictions_and_leaves_health_and_metrics_open(served: Served, secured: dict[str, Any]) -> None:
    url, key = secured["url"], secured["key"]
    rows = feature_rows(served, 4)
    body = {"dataframe_split": {"columns": rows.columns, "data": json_rows(rows)}}
    record = {"records": [{"carrier": "UA", "origin": "EWR", "dest": "IAH", "distance": 1400.0}]}
    other = rsa_key()
    refused = {
        "no token": ({}, 401),
        "not a JWT": ({"Authorization": "Bearer not-a-jwt"}, 401),
        "basic scheme": ({"Authorization": "Basic dXNlcjpwYXNz"}, 401),
        "expired": (bearer(key, exp=int(time.time()) - 60), 401),
        "signed by another key": (bearer(other), 401),
        "without the scope": (bearer(key, scope="read"), 403),
    }
    for case, (headers, status) in refused.items():
        for path, payload in (("/invocations", body), ("/v1/predict", record)):
            got = httpx.post(f"{url}{path}", json=payload, headers=headers, timeout=30)
            assert got.status_code == status, (case, path, got.text)
    assert httpx.post(f"{url}/invocations", json=body, timeout=30).headers["WWW-Authenticate"] == "Bearer"

    got = httpx.post(f"{url}/invocations", json=body, headers=bearer(key), timeout=30)
    assert got.status_code == 200, got.text
    open_ = httpx.post(f"{served.url}/invocations", json=body, timeout=30).json()
    assert got.json()["predictions"] == open_["predictions"]
    assert httpx.post(f"{url}/v1/predict", json=record, headers=bearer(key), timeout=30).status_code == 200
    for path in ("/healthz", "/metrics", "/v2/health/live", "/v2/health/ready"):
        assert httpx.get(f"{url}{path}", timeout=30).status_code == 200, path


def rsa_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def test_a_promotion_event_switches_the_version_before_any_poll(served: Served, secured: dict[str, Any]) -> None:
    from mlflow import MlflowClient

    from fusion.core.events import CloudEvent

    uri = served.settings.resolved_mlflow_uri
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    url = secured["url"]

    def serving_version() -> str | None:
        return httpx.get(f"{url}/healthz", timeout=30).json()["version"]

    old = serving_version()
    assert old is not None
    new = str(client.copy_model_version(f"models:/{MODEL}/{old}", MODEL).version)
    client.set_registered_model_alias(MODEL, "champion", new)
    try:
        deadline = time.monotonic() + 60
        while serving_version() != new and time.monotonic() < deadline:
            # repeated: the replica's consumer starts at the latest offset once it has its partitions
            event = CloudEvent(
                source="/tests/serving",
                type="fusion.model.promoted",
                subject="flights",
                data={"model_name": MODEL, "version": new, "previous_version": old},
            )
            secured["bus"].publish(event)
            time.sleep(1.0)
        assert serving_version() == new  # poll_s is an hour: the event did it
    finally:
        client.set_registered_model_alias(MODEL, "champion", old)
        wait_for_version(served.url, old)


def test_a_full_queue_is_answered_503_with_retry_after_and_the_rest_are_served(served: Served) -> None:
    """One replica that works on one request and holds one more: a burst of large requests gets 503s
    with Retry-After at once for what does not fit, every other request its predictions, nothing else."""
    import asyncio

    import aiohttp
    from ray import serve

    from fusion.core.settings import with_overrides
    from serving.app import build_app, serving_args

    settings_ = with_overrides(
        served.settings,
        {
            "serving": {
                "replicas": 1,
                "poll_s": 3600,
                "max_ongoing_requests": 1,
                "max_queued_requests": 1,
                "retry_after_s": 2,
            }
        },
    )
    serve.run(build_app(serving_args(settings_)), name="fusion-overload", route_prefix="/overload")
    rows = feature_rows(served, 1000)
    body = {"dataframe_split": {"columns": rows.columns, "data": json_rows(rows)}}
    url = f"{served.url}/overload/invocations"

    async def burst(n: int) -> list[tuple[int, str | None, int]]:
        async with aiohttp.ClientSession() as session:

            async def one() -> tuple[int, str | None, int]:
                async with session.post(url, json=body) as response:
                    predictions = (await response.json())["predictions"] if response.status == 200 else []
                    return response.status, response.headers.get("Retry-After"), len(predictions)

            return await asyncio.gather(*(one() for _ in range(n)))

    try:
        answers = asyncio.run(burst(24))
    finally:
        serve.delete("fusion-overload")
    statuses = sorted({status for status, _, _ in answers})
    assert statuses == [200, 503], answers
    assert all(retry == "2" for status, retry, _ in answers if status == 503)
    assert all(n == 1000 for status, _, n in answers if status == 200)
