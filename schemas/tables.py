"""Our output tables are Delta Lake tables: finding, time-travelling and reading them (no Beam here).

A table is a folder that any Delta reader (delta-rs `deltalake`, polars, DuckDB, Spark, BigQuery) opens:

    TABLE/_delta_log/00000000000000000007.json   the commits: which files make each version
    TABLE/RUN_ID/<table>-RUN_ID-*.parquet        each run's files (written by Beam's workers)

Nothing else belongs in a table folder (a Delta `VACUUM` deletes files no version refers to). The
table's *description* holds the ComMer metadata as JSON (record type, schema version, K and d of its
tensor columns, fingerprint, ...); each commit's custom metadata holds, under COMMIT_KEY, the run's id
and summary and, for profiles, the document-compressions version they were made with.

`PATH@VERSION` (an integer) or `PATH@TIMESTAMP` (ISO 8601, e.g. 2026-11-24T02:15:00Z) names an earlier
version. Folders written before the Delta layout (a `CURRENT` pointer and run folders, or flat shards)
are still read for one release (`legacy_files`); the next job that writes there converts them into a
Delta table (pipelines.tables).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone

import fsspec
import pyarrow as pa
import pyarrow.dataset as ds
from deltalake import DeltaTable

from schemas.arrow import METADATA_KEY, PANDAS_ATTRS_KEY, read_metadata

LOG = "_delta_log"
COMMIT_KEY = "commer"  # a commit's custom metadata: JSON with run_id, summary, paired tables
DEAD_LETTER_RECORD = "DeadLetter"
LEGACY_POINTER = "CURRENT"
_VERSIONED = re.compile(r"^(?P<path>.*[^@/])@(?P<version>\d+|\d{4}-\d{2}-\d{2}(?:[T ][0-9:.]+)?(?:Z|[+-]\d{2}:?\d{2})?)$")


class TableError(ValueError):
    """A table that cannot be read as asked; the message is one line naming the path and the fix."""


def split_version(path: str) -> tuple[str, int | datetime | None]:
    """'TABLE@7' → ('TABLE', 7); 'TABLE@2026-11-24T02:15:00Z' → ('TABLE', datetime); else (path, None)."""
    match = _VERSIONED.match(str(path).rstrip("/"))
    if match is None:
        return str(path).rstrip("/"), None
    version = match["version"]
    if version.isdigit():
        return match["path"], int(version)
    try:
        when = datetime.fromisoformat(version.replace("Z", "+00:00"))
    except ValueError:
        raise TableError(f"{path}: {version!r} is neither a version number nor an ISO 8601 timestamp") from None
    return match["path"], when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def _fs(path: str):
    fs, _, (root,) = fsspec.get_fs_token_paths(path)
    return fs, root.rstrip("/")


def is_table(path: str) -> bool:
    """Whether `path` (no @version) is a Delta table folder."""
    try:
        fs, root = _fs(path)
        return fs.isdir(f"{root}/{LOG}")
    except Exception:  # unreachable or malformed: not a table; the caller's error names the flag
        return False


def open_table(path: str) -> DeltaTable:
    """The DeltaTable `path` names (at its @version, if any); TableError in one line otherwise."""
    root, version = split_version(path)
    try:
        table = DeltaTable(root)
    except Exception as exc:
        raise TableError(f"{root} is not a readable Delta table ({type(exc).__name__}: "
                         f"{' '.join(str(exc).split())[:200]})") from None
    if version is not None:
        latest = table.version()
        try:
            table.load_as_version(version)
        except Exception as exc:
            raise TableError(f"{path}: no such version (the table has versions up to {latest}; older ones may "
                             f"have been vacuumed): {' '.join(str(exc).split())[:160]}") from None
    return table


def commit_metadata(table: DeltaTable, version: int | None = None) -> dict:
    """The ComMer custom metadata of one commit (default: the table's loaded version); {} if none. Read from
    the commit's own log file (delta-rs' history() of a time-travelled table numbers its entries wrongly)."""
    version = table.version() if version is None else version
    try:
        fs, root = _fs(table.table_uri)
        with fs.open(f"{root}/{LOG}/{version:020d}.json", "rb") as f:
            for line in f:
                info = json.loads(line).get("commitInfo")
                if info is not None:
                    raw = info.get(COMMIT_KEY)
                    return json.loads(raw) if isinstance(raw, str) else dict(raw or {})
    except (OSError, ValueError, TypeError):  # no such file (a checkpointed, cleaned log) or foreign metadata
        pass
    return {}


def description_metadata(table: DeltaTable) -> dict:
    """The ComMer metadata of a table's loaded version (record, schema version, K, d, fingerprint, ...), as its
    commit recorded it (a full run with another checkpoint may change it from one version to the next)."""
    return dict(commit_metadata(table).get("table") or {})


@dataclass
class TableVersion:
    """One version of one table: what a reader needs (files, metadata) and what a refresh pairs with."""

    path: str
    version: int
    table_id: str
    files: list[str]
    metadata: dict = field(default_factory=dict)
    commit: dict = field(default_factory=dict)

    @property
    def record(self) -> str | None:
        return self.metadata.get("record")

    def at(self) -> str:
        return f"{self.path}@{self.version}"


def table_version(path: str) -> TableVersion:
    """A table's version (`PATH@VERSION`, else its current one): files, description metadata, commit metadata."""
    table = open_table(path)
    root, _ = split_version(path)
    return TableVersion(path=root, version=table.version(), table_id=table.metadata().id,
                        files=sorted(table.file_uris()), metadata=description_metadata(table),
                        commit=commit_metadata(table))


