"""Arrow schemas derived from the pydantic records, and Parquet read/write helpers.

Tensor fields (K×d soft prompts, compressions) are stored as a plain `list<float>` of K·d values in
row-major order: Delta Lake's schema has no fixed-size list, and polars refuses a table whose files
hold one. The shape is never guessed: K and d are in the file metadata (METADATA_KEY, with the list of
tensor columns), in the pandas attrs (PANDAS_ATTRS, restored as `df.attrs`) and in the Delta table's
description (schemas.tables). `tensor_column` gives the (N, K, d) array; it also reads the
fixed-shape tensor columns of files written before the Delta layout.
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
import pyarrow.compute as pc
import pyarrow.parquet as pq

from schemas.records import SCHEMA_VERSION, Record, TensorSpec

METADATA_KEY = b"commer"
PANDAS_ATTRS_KEY = b"PANDAS_ATTRS"
SHAPE_KEY = b"commer.shape"  # a tensor column's field metadata: "[K, d]"
_SCALARS = {str: pa.string(), int: pa.int64(), float: pa.float64(), bool: pa.bool_(),
            datetime: pa.timestamp("us", tz="UTC")}


def _arrow_type(annotation, metadata: Sequence[Any], shape: tuple[int, int] | None) -> tuple[pa.DataType, bool]:
    """(Arrow type, nullable) for one pydantic field."""
    spec = next((m for m in metadata if isinstance(m, TensorSpec)), None)
    if spec is not None:
        if shape is None:
            raise ValueError("this record has tensor fields: pass shape=(K, d)")
        return pa.list_(pa.from_numpy_dtype(np.dtype(spec.dtype))), False
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
    fields, tensors = [], tensor_fields(record)
    metadata = {**(metadata or {}), "tensor_columns": tensors} if tensors else metadata
    for name, info in record.model_fields.items():
        arrow_type, nullable = _arrow_type(info.annotation, info.metadata, shape)
        field_metadata = {b"description": (info.description or "").encode(), b"comment": (info.description or "").encode()}
        if name in tensors:  # the shape travels with the column: in every file and in the Delta schema
            field_metadata[SHAPE_KEY] = json.dumps(list(shape)).encode()
        fields.append(pa.field(name, arrow_type, nullable=nullable, metadata=field_metadata))
    return pa.schema(fields, metadata=file_metadata(record, shape, metadata))


def tensor_fields(record: type[Record]) -> list[str]:
    """The record's K×d tensor fields, in field order."""
    return [name for name, info in record.model_fields.items()
            if any(isinstance(m, TensorSpec) for m in _all_metadata(info.annotation, info.metadata))]


def _all_metadata(annotation, metadata) -> list:
    found = list(metadata)
    if typing.get_origin(annotation) is typing.Annotated:
        found += list(typing.get_args(annotation)[1:])
    return found


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
    """Records (or rows from `to_row`) → a table of `schema`; tensor columns are built from one flat buffer."""
    rows = [to_row(r) if isinstance(r, Record) else r for r in records]
    tensors = [f.name for f in schema if _is_tensor_list(f.type) and rows and isinstance(rows[0].get(f.name), np.ndarray)]
    plain = pa.Table.from_pylist([{k: v for k, v in row.items() if k not in tensors} for row in rows],
                                 schema=pa.schema([f for f in schema if f.name not in tensors]))
    for name in tensors:
        field = schema.field(name)
        values = [np.asarray(row[name]).reshape(-1) for row in rows]
        offsets = np.zeros(len(values) + 1, dtype=np.int32)
        np.cumsum([len(v) for v in values], out=offsets[1:])
        flat = np.concatenate(values).astype(field.type.value_type.to_pandas_dtype(), copy=False)
        plain = plain.add_column(schema.get_field_index(name), field, pa.ListArray.from_arrays(
            pa.array(offsets), pa.array(flat, field.type.value_type)))
    return plain.replace_schema_metadata(schema.metadata)


def _is_tensor_list(arrow_type: pa.DataType) -> bool:
    return (pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type)) and \
        pa.types.is_floating(arrow_type.value_type)


def tensor_shape(table_or_schema, column: str | None = None) -> tuple[int, int] | None:
    """(K, d) from a tensor column's field metadata (`commer.shape`, in our files and in the Delta schema),
    else from the table's ComMer metadata; None when neither records it."""
    schema = table_or_schema.schema if isinstance(table_or_schema, pa.Table) else table_or_schema
    if column is not None and column in schema.names:
        raw = (schema.field(column).metadata or {}).get(SHAPE_KEY)
        if raw:
            return tuple(int(x) for x in json.loads(raw))
    meta = read_metadata(schema)
    return (int(meta["K"]), int(meta["d"])) if "K" in meta and "d" in meta else None


def tensor_column(table: pa.Table, name: str, shape: tuple[int, int] | None = None) -> np.ndarray:
    """An (N, K, d) numpy array from a tensor column: a list of K·d values per row, shaped by `shape` or the
    table's metadata (K, d), or a fixed-shape tensor column of the layout before Delta."""
    column = table.column(name)
    arrow_type = column.type
    if isinstance(arrow_type, pa.FixedShapeTensorType):
        column = column.combine_chunks()
        if len(column) == 0:
            return np.zeros((0,) + tuple(arrow_type.shape), dtype=arrow_type.value_type.to_pandas_dtype())
        return column.to_numpy_ndarray()
    shape = shape or tensor_shape(table, name)
    if shape is None:
        raise ValueError(f"column {name!r}: the table records no tensor shape (K, d) in its metadata; pass shape=")
    size = shape[0] * shape[1]
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_fixed_size_list(arrow_type):
        lengths_ok = arrow_type.list_size == size
    else:
        lengths = pc.list_value_length(column)
        lengths_ok = len(column) == 0 or (pc.min(lengths).as_py() == size == pc.max(lengths).as_py())
    if not lengths_ok or column.null_count:
        raise ValueError(f"column {name!r}: every row must hold K·d = {shape[0]}·{shape[1]} values")
    flat = pc.list_flatten(column).to_numpy(zero_copy_only=False)
    return flat.reshape((len(column),) + tuple(shape))


def from_table(table: pa.Table, record: type[Record]) -> list[Record]:
    """Records back from a table written with `arrow_schema(record, ...)` (or read from its Delta table)."""
    tensors = {name: tensor_column(table, name) for name in tensor_fields(record) if name in table.column_names}
    plain = table.drop_columns(list(tensors)).to_pylist()
    return [record.model_validate({**row, **{k: v[i] for k, v in tensors.items()}}) for i, row in enumerate(plain)]


def write_parquet(records: Iterable[Record], path: str, schema: pa.Schema) -> None:
    with fsspec.open(path, "wb") as f:
        pq.write_table(to_table(records, schema), f)


def read_metadata(table_or_schema) -> dict:
    schema = table_or_schema.schema if isinstance(table_or_schema, pa.Table) else table_or_schema
    raw = (schema.metadata or {}).get(METADATA_KEY)
    return json.loads(raw) if raw else {}
