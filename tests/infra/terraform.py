"""infra/terraform read offline: every file parsed (python-hcl2), and the Kubernetes manifests of its
`kubernetes_manifest` resources evaluated with the variables' values, so they can be validated like
the manifests Fusion renders in Python.

The evaluator knows the expressions the manifests use and nothing more: references (var., local.,
each.key, each.value, module.<name>.<output>, a resource's arguments), computed map keys
`(var.x) = ...`, index by key, the functions below, `-`, and two for-expressions: `[for k, v in MAP : { name = k,
value = v }]` (a map as a container's env list) and `{ for k, v in MAP : k => v if v != null }` (optional
keys); object literals go in `locals`, not inside an expression. Anything else raises, naming the
expression, so a manifest that outgrows it is noticed here, not skipped."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import hcl2
import yaml
from hcl2 import SerializationOptions

ROOT = Path(__file__).resolve().parents[2] / "infra" / "terraform"
OPTIONS = SerializationOptions(strip_string_quotes=True, explicit_blocks=False, with_comments=False)
REFERENCE = re.compile(r"\$\{(.*?)\}(?![^{]*\})", re.DOTALL)
FOR_NON_NULL = re.compile(r"^\{for (\w+), (\w+) in (.+?) : \1 => \2 if \2 != null\}$", re.DOTALL)
FOR_ENV = re.compile(r"^\[for (\w+), (\w+) in (.+?) : \{\s*name\s*=\s*\1,?\s*value\s*=\s*\2\s*\}\]$", re.DOTALL)


def parse(path: Path) -> dict[str, Any]:
    with path.open() as f:
        return dict(hcl2.load(f, serialization_options=OPTIONS))


def tf_files(root: Path = ROOT) -> list[Path]:
    return sorted(root.rglob("*.tf"))


def blocks(parsed: dict[str, Any], kind: str) -> dict[str, Any]:
    """`variable`, `output`, `module`, `locals`: name -> body (locals merged)."""
    out: dict[str, Any] = {}
    for entry in parsed.get(kind, []):
        out.update(entry)
    return out


class Attributes:
    """Attribute access over evaluated arguments; blocks are lists, as in Terraform's references."""

    def __init__(self, data: Any) -> None:
        self._data = data

    def __getattr__(self, key: str) -> Any:
        return self._wrap(self._data[key])

    def __getitem__(self, index: Any) -> Any:
        return self._wrap(self._data[index])

    @staticmethod
    def _wrap(value: Any) -> Any:
        return Attributes(value) if isinstance(value, dict | list) else value


