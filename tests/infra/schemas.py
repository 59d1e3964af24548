"""Offline validation of the Kubernetes resources Fusion renders or ships: core kinds against the pinned
Kubernetes JSON schemas of kubernetes-validate, custom kinds against the CRDs their operators ship
(read from the installed packages, never downloaded), made strict: an object schema that lists its
properties and does not say `x-kubernetes-preserve-unknown-fields` refuses any other key, so a typo
in a field name fails here instead of being dropped by the API server."""

from __future__ import annotations

import functools
import importlib.resources
from typing import Any

import jsonschema
import yaml

KUBERNETES_VERSION = "1.33.0"  # the oldest minor the deployment supports (docs/DEPLOY.md)
OBJECT_META = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


def crd_files() -> dict[str, Any]:
    """CRD manifests: dask-kubernetes' from its wheel, KubeRay's and Strimzi's as tests/infra/crds.py
    fetched them (a missing fetch is an error that says how to make it)."""
    from tests.infra.crds import installed

    fetched = installed()
    if not fetched:
        raise RuntimeError(
            "no KubeRay/Strimzi/External Secrets CRDs in .tools/crds: "
            "run `python -m tests.infra.crds` (make infra-check)"
        )
    dask = importlib.resources.files("dask_kubernetes") / "operator/deployment/helm/dask-kubernetes-operator/crds"
    files: dict[str, Any] = {f"dask_kubernetes:{p.name}": p for p in dask.iterdir() if p.name.endswith(".yaml")}
    return files | {f"{p.parent.name}:{p.name}": p for p in fetched}


@functools.cache
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> the strict openAPIV3Schema of that served version."""
    schemas = {}
    for path in crd_files().values():
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                if version.get("served", True):
                    schema = dict(version["schema"]["openAPIV3Schema"])
                    # every resource has these; CRDs leave them out of their schema
                    implicit = {"apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": OBJECT_META}
                    schema["properties"] = {**implicit, **schema.get("properties", {})}
                    schemas[(f"{group}/{version['name']}", kind)] = strict(schema)
    return schemas


def strict(schema: Any) -> Any:
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def problems(resource: dict[str, Any]) -> list[str]:
    """What is wrong with a resource, each naming its path; [] when it validates."""
    key = (resource.get("apiVersion", ""), resource.get("kind", ""))
    schema = crd_schemas().get(key)
    if schema is not None:
        validator = jsonschema.Draft7Validator(schema)
        return [
            f"{key[1]} {'.'.join(str(p) for p in e.absolute_path) or '(top)'}: {e.message}"
            for e in sorted(validator.iter_errors(resource), key=lambda e: list(map(str, e.absolute_path)))
        ]
    import kubernetes_validate

    try:
        kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{key[1]} {'.'.join(str(p) for p in exc.path) or '(top)'}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError as exc:
        return [f"no schema for {key}: {exc}"]
    return []
