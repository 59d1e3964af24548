"""The Dask cluster of `pipeline.dask.cluster: kubernetes`, as the dask-kubernetes operator's resources.

A `DaskCluster` (scheduler and the CPU worker group) and, when `gpu_workers.replicas > 0`, a
`DaskWorkerGroup` of GPU workers. A GPU worker pod gets `nvidia.com/gpu` in its limits (so Kubernetes
puts it on a GPU node) **and** `--resources GPU=<n>` on its command line (so Dask schedules torch
training on it: a Kubernetes limit alone gives Dask no resource; tasks/families.py asks for GPU=1).
Pure rendering: dicts that `KubeCluster(custom_cluster_spec=...)` and the operator take, validated
offline against the operator's CRDs in tests/infra/.
"""

from __future__ import annotations

import re
from typing import Any

from fusion.core.settings import DaskWorkerGroup, KubernetesDaskConfig
from tasks.local_cluster import GPU

API_VERSION = "kubernetes.dask.org/v1"
SCHEDULER_PORT, SCHEDULER_DASHBOARD, WORKER_DASHBOARD = 8786, 8787, 8788
GPU_GROUP = "gpu"  # the DaskWorkerGroup's name suffix: <cluster>-gpu


def dask_memory_limit(quantity: str) -> str:
    """A Kubernetes memory quantity as Dask's --memory-limit (Gi -> GiB, G -> GB; plain bytes as is)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([EPTGMK]i?)?", quantity)
    if match is None:
        raise ValueError(f"memory {quantity!r} is not a Kubernetes quantity such as 8Gi")
    number, unit = match.groups()
    return f"{number}{unit}B" if unit else number


def _labels(component: str) -> dict[str, str]:
    labels = {"app.kubernetes.io/part-of": "fusion", "app.kubernetes.io/component": component}
    if component in ("dask-worker", "dask-gpu-worker"):
        # workers read and write the lake (S3 or compatible): infra/terraform's object-store policy
        labels["fusion.io/object-store"] = "true"
    return labels


def _env(config: KubernetesDaskConfig) -> dict[str, Any]:
    home = {"HOME": WRITABLE["home"], "FUSION_HOME": WRITABLE["home"]}
    env = [{"name": k, "value": v} for k, v in sorted({**home, **config.env}.items())]
    env_from = [{"secretRef": {"name": name}} for name in config.env_from_secrets]
    return {"env": env, **({"envFrom": env_from} if env_from else {})}


# A read-only root filesystem; what a worker writes goes to two emptyDirs: /tmp (Dask's spill and
# scratch space) and the home, /var/lib/fusion (FUSION_HOME, Prefect's home, torch's and matplotlib's
# caches through HOME).
POD_TMP = "/tmp"  # nosec B108  # the mount path of a pod's emptyDir volume, not a file made here
WRITABLE = {"tmp": POD_TMP, "home": "/var/lib/fusion"}


def _security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "capabilities": {"drop": ["ALL"]},
    }


def _mounts() -> dict[str, Any]:
    return {"volumeMounts": [{"name": name, "mountPath": path} for name, path in WRITABLE.items()]}


def _pod(config: KubernetesDaskConfig, container: dict[str, Any], group: DaskWorkerGroup | None) -> dict[str, Any]:
    pod: dict[str, Any] = {
        "containers": [container],
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}, "fsGroup": 10001},
        "volumes": [{"name": name, "emptyDir": {}} for name in WRITABLE],
    }
    if not config.service_account:  # Dask's pods do not call the Kubernetes API
        pod["automountServiceAccountToken"] = False
    if config.service_account:
        pod["serviceAccountName"] = config.service_account
    if group is not None and group.node_selector:
        pod["nodeSelector"] = dict(group.node_selector)
    if group is not None and group.tolerations:
        pod["tolerations"] = [dict(t) for t in group.tolerations]
    return pod


def worker_container(config: KubernetesDaskConfig, group: DaskWorkerGroup) -> dict[str, Any]:
    args = [
        "worker",
        "--name",
        "$(DASK_WORKER_NAME)",
        "--nthreads",
        str(group.threads),
        "--memory-limit",
        dask_memory_limit(group.memory),
        "--dashboard",
        "--dashboard-address",
        str(WORKER_DASHBOARD),
        "--local-directory",
        WRITABLE["tmp"],
    ]
    resources = {"cpu": group.cpu, "memory": group.memory}
    limits = dict(resources)
    if group.gpus:
        args += ["--resources", f"{GPU}={group.gpus}"]
        limits["nvidia.com/gpu"] = str(group.gpus)
    return {
        "name": "worker",
        "image": config.image,
        "imagePullPolicy": config.image_pull_policy,
        "command": ["dask"],
        "args": args,
        "ports": [{"name": "http-dashboard", "containerPort": WORKER_DASHBOARD, "protocol": "TCP"}],
        "readinessProbe": {**_probe(), "initialDelaySeconds": 5, "periodSeconds": 10},
        "livenessProbe": {**_probe(), "initialDelaySeconds": 30, "periodSeconds": 30, "timeoutSeconds": 10},
        "resources": {"requests": resources, "limits": limits},
        "securityContext": _security(),
        **_mounts(),
        **_env(config),
    }


def _probe() -> dict[str, Any]:
    return {"httpGet": {"port": "http-dashboard", "path": "/health"}}


def scheduler_container(config: KubernetesDaskConfig) -> dict[str, Any]:
    probe = _probe()
    resources = {"cpu": config.scheduler_cpu, "memory": config.scheduler_memory}
    args = ["scheduler", "--port", str(SCHEDULER_PORT), "--dashboard-address", f":{SCHEDULER_DASHBOARD}"]
    if config.idle_timeout_s:
        args += ["--idle-timeout", f"{config.idle_timeout_s}s"]
    return {
        "name": "scheduler",
        "image": config.image,
        "imagePullPolicy": config.image_pull_policy,
        "command": ["dask"],
        "args": args,
        "ports": [
            {"name": "tcp-comm", "containerPort": SCHEDULER_PORT, "protocol": "TCP"},
            {"name": "http-dashboard", "containerPort": SCHEDULER_DASHBOARD, "protocol": "TCP"},
        ],
        "readinessProbe": {**probe, "initialDelaySeconds": 5, "periodSeconds": 10},
        "livenessProbe": {**probe, "initialDelaySeconds": 15, "periodSeconds": 20},
        "resources": {"requests": resources, "limits": resources},
        "securityContext": _security(),
        **_mounts(),
        **_env(config),
    }


def dask_cluster(config: KubernetesDaskConfig) -> dict[str, Any]:
    """The DaskCluster resource: scheduler and CPU workers."""
    return {
        "apiVersion": API_VERSION,
        "kind": "DaskCluster",
        "metadata": {"name": config.name, "namespace": config.namespace, "labels": _labels("dask")},
        "spec": {
            "worker": {
                "replicas": config.workers.replicas,
                "metadata": {"labels": _labels("dask-worker")},
                "spec": _pod(config, worker_container(config, config.workers), config.workers),
            },
            "scheduler": {
                "metadata": {"labels": _labels("dask-scheduler")},
                "spec": _pod(config, scheduler_container(config), None),
                "service": {
                    "type": "ClusterIP",
                    "selector": {"dask.org/cluster-name": config.name, "dask.org/component": "scheduler"},
                    "ports": [
                        {"name": "tcp-comm", "protocol": "TCP", "port": SCHEDULER_PORT, "targetPort": "tcp-comm"},
                        {
                            "name": "http-dashboard",
                            "protocol": "TCP",
                            "port": SCHEDULER_DASHBOARD,
                            "targetPort": "http-dashboard",
                        },
                    ],
                },
            },
        },
    }


def gpu_worker_group(config: KubernetesDaskConfig) -> dict[str, Any] | None:
    """The DaskWorkerGroup of GPU workers, or None when `gpu_workers.replicas` is 0."""
    group = config.gpu_workers
    if group.replicas == 0:
        return None
    if group.gpus == 0:
        raise ValueError("pipeline.dask.kubernetes.gpu_workers has replicas but gpus: 0 (a GPU group needs gpus >= 1)")
    return {
        "apiVersion": API_VERSION,
        "kind": "DaskWorkerGroup",
        "metadata": {
            "name": f"{config.name}-{GPU_GROUP}",
            "namespace": config.namespace,
            "labels": _labels("dask-gpu-worker"),
        },
        "spec": {
            "cluster": config.name,
            "worker": {
                "replicas": group.replicas,
                "metadata": {"labels": _labels("dask-gpu-worker")},
                "spec": _pod(config, worker_container(config, group), group),
            },
        },
    }
