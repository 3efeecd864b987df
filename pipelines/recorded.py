"""What the previous runs recorded in their files' ComMer metadata, read before anything runs.

A refresh combines this run's compressions with state earlier runs wrote, so the settings that change
the numbers (the half-life, the compute dtype) must be the ones those runs recorded (pipelines.half_life,
pipelines.compute_dtype); a table converted from the layout before Delta keeps what its files recorded.
Each writer puts them in every Parquet footer's ComMer metadata (schemas.arrow), so one reader serves
Delta tables, the layout before Delta and plain files alike. Reads footers only; a remote path of a dry run is skipped
(pipelines.offline).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from pipelines.offline import stands_in
from pipelines.runtime import CliError
from schemas import read_metadata

# Tables written before the compute dtype was recorded carry none. They are read as float32: the only dtype
# `--dtype auto` ever chose on a CPU, where nearly all of them were made. A run on CUDA (auto chose bfloat16
# there) or with an explicit --dtype bfloat16 was bfloat16 but cannot be told apart; recompute such profiles
# with a full run to have their dtype recorded.
UNRECORDED_DTYPE = "float32"


def footer_schema(path: str):
    """A Parquet file's Arrow schema (with its metadata), from the footer alone."""
    with FileSystems.open(path) as f:
        return pq.ParquetFile(f).schema_arrow


def readable(files: Sequence[str]) -> list[str]:
    """The files whose footers this run reads (all but the remote ones of an offline dry run)."""
    return [f for f in files if not stands_in(f)]


def recorded_setting(files: Sequence[str], read: Callable[[dict], Any], flag: str, what: str,
                     describe: Callable[[Any], str] = str) -> tuple[Any, str | None]:
    """(value, a file that records it): `read` applied to each file's ComMer metadata; every file must agree
    (else one line naming two files). (read({}), None) when no file is read."""
    found: dict = {}
    for path in readable(files):
        found.setdefault(read(read_metadata(footer_schema(path))), path)
    if len(found) > 1:
        (a, path_a), (b, path_b) = sorted(found.items(), key=lambda kv: kv[1])[:2]
        raise CliError(f"{flag} mixes {what} {describe(a)} ({path_a}) and {describe(b)} ({path_b}); pass one run's "
                       "tables")
    return next(iter(found.items()), (read({}), None))


def recorded_dtype(files: Sequence[str], flag: str) -> tuple[str, str | None]:
    """(the dtype `files` were computed in, a file recording it); all must agree (tables of one run)."""
    return recorded_setting(files, lambda meta: meta.get("dtype") or UNRECORDED_DTYPE, flag, "dtypes")
