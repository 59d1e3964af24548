"""The notebooks in notebooks/: execute them (the suite, `make notebooks`) and keep them without outputs
in git (`make lint`).

    python -m tests.notebooks run [NAME=VALUE ...]   # every notebook, parameters set as given
    python -m tests.notebooks check                  # fails on a notebook with outputs
"""

from __future__ import annotations

import sys
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
    defined = {line.split("=")[0].strip() for line in cell.source.splitlines() if "=" in line}
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


def main(argv: list[str]) -> int:
    command, *rest = argv or ["check"]
    if command == "check":
        dirty = {path.name: cells for path in notebooks() if (cells := with_outputs(path))}
        for name, cells in dirty.items():
            print(f"{name}: cells {cells} have outputs; clear them before committing", file=sys.stderr)
        return 1 if dirty or not notebooks() else 0
    if command == "run":
        parameters = {k: int(v) if v.isdigit() else v for k, v in (item.split("=", 1) for item in rest)}
        for path in notebooks():
            print(f"running {path.name}", file=sys.stderr)
            execute(path, parameters)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
