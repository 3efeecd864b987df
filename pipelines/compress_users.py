"""The main job: user documents → one ComMer soft prompt per user, with nightly incremental refresh.

    python -m pipelines.compress_users                      # sample corpus, in-process runner, ./commer_output
    python -m pipelines.compress_users --input 'gs://b/docs/*.jsonl' --output gs://b/profiles/2026-11-24 \
        --previous_profiles gs://b/profiles/2026-11-23 --runner DataflowRunner ...

Pipeline (labels as in the Beam graph):
    Read*/Parse* ─► dead letters (parse/validate)
        │ keyed (user_id, doc_id), joined with previous doc_ids, deletions, stored compressions
        ▼
    Reconcile ─► duplicates (dead letters), already-merged (skipped), removals
        ▼
    Tokenize ─► GroupByLength (bucketed batches) ─► Compress (RunInference, ComMer handler)
        ▼
    MergeProfiles (CombinePerKey over user_id, float64 sum + doc_ids) ─► Finalize ─► WriteProfiles

Reconciliation: records_read = compressed + dead_lettered + duplicates + already_merged
(already_merged is 0 on a full run: records whose doc_id a previous profile already holds).
"""
from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from pathlib import Path

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.coders import BytesCoder
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.parquetio import ReadAllFromParquetBatched, WriteToParquetBatched
from apache_beam.io.textio import ReadAllFromText, WriteToText
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, PredictionResult, RunInference
from apache_beam.options.pipeline_options import PipelineOptions
from pydantic import BaseModel, Field

from commer.model import tokenize_documents
from pipelines.batching import batch_key
from pipelines.common import (CliError, ModelOptions, counter_values, new_run_id, remove_stale_shards,
                              resolve_checkpoint, run_cli, run_pipeline, shared_model, with_local_runner)
from pipelines.flags import parse_flags, tolerant
from pipelines.profile_state import PreviousProfile, ProfileState
from schemas.validation import (DEFAULT_MAX_RECORD_BYTES, ValidDocument, duplicate_letter, parse_deletion,
                                  parse_json_line, pick_one, validate_row)
from schemas import DeadLetter, DocumentCompression, Profile, arrow_schema, read_metadata, tensor_column, to_table
from commer.checkpoint import read_config
from commer.backbone import resolve_backbone

log = logging.getLogger(__name__)

SAMPLE_INPUT = str(Path(__file__).parent / "sample_data" / "*.jsonl")
DEFAULT_OUTPUT = "./commer_output"
NAMESPACE = "commer"
DEAD = "dead"
REMOVE = "remove"
CARRY = "carry"
PREVIOUS_MARKER = "previous_marker"
COUNTERS = ("records_read", "documents_valid", "dead_lettered", "duplicates", "already_merged", "compressed",
            "truncated", "tokens", "deletions_requested", "deletions_applied", "deletions_unmatched",
            "deletions_invalid", "profiles_written", "profiles_new", "profiles_updated", "profiles_unchanged",
            "profiles_removed", "previous_profiles_read", "padding_tokens")


