"""The lake: Parquet and JSON under one fsspec URI (a local folder by default)."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import fsspec
import polars as pl


@dataclass(frozen=True)
class Lake:
    uri: str

    def path(self, *parts: str) -> str:
        return "/".join([self.uri.rstrip("/"), *parts])

    def _fs(self, path: str) -> tuple[fsspec.AbstractFileSystem, str]:
        fs, _, (resolved,) = fsspec.get_fs_token_paths(path)
        return fs, resolved

    def write_parquet(self, frame: pl.DataFrame, path: str) -> str:
        fs, p = self._fs(path)
        fs.makedirs(p.rsplit("/", 1)[0], exist_ok=True)
        buf = io.BytesIO()
        frame.write_parquet(buf, compression="zstd", statistics=True)
        # Write to a temporary name, then rename: a reader never sees half a file.
        tmp = p + ".tmp"
        with fs.open(tmp, "wb") as f:
            f.write(buf.getvalue())
        fs.mv(tmp, p)
        return path

    def read_parquet(self, path: str, n_rows: int | None = None, columns: list[str] | None = None) -> pl.DataFrame:
        fs, p = self._fs(path)
        with fs.open(p, "rb") as f:
            return pl.read_parquet(f.read(), n_rows=n_rows, columns=columns)

    def parquet_rows(self, path: str) -> list[int]:
        """The row count of each row group of a Parquet file (its footer only)."""
        import pyarrow.parquet as pq

        fs, p = self._fs(path)
        with fs.open(p, "rb") as f:
            meta = pq.ParquetFile(f).metadata
            return [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]

    def read_parquet_rows(self, path: str, start: int, stop: int) -> pl.DataFrame:
        """Rows [start, stop) of a Parquet file, reading only the row groups that hold them."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        fs, p = self._fs(path)
        with fs.open(p, "rb") as f:
            parquet = pq.ParquetFile(f)
            groups, first, offset = [], None, 0
            for i in range(parquet.metadata.num_row_groups):
                n = parquet.metadata.row_group(i).num_rows
                if offset < stop and offset + n > start:
                    groups.append(i)
                    first = offset if first is None else first
                offset += n
            if not groups:
                return pl.from_arrow(parquet.schema_arrow.empty_table())  # type: ignore[return-value]
            table: pa.Table = parquet.read_row_groups(groups)
        frame = pl.from_arrow(table)
        assert isinstance(frame, pl.DataFrame)
        return frame.slice(start - (first or 0), stop - start)

    def write_bytes(self, payload: bytes, path: str) -> str:
        fs, p = self._fs(path)
        fs.makedirs(p.rsplit("/", 1)[0], exist_ok=True)
        with fs.open(p, "wb") as f:
            f.write(payload)
        return path

    def read_bytes(self, path: str) -> bytes:
        fs, p = self._fs(path)
        with fs.open(p, "rb") as f:
            data: bytes = f.read()
            return data

    def files(self, *parts: str) -> list[str]:
        """The files directly in a folder of the lake, as lake paths sorted by name; none when it does not exist."""
        folder = self.path(*parts)
        fs, p = self._fs(folder)
        if not fs.isdir(p):
            return []
        return sorted(f"{folder}/{entry.rstrip('/').rsplit('/', 1)[-1]}" for entry in fs.ls(p, detail=False))

    def folders(self, *parts: str) -> list[str]:
        """The names of the folders directly in a folder of the lake, sorted."""
        fs, p = self._fs(self.path(*parts))
        if not fs.isdir(p):
            return []
        return sorted(
            e["name"].rstrip("/").rsplit("/", 1)[-1] for e in fs.ls(p, detail=True) if e["type"] == "directory"
        )

    def write_json(self, obj: Any, path: str) -> str:
        return self.write_bytes(json.dumps(obj, indent=2, default=str).encode(), path)

    def read_json(self, path: str) -> Any:
        return json.loads(self.read_bytes(path))
