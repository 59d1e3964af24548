"""`fusion serve` stopped by SIGTERM while its replicas start (a pod replaced before it is up): it shuts
Ray and HAProxy down and leaves nothing behind, instead of dying in Ray's own signal handler."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from fusion.core.net import free_port
from tests.conftest import FLIGHTS_CONFIG
from tests.serving.conftest import start_fusion_serve

pytestmark = pytest.mark.integration


def haproxy_folders() -> set[Path]:
    return set(Path("/tmp").glob("fh*"))  # serving.app.ingress_environment's folders


def test_sigterm_during_start_stops_cleanly(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FUSION_")}
    env |= {
        "FUSION_HOME": str(tmp_path / "home"),  # no champion: replicas start and wait for one
        "FUSION_SERVING__PORT": str(free_port()),
        "FUSION_LOG_FORMAT": "text",
        "RAY_ADDRESS": "local",  # a Ray instance of its own
    }
    before = haproxy_folders()
    stderr = tmp_path / "serve.err"
    process = start_fusion_serve(FLIGHTS_CONFIG, env, stderr)
    try:
        deadline = time.monotonic() + 180
        while "Started Serve" not in stderr.read_text():  # Ray is up, the app is not yet
            assert process.poll() is None, f"fusion serve exited: {stderr.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "Serve did not start in 180 s"
            time.sleep(0.1)
        ours = haproxy_folders() - before
        assert len(ours) == 1, ours
        assert "Ctrl-C stops" not in stderr.read_text(), "the start ended before the signal: nothing was tested"
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    log = stderr.read_text()
    assert code == 0, log[-3000:]
    assert "SIGTERM received" not in log, "Ray's native handler took the signal"
    (folder,) = ours
    assert not folder.exists()
    left = []
    for proc in psutil.process_iter():
        try:
            if any(str(folder) in arg for arg in proc.cmdline()):
                left.append(proc)
        except psutil.Error:
            continue
    assert not left, f"HAProxy of the stopped server still runs: {left}"