class CompressUsersOptions(PipelineOptions):
    """Flags of the main job. The model flags are ModelOptions' (view_as(ModelOptions)); every
    standard Beam flag works too. A direct PipelineOptions subclass on purpose: Beam collects
    only direct subclasses when it re-parses options (e.g. for the runner and workers)."""

    @classmethod
    def _add_argparse_args(cls, parser):
        # Other jobs define --output/--batch_size too; see pipelines.flags for why this is tolerant.
        parser = tolerant(parser)
        parser.add_argument("--input", default=None,
                            help="Documents: a file glob, local or gs://. Files ending in .parquet are read as "
                                 "Parquet, all others as JSONL (gzip by extension). Each record: user_id, doc_id, "
                                 "text (+ optional created_at). Default: the sample corpus shipped in the package.")
        parser.add_argument("--output", default=DEFAULT_OUTPUT,
                            help="Output folder (local or gs://): profiles in OUTPUT/profiles/*.parquet and "
                                 "OUTPUT/run_summary.json. Profile shards of earlier runs there are replaced "
                                 "once this run succeeds.")
        parser.add_argument("--dead_letter_output", default=None,
                            help="Folder for rejected records as JSONL (stage, reason, ids, raw record). "
                                 "Default: OUTPUT/dead_letters. It may contain document text: protect it like "
                                 "the input.")
        parser.add_argument("--document_compressions_output", default=None,
                            help="Optional folder for per-document K×d compressions (Parquet). Keep it: it is "
                                 "what a later run needs as --previous_document_compressions to apply "
                                 "--deletions exactly.")
        parser.add_argument("--previous_profiles", default=None,
                            help="Nightly refresh: the profiles folder (or file) of the previous run. Only "
                                 "documents whose doc_id is not yet in a user's profile are compressed; users "
                                 "without new documents are carried over unchanged.")
        parser.add_argument("--previous_document_compressions", default=None,
                            help="Document compressions of the previous runs (their --document_compressions_output"
                                 "); required by --deletions, and carried into --document_compressions_output.")
        parser.add_argument("--deletions", default=None,
                            help="File glob (JSONL or Parquet) of {user_id, doc_id} to remove from the previous "
                                 "profiles; needs --previous_profiles and --previous_document_compressions. A new "
                                 "document with a deleted id in the same run replaces the old one. A user left "
                                 "with no documents is dropped from the profiles.")
        parser.add_argument("--batch_size", type=int, default=16,
                            help="Documents per compression batch (raise it on a GPU).")
        parser.add_argument("--length_bucket_tokens", type=int, default=32,
                            help="Documents are batched with others whose token count falls in the same bucket of "
                                 "this width, so padding per document is below this many tokens.")
        parser.add_argument("--batch_shards", type=int, default=8,
                            help="Parallel batch streams per length bucket (more = more parallelism, more "
                                 "partially-filled batches).")
        parser.add_argument("--large_model", action="store_true",
                            help="Load the model once per worker VM and share it across SDK processes "
                                 "(RunInference large_model mode): use on GPU workers.")
        parser.add_argument("--max_record_bytes", type=int, default=DEFAULT_MAX_RECORD_BYTES,
                            help="Input records larger than this are dead-lettered as oversized.")
        parser.add_argument("--profiles_per_table", type=int, default=256,
                            help="Profiles per Parquet row group written (bounds writer memory).")


class JobPlan(BaseModel):
    """Everything resolved before the pipeline is built (paths, model identity, run id)."""

    checkpoint: str = Field(description="Resolved checkpoint folder.")
    fingerprint: str = Field(description="Fingerprint of the checkpoint; stamped on every output row.")
    trained: bool = Field(description="Whether the checkpoint was trained (false = seeded untrained default).")
    backbone: str = Field(description="Backbone name recorded in the checkpoint.")
    K: int = Field(description="Compression tokens per document.")
    d: int = Field(description="Backbone hidden size.")
    max_document_tokens: int = Field(description="Token limit per document (longer ones are truncated).")
    input: str = Field(description="Input glob.")
    jsonl_files: list[str] = Field(description="Input files read as JSONL.")
    parquet_files: list[str] = Field(description="Input files read as Parquet.")
    output: str = Field(description="Output folder.")
    dead_letter_output: str = Field(description="Dead-letter folder.")
    document_compressions_output: str | None = Field(None, description="Per-document compressions folder.")
    previous_profile_files: list[str] = Field(default_factory=list, description="Previous profile shards.")
    previous_compression_files: list[str] = Field(default_factory=list, description="Previous compression shards.")
    deletion_files: list[str] = Field(default_factory=list, description="Deletion request files.")
    run_id: str = Field(description="Unique id of this run; part of every shard name it writes.")
    now: datetime = Field(description="updated_at of every profile this run changes.")

    @property
    def metadata(self) -> dict:
        return {"fingerprint": self.fingerprint, "backbone": self.backbone, "trained": self.trained,
                "run_id": self.run_id}


# ---- plan: everything checked before a single document is compressed ----------------------

def _match(pattern: str, flag: str) -> list[str]:
    try:
        found = FileSystems.match([pattern])[0].metadata_list
    except Exception as exc:  # Beam raises BeamIOError/IOError variants per filesystem
        raise CliError(f"{flag} {pattern}: cannot list files ({type(exc).__name__}: {exc})") from None
    files = sorted(m.path for m in found if not m.path.endswith("/"))
    if not files:
        raise CliError(f"{flag} {pattern}: no files match")
    return files


