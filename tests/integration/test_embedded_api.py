"""Prefect's embedded API as `fusion run` starts it: a real server process, its database seeded from the
installed template, and a clear error when the server cannot start."""

from __future__ import annotations

import json
import os
import sqlite3
import urllib.request
from pathlib import Path

import pytest

from fusion.runtime import EmbeddedPrefectApi, make_prefect_template, prefect_template_path, seed_prefect_database

pytestmark = pytest.mark.integration


def _no_api(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    """A fresh PREFECT_HOME and no API URL for this test; monkeypatch restores both (start() exports the URL)."""
    monkeypatch.setenv("PREFECT_HOME", str(home))
    for key in ("PREFECT_API_URL", "PREFECT_API_DATABASE_CONNECTION_URL", "PREFECT_SERVER_DATABASE_CONNECTION_URL"):
        # set, then removed: monkeypatch records (and restores) a variable only when it changes one that
        # exists, and start() exports PREFECT_API_URL, which must not outlive the test (a notebook test's
        # kernel inherited a stopped server's URL)
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)


def test_a_fresh_home_starts_from_the_template_and_serves_the_api(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    template = make_prefect_template()  # what `make setup` made; made here when missing
    assert template == prefect_template_path() and template.is_file()
    home = tmp_path / "prefect"
    _no_api(monkeypatch, home)
    api = EmbeddedPrefectApi()
    api.start()
    try:
        assert os.environ["PREFECT_API_URL"] == api.url  # exported before the server is up
        assert api.booting()  # the server takes seconds to import and start
        url = api.wait(timeout=120)
        assert not api.booting()
        assert api.seeded
        request = urllib.request.Request(
            f"{url}/flows/", data=json.dumps({"name": "seeded-home"}).encode(), method="POST"
        )
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status in (200, 201)
            flow_id = json.loads(response.read())["id"]
    finally:
        api.stop()
    assert api.process is None
    # the flow was written to this home's own copy; the template is untouched
    with sqlite3.connect(home / "prefect.db") as db:
        assert db.execute("select name from flow where id = ?", (flow_id,)).fetchone() == ("seeded-home",)
    with sqlite3.connect(template) as db:
        assert db.execute("select count(*) from flow").fetchone() == (0,)


def test_a_home_with_a_database_or_a_database_url_is_not_seeded(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    make_prefect_template()
    _no_api(monkeypatch, tmp_path)
    (tmp_path / "prefect.db").write_bytes(b"the user's own")
    assert not seed_prefect_database(tmp_path)
    assert (tmp_path / "prefect.db").read_bytes() == b"the user's own"
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.setenv("PREFECT_API_DATABASE_CONNECTION_URL", "postgresql+asyncpg://db/prefect")
    assert not seed_prefect_database(other)
    assert not (other / "prefect.db").exists()
    monkeypatch.delenv("PREFECT_API_DATABASE_CONNECTION_URL")
    assert seed_prefect_database(other)
    assert (other / "prefect.db").read_bytes() == prefect_template_path().read_bytes()


def test_a_server_that_cannot_start_is_an_error_with_its_log(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _no_api(monkeypatch, tmp_path)
    # as `fusion run` without --verbose leaves this process: Prefect's console quiet
    monkeypatch.setenv("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
    (tmp_path / "prefect.db").write_bytes(b"not a database" * 100)
    api = EmbeddedPrefectApi()
    api.start()
    with pytest.raises(
        RuntimeError, match=r"embedded API server exited with code \d+ while starting; its log is "
    ) as caught:
        api.wait(timeout=120)
    assert str(tmp_path / "embedded-api.log") in str(caught.value)
    assert "not a database" in str(caught.value) or "DatabaseError" in str(caught.value)


def test_the_template_is_made_with_prefects_defaults_whatever_the_environment_says(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`make setup`'s step: a user's database URL or API URL is neither migrated nor used, and is still set after."""
    import fusion.runtime

    target = tmp_path / "share" / "prefect-template.db"
    monkeypatch.setattr(fusion.runtime, "prefect_template_path", lambda: target)
    monkeypatch.setenv("PREFECT_API_DATABASE_CONNECTION_URL", "postgresql+asyncpg://nobody@127.0.0.1:9/none")
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    assert make_prefect_template() == target
    assert os.environ["PREFECT_API_DATABASE_CONNECTION_URL"] == "postgresql+asyncpg://nobody@127.0.0.1:9/none"
    assert os.environ["PREFECT_API_URL"] == "http://127.0.0.1:9/api"
    with sqlite3.connect(target) as db:
        assert db.execute("select count(*) from alembic_version").fetchone() == (1,)
        assert db.execute("select count(*) from block_type").fetchone()[0] > 5  # registered, so a seeded home skips it
    assert not list(target.parent.glob(".*"))  # no partial copy left behind


def test_a_run_on_the_embedded_api_sends_no_heartbeats() -> None:
    """The flow engine's heartbeat interval, as it reads it: none inside `embedded_run_settings`, Prefect's
    own default outside (a server of its own watches for runs whose process died)."""
    from prefect import flow
    from prefect.flow_engine import FlowRunEngine

    from fusion.runtime import embedded_run_settings

    engine = FlowRunEngine(flow=flow(lambda: None, name="heartbeat-probe"))
    assert engine.heartbeat_seconds is not None
    with embedded_run_settings():
        assert engine.heartbeat_seconds is None
    assert engine.heartbeat_seconds is not None
