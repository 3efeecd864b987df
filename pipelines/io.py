"""Reading and writing for every job, on one filesystem layer (Beam's FileSystems: local, gs://, ...).

    match / input_table / prediction_files   input discovery (globs, Delta tables at a version, folders of
                               the layout before Delta), failing early with the flag's name
    check_fingerprints         a table made by another checkpoint is refused before anything runs
    check_unique_users         previous profiles holding a user twice are refused in one line
    read_records               JSONL lines (bounded reader, pipelines.jsonl_reader) or Parquet rows → ParseRecords
                               → records | dead letters
    ReadParquet                Parquet files → Arrow tables, page checksums verified, a corrupt file one line
    write_tables / write_dead_letters   the sinks: Parquet files (page checksums on) into a table's run folder,
                               committed by the launcher (pipelines.tables)
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Callable, Sequence

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io import filebasedsink
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.iobase import Write

from pipelines import faults, progress
from pipelines.jsonl_reader import ReadJsonLines
from pipelines.offline import stands_in
from pipelines.runtime import CliError, InputError, counter
from pipelines.tables import OutputTable, input_version
from schemas import DeadLetter, read_metadata, to_table
from schemas.tables import TableVersion, is_legacy, legacy_shards, split_version
from schemas.validation import DEFAULT_MAX_RECORD_BYTES, dead_letter_json, parse_record, row_dead_letter

log = logging.getLogger(__name__)

DEAD = "dead"
TABLES = {"Profile": "profiles", "DocumentCompression": "document compressions", "Prediction": "predictions"}


def _glob(pattern: str) -> list[str]:
    return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list if not m.path.endswith("/"))


def _is_folder(path: str) -> bool:
    if "://" in path:
        return False  # object stores have no folders to mistake for files; a prefix simply matches nothing
    return os.path.isdir(path)


def match(pattern: str, flag: str) -> list[str]:
    """The files a glob names, sorted; a CliError naming the flag when there are none, or for a folder."""
    if stands_in(pattern):
        return [pattern]
    if _is_folder(pattern.rstrip("/")):
        raise CliError(f"{flag} {pattern} is a folder: pass a file or a glob, e.g. {pattern.rstrip('/')}/*.jsonl")
    try:
        files = [f for f in _glob(pattern) if not _is_folder(f)]
    except Exception as exc:  # Beam raises BeamIOError/IOError variants per filesystem
        raise CliError(f"{flag} {pattern}: cannot list files ({type(exc).__name__}: {exc})") from None
    if not files:
        raise CliError(f"{flag} {pattern}: no files match")
    return files


@dataclass
class InputTable:
    """What a job reads of a table: its files, and the Delta version they make (None: files or an old folder)."""

    files: list[str]
    version: TableVersion | None = None


def input_table(path: str, flag: str, preferred: str, paired: TableVersion | None = None) -> InputTable:
    """PATH[@VERSION] (a Delta table, or a job's --output with `preferred`/ inside), a file or a glob, or a
    folder of the layout before Delta (read for one more release) → the files to read.
    `paired`: the version the previous profiles were committed with (a refresh reads that matching one)."""
    path = path.rstrip("/")
    if path.endswith(".parquet") or any(c in path for c in "*?["):
        return InputTable(match(path, flag))
    if stands_in(path):  # a dry run plans with the table's files as a glob (pipelines.offline)
        return InputTable([f"{split_version(path)[0]}/{preferred}/*/*.parquet"])
    if paired is not None and "@" not in path.rsplit("/", 1)[-1]:
        found = input_version(path, flag, preferred)
        if found is not None and found.table_id == paired.table_id and found.version != paired.version:
            found = input_version(f"{found.path}@{paired.version}", flag, preferred)
            log.info("%s: reading version %d, the one the previous profiles were made with", flag, found.version)
        if found is not None:
            return InputTable(found.files, found)
    if (found := input_version(path, flag, preferred)) is not None:
        if not found.files:
            raise CliError(f"{flag} {found.at()}: that version of the table holds no files")
        return InputTable(found.files, found)
    for folder in (f"{path}/{preferred}", path):
        if is_legacy(folder):
            files = legacy_shards(folder)
            if files:
                log.warning("%s %s: a folder of the layout before Delta (read for one more release; the next run "
                            "writing there converts it)", flag, folder)
                return InputTable(files)
    raise CliError(f"{flag} {path}: no table there (no _delta_log, nor under {path}/{preferred}); pass the job's "
                   f"--output folder or the table's folder")


def prediction_files(path: str, flag: str) -> InputTable:
    """generate's predictions: its --output folder (the predictions table, current version or @VERSION), the
    table's folder, or a .parquet / .jsonl file or glob."""
    if any(c in path for c in "*?[") or path.rstrip("/").endswith((".parquet", ".jsonl")):
        return InputTable(match(path, flag))
    return input_table(path, flag, "predictions")


def is_parquet(path: str) -> bool:
    return path.rstrip("/").endswith(".parquet")


def check_fingerprints(files: Sequence[str], expected: str, flag: str, record: str,
                       columns: Sequence[str] = ()) -> None:
    """Refuse tables of another record type or made with another checkpoint (their vectors live in
    another embedding space). Reads Parquet footers and the (tiny, dictionary-encoded) fingerprint
    column only, so it stays cheap for millions of rows."""
    for path in [f for f in files if not stands_in(f)]:
        try:
            f = FileSystems.open(path)
            parquet = pq.ParquetFile(f)
        except (OSError, pa.ArrowException) as exc:  # unreadable, or not Parquet at all
            raise CliError(f"{flag} {path}: cannot be read as Parquet ({type(exc).__name__}: "
                           f"{' '.join(str(exc).split())[:200]}); fix: pass the --output folder of the job that "
                           "wrote it, and check its permissions") from None
        with f:
            names = parquet.schema_arrow.names
            meta = read_metadata(parquet.schema_arrow)
            missing = [c for c in columns if c not in names]
            if missing or meta.get("record", record) != record:
                raise CliError(f"{flag}: {path} is not a {TABLES.get(record, record)} table (record "
                               f"{meta.get('record')!r}, missing columns {missing}); pass the --output folder of "
                               "the job that wrote it")
            found = {meta["fingerprint"]} if meta.get("fingerprint") else set()
            if "model_fingerprint" in names:
                found |= set(pc.unique(parquet.read(columns=["model_fingerprint"]).column(0)).to_pylist())
        wrong = sorted(fp for fp in found if fp != expected) or ([] if found else ["(none recorded)"])
        if wrong:
            raise CliError(
                f"{flag} {path} was made with model fingerprint {', '.join(wrong)}, but the checkpoint given has "
                f"fingerprint {expected}: its vectors are in another embedding space and cannot be merged with or "
                "read by this one. Pass the --checkpoint that made them, or recompute them with this checkpoint")


def check_unique_users(files: Sequence[str], flag: str) -> None:
    """Refuse previous profiles that hold a user twice (e.g. two runs' shards mixed in an old folder), in
    one line naming the user and the files, before anything runs. Reads the user_id column only."""
    columns = []
    for path in [f for f in files if not stands_in(f)]:
        with FileSystems.open(path) as f:
            ids = pq.ParquetFile(f).read(columns=["user_id"]).column(0).combine_chunks()
        columns.append(pa.table({"user_id": ids, "file": pa.array([path] * len(ids), pa.string())}))
    if not columns:
        return
    table = pa.concat_tables(columns)
    counts = table.group_by("user_id").aggregate([("file", "count")])
    # The first user by id, not by row order: the row order of a profiles table follows how its run batched.
    twice = counts.filter(pc.greater(counts["file_count"], 1)).sort_by("user_id")
    if twice.num_rows:
        user = twice["user_id"][0].as_py()
        where = sorted(set(table.filter(pc.equal(table["user_id"], user))["file"].to_pylist()))
        raise CliError(f"{flag}: user {user!r} appears {twice['file_count'][0].as_py()} times (and "
                       f"{twice.num_rows - 1} more users twice) in {', '.join(where)}: the folder mixes two states; "
                       "pass one run's profiles, or rebuild them with a full run")


def parse_as_dict(record_type, raw, source: str):
    """schemas.validation.parse_record, with the record as a plain dict (what generate and evaluate carry)."""
    result = parse_record(raw, record_type, source)
    return result if isinstance(result, DeadLetter) else result.model_dump(mode="python")


class ParseRecords(beam.DoFn):
    """(source, JSONL line | Arrow table) → `parse(raw line or row dict, source)` per record:
    the record on the main output, or a DeadLetter on DEAD. Blank lines are not records; a Parquet row
    Python cannot hold (a timestamp beyond year 9999, ...) is a dead letter, never a crash."""

    def __init__(self, parse: Callable, read: str | None, valid: str, dead: str):
        self.parse = parse
        self.read = counter(read) if read else None  # records read = valid + dead, when counted apart
        self.valid, self.dead = counter(valid), counter(dead)

    def process(self, element):
        source, payload = element
        if isinstance(payload, pa.Table):
            raws = _rows(payload, source)
        else:
            raws = [payload] if payload.strip() else []  # bytes, or a jsonl_reader Oversized marker
        for raw in raws:
            if self.read is not None:
                self.read.inc()
                progress.add(progress.READ)
            result = raw if isinstance(raw, DeadLetter) else self.parse(raw, source)
            if isinstance(result, DeadLetter):
                self.dead.inc()
                yield beam.pvalue.TaggedOutput(DEAD, result)
            else:
                self.valid.inc()
                yield result


def _rows(table: pa.Table, source: str):
    """A Parquet table's rows as dicts; a row that does not convert becomes a dead letter saying why."""
    try:
        yield from table.to_pylist()
        return
    except (ValueError, OverflowError, pa.ArrowException):
        pass
    for i in range(table.num_rows):
        try:
            yield table.slice(i, 1).to_pylist()[0]
        except (ValueError, OverflowError, pa.ArrowException) as exc:
            yield row_dead_letter(table.slice(i, 1), source, exc)


class ReadParquet(beam.DoFn):
    """A Parquet file → (path, Arrow table) per row group, page checksums verified where the file has them.
    A file that cannot be read whole stops the job with one line (InputError): a half-read table is never
    used. `columns`: read only these."""

    def __init__(self, flag: str, columns: Sequence[str] | None = None, with_filename: bool = True):
        self.flag, self.columns, self.with_filename = flag, list(columns) if columns else None, with_filename

    def process(self, path: str):
        try:
            with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
                parquet = pq.ParquetFile(f, page_checksum_verification=True)
                for group in range(parquet.num_row_groups):
                    table = parquet.read_row_group(group, columns=self.columns)
                    table = table.replace_schema_metadata(parquet.schema_arrow.metadata)
                    yield (path, table) if self.with_filename else table
        except (OSError, pa.ArrowException) as exc:
            raise InputError(f"{self.flag} {path} cannot be read as Parquet ({type(exc).__name__}: "
                             f"{' '.join(str(exc).split())[:200]}): a corrupt or truncated file") from None


def check_parquet(files: Sequence[str], flag: str) -> None:
    """Every Parquet file's footer reads (before anything runs): a corrupt or non-Parquet file is one line."""
    for path in files:
        if not is_parquet(path) or stands_in(path):
            continue
        try:
            with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
                pq.ParquetFile(f).metadata
        except (OSError, pa.ArrowException) as exc:
            raise CliError(f"{flag} {path} cannot be read as Parquet ({type(exc).__name__}: "
                           f"{' '.join(str(exc).split())[:200]}); pass an intact Parquet file") from None


def read_records(p, label: str, files: Sequence[str], parse: Callable, read: str | None, valid: str, dead: str,
                 max_line_bytes: int = DEFAULT_MAX_RECORD_BYTES, flag: str | None = None):
    """(records, dead letters) from JSONL and Parquet files (told apart by extension). JSONL lines go through
    the bounded reader (pipelines.jsonl_reader): a line over `max_line_bytes` is never held whole."""
    flag = flag or f"--{label.lower()}"
    check_parquet(files, flag)
    records, dead_letters = [], []
    for fmt, chosen in (("Jsonl", [f for f in files if not is_parquet(f)]), ("Parquet", [f for f in files if is_parquet(f)])):
        if not chosen:
            continue
        reader = (ReadJsonLines(max_line_bytes, flag) if fmt == "Jsonl"
                  else beam.Reshuffle() | beam.ParDo(ReadParquet(flag)))
        parsed = (p | f"List{label}{fmt}" >> beam.Create(chosen) | f"Read{label}{fmt}" >> reader
                  | f"Parse{label}{fmt}" >> beam.ParDo(ParseRecords(parse, read, valid, dead)).with_outputs(
                      DEAD, main="records"))
        records.append(parsed.records)
        dead_letters.append(parsed[DEAD])
    if len(records) == 1:
        return records[0], dead_letters[0]
    return (records | f"Flatten{label}" >> beam.Flatten(),
            dead_letters | f"Flatten{label}DeadLetters" >> beam.Flatten())


def read_tables(p, label: str, files: Sequence[str], flag: str, columns: Sequence[str] | None = None):
    """A previous run's table files → Arrow tables (one per row group), checksums verified."""
    return (p | f"List{label}" >> beam.Create(list(files)) | f"Spread{label}" >> beam.Reshuffle()
            | f"Read{label}" >> beam.ParDo(ReadParquet(flag, columns, with_filename=False)))


# ---- the sinks --------------------------------------------------------------------------

class _ParquetSink(filebasedsink.FileBasedSink):
    """Beam's file sink (temp files, then renamed into place by the runner) writing Arrow tables as Parquet
    with page checksums, which every reader of ours verifies."""

    def __init__(self, prefix: str, schema: pa.Schema):
        super().__init__(prefix, coder=None, file_name_suffix=".parquet", num_shards=0,
                         shard_name_template=None, mime_type="application/x-parquet",
                         compression_type=CompressionTypes.UNCOMPRESSED)
        self.schema = schema

    def open(self, temp_path):
        handle = super().open(temp_path)
        return handle, pq.ParquetWriter(handle, self.schema, compression="snappy", write_page_checksum=True)

    def write_record(self, file_handle, table: pa.Table):
        _, writer = file_handle
        writer.write_table(table)

    def close(self, file_handle):
        handle, writer = file_handle
        writer.close()
        handle.close()


class ToTable(beam.DoFn):
    def __init__(self, schema: pa.Schema):
        self.schema = schema

    def process(self, records):
        faults.point("writing")
        yield to_table(records, self.schema)


def write_tables(records, label: str, table: OutputTable, rows_per_table: int, stem: str | None = None):
    """Records (pydantic records or row dicts) → Parquet files in `table`'s run folder, `rows_per_table` rows
    per row group; the launcher commits them (pipelines.tables)."""
    stem = stem or table.path.rstrip("/").rsplit("/", 1)[-1]
    return (records
            | f"Batch{label}" >> beam.BatchElements(min_batch_size=1, max_batch_size=rows_per_table)
            | f"{label}ToArrow" >> beam.ParDo(ToTable(table.schema))
            | f"Write{label}" >> Write(_ParquetSink(table.prefix(stem), table.schema)))


def write_dead_letters(dead_letters: list, table: OutputTable):
    """Every dead letter of a run → Parquet files in the dead-letter table's run folder (committed by the
    launcher before the main table: it is what explains a rejected run)."""
    letters = dead_letters | "FlattenDeadLetters" >> beam.Flatten()
    return write_tables(letters | "DeadLetterRows" >> beam.Map(dead_letter_row), "DeadLetters", table, 1024,
                        "dead_letters")


def dead_letter_row(letter: DeadLetter) -> dict:
    """A dead letter as a row the Arrow writer always takes (DeadLetter escapes what UTF-8 cannot hold)."""
    try:
        return letter.model_dump(mode="python")
    except Exception:  # model_construct'ed or mutated letters: through the JSON form, which holds anything
        return json.loads(dead_letter_json(letter))
