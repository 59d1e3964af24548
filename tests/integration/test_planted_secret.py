"""Secrets stay secret: a run whose Redis password (a real Redis ACL user) and serving JWT secret are given as
`env:` and `file:` references, with JSON logs, leaves neither value in anything it writes or reports: its
logs, the MLflow store (params, tags, artifacts, models), the events, the lake, GX's files, Prefect's
database (flow run parameters, task inputs, artifacts, logs)."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, _service

pytestmark = pytest.mark.integration


def files_holding(root: Path, secret: bytes) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and secret in p.read_bytes()]


@pytest.fixture
def acl_user() -> Iterator[tuple[str, str]]:
    """A Redis ACL user with a password of its own (on the real Redis), removed after."""
    import redis

    service = _service("redis")
    next(service)
    port = os.environ.get("FUSION_REDIS_PORT", "6379")
    admin = redis.Redis(port=int(port))
    name, password = f"fusion-test-{uuid.uuid4().hex[:6]}", f"planted-{uuid.uuid4().hex}"
    admin.execute_command("ACL", "SETUSER", name, "on", f">{password}", "~*", "+@all")
    try:
        yield name, password
    finally:
        admin.execute_command("ACL", "DELUSER", name)
        admin.close()
        next(service, None)


def test_a_run_leaves_no_planted_secret_anywhere(
    acl_user: tuple[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    from flows.training_pipeline import run_pipeline
    from fusion.core.settings import load_settings
    from tests.datasets.card_transactions import write

    user, redis_password = acl_user
    jwt_secret = f"planted-{uuid.uuid4().hex}"
    (tmp_path / "jwt-secret").write_text(jwt_secret + "\n")
    paths = write(tmp_path / "data")
    home = tmp_path / "home"
    port = os.environ.get("FUSION_REDIS_PORT", "6379")
    for key, value in {
        "FUSION_HOME": str(home),
        "FUSION_LOG_FORMAT": "json",
        "PLANTED_REDIS_URL": f"redis://{user}:{redis_password}@127.0.0.1:{port}/14",
        "FUSION_REDIS_URL": "env:PLANTED_REDIS_URL",
        "FUSION_SERVING__AUTH__SECRET": f"file:{tmp_path / 'jwt-secret'}",
        "FUSION_DATASET__SOURCE__TABLES__TRANSACTIONS__URI": str(paths["transactions"]),
        "FUSION_DATASET__SOURCE__TABLES__ACCOUNTS__URI": str(paths["accounts"]),
        "FUSION_DATASET__MODEL__REGISTERED_NAME": f"secret_{uuid.uuid4().hex[:6]}",
    }.items():
        monkeypatch.setenv(key, value)
    settings = load_settings(REPO / "configs" / "card_transactions.yaml")
    # the references resolved: the run really uses both values
    assert settings.redis_url is not None and redis_password in settings.redis_url.get_secret_value()
    assert settings.serving.auth.secret is not None and settings.serving.auth.secret.get_secret_value() == jwt_secret
    assert redis_password not in repr(settings) and jwt_secret not in settings.model_dump_json()

    caplog.set_level(logging.DEBUG)
    summary = run_pipeline(settings)
    assert summary.online_features  # written to Redis as the ACL user
    import redis

    with redis.Redis.from_url(settings.redis_url.get_secret_value()) as client:
        assert client.dbsize() > 0
        client.flushdb()

    said = capfd.readouterr()
    logged = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    prefect_home = Path(os.environ["PREFECT_HOME"])
    for secret in (redis_password, jwt_secret):
        assert secret not in said.out and secret not in said.err, "printed"
        assert secret not in logged, "logged"
        assert files_holding(home, secret.encode()) == [], "in FUSION_HOME: MLflow, lake, events, GX"
        assert files_holding(prefect_home, secret.encode()) == [], "in Prefect's database or files"
    # the search itself finds what is there
    assert files_holding(tmp_path, jwt_secret.encode()) == [str(tmp_path / "jwt-secret")]
