"""Reading and writing for every job, on one filesystem layer (Beam's FileSystems: local, gs://, ...).

    match / parquet_shards / prediction_files   input discovery (globs, run folders, CURRENT), failing early
                               with the flag's name
    check_fingerprints         a table made by another checkpoint is refused before anything runs
    check_unique_users         previous profiles holding a user twice are refused in one line
    read_records               JSONL lines (bounded reader, pipelines.reading) or Parquet rows → ParseRecords
                               → records | dead letters
    ExplodePreviousProfiles / explode_compressions   a previous run's tables → keyed inputs
    write_tables / write_dead_letters   the sinks
"""
from __future__ import annotations

from typing import Callable, Sequence

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.parquetio import ReadAllFromParquetBatched, WriteToParquetBatched
from apache_beam.io.textio import WriteToText

from pipelines.output_state import current_shards, phase, run_folder
from pipelines import progress
from pipelines.offline import stands_in
from pipelines.profile_state import Change, PreviousProfile, Update
from pipelines.reading import ReadJsonLines
from pipelines.reconcile import Event
from pipelines.runtime import CliError, counter
from schemas import DeadLetter, read_metadata, tensor_column, to_table
from schemas.validation import DEFAULT_MAX_RECORD_BYTES, dead_letter_json, parse_record

DEAD = "dead"
IN_PROFILE = "in_profile"
TABLES = {"Profile": "profiles", "DocumentCompression": "document compressions"}
DEAD_LETTER_LEGACY = ("dead_letters-*.jsonl",)  # the flat shard names before CURRENT (removed by publish)
# generate's predictions, in its --output's run folder (before CURRENT: flat in --output); Parquet first.
PREDICTION_SHARDS = ("predictions-*.parquet", "predictions-*.jsonl")


def _glob(pattern: str) -> list[str]:
    return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list if not m.path.endswith("/"))


def match(pattern: str, flag: str) -> list[str]:
    """The files a glob names, sorted; a CliError naming the flag when there are none."""
    if stands_in(pattern):
        return [pattern]
    try:
        files = _glob(pattern)
    except Exception as exc:  # Beam raises BeamIOError/IOError variants per filesystem
        raise CliError(f"{flag} {pattern}: cannot list files ({type(exc).__name__}: {exc})") from None
    if not files:
        raise CliError(f"{flag} {pattern}: no files match")
    return files


def parquet_shards(path: str, flag: str, run_subfolder: str, paired_with: str | None = None) -> list[str]:
    """A file, a glob, a shard folder, or a job's output folder with `run_subfolder`/ inside → its shards.
    `paired_with`: the profiles this table is read together with (--previous_profiles); their commit names
    the run folders to read (pipelines.output_state: two tables, one commit)."""
    path = path.rstrip("/")
    if path.endswith(".parquet") or any(c in path for c in "*?["):
        return match(path, flag)
    if stands_in(path):
        return [f"{path}/{run_subfolder}/*/*.parquet"]
    for table in (f"{path}/{run_subfolder}", path):  # a folder with CURRENT: its committed run(s) only
        if (committed := current_shards(table, paired_with=paired_with)) is not None:
            if not committed:
                raise CliError(f"{flag} {path}: {table}/CURRENT names run folders without .parquet shards")
            return committed
    for pattern in (f"{path}/{run_subfolder}/*.parquet", f"{path}/*.parquet"):
        try:
            found = _glob(pattern)
        except Exception:  # a missing folder: try the next form
            found = []
        if found:
            return found
    raise CliError(f"{flag} {path}: no .parquet files there (nor under {path}/{run_subfolder}); pass the "
                   f"job's --output folder")


def prediction_files(path: str, flag: str) -> list[str]:
    """The predictions of generate's --output folder (the run CURRENT names; Parquet, else JSONL), or of a
    file or glob. A folder without CURRENT (written before it) is read flat, as it was then."""
    path = path.rstrip("/")
    if any(c in path for c in "*?[") or path.endswith((".parquet", ".jsonl")):
        return match(path, flag)
    if stands_in(path):
        return [f"{path}/*/{PREDICTION_SHARDS[0]}"]
    committed = [current_shards(path, pattern) for pattern in PREDICTION_SHARDS]
    legacy = [] if committed[0] is not None else [f"{path}/*.parquet", f"{path}/*.jsonl"]
    for files in [*committed, *(_glob_quietly(p) for p in legacy)]:
        if files:
            return files
    raise CliError(f"{flag} {path}: no .parquet or .jsonl predictions found (pass generate's --output)")


