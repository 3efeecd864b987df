"""Arrow schemas derived from the pydantic records, and Parquet read/write helpers.

Tensor fields use Arrow's canonical fixed-shape tensor type, so pyarrow readers get the
K×d shape from the type itself. pandas flattens extension types to 1-D arrays, so the shape
also goes into the file metadata under PANDAS_ATTRS, which pandas restores as `df.attrs`.
"""
from __future__ import annotations

import json
import types
import typing
from datetime import datetime
from typing import Any, Iterable, Sequence

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from schemas.records import SCHEMA_VERSION, Record, TensorSpec

METADATA_KEY = b"commer"
PANDAS_ATTRS_KEY = b"PANDAS_ATTRS"
_SCALARS = {str: pa.string(), int: pa.int64(), float: pa.float64(), bool: pa.bool_(),
            datetime: pa.timestamp("us", tz="UTC")}


def _arrow_type(annotation, metadata: Sequence[Any], shape: tuple[int, int] | None) -> tuple[pa.DataType, bool]:
    """(Arrow type, nullable) for one pydantic field."""
    spec = next((m for m in metadata if isinstance(m, TensorSpec)), None)
    if spec is not None:
        if shape is None:
            raise ValueError("this record has tensor fields: pass shape=(K, d)")
        return pa.fixed_shape_tensor(pa.from_numpy_dtype(np.dtype(spec.dtype)), shape), False
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _arrow_type(inner[0], metadata, shape)[0], True
    if origin is typing.Annotated:
        base, *extra = typing.get_args(annotation)
        return _arrow_type(base, list(metadata) + extra, shape)
    if origin is list:
        (item,) = typing.get_args(annotation)
        return pa.list_(_arrow_type(item, (), shape)[0]), False
    if annotation in _SCALARS:
        return _SCALARS[annotation], False
    raise TypeError(f"no Arrow type for {annotation!r}")


def arrow_schema(record: type[Record], shape: tuple[int, int] | None = None,
                 metadata: dict | None = None) -> pa.Schema:
    """The Arrow schema of a record type; `shape` = (K, d) for records with tensors."""
    fields = []
    for name, info in record.model_fields.items():
        arrow_type, nullable = _arrow_type(info.annotation, info.metadata, shape)
        fields.append(pa.field(name, arrow_type, nullable=nullable,
                               metadata={b"description": (info.description or "").encode()}))
    return pa.schema(fields, metadata=file_metadata(record, shape, metadata))


def file_metadata(record: type[Record], shape: tuple[int, int] | None, extra: dict | None) -> dict[bytes, bytes]:
    info = {"schema_version": SCHEMA_VERSION, "record": record.__name__, **(extra or {})}
    if shape is not None:
        info["K"], info["d"] = shape
    attrs = {"commer": info}
    if shape is not None:
        attrs["tensor_shape"] = list(shape)
    return {METADATA_KEY: json.dumps(info).encode(), PANDAS_ATTRS_KEY: json.dumps(attrs).encode()}


def to_row(record: Record) -> dict:
    """A dict Arrow accepts for one record (tensors flattened in row-major order)."""
    row = {}
    for name in type(record).model_fields:
        value = getattr(record, name)
        row[name] = np.ascontiguousarray(value).reshape(-1) if isinstance(value, np.ndarray) else value
    return row


def to_table(records: Iterable[Record], schema: pa.Schema) -> pa.Table:
    rows = [to_row(r) if isinstance(r, Record) else r for r in records]
    return pa.Table.from_pylist(rows, schema=schema)


def tensor_column(table: pa.Table, name: str) -> np.ndarray:
    """An (N, K, d) numpy array from a fixed-shape tensor column."""
    column = table.column(name).combine_chunks()
    if len(column) == 0:
        return np.zeros((0,) + tuple(column.type.shape), dtype=column.type.value_type.to_pandas_dtype())
    return column.to_numpy_ndarray()


def from_table(table: pa.Table, record: type[Record]) -> list[Record]:
    """Records back from a table written with `arrow_schema(record, ...)`."""
    tensors = {name: tensor_column(table, name) for name in table.column_names
               if isinstance(table.schema.field(name).type, pa.FixedShapeTensorType)}
    plain = table.drop_columns(list(tensors)).to_pylist()
    return [record.model_validate({**row, **{k: v[i] for k, v in tensors.items()}}) for i, row in enumerate(plain)]


def write_parquet(records: Iterable[Record], path: str, schema: pa.Schema) -> None:
    import fsspec
    with fsspec.open(path, "wb") as f:
        pq.write_table(to_table(records, schema), f)


def read_parquet(path: str) -> pa.Table:
    """Read a Parquet file, or every *.parquet under a folder, local or remote (schema metadata kept)."""
    import pyarrow.dataset as ds

    fs, _, (root,) = fsspec.get_fs_token_paths(str(path))
    if fs.isdir(root):
        files = committed_parquet_files(fs, root.rstrip("/"))
        if not files:
            raise FileNotFoundError(f"no .parquet files under {path}")
        return ds.dataset(files, filesystem=fs, format="parquet").to_table()
    return ds.dataset(root, filesystem=fs, format="parquet").to_table()


POINTER = "CURRENT"


def _committed(fs, table: str) -> list[str] | None:
    """A table folder's committed shards: the top level of the run folders its CURRENT names (the
    one-state layout of pipelines.output_state), or None when it has no CURRENT."""
    if not fs.isfile(f"{table}/{POINTER}"):
        return None
    runs = [r.strip() for r in fs.cat_file(f"{table}/{POINTER}").decode("utf-8").splitlines() if r.strip()]
    return sorted(f for run in runs for f in fs.glob(f"{table}/{run}/*.parquet"))


def committed_parquet_files(fs, root: str) -> list[str]:
    """The Parquet shards a folder holds now (DESIGN.md invariant 9): follow CURRENT (in the folder, or in
    its subfolders, e.g. a job's OUTPUT/profiles); without one, the legacy layout's *.parquet under it,
    never what a killed writer left in a beam-temp-* folder or a hidden/temporary file."""
    if (files := _committed(fs, root)) is not None:
        return files
    pointers = sorted(f for f in fs.find(root) if f.rsplit("/", 1)[-1] == POINTER)
    tables = {f.rsplit("/", 1)[0] for f in pointers}
    files = [f for t in sorted(tables) for f in _committed(fs, t) or []]
    for f in sorted(fs.find(root)):
        rel = f[len(root) + 1:].split("/")
        if (f.endswith(".parquet") and not any(t == f or f.startswith(t + "/") for t in tables)
                and not any(part.startswith(("beam-temp", ".", "_")) for part in rel)):
            files.append(f)
    return sorted(files)


def read_metadata(table_or_schema) -> dict:
    schema = table_or_schema.schema if isinstance(table_or_schema, pa.Table) else table_or_schema
    raw = (schema.metadata or {}).get(METADATA_KEY)
    return json.loads(raw) if raw else {}
