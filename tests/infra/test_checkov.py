"""checkov's Kubernetes checks over every pod Fusion ships or renders: the manifests of infra/terraform,
the pod templates inside its RayService and work-pool job, and the Dask pods from settings. checkov
runs from its own environment (`uv tool run`, pinned): its pins conflict with uv.lock. A skip is an
annotation on the resource with its reason; a failure without one fails here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from fusion.core.settings import KubernetesDaskConfig
from tasks.kube_spec import dask_cluster, gpu_worker_group
from tests.infra.test_terraform import INPUTS, MODULES, base_job_template, fill, root
from tests.infra.tools import uv_tool

CHECKOV = "checkov==3.3.30"


def pod(name: str, spec: dict[str, Any], template_metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """A pod template as the Pod checkov checks, with the template's annotations (its skips)."""
    annotations = (template_metadata or {}).get("annotations", {})
    metadata = {"name": name, "namespace": "fusion", **({"annotations": annotations} if annotations else {})}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def shipped() -> list[dict[str, Any]]:
    resources = [m for name in MODULES for _, m in root().module(name).manifests()]
    for service in [r for r in resources if r["kind"] == "RayService"]:
        cluster = service["spec"]["rayClusterConfig"]
        head = cluster["headGroupSpec"]["template"]
        resources.append(pod("ray-head", head["spec"], head["metadata"]))
        resources += [
            pod(f"ray-{g['groupName']}", g["template"]["spec"], g["template"]["metadata"])
            for g in cluster["workerGroupSpecs"]
        ]
    template = base_job_template(root().module("prefect"))
    defaults = {k: v.get("default") for k, v in template["variables"]["properties"].items()}
    job = fill(template["job_configuration"]["job_manifest"], {**defaults, "command": ["prefect"]})
    job_pod = job["spec"]["template"]["spec"]
    job_pod["containers"][0]["env"] = [{"name": k, "value": v} for k, v in job_pod["containers"][0]["env"].items()]
    resources.append(pod("flow-run", job_pod, job["spec"]["template"]["metadata"]))
    config = KubernetesDaskConfig(image=INPUTS["image"], gpu_workers={"replicas": 1})
    group = gpu_worker_group(config)
    assert group is not None
    cluster = dask_cluster(config)["spec"]
    resources += [
        pod("dask-scheduler", cluster["scheduler"]["spec"]),
        pod("dask-worker", cluster["worker"]["spec"]),
        pod("dask-gpu-worker", group["spec"]["worker"]["spec"]),
    ]
    return resources


def test_checkov_passes_every_pod_fusion_ships(tmp_path: Path) -> None:
    resources = shipped()
    for i, resource in enumerate(resources):
        (tmp_path / f"{i:02d}-{resource['kind']}-{resource['metadata']['name']}.yaml").write_text(
            yaml.safe_dump(resource)
        )
    done = uv_tool(
        CHECKOV,
        "checkov",
        "-d",
        str(tmp_path),
        "--framework",
        "kubernetes",
        "--skip-download",  # no policy download from Prisma Cloud: the checks in the package
        "-o",
        "json",
    )
    report = json.loads(done.stdout)
    report = report[0] if isinstance(report, list) else report
    assert report["summary"]["resource_count"] >= len(resources), report["summary"]
    failed = [f"{f['check_id']} {f['resource']}: {f['check_name']}" for f in report["results"]["failed_checks"]]
    assert failed == []
    assert report["summary"]["passed"] > 400
    for skipped in report["results"]["skipped_checks"]:
        assert len(skipped["check_result"].get("suppress_comment", "")) > 20, skipped["check_id"]