def _parquet_files(path: str, flag: str, run_subfolder: str) -> list[str]:
    """A file, a glob, a shard folder, or a run folder with `run_subfolder`/ inside → its shards."""
    path = path.rstrip("/")
    if path.endswith(".parquet") or any(c in path for c in "*?["):
        return _match(path, flag)
    for pattern in (f"{path}/{run_subfolder}/*.parquet", f"{path}/*.parquet"):
        try:
            found = FileSystems.match([pattern])[0].metadata_list
        except Exception:  # a missing folder: try the next form
            found = []
        if found:
            return sorted(m.path for m in found)
    raise CliError(f"{flag} {path}: no .parquet files there (nor under {path}/{run_subfolder})")


def _file_metadata(path: str) -> dict:
    import pyarrow.parquet as pq
    with FileSystems.open(path) as f:
        return read_metadata(pq.read_schema(f))


def _check_fingerprints(files: list[str], expected: str, flag: str, checkpoint: str) -> None:
    for path in files:
        meta = _file_metadata(path)
        found = meta.get("fingerprint")
        if found != expected:
            raise CliError(
                f"{flag} {path} was made with model fingerprint {found or '(none recorded)'}, but the "
                f"checkpoint {checkpoint} has fingerprint {expected}; profiles from different checkpoints "
                "cannot be merged: run a full recompute without --previous_profiles, or pass the "
                "checkpoint that made them")


def make_plan(options: CompressUsersOptions, model: ModelOptions) -> JobPlan:

    for flag in ("batch_size", "length_bucket_tokens", "batch_shards", "max_record_bytes", "profiles_per_table"):
        if getattr(options, flag) <= 0:
            raise CliError(f"--{flag} must be positive")
    checkpoint = resolve_checkpoint(model)
    config = read_config(checkpoint)
    if not config.fingerprint:
        raise CliError(f"--checkpoint {checkpoint} records no fingerprint; re-save it with save_pretrained")
    input_glob = options.input or SAMPLE_INPUT
    files = _match(input_glob, "--input")
    output = options.output.rstrip("/")
    plan = JobPlan(
        checkpoint=checkpoint, fingerprint=config.fingerprint, trained=config.trained,
        backbone=config.backbone_name or config.backbone, K=config.num_compression_tokens, d=config.hidden_size,
        max_document_tokens=config.max_document_tokens, input=input_glob,
        jsonl_files=[f for f in files if not f.endswith(".parquet")],
        parquet_files=[f for f in files if f.endswith(".parquet")],
        output=output, dead_letter_output=(options.dead_letter_output or f"{output}/dead_letters").rstrip("/"),
        document_compressions_output=(options.document_compressions_output.rstrip("/")
                                      if options.document_compressions_output else None),
        run_id=new_run_id(),
        now=datetime.now(timezone.utc),
    )
    if options.deletions:
        if not options.previous_profiles:
            raise CliError("--deletions removes documents from existing profiles: also pass --previous_profiles")
        if not options.previous_document_compressions:
            raise CliError("--deletions needs the stored per-document compressions to subtract exactly: pass "
                           "--previous_document_compressions (a previous run's --document_compressions_output)")
        plan.deletion_files = _match(options.deletions, "--deletions")
    if options.previous_profiles:
        plan.previous_profile_files = _parquet_files(options.previous_profiles, "--previous_profiles", "profiles")
        _check_fingerprints(plan.previous_profile_files, plan.fingerprint, "--previous_profiles", checkpoint)
    if options.previous_document_compressions:
        plan.previous_compression_files = _parquet_files(options.previous_document_compressions,
                                                         "--previous_document_compressions",
                                                         "document_compressions")
        _check_fingerprints(plan.previous_compression_files, plan.fingerprint,
                            "--previous_document_compressions", checkpoint)
    elif plan.document_compressions_output and options.previous_profiles:
        log.warning("--document_compressions_output without --previous_document_compressions holds only this "
                    "run's new documents; later --deletions of older documents will not find them")
    return plan


# ---- parsing ------------------------------------------------------------------------------

def _counter(name: str):
    return Metrics.counter(NAMESPACE, name)


