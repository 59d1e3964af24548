"""infra/terraform checked offline (no cluster, no provider download): it parses, every variable and
output is documented and every variable used, module calls pass what modules declare, every manifest
it applies validates strictly against Kubernetes' schemas or its operator's CRD, and its wiring agrees
with Fusion's code: topics, settings by environment, serving's import path and arguments, versions."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from fusion.core.settings import Settings, load_settings
from tests.conftest import FLIGHTS_CONFIG
from tests.infra import crds
from tests.infra.schemas import problems
from tests.infra.terraform import ROOT, Module, blocks, parse, tf_files

INPUTS = {"image": "registry.example/fusion@sha256:" + "0" * 64, "mlflow_artifacts_uri": "s3://fusion-artifacts/mlflow"}
MODULES = sorted(p.name for p in (ROOT / "modules").iterdir() if p.is_dir())


def root(**changes: Any) -> Module:
    return Module(ROOT, {**INPUTS, **changes})


def module_dirs() -> list[Path]:
    return [ROOT, *[(ROOT / "modules" / m) for m in MODULES]]


def test_every_file_parses_and_every_variable_and_output_is_documented() -> None:
    assert len(tf_files()) >= 20
    for folder in module_dirs():
        parsed = [parse(p) for p in sorted(folder.glob("*.tf"))]
        text = "\n".join(p.read_text() for p in folder.glob("*.tf"))
        for body in parsed:
            for name, variable in blocks(body, "variable").items():
                assert variable.get("description"), f"{folder.name}: variable {name} has no description"
                assert variable.get("type"), f"{folder.name}: variable {name} has no type"
                assert re.search(rf"\bvar\.{name}\b", text), f"{folder.name}: variable {name} is never used"
            for name, output in blocks(body, "output").items():
                assert output.get("description"), f"{folder.name}: output {name} has no description"


def test_module_calls_pass_what_the_modules_declare() -> None:
    calls = Module(ROOT, INPUTS).merged("module")
    assert sorted(calls) == MODULES
    for name, call in calls.items():
        declared = Module(ROOT / "modules" / name, {}).merged("variable")
        passed = set(call) - {"source", "depends_on", "providers"}
        required = {v for v, body in declared.items() if "default" not in body}
        assert passed <= set(declared), f"module {name} is passed undeclared {passed - set(declared)}"
        assert required <= passed, f"module {name} lacks {required - passed}"


def helm_releases() -> list[tuple[Path, str, dict[str, Any]]]:
    """(file, resource name, arguments) of every helm_release."""
    return [
        (path, name, body)
        for path in tf_files()
        for resource in parse(path).get("resource", [])
        for name, body in resource.get("helm_release", {}).items()
    ]


def test_every_helm_release_is_pinned() -> None:
    releases = helm_releases()
    assert len(releases) >= 6
    for path, name, body in releases:
        assert body.get("version"), f"{path.relative_to(ROOT)}: helm_release {name} has no version"


@pytest.mark.parametrize("storage_class", [None, "fast-ssd"])
def test_every_manifest_validates(storage_class: str | None) -> None:
    kinds = set()
    for name in MODULES:
        for address, manifest in root(storage_class=storage_class).module(name).manifests():
            assert problems(manifest) == [], f"module {name} {address}"
            kinds.add(manifest["kind"])
    assert {
        "NetworkPolicy",
        "StatefulSet",
        "Kafka",
        "KafkaNodePool",
        "KafkaTopic",
        "RayService",
        "Deployment",
        "ExternalSecret",
    } <= kinds


def test_kafka_topics_are_the_ones_fusion_uses() -> None:
    settings = load_settings(FLIGHTS_CONFIG)
    events = settings.events
    from fusion.core.events import EventType

    used = {events.topic_for(t) for t in EventType.__args__ if t != "fusion.ingest.requested"}  # type: ignore[attr-defined]
    used |= {events.requests_topic, events.deadletter_topic}
    topics = {m["spec"]["topicName"] for _, m in root().module("kafka").manifests() if m["kind"] == "KafkaTopic"}
    assert topics == used


def test_the_rayservice_runs_serving_with_arguments_it_accepts() -> None:
    from serving.model_server import ServingArgs

    (service,) = [m for _, m in root().module("serving").manifests() if m["kind"] == "RayService"]
    config = yaml.safe_load(service["spec"]["serveConfigV2"])
    (app,) = config["applications"]
    module, _, attribute = app["import_path"].partition(":")
    assert getattr(importlib.import_module(module), attribute).__name__ == "build_app"
    args = ServingArgs.model_validate(app["args"])
    dataset = load_settings(FLIGHTS_CONFIG).dataset
    assert args.model_name == dataset.model.registered_name
    assert args.record_fields == dict(dataset.source.tables[dataset.source.primary].columns)
    assert args.redis_url == "env:FUSION_REDIS_URL" and args.serving.port == config["http_options"]["port"]
    assert service["spec"]["rayClusterConfig"]["rayVersion"] == importlib.import_module("ray").__version__


def test_flow_runs_get_a_kubernetes_dask_cluster_from_the_settings_terraform_sets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The environment the work pool gives flow runs makes Fusion's settings choose the Kubernetes
    cluster, with the GPU group Terraform's variables describe, and that cluster validates."""
    from tasks.kube_spec import dask_cluster, gpu_worker_group

    prefect = root(dask_gpu_workers=2).module("prefect")
    for key, value in prefect.local("flow_env").items():
        monkeypatch.setenv(key, value)
    settings: Settings = load_settings(FLIGHTS_CONFIG)
    dask = settings.pipeline.dask
    assert dask.cluster == "kubernetes" and dask.kubernetes.image == INPUTS["image"]
    assert dask.kubernetes.gpu_workers.replicas == 2 and dask.kubernetes.env_from_secrets == ["fusion-env"]
    assert dask.kubernetes.gpu_workers.tolerations[0]["key"] == "nvidia.com/gpu"
    assert settings.mlflow_tracking_uri == "http://fusion-mlflow.fusion.svc:5000"
    group = gpu_worker_group(dask.kubernetes)
    assert group is not None and problems(group) == [] and problems(dask_cluster(dask.kubernetes)) == []
    assert group["spec"]["worker"]["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    # workers reach the lake through the platform module's object-store NetworkPolicy
    policies = dict(root().module("platform").manifests())
    selector = policies['kubernetes_manifest.network_policy["object-store"]']["spec"]["podSelector"]["matchLabels"]
    for worker in (dask_cluster(dask.kubernetes)["spec"]["worker"], group["spec"]["worker"]):
        assert selector.items() <= worker["metadata"]["labels"].items()


def base_job_template(prefect: Module) -> dict[str, Any]:
    """base-job-template.json as Terraform's templatefile renders it."""
    text = (ROOT / "modules" / "prefect" / "base-job-template.json").read_text()
    values = {
        "image": prefect.var("image"),
        "namespace": prefect.var("namespace"),
        "env": json.dumps(prefect.local("flow_env")),
        "secrets_env_secret": prefect.var("secrets_env_secret"),
    }
    return dict(json.loads(re.sub(r"\$\{(\w+)\}", lambda m: str(values[m.group(1)]), text)))


def fill(node: Any, defaults: dict[str, Any]) -> Any:
    """Prefect's placeholders replaced by the variables' defaults, as its worker does for a run."""
    if isinstance(node, dict):
        return {k: fill(v, defaults) for k, v in node.items()}
    if isinstance(node, list):
        return [fill(v, defaults) for v in node]
    whole = re.fullmatch(r"\{\{ (\w+) \}\}", node) if isinstance(node, str) else None
    return defaults[whole.group(1)] if whole else node


def test_the_work_pools_job_is_a_valid_job_that_carries_fusions_environment() -> None:
    template = base_job_template(root().module("prefect"))
    defaults = {k: v.get("default") for k, v in template["variables"]["properties"].items()}
    defaults["command"] = ["prefect", "flow-run", "execute"]
    job = fill(template["job_configuration"]["job_manifest"], defaults)
    container = job["spec"]["template"]["spec"]["containers"][0]
    container["env"] = [{"name": k, "value": v} for k, v in container["env"].items()]  # as the worker does
    job["metadata"]["name"] = "fusion-flow-run-x"
    del job["metadata"]["generateName"]
    assert problems(job) == []
    env = {e["name"] for e in container["env"]}
    assert {"FUSION_PIPELINE__DASK__CLUSTER", "PREFECT_API_URL", "FUSION_MLFLOW_TRACKING_URI"} <= env
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == "fusion-flow"


def secret_references(node: Any) -> set[tuple[str, str | None]]:
    """(Secret, key) of every secretKeyRef, and (Secret, None) of every envFrom secretRef, in a manifest."""
    found: set[tuple[str, str | None]] = set()
    if isinstance(node, dict):
        if "secretKeyRef" in node:
            found.add((node["secretKeyRef"]["name"], node["secretKeyRef"]["key"]))
        if "secretRef" in node:
            found.add((node["secretRef"]["name"], None))
        for value in node.values():
            found |= secret_references(value)
    elif isinstance(node, list):
        for value in node:
            found |= secret_references(value)
    return found


def test_every_secret_a_pod_reads_is_made_from_the_secret_store(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Secrets pods name (Terraform's manifests, the flow runs' job, the Dask pods the flow renders)
    are exactly those the ExternalSecrets make, and every key a pod reads is one the variable that
    maps them to the secret store tells the user to put there."""
    from tasks.kube_spec import dask_cluster

    top = root()
    made = {
        m["spec"]["target"]["name"]: m["spec"]["dataFrom"][0]["extract"]["key"]
        for _, m in top.module("secrets").manifests()
    }
    remote = top.var("secret_remote_keys")
    names = {
        "env": top.var("secrets_env_secret"),
        "postgres": top.var("postgres_secret"),
        "redis": top.var("redis_secret"),
    }
    assert made == {names[k]: remote[k] for k in names}

    refs: set[tuple[str, str | None]] = set()
    for name in MODULES:
        for _, manifest in top.module(name).manifests():
            if manifest["kind"] != "ExternalSecret":
                refs |= secret_references(manifest)
    prefect = top.module("prefect")
    refs |= secret_references(base_job_template(prefect))
    for key, value in prefect.local("flow_env").items():
        monkeypatch.setenv(key, value)
    refs |= secret_references(dask_cluster(load_settings(FLIGHTS_CONFIG).pipeline.dask.kubernetes))
    assert {name for name, _ in refs} == set(made)

    description = top.merged("variable")["secret_remote_keys"]["description"]
    documented = {kind: re.search(rf"\b{kind}: ([^;]+)", description).group(1) for kind in names}  # type: ignore[union-attr]
    kind_of = {secret: kind for kind, secret in names.items()}
    for secret, key in refs:
        if key is not None:
            assert key in documented[kind_of[secret]], (
                f"{secret} is read with key {key}, not in secret_remote_keys' description"
            )


def test_operator_versions_match_the_crds_the_checks_use() -> None:
    import dask_kubernetes

    versions = Module(ROOT / "modules" / "operators", {})
    assert versions.local("kuberay_version") == crds.KUBERAY_VERSION.removeprefix("v")
    assert versions.local("strimzi_version") == crds.STRIMZI_VERSION
    assert versions.local("eso_version") == crds.ESO_VERSION.removeprefix("v")
    assert versions.local("dask_operator_version") == dask_kubernetes.__version__


def test_the_kubernetes_deployments_target_the_pool_terraform_makes() -> None:
    repo = ROOT.parents[1]
    spec = yaml.safe_load((repo / "infra" / "prefect-kubernetes.yaml").read_text())
    local = yaml.safe_load((repo / "prefect.yaml").read_text())
    pool = Module(ROOT / "modules" / "prefect", {"namespace": "fusion"}).local("work_pool")
    assert {d["work_pool"]["name"] for d in spec["deployments"]} == {pool}
    # the same names as the local deployments: fusion trigger's events.trigger_deployment finds either
    assert [d["name"] for d in spec["deployments"]] == [d["name"] for d in local["deployments"]]
    trigger = load_settings(FLIGHTS_CONFIG).events.trigger_deployment
    assert trigger.split("/")[1] in {d["name"] for d in spec["deployments"]}
    for deployment in spec["deployments"]:
        path, _, flow = deployment["entrypoint"].partition(":")
        assert (repo / path).is_file() and f"def {flow}(" in (repo / path).read_text()
        assert deployment["work_pool"]["job_variables"]["image"] == "{{ $FUSION_IMAGE }}"


def test_services_are_named_as_the_helm_releases_name_them_and_installed_in_order() -> None:
    """Hosts Fusion is pointed at follow from the chart releases (Prefect's chart names its Service
    after fullnameOverride "prefect-server" and its PostgreSQL <release>-postgresql; MLflow's chart takes
    a release name containing "mlflow" as is), MLflow accepts that Host header (it refuses names other
    than localhost and private IPs by default), and the PostgreSQL MLflow's database goes into is
    installed before the stores module needs it."""
    from fnmatch import fnmatch
    from urllib.parse import urlsplit

    top = root()
    releases = {name: body for _, name, body in helm_releases()}
    namespace = top.var("namespace")
    assert top.local("postgres_host") == f"{releases['server']['name']}-postgresql.{namespace}.svc"
    assert urlsplit(top.local("prefect_api_url")).hostname == f"{releases['server']['name']}.{namespace}.svc"
    mlflow = urlsplit(top.local("mlflow_uri"))
    assert mlflow.hostname == f"{releases['mlflow']['name']}.{namespace}.svc" and "mlflow" in releases["mlflow"]["name"]
    stores = (ROOT / "modules" / "stores" / "main.tf").read_text()
    allowed = re.search(r"serverAllowedHosts\s*=\s*(\[.*?\])", stores)
    assert allowed, "MLflow's chart values set no serverAllowedHosts"
    patterns = json.loads(allowed.group(1).replace("${var.namespace}", namespace))
    assert any(fnmatch(mlflow.netloc, p) for p in patterns), f"MLflow would refuse Host {mlflow.netloc}"

    calls = top.merged("module")

    def after(name: str) -> set[str]:
        direct = {
            d.removeprefix("${").removesuffix("}").removeprefix("module.") for d in calls[name].get("depends_on", [])
        }
        return direct.union(*(after(d) for d in direct)) if direct else set()

    assert "prefect" in after("stores") and "stores" not in after("prefect")
    assert "secrets" in after("stores") & after("prefect") & after("serving")


def test_the_example_secret_store_validates_and_is_the_store_terraform_names() -> None:
    (example,) = (ROOT.parent / "examples").glob("*secret-store*.yaml")
    store = yaml.safe_load(example.read_text())
    assert problems(store) == []
    assert {"kind": store["kind"], "name": store["metadata"]["name"]} == root().var("secret_store")
    assert root().var("namespace") in store["spec"]["conditions"][0]["namespaces"]


def test_the_ray_workers_have_a_sidecar_copying_replica_logs_to_the_pods_output() -> None:
    from serving.logs import REPLICA_FILES

    (service,) = [m for _, m in root().module("serving").manifests() if m["kind"] == "RayService"]
    (group,) = service["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    ray_container, sidecar = group["template"]["spec"]["containers"]
    assert ray_container["name"] == "ray-worker"  # KubeRay takes the first container for Ray
    python, flag, module, folder = sidecar["command"]
    assert (python, flag) == ("python", "-m") and importlib.import_module(module).main  # serving/logs.py
    # Ray's default session folder, where replicas write `replica_*.log` when no logs_dir is given (the
    # RayService's arguments give none), on the volume Ray's container writes it to
    assert folder == "/tmp/ray/session_latest/logs/serve" and REPLICA_FILES == "replica_*.log"
    assert "logs_dir" not in yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]["args"]
    (mount,) = sidecar["volumeMounts"]
    assert mount["readOnly"] and folder.startswith(mount["mountPath"])
    assert any(
        m["name"] == mount["name"] and m["mountPath"] == mount["mountPath"] for m in ray_container["volumeMounts"]
    )
