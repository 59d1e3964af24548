"""The secure profile end to end: Kafka on SASL_SSL (SCRAM-SHA-512) and Redis on TLS with an ACL user, both with
certificates from the local CA infra/local/services.sh makes (FUSION_SERVICES_PROFILE=secure, on ports and a
state folder of this test's own). A request on the secure Kafka is turned into a run by `fusion trigger`, run
by a Prefect worker whose runs get the profile's environment (references to the secret files, never the
values); the run's events arrive on the secure Kafka and its online features in the secure Redis; `fusion
serve` answers predictions through the secure Redis cache. Plain-text clients are refused by both."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest

from fusion.core.net import free_port
from tests.conftest import LAUNCH_ENV, REPO, services
from tests.services.support import (
    STAGES,
    TriggerProcess,
    card_model_name,
    card_request,
    consume,
    wait_for_runs,
    wait_until_final,
)

pytestmark = pytest.mark.services


def free_pair() -> int:
    """A port p with p + 1 free too (Kafka's controller listens on p + 1)."""
    for _ in range(50):
        port = free_port()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    raise RuntimeError("no two consecutive free ports")


@pytest.fixture(scope="module")
def secure_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Secure Kafka and Redis; yields the variables `services.sh env` prints for them."""
    state = tmp_path_factory.mktemp("secure-services")
    env = {
        "FUSION_SERVICES_PROFILE": "secure",
        "FUSION_SERVICES_DIR": str(state),
        "FUSION_KAFKA_PORT": str(free_pair()),
        "FUSION_REDIS_PORT": str(free_port()),
    }
    up = services("up", "kafka", "redis", env=env, check=False)
    assert up.returncode == 0, up.stderr[-3000:]
    try:
        printed = services("env", env=env).stdout
        variables = dict(line.removeprefix("export ").split("=", 1) for line in printed.splitlines())
        # Kafka and Redis only (the MLflow and Prefect lines name the plain stack's servers)
        wanted = ("FUSION_KAFKA_", "FUSION_EVENTS__SECURITY__", "FUSION_REDIS_")
        yield {k: v for k, v in variables.items() if k.startswith(wanted)}
    finally:
        services("down", "kafka", "redis", env=env, timeout=120, check=False)


def kafka_options(stack: dict[str, str]) -> dict[str, Any]:
    from fusion.core.settings import KafkaSecurity

    security = KafkaSecurity(
        protocol=stack["FUSION_EVENTS__SECURITY__PROTOCOL"],  # type: ignore[arg-type]
        username=stack["FUSION_EVENTS__SECURITY__USERNAME"],
        password=stack["FUSION_EVENTS__SECURITY__PASSWORD"],  # type: ignore[arg-type]  # a file: reference
        ssl_cafile=Path(stack["FUSION_EVENTS__SECURITY__SSL_CAFILE"]),
    )
    return {"bootstrap_servers": stack["FUSION_KAFKA_BOOTSTRAP_SERVERS"], **security.client_options()}


def test_plain_clients_are_refused(secure_stack: dict[str, str]) -> None:
    import redis
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    from fusion.core.settings import resolve_reference

    url = resolve_reference(secure_stack["FUSION_REDIS_URL"])
    assert url.startswith("rediss://fusion:")
    with redis.Redis.from_url(url) as client:
        assert client.ping()
    plain = url.replace("rediss://", "redis://").split("?")[0]
    with pytest.raises(redis.ConnectionError), redis.Redis.from_url(plain, socket_timeout=3) as client:
        client.ping()
    nobody = url.replace("rediss://fusion:", "rediss://default:")
    with pytest.raises(redis.AuthenticationError), redis.Redis.from_url(nobody) as client:
        client.ping()
    with pytest.raises(KafkaError):
        KafkaAdminClient(bootstrap_servers=secure_stack["FUSION_KAFKA_BOOTSTRAP_SERVERS"], bootstrap_timeout_ms=5000)
    wrong = {**kafka_options(secure_stack), "sasl_plain_password": "wrong", "bootstrap_timeout_ms": 5000}
    with pytest.raises(KafkaError):
        KafkaAdminClient(**wrong)
    KafkaAdminClient(**kafka_options(secure_stack)).close()  # the right credentials


@pytest.fixture
def secure_deployment(prefect_api: str, secure_stack: dict[str, str], tmp_path: Path) -> Iterator[str]:
    """A work pool and a deployment of the flow of this test's own, and a process worker for them that has
    the secure profile's environment (as services.sh gives its worker)."""
    pool, name = f"fusion-secure-{uuid.uuid4().hex[:6]}", f"secure-{uuid.uuid4().hex[:6]}"
    env = {**LAUNCH_ENV, "PREFECT_HOME": os.environ["PREFECT_HOME"], "PREFECT_API_URL": prefect_api, **secure_stack}
    prefect = str(Path(sys.executable).parent / "prefect")
    subprocess.run(
        [prefect, "work-pool", "create", pool, "--type", "process"], env=env, check=True, capture_output=True
    )
    flow = httpx.post(f"{prefect_api}/flows/", json={"name": "training_pipeline"}, timeout=10).json()
    deployment = {
        "name": name,
        "flow_id": flow["id"],
        "work_pool_name": pool,
        "entrypoint": "flows/training_pipeline.py:training_pipeline",
        "pull_steps": [{"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}],
    }
    created = httpx.post(f"{prefect_api}/deployments/", json=deployment, timeout=10)
    assert created.status_code in (200, 201), created.text
    deployment_id = created.json()["id"]
    try:
        worker = subprocess.Popen(
            [prefect, "worker", "start", "--pool", pool, "--type", "process"],
            env=env,
            stdout=(tmp_path / "worker.log").open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield f"training_pipeline/{name}"
        finally:
            worker.send_signal(2)
            worker.wait(timeout=60)
    finally:
        httpx.delete(f"{prefect_api}/deployments/{deployment_id}", timeout=10)
        subprocess.run([prefect, "work-pool", "delete", pool], env=env, capture_output=True, check=False)


def test_a_triggered_run_and_a_served_prediction_on_the_secure_profile(
    secure_stack: dict[str, str], prefect_api: str, secure_deployment: str, tmp_path: Path
) -> None:
    from kafka import KafkaProducer

    from tests.datasets.card_transactions import write

    paths = write(tmp_path / "data")
    home = tmp_path / "home"
    trigger = TriggerProcess(
        secure_stack["FUSION_KAFKA_BOOTSTRAP_SERVERS"],
        prefect_api,
        tmp_path,
        {**secure_stack, "FUSION_EVENTS__TRIGGER_DEPLOYMENT": secure_deployment},
    )
    try:
        event_id = f"secure-{uuid.uuid4().hex[:8]}"
        name = card_model_name(event_id)
        producer = KafkaProducer(acks="all", **kafka_options(secure_stack))
        request = card_request(event_id, "/tests/secure", paths, home)
        producer.send(trigger.requests_topic, request).get(timeout=30)
        producer.close()
        (run,) = wait_for_runs(prefect_api, event_id, timeout_s=60)
        state = wait_until_final(prefect_api, run["id"])["state"]["type"]
        assert state == "COMPLETED", state
    finally:
        assert trigger.stop() == 0
    # the run's events, read back over SASL_SSL
    options = kafka_options(secure_stack)
    records = consume(options.pop("bootstrap_servers"), STAGES, len(STAGES), timeout_s=60, **options)
    seen = {json.loads(r.value)["type"] for r in records}
    assert seen == set(STAGES)
    # served through the secure Redis: the second identical request is a cache hit
    url = serve(secure_stack, home, name, tmp_path)
    try:
        rows = pl.read_csv(paths["transactions"], n_rows=3).drop("is_fraud").to_dicts()
        first = httpx.post(f"{url}/v1/predict", json={"records": rows}, timeout=30).json()
        again = httpx.post(f"{url}/v1/predict", json={"records": rows}, timeout=30).json()
        assert first["cache_hits"] == 0 and again["cache_hits"] == 3
        assert again["predictions"] == first["predictions"]
    finally:
        stop_serving(url)


SERVERS: dict[str, subprocess.Popen[bytes]] = {}


def serve(stack: dict[str, str], home: Path, name: str, tmp_path: Path) -> str:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FUSION_")}
    env |= stack | {
        "FUSION_HOME": str(home),
        "FUSION_DATASET__MODEL__REGISTERED_NAME": name,
        "FUSION_SERVING__PORT": str(port),
        "RAY_ADDRESS": "local",
    }
    stderr = tmp_path / "serve.err"
    process = subprocess.Popen(
        [sys.executable, "-m", "fusion.cli", "serve", "--config", str(REPO / "configs" / "card_transactions.yaml")],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=stderr.open("w"),
    )
    url = f"http://127.0.0.1:{port}"
    SERVERS[url] = process
    deadline = time.monotonic() + 240
    while True:
        assert process.poll() is None, stderr.read_text()[-3000:]
        assert time.monotonic() < deadline, "fusion serve was not ready in 240 s"
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=5).status_code == 200:
                return url
        except httpx.HTTPError:
            pass
        time.sleep(1)


def stop_serving(url: str) -> None:
    process = SERVERS.pop(url)
    process.terminate()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