class ParseJsonl(beam.DoFn):
    """(file, raw line bytes) → ValidDocument, or a DeadLetter on the DEAD output."""

    def __init__(self, max_record_bytes: int):
        self.max_record_bytes = max_record_bytes
        self.read = _counter("records_read")
        self.valid = _counter("documents_valid")
        self.dead = _counter("dead_lettered")

    def process(self, element):
        source, raw = element
        if raw.strip():  # blank lines are not records
            self.read.inc()
            result = parse_json_line(raw, source, self.max_record_bytes)
            if isinstance(result, DeadLetter):
                self.dead.inc()
                yield beam.pvalue.TaggedOutput(DEAD, result)
            else:
                self.valid.inc()
                yield result


class ParseParquet(beam.DoFn):
    """(file, Arrow table) → ValidDocument per row, or DeadLetter."""

    def __init__(self, max_record_bytes: int):
        self.max_record_bytes = max_record_bytes
        self.read = _counter("records_read")
        self.valid = _counter("documents_valid")
        self.dead = _counter("dead_lettered")

    def process(self, element):
        source, table = element
        for row in table.to_pylist():
            self.read.inc()
            result = validate_row(row, source, max_record_bytes=self.max_record_bytes)
            if isinstance(result, DeadLetter):
                self.dead.inc()
                yield beam.pvalue.TaggedOutput(DEAD, result)
            else:
                self.valid.inc()
                yield result


class ParseDeletions(beam.DoFn):
    def __init__(self):
        self.requested = _counter("deletions_requested")
        self.invalid = _counter("deletions_invalid")

    def process(self, element, is_table: bool = False):
        source, payload = element
        rows = payload.to_pylist() if is_table else ([payload] if payload.strip() else [])
        for row in rows:
            result = parse_deletion(row, source)
            if isinstance(result, DeadLetter):
                self.invalid.inc()
                yield beam.pvalue.TaggedOutput(DEAD, result)
            else:
                self.requested.inc()
                yield result, ("delete", None)


class ExplodePreviousProfiles(beam.DoFn):
    """A table of previous profiles → the user's state (main) and one marker per merged doc_id."""

    def __init__(self):
        self.read = _counter("previous_profiles_read")

    def process(self, table: pa.Table):
        sums = tensor_column(table, "soft_prompt_sum")
        prompts = tensor_column(table, "soft_prompt")
        for i, row in enumerate(table.select(["user_id", "doc_ids", "model_fingerprint", "updated_at"]).to_pylist()):
            self.read.inc()
            previous = PreviousProfile.from_row(row, sums[i], prompts[i])
            yield row["user_id"], ("previous", previous)
            for doc_id in previous.doc_ids:
                yield beam.pvalue.TaggedOutput(PREVIOUS_MARKER, ((row["user_id"], doc_id), ("previous", None)))


def explode_compressions(table: pa.Table):
    comps = tensor_column(table, "compression")
    for i, row in enumerate(table.select(["user_id", "doc_id"]).to_pylist()):
        yield (row["user_id"], row["doc_id"]), ("compression", comps[i])


# ---- reconcile: one place decides the fate of each (user_id, doc_id) ----------------------

class Reconcile(beam.DoFn):
    """Per (user_id, doc_id): new records, whether a previous profile holds it, deletion, stored compression.

    Deletions apply to the previous state; a new record then (re-)adds the document.
    """

    def __init__(self):
        self.duplicates = _counter("duplicates")
        self.already = _counter("already_merged")
        self.applied = _counter("deletions_applied")
        self.unmatched = _counter("deletions_unmatched")

    def process(self, element):
        (user_id, doc_id), values = element
        new, included, deleted, stored = [], False, False, None
        for tag, value in values:
            if tag == "doc":
                new.append(value)
            elif tag == "previous":
                included = True
            elif tag == "delete":
                deleted = True
            elif tag == "compression":
                stored = value
        if deleted:
            if included:
                if stored is None:
                    raise RuntimeError(
                        f"cannot delete document {doc_id!r} of user {user_id!r} exactly: it is not in "
                        "--previous_document_compressions (pass the compressions of every earlier run)")
                self.applied.inc()
                yield beam.pvalue.TaggedOutput(REMOVE, (user_id, ("remove", doc_id, stored)))
                included, stored = False, None
            else:
                self.unmatched.inc()
        if stored is not None and included:
            yield beam.pvalue.TaggedOutput(CARRY, (user_id, doc_id, stored))
        kept, duplicates = pick_one(new)
        for dup in duplicates:
            self.duplicates.inc()
            yield beam.pvalue.TaggedOutput(DEAD, duplicate_letter(dup))
        if kept is not None and included:
            self.already.inc()
        elif kept is not None:
            yield kept


