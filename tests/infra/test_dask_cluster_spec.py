"""`pipeline.dask.cluster: kubernetes`: the DaskCluster and GPU DaskWorkerGroup rendered from settings
validate against the dask-kubernetes operator's CRDs (strict) and their pods against Kubernetes' own
schema, and the GPU group is one Dask can schedule torch on."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from fusion.core.settings import KubernetesDaskConfig, load_settings, with_overrides
from tasks.kube_spec import dask_cluster, dask_memory_limit, gpu_worker_group
from tasks.local_cluster import GPU
from tests.conftest import FLIGHTS_CONFIG
from tests.infra.schemas import problems

WITH_GPUS = {"gpu_workers": {"replicas": 2, "gpus": 1, "node_selector": {"pool": "gpu"}}}


def cluster_settings(**kubernetes: Any) -> KubernetesDaskConfig:
    overrides = {"pipeline": {"dask": {"cluster": "kubernetes", "kubernetes": kubernetes}}}
    return with_overrides(load_settings(FLIGHTS_CONFIG), overrides).pipeline.dask.kubernetes


def as_pod(worker: dict[str, Any], name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, **worker}


def test_the_rendered_resources_validate_against_the_operators_crds() -> None:
    config = cluster_settings(**WITH_GPUS, env={"FUSION_HOME": "/var/lib/fusion"}, env_from_secrets=["fusion-env"])
    cluster, group = dask_cluster(config), gpu_worker_group(config)
    assert group is not None
    assert problems(cluster) == [] and problems(group) == []
    for pod, name in (
        (cluster["spec"]["worker"], "w"),
        (cluster["spec"]["scheduler"], "s"),
        (group["spec"]["worker"], "g"),
    ):
        assert problems(as_pod({"spec": pod["spec"]}, name)) == []


def test_validation_catches_a_misspelled_field() -> None:
    cluster = dask_cluster(cluster_settings())
    cluster["spec"]["worker"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    cluster["spec"]["worker"]["replicas"] = "two"
    found = problems(cluster)
    assert any("imagePullPolcy" in p for p in found) and any("spec.worker.replicas" in p for p in found)


def test_the_gpu_group_asks_kubernetes_for_a_gpu_and_offers_dask_the_resource() -> None:
    config = cluster_settings(**WITH_GPUS)
    group = gpu_worker_group(config)
    assert group is not None and group["spec"]["cluster"] == config.name
    pod = group["spec"]["worker"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    args = container["args"]
    assert args[args.index("--resources") + 1] == f"{GPU}=1"  # what tasks/families.py submits torch with
    assert pod["nodeSelector"] == {"pool": "gpu"} and pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    cpu = dask_cluster(config)["spec"]["worker"]["spec"]["containers"][0]
    assert "--resources" not in cpu["args"] and "nvidia.com/gpu" not in cpu["resources"]["limits"]


def test_no_gpu_group_by_default_and_a_gpu_group_without_gpus_is_refused() -> None:
    assert gpu_worker_group(cluster_settings()) is None
    with pytest.raises(ValueError, match="gpus: 0"):
        gpu_worker_group(cluster_settings(gpu_workers={"replicas": 1, "gpus": 0}))


def test_worker_threads_and_memory_reach_dask() -> None:
    container = dask_cluster(cluster_settings(workers={"threads": 3, "memory": "6Gi"}))["spec"]["worker"]["spec"][
        "containers"
    ][0]
    args = container["args"]
    assert args[args.index("--nthreads") + 1] == "3" and args[args.index("--memory-limit") + 1] == "6GiB"
    assert [dask_memory_limit(q) for q in ("8Gi", "500M", "1073741824")] == ["8GiB", "500MB", "1073741824"]
    with pytest.raises(ValueError, match="not a Kubernetes quantity"):
        dask_memory_limit("8 gigs")


# Constructed with asynchronous=True, KubeCluster's __init__ makes the _start coroutine and leaves it to
# the caller (prefect-dask awaits it); this test never starts a cluster, so it is never awaited.
@pytest.mark.filterwarnings("ignore:coroutine 'FusionKubeCluster._start' was never awaited:RuntimeWarning")
def test_the_flow_runner_creates_this_spec_through_kubecluster() -> None:
    from dask_kubernetes.operator import KubeCluster

    from flows.training_pipeline import task_runner_for
    from tasks.kube_cluster import FusionKubeCluster

    settings = with_overrides(
        load_settings(FLIGHTS_CONFIG), {"pipeline": {"dask": {"cluster": "kubernetes", "kubernetes": WITH_GPUS}}}
    )
    runner = task_runner_for(settings)
    assert runner.cluster_class == "tasks.kube_cluster.FusionKubeCluster"
    config = settings.pipeline.dask.kubernetes

    async def build() -> FusionKubeCluster:
        # asynchronous and not awaited: constructed, nothing sent to a Kubernetes API (and nothing for
        # dask-kubernetes' exit hook to close: shutdown_on_close off)
        return FusionKubeCluster(**runner.cluster_kwargs, asynchronous=True, shutdown_on_close=False)

    cluster = asyncio.run(build())
    cluster._loop_runner.stop()
    assert isinstance(cluster, KubeCluster)
    assert cluster._custom_cluster_spec == dask_cluster(config) and cluster.namespace == config.namespace
    assert cluster._gpu_group == gpu_worker_group(config)
