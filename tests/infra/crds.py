"""The CRDs of KubeRay, Strimzi and the External Secrets Operator, fetched once from registries this
machine reaches (the Go module proxy, Maven Central), checked against pinned hashes and kept in
.tools/crds (dask-kubernetes' come with its wheel). `python -m tests.infra.crds` fetches; make
infra-check runs it. Versions match the operator charts infra/terraform installs (modules/operators'
locals)."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CRDS = ROOT / ".tools" / "crds"

KUBERAY_MODULE = "github.com/ray-project/kuberay/ray-operator"
KUBERAY_VERSION = "v1.6.2"
KUBERAY_SUM = "h1:XUckRswLMyk71D00L62d2Vanh0fVkNqu56+IF/rr+O0="  # go.sum's hash of the module
KUBERAY_FILES = ["config/crd/bases/ray.io_rayservices.yaml", "config/crd/bases/ray.io_rayclusters.yaml"]

ESO_MODULE = "github.com/external-secrets/external-secrets"
ESO_VERSION = "v0.16.2"
ESO_SUM = "h1:iNY+gIgSyL5higXTfnz+hdPCaiB/43UiHLqE7HBpj68="
# the ExternalSecret Fusion writes and the two stores it may name (served as external-secrets.io/v1)
ESO_FILES = [
    "config/crds/bases/external-secrets.io_externalsecrets.yaml",
    "config/crds/bases/external-secrets.io_secretstores.yaml",
    "config/crds/bases/external-secrets.io_clustersecretstores.yaml",
]

STRIMZI_VERSION = "0.51.0"
STRIMZI_JAR = f"https://repo1.maven.org/maven2/io/strimzi/api/{STRIMZI_VERSION}/api-{STRIMZI_VERSION}-tests.jar"
STRIMZI_SHA256 = "b99f69303dc507ca505b74345d93f5260621bb084b8b79447f726e54b6e66a1d"
# the CRDs the 0.51 operator installs: they serve kafka.strimzi.io/v1 (what Fusion writes) and v1beta2
STRIMZI_FILES = [
    "crds/v1beta2/040-Crd-kafka.yaml",
    "crds/v1beta2/045-Crd-kafkanodepool.yaml",
    "crds/v1beta2/043-Crd-kafkatopic.yaml",
]


def go_module(module: str, version: str, pinned: str) -> Path:
    """The module's files from the Go module proxy, checked against go.sum's hash pinned here."""
    go = shutil.which("go")
    if go is None:
        raise SystemExit(f"{module}'s CRDs come from the Go module proxy: install Go (https://go.dev) first")
    done = subprocess.run(
        [go, "mod", "download", "-json", f"{module}@{version}"],
        capture_output=True,
        text=True,
        check=False,
        cwd=CRDS,  # outside any go.mod, so module@version is all it reads
    )
    info = json.loads(done.stdout or "{}")
    if done.returncode != 0 or info.get("Error"):
        raise SystemExit(f"go mod download {module}@{version}: {info.get('Error') or done.stderr}")
    if info["Sum"] != pinned:
        raise SystemExit(f"{module}@{version} hashes to {info['Sum']}, pinned {pinned}")
    return Path(info["Dir"])


def copy(source: Path, names: list[str], into: Path) -> None:
    for name in names:
        shutil.copyfile(source / name, into / Path(name).name)


def strimzi(into: Path) -> None:
    with urllib.request.urlopen(STRIMZI_JAR, timeout=60) as response:
        data = response.read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != STRIMZI_SHA256:
        raise SystemExit(f"{STRIMZI_JAR} hashes to {digest}, pinned {STRIMZI_SHA256}")
    with zipfile.ZipFile(io.BytesIO(data)) as jar:
        for name in STRIMZI_FILES:
            (into / "strimzi" / Path(name).name).write_bytes(jar.read(name))


def marker() -> str:
    return f"{KUBERAY_VERSION} {KUBERAY_SUM}\n{STRIMZI_VERSION} {STRIMZI_SHA256}\n{ESO_VERSION} {ESO_SUM}\n"


def fetch(into: Path = CRDS) -> Path:
    done = into / ".complete"
    if done.is_file() and done.read_text() == marker():
        return into
    for sub in ("kuberay", "strimzi", "external-secrets"):
        (into / sub).mkdir(parents=True, exist_ok=True)
    copy(go_module(KUBERAY_MODULE, KUBERAY_VERSION, KUBERAY_SUM), KUBERAY_FILES, into / "kuberay")
    copy(go_module(ESO_MODULE, ESO_VERSION, ESO_SUM), ESO_FILES, into / "external-secrets")
    strimzi(into)
    done.write_text(marker())
    return into


def installed() -> list[Path]:
    """The fetched CRD files (empty before `python -m tests.infra.crds`)."""
    return sorted(CRDS.glob("*/*.yaml")) if (CRDS / ".complete").is_file() else []


if __name__ == "__main__":
    print(f"CRDs in {fetch()}", file=sys.stderr)