# ---- compression --------------------------------------------------------------------------

_TOKENIZERS: dict[tuple, object] = {}


def load_tokenizer(checkpoint: str, backbone: str | None, cache: str | None):
    """The backbone's tokenizer alone (no weights), once per process: tokenizing workers stay small."""
    key = (checkpoint, backbone, cache)
    if key not in _TOKENIZERS:
        from transformers import AutoTokenizer

        config = read_config(checkpoint)
        _TOKENIZERS[key] = AutoTokenizer.from_pretrained(str(resolve_backbone(backbone or config.backbone, cache)))
    return _TOKENIZERS[key]


def tokenize(tokenizer, text: str, limit: int) -> tuple[list[int], bool]:
    """One document by the compressor's own rule (commer.model.tokenize_documents)."""
    ids, cut = tokenize_documents(tokenizer, [text], limit)
    return ids[0], cut[0]


class Tokenize(beam.DoFn):
    def __init__(self, checkpoint, backbone, cache, limit: int, width: int, shards: int):
        self.args = (checkpoint, backbone, cache)
        self.limit, self.width, self.shards = limit, width, shards
        self.truncated = _counter("truncated")
        self.tokens = _counter("tokens")

    def setup(self):
        self.tokenizer = load_tokenizer(*self.args)

    def process(self, doc: ValidDocument):
        ids, cut = tokenize(self.tokenizer, doc.text, self.limit)
        if cut:
            self.truncated.inc()
        self.tokens.inc(len(ids))
        yield batch_key(doc.user_id, doc.doc_id, len(ids), self.width, self.shards), (doc.user_id, doc.doc_id, ids)


SORT_WINDOW_BATCHES = 64
_PADDING_TOKENS = Metrics.counter(NAMESPACE, "padding_tokens")


def split_batches(element, batch_size: int, window_batches: int = SORT_WINDOW_BATCHES):
    """A length bucket's documents → batches of batch_size with near-equal lengths.

    A bucket still spans `length_bucket_tokens` lengths, so batches cut in arrival order pad
    every row up to the longest in the batch. Sorting windows of `window_batches` batches by
    length first makes neighbours nearly equal (padding ~1 token per row) while memory stays
    bounded by one window: the grouped values are iterated lazily (on Dataflow they stream
    from shuffle), so a large bucket never sits in memory at once.

    A plain GroupByKey, not GroupIntoBatches: the latter's processing-time timer pushes the
    DirectRunner onto its legacy engine.
    """
    _, docs = element
    window: list = []
    for doc in docs:
        window.append(doc)
        if len(window) == batch_size * window_batches:
            yield from _sorted_batches(window, batch_size)
            window = []
    yield from _sorted_batches(window, batch_size)


def _sorted_batches(docs: list, batch_size: int):
    docs.sort(key=lambda x: (len(x[2]), x[0], x[1]))
    for start in range(0, len(docs), batch_size):
        batch = docs[start: start + batch_size]
        _PADDING_TOKENS.inc(len(batch) * len(batch[-1][2]) - sum(len(x[2]) for x in batch))
        yield batch


class Compressor:
    """What the ModelHandler loads: the shared ComMer model behind a numpy-in, numpy-out call
    (so it also works through large_model's cross-process proxy)."""

    def __init__(self, model):
        self.model = model

    def compress(self, batch: list[list[int]]) -> np.ndarray:
        import torch
        with torch.inference_mode():
            return self.model.compress_token_ids(batch).cpu().numpy()


class ComMerModelHandler(ModelHandler):
    """RunInference handler: one element = one length-bucketed batch of (user_id, doc_id, token ids).

    Batches are formed upstream by length, so RunInference must not re-batch them.
    """

    def __init__(self, checkpoint: str, backbone: str | None, dtype: str, device: str, cache: str | None,
                 large_model: bool = False):
        super().__init__()
        self.args = (checkpoint, backbone, dtype, device, cache)
        self.large_model = large_model

    def load_model(self) -> Compressor:
        return Compressor(shared_model(*self.args))

    def run_inference(self, batch, model: Compressor, inference_args=None):
        results = []
        for element in batch:
            ids = [x[2] for x in element]
            out = model.compress(ids)
            results.append(PredictionResult([(x[0], x[1]) for x in element], out))
        return results

    def get_num_bytes(self, batch) -> int:
        return sum(8 * len(x[2]) for element in batch for x in element)

    def batch_elements_kwargs(self):
        return {"min_batch_size": 1, "max_batch_size": 1}

    def share_model_across_processes(self) -> bool:
        return self.large_model

    def get_metrics_namespace(self) -> str:
        return "commer_compress"