def arrow_metadata(metadata: dict) -> dict[bytes, bytes]:
    """Schema metadata carrying the ComMer metadata (so schemas.tensor_column finds K and d)."""
    out = {METADATA_KEY: json.dumps(metadata).encode()}
    if "K" in metadata and "d" in metadata:
        out[PANDAS_ATTRS_KEY] = json.dumps({"commer": metadata, "tensor_shape": [metadata["K"], metadata["d"]]}).encode()
    return out


def tables_in(folder: str) -> list[str]:
    """The Delta tables directly inside `folder` (e.g. a job's --output: profiles, dead_letters)."""
    try:
        fs, root = _fs(folder)
        entries = fs.ls(root, detail=True)
    except Exception:
        return []
    prefix = folder.split("://", 1)[0] + "://" if "://" in folder else ""
    subfolders = [e["name"].rstrip("/") for e in entries if e.get("type") == "directory"]
    return sorted(prefix + s if prefix and not s.startswith(prefix) else s
                  for s in subfolders if fs.isdir(f"{s}/{LOG}"))


def resolve_table(path: str, preferred: str | None = None) -> str | None:
    """The table `path` (no @version) means: itself, `path/preferred`, or the one table inside it besides
    dead letters; None when it holds none; TableError when it holds several (name one)."""
    if is_table(path):
        return path
    if preferred and is_table(f"{path}/{preferred}"):
        return f"{path}/{preferred}"
    candidates = [t for t in tables_in(path)
                  if description_metadata(DeltaTable(t)).get("record") != DEAD_LETTER_RECORD]
    if len(candidates) > 1:
        names = ", ".join(t.rsplit("/", 1)[-1] for t in candidates)
        raise TableError(f"{path} holds several tables ({names}): pass one of them, e.g. {candidates[0]}")
    return candidates[0] if candidates else None


def read_table(path: str, columns: list[str] | None = None, preferred: str | None = None) -> pa.Table:
    """One table as an Arrow table with its ComMer metadata (schemas.read_parquet; see there)."""
    root, version = split_version(str(path))
    table = resolve_table(root, preferred)
    if table is not None:
        delta = open_table(table if version is None else f"{table}@{_version_text(version)}")
        data = delta.to_pyarrow_dataset().to_table(columns=columns)
        return data.replace_schema_metadata(arrow_metadata(description_metadata(delta)))
    if version is not None:
        raise TableError(f"{path}: {root} is not a Delta table, so it has no versions")
    fs, resolved = _fs(root)
    if not fs.isdir(resolved):
        return ds.dataset(resolved, filesystem=fs, format="parquet").to_table(columns=columns)
    files = legacy_files(fs, resolved)
    if not files:
        raise FileNotFoundError(f"no table under {path} (no _delta_log, no .parquet files)")
    return ds.dataset(files, filesystem=fs, format="parquet").to_table(columns=columns)


def read_parquet(path: str) -> pa.Table:
    """A table of ours as one Arrow table, ComMer metadata kept (so `schemas.tensor_column` finds K and d):
    a Delta table folder at its current version (`PATH@VERSION` or `PATH@2026-11-24T02:15:00Z`: an earlier
    one), a job's --output folder holding one table besides its dead letters, one .parquet file, or a folder
    of the layout before Delta (read for one more release)."""
    return read_table(str(path))


def _version_text(version: int | datetime) -> str:
    return str(version) if isinstance(version, int) else version.isoformat()


# ---- the layout before Delta (CURRENT + run folders, or flat shards): read for one more release ----

def _legacy_committed(fs, table: str) -> list[str] | None:
    if not fs.isfile(f"{table}/{LEGACY_POINTER}"):
        return None
    runs = [r.strip() for r in fs.cat_file(f"{table}/{LEGACY_POINTER}").decode("utf-8").splitlines() if r.strip()]
    return sorted(f for run in runs for f in fs.glob(f"{table}/{run}/*.parquet"))


def legacy_files(fs, root: str) -> list[str]:
    """The Parquet shards a folder of the layout before Delta holds: the run folders its CURRENT names (in
    the folder or its subfolders), else its *.parquet, never a killed writer's beam-temp-* or hidden files."""
    if (files := _legacy_committed(fs, root)) is not None:
        return files
    pointers = sorted(f for f in fs.find(root) if f.rsplit("/", 1)[-1] == LEGACY_POINTER)
    tables = {f.rsplit("/", 1)[0] for f in pointers}
    files = [f for t in sorted(tables) for f in _legacy_committed(fs, t) or []]
    for f in sorted(fs.find(root)):
        rel = f[len(root) + 1:].split("/")
        if (f.endswith(".parquet") and not any(t == f or f.startswith(t + "/") for t in tables)
                and not any(part.startswith(("beam-temp", ".", "_")) for part in rel)):
            files.append(f)
    return sorted(files)


def legacy_shards(path: str) -> list[str]:
    """`legacy_files` of a folder, as full paths (with the scheme, e.g. gs://)."""
    fs, root = _fs(path)
    scheme = path.split("://", 1)[0] + "://" if "://" in path else ""
    return [f if not scheme or f.startswith(scheme) else scheme + f for f in legacy_files(fs, root)]


def is_legacy(path: str) -> bool:
    """A folder of the layout before Delta (CURRENT pointer or top-level shards), not yet converted."""
    try:
        fs, root = _fs(path)
        return (not fs.isdir(f"{root}/{LOG}") and fs.isdir(root)
                and (fs.isfile(f"{root}/{LEGACY_POINTER}") or bool(fs.glob(f"{root}/*.parquet"))))
    except Exception:
        return False


__all__ = ["COMMIT_KEY", "TableError", "TableVersion", "arrow_metadata", "commit_metadata", "description_metadata",
           "is_legacy", "is_table", "legacy_files", "legacy_shards", "open_table", "read_parquet", "read_table", "read_metadata", "resolve_table",
           "split_version", "table_version", "tables_in"]
