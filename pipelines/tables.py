"""Output tables as Delta Lake tables: planned before a run, committed by the launcher after it
(DESIGN.md invariants 9 and 11).

    plan     `plan_output` notes each output table's version when the run starts (None: no table yet)
    write    Beam's workers write Parquet files into TABLE/RUN_ID/ (no reader looks there: a Delta reader
             reads only the files a committed version names)
    commit   after the pipeline succeeded, `commit_outputs` adds this run's files to each table in ONE Delta
             transaction per table (overwrite for a full run), with the run id and summary in the commit's
             custom metadata (schemas.tables.COMMIT_KEY), in the order given (dead letters, then document
             compressions, then the main table); the profiles' commit records the compressions' new version,
             so a refresh reads a matching pair (`paired_compressions`)

Whatever moment a job is killed, a reader sees the previous version or the new one: a Delta version is
one log file written put-if-absent. Two runs into the same tables: the commit is conditional on the
version the run started from (the check before committing, then delta-rs with no retries), so the
second to commit fails with one line (ConcurrentRunError) and commits nothing, whatever the first did.
Files nothing refers to (older versions', killed runs') stay until `python -m pipelines.vacuum`.

A folder of the layout before Delta (CURRENT + run folders, or flat shards) is converted once, at the
first commit into it: its committed shards become version 0 of a Delta table (rewritten into
TABLE/legacy-RUN_ID/ with the list-typed tensor columns every reader takes), then this run commits on top.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Sequence

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from deltalake import CommitProperties, DeltaTable
from deltalake import Schema as DeltaSchema
from deltalake.transaction import AddAction, create_table_with_add_actions

from pipelines import faults
from pipelines.offline import stands_in
from pipelines.recorded import recorded_dtype
from pipelines.runtime import CliError
from schemas import arrow_schema, read_metadata, tensor_column, to_table
from schemas.arrow import tensor_fields
from schemas.records import DeadLetter, DocumentCompression, Prediction, Profile
from schemas.tables import (COMMIT_KEY, TableError, TableVersion, arrow_metadata, is_legacy, is_table, legacy_shards,
                            resolve_table, split_version, table_version)

log = logging.getLogger(__name__)

RECORDS = {r.__name__: r for r in (Profile, DocumentCompression, Prediction, DeadLetter)}
# Column statistics written with each file (numRecords, and min/max/nullCount of these types), so an engine
# can skip files; strings longer than this are left out (Delta readers expect exact bounds).
STATS_STRING_CHARS = 64


class ConcurrentRunError(CliError):
    """Another run committed to a table after this one started: this one commits nothing."""


@dataclass
class OutputTable:
    """One table a run writes: where, what, and the version it started from."""

    label: str                 # "profiles", "dead letters", ... (messages, summary)
    flag: str                  # the flag that names it
    path: str                  # the table folder
    schema: pa.Schema          # its files' Arrow schema (ComMer metadata inside)
    run_id: str
    version: int | None = None  # the version this run started from; None: no table there yet
    legacy: bool = False        # a folder of the layout before Delta: converted at the first commit
    mode: str = "overwrite"     # "append": this run's files are added to the version it started from

    @property
    def folder(self) -> str:
        """Where this run's workers write the table's files."""
        return f"{self.path}/{self.run_id}"

    def prefix(self, stem: str) -> str:
        return f"{self.folder}/{stem}-{self.run_id}"

    @property
    def metadata(self) -> dict:
        return read_metadata(self.schema)


def plan_output(label: str, flag: str, path: str, schema: pa.Schema, run_id: str) -> OutputTable:
    """An output table and the version it is at now (the version this run's commit must still find)."""
    path = path.rstrip("/")
    if "@" in path and split_version(path)[1] is not None:
        raise CliError(f"{flag} {path}: an output is a table folder; @VERSION only names what to read")
    table = OutputTable(label, flag, path, schema, run_id)
    if stands_in(path):  # an offline dry run reads nothing remote: planned as a new table (pipelines.offline)
        return table
    if is_table(path):
        current = table_version(path)
        table.version = current.version
        record, wanted = current.metadata.get("record"), read_metadata(schema).get("record")
        if record and record != wanted:
            raise CliError(f"{flag} {path} is a table of {record} records, not {wanted}: pass another folder")
    else:
        table.legacy = is_legacy(path)
    return table


def check_separate(tables: Sequence[OutputTable]) -> None:
    """No table folder inside another: a Delta VACUUM of the outer one would delete the inner one's files."""
    for a in tables:
        for b in tables:
            if a is not b and (a.path == b.path or a.path.startswith(b.path + "/")):
                raise CliError(f"{a.flag} {a.path} is inside {b.flag} {b.path}: every table needs a folder of its "
                               f"own (e.g. {b.path.rsplit('/', 1)[0]}/{a.path.rsplit('/', 1)[-1]})")


def profile_tables(output: str, dead_letter_output: str, compressions: str | None, run_id: str,
                   shape: tuple[int, int], metadata: dict) -> dict[str, OutputTable]:
    """compress_users' output tables (profiles, dead letters, optional document compressions), planned."""
    tables = {"profiles": plan_output("profiles", "--output", f"{output}/profiles",
                                      arrow_schema(Profile, shape, metadata), run_id),
              "dead letters": plan_output("dead letters", "--dead_letter_output", dead_letter_output,
                                          arrow_schema(DeadLetter, metadata={"run_id": run_id}), run_id)}
    if compressions:
        tables["document compressions"] = plan_output("document compressions", "--document_compressions_output",
                                                      compressions, arrow_schema(DocumentCompression, shape, metadata),
                                                      run_id)
    check_separate(list(tables.values()))
    return tables


# ---- committing ---------------------------------------------------------------------------

def written_files(table: OutputTable) -> list:
    """The Parquet files this run's workers wrote into the table's run folder (top level: never a beam-temp file)."""
    try:
        found = FileSystems.match([f"{table.folder}/*.parquet"])[0].metadata_list
    except Exception:  # nothing written (no folder)
        return []
    return sorted((m for m in found if m.path.rsplit("/", 1)[0] == table.folder), key=lambda m: m.path)


def file_stats(path: str) -> str:
    """Delta file statistics from a Parquet footer: numRecords, and min/max/nullCount of the scalar columns."""
    with FileSystems.open(path) as f:
        meta = pq.ParquetFile(f).metadata
    stats: dict = {"numRecords": meta.num_rows, "minValues": {}, "maxValues": {}, "nullCount": {}}
    schema = meta.schema.to_arrow_schema()
    for i in range(meta.num_columns):
        name = meta.schema.column(i).path
        if name not in schema.names or not (pa.types.is_string(schema.field(name).type)
                                            or pa.types.is_integer(schema.field(name).type)):
            continue  # nested (list) columns, floats, timestamps: no bounds
        groups = [meta.row_group(g).column(i).statistics for g in range(meta.num_row_groups)]
        if not groups or any(s is None or not s.has_null_count for s in groups):
            continue
        stats["nullCount"][name] = sum(s.null_count for s in groups)
        bounded = [s for s in groups if s.has_min_max]
        if bounded and len(bounded) == len([s for s in groups if s.num_values]):
            low, high = min(s.min for s in bounded), max(s.max for s in bounded)
            if not isinstance(low, str) or max(len(low), len(high)) <= STATS_STRING_CHARS:
                stats["minValues"][name], stats["maxValues"][name] = low, high
    return json.dumps(stats)


def add_actions(table: OutputTable, files: list) -> list[AddAction]:
    root = table.path + "/"
    return [AddAction(path=m.path[len(root):], size=m.size_in_bytes, partition_values={},
                      modification_time=int(m.last_updated_in_seconds * 1000), data_change=True,
                      stats=file_stats(m.path)) for m in files]


def delta_schema(schema: pa.Schema) -> pa.Schema:
    """The table's schema as Delta keeps it: the columns with their descriptions (`comment`) and shapes."""
    return pa.schema([pa.field(f.name, f.type, f.nullable, {k: v for k, v in (f.metadata or {}).items()
                                                             if k in (b"comment", b"commer.shape")})
                      for f in schema])


def _commit(table: OutputTable, actions: list[AddAction], mode: str, custom: dict) -> int:
    properties = CommitProperties(custom_metadata={COMMIT_KEY: json.dumps(custom, default=str)}, max_commit_retries=0)
    try:
        if table.version is None:
            create_table_with_add_actions(
                table.path, DeltaSchema.from_arrow(delta_schema(table.schema)), actions, mode="error",
                description=f"ComMer {table.label} ({read_metadata(table.schema).get('record')} records): each "
                            f"version's metadata is in its commit's '{COMMIT_KEY}' custom metadata; tensor columns "
                            "hold K·d floats, shape [K, d] in their 'commer.shape' column metadata",
                commit_properties=properties)
            return 0
        DeltaTable(table.path, version=table.version).create_write_transaction(
            actions, mode=mode, schema=delta_schema(table.schema), commit_properties=properties)
        return table.version + 1
    except Exception as exc:
        if is_table(table.path) and DeltaTable(table.path).version() != table.version:
            raise _concurrent(table) from None
        raise CliError(f"{table.flag} {table.path}: the commit failed ({type(exc).__name__}: "
                       f"{' '.join(str(exc).split())[:200]}); nothing of this run is in that table") from None


def _concurrent(table: OutputTable) -> ConcurrentRunError:
    now = table_version(table.path)
    other = now.commit.get("run_id", "another run")
    return ConcurrentRunError(
        f"{table.flag} {table.path}: run {other} committed version {now.version} after this run "
        f"({table.run_id}) started from version {table.version}; this run committed nothing there (its files in "
        f"{table.folder} go with `python -m pipelines.vacuum`): rerun it if its result should replace that one")


def check_versions(tables: Sequence[OutputTable]) -> None:
    """Every table is still at the version its run started from (else: another run committed since)."""
    for table in tables:
        current = DeltaTable(table.path).version() if is_table(table.path) else None
        if current != table.version:
            raise _concurrent(table) if current is not None else CliError(
                f"{table.flag} {table.path}: the table was removed while this run was running; nothing committed")


@dataclass
class Commit:
    """One table's commit in a run: which table, and what the commit records."""

    table: OutputTable
    custom: dict = field(default_factory=dict)
    pair_with: OutputTable | None = None  # record this (earlier committed) table's new version
    base: int | None = None               # append mode: the version to add to (default: the run's start)


def commit_outputs(commits: Sequence[Commit]) -> dict[str, int]:
    """Commit each table of a run, in order, as one Delta transaction each; {label: new version}.
    Nothing is committed when any table moved since the run started (ConcurrentRunError)."""
    for c in commits:
        if c.table.legacy:
            convert_legacy(c.table)
    check_versions([c.table for c in commits])
    versions: dict[str, int] = {}
    for i, c in enumerate(commits):
        if i:
            faults.point("between_commits")
        custom = {"run_id": c.table.run_id, "table": c.table.metadata, **c.custom}
        if c.pair_with is not None:
            custom["paired"] = {"document_compressions": {
                "path": c.pair_with.path, "version": versions[c.pair_with.label],
                "table_id": DeltaTable(c.pair_with.path).metadata().id}}
        actions = add_actions(c.table, written_files(c.table))
        if c.table.mode == "append" and c.base is not None and c.base != c.table.version:
            # A refresh adds to the version its profiles pair with, not a later one of a killed run.
            actions = _carried(c.table, c.base) + actions
            mode = "overwrite"
        else:
            mode = c.table.mode
        versions[c.table.label] = _commit(c.table, actions, mode, custom)
        c.table.version = versions[c.table.label]
    return versions


def _carried(table: OutputTable, version: int) -> list[AddAction]:
    """The add actions of an earlier version's files (re-added by an overwrite)."""
    adds = pa.table(DeltaTable(table.path, version=version).get_add_actions(flatten=False)).to_pylist()
    return [AddAction(path=a["path"], size=a["size_bytes"], partition_values={},
                      modification_time=int(a["modification_time"]), data_change=True,
                      stats=json.dumps({"numRecords": a["num_records"]})) for a in adds]


def paired_compressions(profiles: TableVersion) -> TableVersion | None:
    """The document-compressions version a profiles version was committed with (its commit's "paired")."""
    recorded = profiles.commit.get("paired", {}).get("document_compressions")
    return TableVersion(recorded["path"], recorded["version"], recorded["table_id"], []) if recorded else None


def append_base(previous_profiles: str | None, compressions: OutputTable) -> int | None:
    """The compressions version a refresh that does not carry them adds to: the one its previous profiles
    (TABLE@VERSION) were committed with, when that is this same table, not a later one a killed run left."""
    if previous_profiles is None or compressions.version is None:
        return None
    paired = paired_compressions(table_version(previous_profiles))
    if paired is None or not is_table(compressions.path):
        return None
    return paired.version if paired.table_id == DeltaTable(compressions.path).metadata().id else None


# ---- the layout before Delta: a one-time conversion ----------------------------------------

def convert_legacy(table: OutputTable) -> int:
    """Make a folder of the layout before Delta (CURRENT + run folders, or flat shards) version 0 of a Delta
    table: its committed shards are rewritten (list-typed tensor columns) into TABLE/legacy-RUN_ID/ and
    committed; CURRENT is removed after the commit (readers look for _delta_log first). Old files stay for
    `python -m pipelines.vacuum`."""
    shards = legacy_shards(table.path)
    record = RECORDS.get(read_metadata(table.schema).get("record"))
    schema = table.schema
    if "dtype" in table.metadata:  # version 0 records the dtype its shards were computed in, not this run's
        dtype = recorded_dtype(shards, table.flag)[0]
        schema = schema.with_metadata({**schema.metadata, **arrow_metadata({**table.metadata, "dtype": dtype})})
    converted = OutputTable(table.label, table.flag, table.path, schema, f"legacy-{table.run_id}")
    for i, shard in enumerate(shards):
        with FileSystems.open(shard) as f:
            old = pq.read_table(f)
        rows = old.drop_columns([c for c in tensor_fields(record) if c in old.column_names]).to_pylist()
        for name in tensor_fields(record):
            if name in old.column_names:
                values = tensor_column(old, name)
                for row, value in zip(rows, values):
                    row[name] = value
        new = to_table([{k: v for k, v in r.items() if k in schema.names} for r in rows], schema)
        with FileSystems.create(f"{converted.folder}/{table.label.replace(' ', '_')}-legacy-{i:05d}.parquet") as f:
            pq.write_table(new, f, write_page_checksum=True)
    _commit(converted, add_actions(converted, written_files(converted)), "overwrite",
            {"run_id": converted.run_id, "table": converted.metadata, "converted_from": "CURRENT layout"})
    for pointer in ("CURRENT",):
        path = f"{table.path}/{pointer}"
        if FileSystems.exists(path):
            FileSystems.delete([path])
    log.info("%s %s: converted the layout before Delta into a Delta table (version 0)", table.flag, table.path)
    table.version, table.legacy = 0, False
    return 0


def input_version(path: str, flag: str, preferred: str) -> TableVersion | None:
    """The table version `path` (PATH[@VERSION], a table folder or a job's output folder) names, or None when it
    is no Delta table (a file, a glob, or a folder of the layout before Delta)."""
    root, version = split_version(path)
    try:
        table = resolve_table(root, preferred)
        if table is None:
            if version is not None:
                raise TableError(f"{root} is not a Delta table, so it has no versions")
            return None
        return table_version(table if version is None else f"{table}@{path.rsplit('@', 1)[1]}")
    except TableError as exc:
        raise CliError(f"{flag} {exc}") from None
