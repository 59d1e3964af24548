"""`make device-check`'s script runs here: without CUDA it trains the CPU part, says so and exits 0."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration


def test_device_check_without_cuda_runs_the_cpu_part_and_exits_0() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: make device-check measures it for real")
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.models", "--device-check", "--epochs", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "no CUDA device" in done.stdout
    cpu = next(line for line in done.stdout.splitlines() if line.startswith("cpu: "))
    assert "rows/s, test AUC 0." in cpu and "peak GPU memory - MiB" in cpu
