"""Generators of the example datasets: each writes its tables as CSV files into a folder."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import polars as pl


def write_csvs(folder: Path, tables: dict[str, tuple[str, pl.DataFrame]]) -> dict[str, Path]:
    """Each table (name -> file name, frame) as a CSV file in `folder`; name -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, (file_name, frame) in tables.items():
        paths[name] = folder / file_name
        frame.write_csv(paths[name])
    return paths


def main(write: Callable[[Path], dict[str, Path]]) -> None:
    """`python -m tests.datasets.<name> [OUT_DIR]` (default .fusion/examples): write and list the files."""
    for name, path in write(Path(sys.argv[1] if len(sys.argv) > 1 else ".fusion/examples")).items():
        print(f"{name}: {path}")