def unbatch(result: PredictionResult):
    for (user_id, doc_id), comp in zip(result.example, result.inference):
        yield user_id, doc_id, np.asarray(comp, dtype=np.float32)


# ---- merge --------------------------------------------------------------------------------

class MergeProfilesFn(beam.CombineFn):
    """Thin Beam wrapper over ProfileState (float64 sums via commer.merge.SumCount)."""

    def create_accumulator(self) -> ProfileState:
        return ProfileState()

    def add_input(self, state: ProfileState, value) -> ProfileState:
        tag = value[0]
        if tag == "previous":
            return state.set_previous(value[1])
        if tag == "add":
            return state.add(value[1], value[2])
        if tag == "remove":
            return state.remove(value[1], value[2])
        raise ValueError(f"unknown merge input {tag!r}")

    def merge_accumulators(self, states):
        states = iter(states)
        first = next(states)
        for other in states:
            first.merge(other)  # mutates only the first accumulator
        return first

    def extract_output(self, state: ProfileState) -> ProfileState:
        return state


class Finalize(beam.DoFn):
    def __init__(self, fingerprint: str, now: datetime):
        self.fingerprint, self.now = fingerprint, now
        self.counters = {n: _counter(n) for n in ("profiles_written", "profiles_new", "profiles_updated",
                                                  "profiles_unchanged", "profiles_removed", "compressed")}

    def process(self, element):
        user_id, state = element
        self.counters["compressed"].inc(len(state.added_ids))
        profile = state.finalize(user_id, self.fingerprint, self.now)
        if profile is None:
            self.counters["profiles_removed"].inc()
        else:
            self.counters["profiles_written"].inc()
            kind = "new" if state.previous is None else ("updated" if state.changed else "unchanged")
            self.counters[f"profiles_{kind}"].inc()
            yield profile


def _compression_record(fingerprint: str):
    def make(item):
        user_id, doc_id, comp = item
        return DocumentCompression(user_id=user_id, doc_id=doc_id, compression=comp, model_fingerprint=fingerprint)
    return make


class _ToTable(beam.DoFn):
    def __init__(self, schema: pa.Schema):
        self.schema = schema

    def process(self, records):
        yield to_table(records, self.schema)


# ---- the pipeline -------------------------------------------------------------------------

