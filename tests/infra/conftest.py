"""tests/infra need the KubeRay and Strimzi CRDs: fetched once (tests/infra/crds.py), idempotent."""

from __future__ import annotations

import pytest

from tests.infra import crds


@pytest.fixture(scope="session", autouse=True)
def fetched_crds() -> None:
    crds.fetch()
