"""`pipeline.dask.cluster: kubernetes`: a dask-kubernetes KubeCluster made from Fusion's settings.

The DaskCluster and the GPU DaskWorkerGroup are tasks/kube_spec.py's resources; this class only hands
them to the operator, so the spec validated offline is the spec a run creates. The cluster lives as
long as the run (prefect-dask closes it), or until the scheduler's idle timeout."""

from __future__ import annotations

from typing import Any

from dask_kubernetes.operator import KubeCluster

from fusion.core.settings import KubernetesDaskConfig
from tasks.kube_spec import GPU_GROUP, dask_cluster, gpu_worker_group


class FusionKubeCluster(KubeCluster):  # type: ignore[misc]
    def __init__(self, config: dict[str, Any], **kwargs: Any) -> None:
        settings = KubernetesDaskConfig.model_validate(config)
        self._gpu_group = gpu_worker_group(settings)
        kwargs.setdefault("shutdown_on_close", True)
        super().__init__(custom_cluster_spec=dask_cluster(settings), namespace=settings.namespace, **kwargs)

    async def _start(self) -> None:
        await super()._start()
        if self._gpu_group is not None:
            await self._add_worker_group(name=GPU_GROUP, custom_spec=self._gpu_group["spec"]["worker"])