def build(p: beam.Pipeline, options: CompressUsersOptions, model: ModelOptions, plan: JobPlan) -> None:
    dead_letters = []
    docs = []
    if plan.jsonl_files:
        jsonl = (p | "ListJsonl" >> beam.Create(plan.jsonl_files)
                 | "ReadJsonl" >> ReadAllFromText(with_filename=True, coder=BytesCoder())
                 | "ParseJsonl" >> beam.ParDo(ParseJsonl(options.max_record_bytes)).with_outputs(DEAD, main="docs"))
        docs.append(jsonl.docs)
        dead_letters.append(jsonl[DEAD])
    if plan.parquet_files:
        parquet = (p | "ListParquet" >> beam.Create(plan.parquet_files)
                   | "ReadParquet" >> ReadAllFromParquetBatched(with_filename=True)
                   | "ParseParquet" >> beam.ParDo(ParseParquet(options.max_record_bytes)).with_outputs(
                       DEAD, main="docs"))
        docs.append(parquet.docs)
        dead_letters.append(parquet[DEAD])

    keyed = [(docs | "FlattenDocuments" >> beam.Flatten()
              | "KeyDocuments" >> beam.Map(lambda d: ((d.user_id, d.doc_id), ("doc", d))))]
    states = []
    if plan.previous_profile_files:
        previous = (p | "ListPreviousProfiles" >> beam.Create(plan.previous_profile_files)
                    | "ReadPreviousProfiles" >> ReadAllFromParquetBatched()
                    | "ExplodePreviousProfiles" >> beam.ParDo(ExplodePreviousProfiles()).with_outputs(
                        PREVIOUS_MARKER, main="states"))
        states.append(previous.states)
        keyed.append(previous[PREVIOUS_MARKER])
    if plan.deletion_files:
        for fmt, files in (("Jsonl", [f for f in plan.deletion_files if not f.endswith(".parquet")]),
                           ("Parquet", [f for f in plan.deletion_files if f.endswith(".parquet")])):
            if not files:
                continue
            reader = (ReadAllFromText(with_filename=True, coder=BytesCoder()) if fmt == "Jsonl"
                      else ReadAllFromParquetBatched(with_filename=True))
            deletions = (p | f"ListDeletions{fmt}" >> beam.Create(files) | f"ReadDeletions{fmt}" >> reader
                         | f"ParseDeletions{fmt}" >> beam.ParDo(ParseDeletions(), is_table=fmt == "Parquet")
                         .with_outputs(DEAD, main="keys"))
            keyed.append(deletions.keys)
            dead_letters.append(deletions[DEAD])
    if plan.previous_compression_files:
        keyed.append(p | "ListPreviousCompressions" >> beam.Create(plan.previous_compression_files)
                     | "ReadPreviousCompressions" >> ReadAllFromParquetBatched()
                     | "ExplodeCompressions" >> beam.FlatMap(explode_compressions))

    reconciled = (keyed | "FlattenKeyed" >> beam.Flatten()
                  | "GroupByDocument" >> beam.GroupByKey()
                  | "Reconcile" >> beam.ParDo(Reconcile()).with_outputs(DEAD, REMOVE, CARRY, main="to_compress"))
    dead_letters.append(reconciled[DEAD])
    states.append(reconciled[REMOVE])

    handler = ComMerModelHandler(plan.checkpoint, model.backbone, model.dtype, model.device,
                                 model.cache_dir, large_model=options.large_model)
    compressed = (reconciled.to_compress
                  | "Tokenize" >> beam.ParDo(Tokenize(plan.checkpoint, model.backbone, model.cache_dir,
                                                      plan.max_document_tokens, options.length_bucket_tokens,
                                                      options.batch_shards))
                  | "GroupByLength" >> beam.GroupByKey()
                  | "SplitBatches" >> beam.FlatMap(split_batches, options.batch_size)
                  | "Compress" >> RunInference(handler)
                  | "Unbatch" >> beam.FlatMap(unbatch))
    states.append(compressed | "KeyAdditions" >> beam.Map(lambda x: (x[0], ("add", x[1], x[2]))))

    profile_schema = arrow_schema(Profile, (plan.K, plan.d), plan.metadata)
    (states | "FlattenStates" >> beam.Flatten()
     | "MergeProfiles" >> beam.CombinePerKey(MergeProfilesFn())
     | "Finalize" >> beam.ParDo(Finalize(plan.fingerprint, plan.now))
     | "BatchProfiles" >> beam.BatchElements(min_batch_size=1, max_batch_size=options.profiles_per_table)
     | "ProfilesToArrow" >> beam.ParDo(_ToTable(profile_schema))
     | "WriteProfiles" >> WriteToParquetBatched(f"{plan.output}/profiles/profiles-{plan.run_id}",
                                                schema=profile_schema, file_name_suffix=".parquet"))

    if plan.document_compressions_output:
        comp_schema = arrow_schema(DocumentCompression, (plan.K, plan.d), plan.metadata)
        ((compressed, reconciled[CARRY]) | "FlattenCompressions" >> beam.Flatten()
         | "CompressionRecords" >> beam.Map(_compression_record(plan.fingerprint))
         | "BatchCompressions" >> beam.BatchElements(min_batch_size=1, max_batch_size=1024)
         | "CompressionsToArrow" >> beam.ParDo(_ToTable(comp_schema))
         | "WriteCompressions" >> WriteToParquetBatched(
             f"{plan.document_compressions_output}/document_compressions-{plan.run_id}",
             schema=comp_schema, file_name_suffix=".parquet"))

    (dead_letters | "FlattenDeadLetters" >> beam.Flatten()
     | "DeadLettersToJson" >> beam.Map(lambda d: d.model_dump_json())
     | "WriteDeadLetters" >> WriteToText(f"{plan.dead_letter_output}/dead_letters-{plan.run_id}",
                                         file_name_suffix=".jsonl"))


# ---- running and reporting ----------------------------------------------------------------