def _merge(*maps: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for m in maps:
        out.update(m)
    return out


FUNCTIONS: dict[str, Any] = {
    "merge": _merge,
    "min": min,
    "max": max,
    "replace": lambda s, a, b: str(s).replace(a, b),
    "toset": lambda xs: sorted(set(xs)),
    "tostring": str,
    "jsonencode": lambda v: json.dumps(v, separators=(",", ":")),
    "yamlencode": lambda v: yaml.safe_dump(v, sort_keys=False),
    "length": len,
    "trimprefix": lambda s, p: s.removeprefix(p),
}


@dataclass
class Module:
    """One module directory with the values of its variables."""

    path: Path
    inputs: dict[str, Any]
    each: tuple[Any, Any] | None = None  # for_each's (key, value)
    _locals: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def parsed(self) -> list[dict[str, Any]]:
        return [parse(p) for p in sorted(self.path.glob("*.tf"))]

    def merged(self, kind: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for parsed in self.parsed:
            out.update(blocks(parsed, kind))
        return out

    def var(self, name: str) -> Any:
        variables = self.merged("variable")
        if name not in variables:
            raise KeyError(f"{self.path}: var.{name} is not declared")
        if name in self.inputs:
            return self.inputs[name]
        if "default" in variables[name]:
            return self.value(variables[name]["default"])
        raise KeyError(f"{self.path}: var.{name} has no value and no default")

    def local(self, name: str) -> Any:
        if name not in self._locals:
            body = self.merged("locals")
            if name not in body:
                raise KeyError(f"{self.path}: local.{name} is not defined")
            self._locals[name] = self.value(body[name])
        return self._locals[name]

    def module(self, name: str) -> Module:
        call = self.merged("module")[name]
        inputs = {k: self.value(v) for k, v in call.items() if k not in ("source", "depends_on", "providers")}
        return Module((self.path / call["source"]).resolve(), inputs)

    def output(self, module: str, name: str) -> Any:
        child = self.module(module)
        return child.value(child.merged("output")[name]["value"])

    def resource(self, kind: str, name: str) -> Attributes:
        """A resource's arguments as attributes (`kubernetes_namespace_v1.x.metadata[0].name`)."""
        for parsed in self.parsed:
            for resource in parsed.get("resource", []):
                if name in resource.get(kind, {}):
                    return Attributes(self.value(resource[kind][name]))
        raise KeyError(f"{self.path}: no resource {kind}.{name}")

    def value(self, node: Any) -> Any:
        if isinstance(node, dict):  # a key in parentheses, `(var.name) = ...`, is an expression too
            return {self.value(k): self.value(v) for k, v in node.items()}
        if isinstance(node, list):
            return [self.value(v) for v in node]
        if not isinstance(node, str) or "${" not in node:
            return node
        whole = REFERENCE.fullmatch(node)
        if whole:
            return self.expression(whole.group(1).strip())
        return REFERENCE.sub(lambda m: str(self.expression(m.group(1).strip())), node)

    def expression(self, text: str) -> Any:
        loop = FOR_ENV.match(text)
        if loop:
            mapping = self.expression(loop.group(3).strip())
            return [{"name": k, "value": v} for k, v in mapping.items()]
        kept = FOR_NON_NULL.match(text)
        if kept:
            return {k: v for k, v in self.expression(kept.group(3).strip()).items() if v is not None}
        python = re.sub(r"\bvar\.(\w+)", r"_var('\1')", text)
        python = re.sub(r"\blocal\.(\w+)", r"_local('\1')", python)
        python = re.sub(r"\bmodule\.(\w+)\.(\w+)", r"_output('\1', '\2')", python)
        python = re.sub(r"\b((?:kubernetes|helm)_\w+)\.(\w+)\b", r"_resource('\1', '\2')", python)
        python = re.sub(r"\beach\.value\b", "_each_value", python)
        python = re.sub(r"\beach\.key\b", "_each_key", python)
        python = re.sub(r"\bnull\b", "None", python)
        python = re.sub(r"\btrue\b", "True", python)
        python = re.sub(r"\bfalse\b", "False", python)
        scope = {
            **FUNCTIONS,
            "_var": self.var,
            "_local": self.local,
            "_output": self.output,
            "_each_key": self.each[0] if self.each else None,
            "_each_value": self.each[1] if self.each else None,
            "_resource": self.resource,
            "__builtins__": {},
        }
        try:
            return eval(compile(python, str(self.path), "eval"), scope)  # the repository's own HCL, no builtins
        except Exception as exc:
            raise ValueError(f"{self.path}: cannot evaluate ${{{text}}} here ({exc})") from exc

    def manifests(self) -> list[tuple[str, dict[str, Any]]]:
        """(resource address, manifest) of each kubernetes_manifest, one per for_each key."""
        found = []
        for parsed in self.parsed:
            for resource in parsed.get("resource", []):
                for name, body in resource.get("kubernetes_manifest", {}).items():
                    items: list[tuple[Any, Any] | None] = [None]
                    if "for_each" in body:
                        over = self.value(body["for_each"])
                        items = list(over.items()) if isinstance(over, dict) else [(v, v) for v in over]
                    for item in items:
                        each = Module(self.path, self.inputs, item, self._locals)
                        address = f"kubernetes_manifest.{name}" + (f'["{item[0]}"]' if item else "")
                        found.append((address, each.value(body["manifest"])))
        return found