def _glob_quietly(pattern: str) -> list[str]:
    try:
        return _glob(pattern)
    except Exception:  # a missing folder
        return []


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
    twice = counts.filter(pc.greater(counts["file_count"], 1))
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
    the record on the main output, or a DeadLetter on DEAD. Blank lines are not records."""

    def __init__(self, parse: Callable, read: str | None, valid: str, dead: str):
        self.parse = parse
        self.read = counter(read) if read else None  # records read = valid + dead, when counted apart
        self.valid, self.dead = counter(valid), counter(dead)

    def process(self, element):
        source, payload = element
        if isinstance(payload, pa.Table):
            raws = payload.to_pylist()
        else:
            raws = [payload] if payload.strip() else []  # bytes, or a reading.Oversized marker
        for raw in raws:
            if self.read is not None:
                self.read.inc()
                progress.add(progress.READ)
            result = self.parse(raw, source)
            if isinstance(result, DeadLetter):
                self.dead.inc()
                yield beam.pvalue.TaggedOutput(DEAD, result)
            else:
                self.valid.inc()
                yield result


def read_records(p, label: str, files: Sequence[str], parse: Callable, read: str | None, valid: str, dead: str,
                 max_line_bytes: int = DEFAULT_MAX_RECORD_BYTES):
    """(records, dead letters) from JSONL and Parquet files (told apart by extension). JSONL lines go through
    the bounded reader (pipelines.reading): a line over `max_line_bytes` is never held whole."""
    records, dead_letters = [], []
    for fmt, chosen in (("Jsonl", [f for f in files if not is_parquet(f)]), ("Parquet", [f for f in files if is_parquet(f)])):
        if not chosen:
            continue
        reader = (ReadJsonLines(max_line_bytes) if fmt == "Jsonl"
                  else ReadAllFromParquetBatched(with_filename=True))
        parsed = (p | f"List{label}{fmt}" >> beam.Create(chosen) | f"Read{label}{fmt}" >> reader
                  | f"Parse{label}{fmt}" >> beam.ParDo(ParseRecords(parse, read, valid, dead)).with_outputs(
                      DEAD, main="records"))
        records.append(parsed.records)
        dead_letters.append(parsed[DEAD])
    if len(records) == 1:
        return records[0], dead_letters[0]
    return (records | f"Flatten{label}" >> beam.Flatten(),
            dead_letters | f"Flatten{label}DeadLetters" >> beam.Flatten())


# ---- a previous run's tables, as compress_users' keyed inputs ----------------------------

class ExplodePreviousProfiles(beam.DoFn):
    """A table of previous profiles → the user's Update(PREVIOUS) and an IN_PROFILE event per doc_id."""

    def __init__(self):
        self.read = counter("previous_profiles_read")

    def process(self, table: pa.Table):
        sums, prompts = tensor_column(table, "soft_prompt_sum"), tensor_column(table, "soft_prompt")
        # Every scalar column: the recency state's too (files written before it have none: plain means).
        for i, row in enumerate(table.drop_columns(["soft_prompt_sum", "soft_prompt"]).to_pylist()):
            self.read.inc()
            previous = PreviousProfile.from_row(row, sums[i], prompts[i])
            yield row["user_id"], Update(Change.PREVIOUS, previous=previous)
            for doc_id in previous.doc_ids:
                yield beam.pvalue.TaggedOutput(IN_PROFILE, ((row["user_id"], doc_id), Event.in_profile()))


def explode_compressions(table: pa.Table):
    comps = tensor_column(table, "compression")
    for i, row in enumerate(table.drop_columns(["compression"]).to_pylist()):  # created_at: none before version 2
        yield (row["user_id"], row["doc_id"]), Event.stored(comps[i], row.get("created_at"))


class ToTable(beam.DoFn):
    def __init__(self, schema: pa.Schema):
        self.schema = schema
        self.tables = 0

    def process(self, records):
        self.tables += 1
        if self.tables == 2:  # the first table is in the writer's temp file by now
            phase("writing")
        yield to_table(records, self.schema)


def write_tables(records, label: str, prefix: str, schema: pa.Schema, rows_per_table: int):
    """Records → Parquet shards `prefix`-*.parquet, `rows_per_table` rows per row group."""
    return (records
            | f"Batch{label}" >> beam.BatchElements(min_batch_size=1, max_batch_size=rows_per_table)
            | f"{label}ToArrow" >> beam.ParDo(ToTable(schema))
            | f"Write{label}" >> WriteToParquetBatched(prefix, schema=schema, file_name_suffix=".parquet"))




def write_dead_letters(dead_letters: list, folder: str, run_id: str):
    """Every dead letter of a run → folder/RUN_ID/dead_letters-RUN_ID-*.jsonl (a table of its own: the job
    publishes it after its main output, pipelines.output_state)."""
    return (dead_letters | "FlattenDeadLetters" >> beam.Flatten()
            | "DeadLettersToJson" >> beam.Map(dead_letter_json)
            | "WriteDeadLetters" >> WriteToText(f"{run_folder(folder, run_id)}/dead_letters-{run_id}",
                                                file_name_suffix=".jsonl"))