def summarize(plan: JobPlan, counters: dict[str, int], seconds: float) -> dict:
    accounted = (counters["compressed"] + counters["dead_lettered"] + counters["duplicates"]
                 + counters["already_merged"])
    useful = counters["tokens"] + plan.K * counters["compressed"]
    processed = useful + counters["padding_tokens"]
    return {
        "run_id": plan.run_id,
        "users": counters["profiles_written"],
        "documents_read": counters["records_read"],
        "documents_compressed": counters["compressed"],
        "dead_letters": counters["dead_lettered"],
        "duplicates": counters["duplicates"],
        "already_merged": counters["already_merged"],
        "truncated": counters["truncated"],
        "reconciled": counters["records_read"] == accounted,
        "seconds": round(seconds, 3),
        "documents_per_second": round(counters["compressed"] / seconds, 2) if seconds > 0 else None,
        # Positions the model ran over (document tokens + K slots + padding), and the useful share.
        "processed_positions": processed,
        "padding_efficiency": round(useful / processed, 4) if processed else None,
        "counters": counters,
        "checkpoint": plan.checkpoint,
        "checkpoint_trained": plan.trained,
        "fingerprint": plan.fingerprint,
        "K": plan.K, "d": plan.d,
        "input": plan.input,
        "profiles": f"{plan.output}/profiles",
        "dead_letter_output": plan.dead_letter_output,
        "document_compressions_output": plan.document_compressions_output,
        "previous_profiles": bool(plan.previous_profile_files),
        "finished_at": datetime.now(timezone.utc).isoformat(),
    }


def run(argv: list[str]) -> dict:
    """Build, run and report; returns the run summary (also written to OUTPUT/run_summary.json)."""
    options = PipelineOptions(with_local_runner(argv))
    job = parse_flags(CompressUsersOptions, argv)
    model = options.view_as(ModelOptions)
    plan = make_plan(job, model)
    if not plan.trained:
        print(f"note: checkpoint {plan.checkpoint} is UNTRAINED (seeded initialisation); profiles are valid "
              "but not yet useful for personalisation", file=sys.stderr)
    result, seconds = run_pipeline(options, build, job, model, plan)
    summary = summarize(plan, counter_values(result, NAMESPACE, COUNTERS), seconds)
    remove_stale_shards(f"{plan.output}/profiles", plan.run_id, "*.parquet")
    remove_stale_shards(plan.dead_letter_output, plan.run_id, "*.jsonl")
    if plan.document_compressions_output and (plan.previous_compression_files or not plan.previous_profile_files):
        # Full runs, and refreshes that carried the earlier compressions, wrote every current one.
        remove_stale_shards(plan.document_compressions_output, plan.run_id, "*.parquet")
    with FileSystems.create(f"{plan.output}/run_summary.json") as f:
        f.write(json.dumps(summary, indent=2).encode())
    return summary


def print_help() -> None:
    import argparse
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.compress_users",
        description="Compress each user's documents into one ComMer soft prompt (Apache Beam). With no flags: "
                    "the shipped sample corpus on the in-process FnApiRunner (the DirectRunner's batch engine), profiles in ./commer_output. Standard Beam "
                    "flags (--runner, --project, --region, --temp_location, --setup_file, --num_workers, "
                    "--machine_type, --dataflow_service_options, --sdk_container_image, ...) are accepted too.")
    CompressUsersOptions._add_argparse_args(parser.add_argument_group("job"))
    ModelOptions._add_argparse_args(parser.add_argument_group("model"))
    parser.print_help()


def main(argv: list[str]) -> int:
    if "--help" in argv or "-h" in argv:
        print_help()
        return 0
    summary = run(argv)
    print(f"users: {summary['users']}  documents: {summary['documents_compressed']} compressed of "
          f"{summary['documents_read']} read  dead letters: {summary['dead_letters']}  duplicates: "
          f"{summary['duplicates']}  already merged: {summary['already_merged']}  truncated: {summary['truncated']}")
    print(f"{summary['documents_per_second']} documents/second ({summary['seconds']} s)  reconciled: "
          f"{summary['reconciled']}")
    print(f"profiles: {summary['profiles']}  dead letters: {summary['dead_letter_output']}  "
          f"summary: {summary['profiles'].rsplit('/', 1)[0]}/run_summary.json")
    return 0 if summary["reconciled"] else 1


if __name__ == "__main__":
    run_cli(main)
