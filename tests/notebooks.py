"""The notebooks in notebooks/: execute them (the suite, `make notebooks`) and keep them without outputs
in git (`make lint`).

    python -m tests.notebooks run [NAME=VALUE ...]   # every notebook, with the parameters it defines set;
                                                     # 03_serving gets a champion served for it
    python -m tests.notebooks check                  # fails on a notebook with outputs
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def notebooks() -> list[Path]:
    return sorted(NOTEBOOKS.glob("*.ipynb"))


def with_parameters(notebook: Any, parameters: dict[str, Any]) -> Any:
    """The notebook with its `parameters` cell's names set (papermill's convention: a cell tagged
    `parameters`); a name the cell does not define is refused."""
    (cell,) = [c for c in notebook.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    defined = parameters_of(notebook)
    unknown = set(parameters) - defined
    if unknown:
        raise ValueError(f"notebook has no parameter(s) {sorted(unknown)}; it defines {sorted(defined)}")
    cell.source += "".join(f"\n{name} = {value!r}" for name, value in parameters.items())
    return notebook


def execute(path: Path, parameters: dict[str, Any] | None = None, timeout_s: int = 900) -> Any:
    """Run a notebook top to bottom in a fresh kernel (from its own folder); a failing cell raises
    nbclient's CellExecutionError with the cell and the traceback. Returns the executed notebook."""
    from nbclient import NotebookClient

    notebook = with_parameters(nbformat.read(path, as_version=4), parameters or {})
    client = NotebookClient(
        notebook, timeout=timeout_s, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    client.execute()
    return notebook


def with_outputs(path: Path) -> list[int]:
    """Indexes of the cells that carry outputs or execution counts (they belong out of git)."""
    notebook = nbformat.read(path, as_version=4)
    return [
        i
        for i, cell in enumerate(notebook.cells)
        if cell.cell_type == "code" and (cell.get("outputs") or cell.get("execution_count") is not None)
    ]


def parameters_of(notebook: Any) -> set[str]:
    (cell,) = [c for c in notebook.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    return {line.split("=")[0].strip() for line in cell.source.splitlines() if "=" in line}


@contextlib.contextmanager
def served_champion() -> Iterator[str]:
    """What notebooks/03_serving needs on a fresh clone: Redis (infra/local, stopped after if started
    here), a champion (`fusion run` on the default config in $FUSION_HOME, cached when done before) and
    the server on a free port, stopped after. Yields its URL."""
    import socket
    import subprocess

    from flows.training_pipeline import run_pipeline
    from fusion.core.settings import load_settings, with_overrides
    from fusion.runtime import prepare_environment
    from serving.app import start_serving, stop_serving

    services = NOTEBOOKS.parent / "infra" / "local" / "services.sh"
    was_running = (
        "redis: running"
        in subprocess.run([str(services), "status", "redis"], capture_output=True, text=True, check=True).stderr
    )
    subprocess.run([str(services), "up", "redis"], check=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    settings = load_settings(NOTEBOOKS.parent / "configs" / "flights.yaml")
    redis_url = f"redis://127.0.0.1:{os.environ.get('FUSION_REDIS_PORT', '6379')}/0"  # services.sh's port
    settings = with_overrides(settings, {"redis_url": redis_url, "serving": {"port": port}})
    prepare_environment(settings)
    try:
        run_pipeline(settings)
        start_serving(settings)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_serving()
        if not was_running:
            subprocess.run([str(services), "down", "redis"], check=False)


def main(argv: list[str]) -> int:
    command, *rest = argv or ["check"]
    if command == "check":
        dirty = {path.name: cells for path in notebooks() if (cells := with_outputs(path))}
        for name, cells in dirty.items():
            print(f"{name}: cells {cells} have outputs; clear them before committing", file=sys.stderr)
        return 1 if dirty or not notebooks() else 0
    if command == "run":
        given = {k: int(v) if v.isdigit() else v for k, v in (item.split("=", 1) for item in rest)}
        with contextlib.ExitStack() as stack:
            for path in notebooks():
                defined = parameters_of(nbformat.read(path, as_version=4))
                parameters = {k: v for k, v in given.items() if k in defined}
                if "SERVING_URL" in defined and "SERVING_URL" not in parameters:
                    parameters["SERVING_URL"] = stack.enter_context(served_champion())
                print(f"running {path.name} {parameters}", file=sys.stderr)
                execute(path, parameters)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
