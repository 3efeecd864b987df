"""The main job: user documents → one ComMer soft prompt per user, with nightly incremental refresh.

    python -m pipelines.compress_users --output commer_output   # sample corpus, in-process runner
    python -m pipelines.compress_users --input 'gs://b/docs/*.jsonl' --output gs://b/profiles/2026-11-24 \
        --previous_profiles gs://b/profiles/2026-11-23 --runner DataflowRunner ...

Pipeline (labels as in the Beam graph):
    ReadDocuments*/ParseDocuments* ─► dead letters (parse/validate)
        │ Events keyed (user_id, doc_id): RECORD, IN_PROFILE, DELETE, STORED
        ▼
    Reconcile (pipelines.reconcile.decide; dates new documents) ─► duplicates (dead letters), already-merged,
        ▼                                                                removals, carried
    Tokenize ─► KeyBatches (keys sized from the data) ─► GroupByLength ─► SplitBatches (token budget)
        ─► Compress (RunInference, padded or packed)
        ▼
    MergeProfiles (CombinePerKey over user_id: Update → ProfileAccumulator) ─► Finalize ─► WriteProfiles
    (--half_life_days and --deletions: users whose deletions cancelled most weight ─► RebuildProfiles)

The launcher resolves --dtype once and hands it to the workers; the tables record it (pipelines.compute_dtype).
Then it checks the dead letters (pipelines.rejections) and commits each table as one Delta version.
Reconciliation: records_read = compressed + dead_lettered + duplicates + already_merged (0 on a full run).
"""
from __future__ import annotations

from pathlib import Path

from pipelines.flags import (add_batching_flags, add_dead_letter_flag, add_model_flags, add_recency_flag, answer_help,
                             job_parser, required_help, wants_help)
from schemas.validation import DEFAULT_MAX_RECORD_BYTES

SAMPLE_INPUT = str(Path(__file__).parent / "sample_data" / "documents-*.jsonl")

parser = job_parser(
    "python -m pipelines.compress_users",
    "Compress each user's documents into one ComMer soft prompt (Apache Beam). With only --output: the shipped "
    "sample corpus on the in-process FnApiRunner (the DirectRunner's batch engine).", required=("output",))
add_dead_letter_flag(parser)
add_model_flags(parser)
add_recency_flag(parser)
parser.add_argument("--input", default=None, help="Documents: a file glob, local or gs://. Files ending in .parquet "
                    "are read as Parquet, all others as JSONL (gzip by extension). Each record: user_id, doc_id, "
                    "text (+ optional created_at). Default: the sample corpus shipped in the package "
                    "(sample_data/documents-*.jsonl).")
parser.add_argument("--output", default=None, help=required_help(
                    "Output folder (local or gs://): the profiles Delta table OUTPUT/profiles (a new version once "
                    "this run succeeds), the dead letters table OUTPUT/dead_letters and OUTPUT/run_summary.json."))
parser.add_argument("--document_compressions_output", default=None, help="Optional Delta table folder for "
                    "per-document K×d compressions. Keep it: it is what a later run needs as "
                    "--previous_document_compressions to apply --deletions exactly.")
parser.add_argument("--previous_profiles", default=None, help="Nightly refresh: the previous run's --output (or its "
                    "profiles table; PATH@VERSION or PATH@TIMESTAMP for an earlier version). Only documents whose "
                    "doc_id is not yet in a user's profile are compressed; users without new documents are carried "
                    "over unchanged.")
parser.add_argument("--previous_document_compressions", default=None, help="Document compressions of the previous "
                    "runs (their --document_compressions_output table; the version the previous profiles were made "
                    "with is read); required by --deletions, and carried into --document_compressions_output.")
parser.add_argument("--deletions", default=None, help="File glob (JSONL or Parquet) of {user_id, doc_id} to remove "
                    "from the previous profiles; needs --previous_profiles and --previous_document_compressions. A "
                    "new document with a deleted id in the same run replaces the old one. A user left with no "
                    "documents is dropped from the profiles.")
add_batching_flags(parser)
parser.add_argument("--large_model", action="store_true", help="Load the model once per worker VM and share it "
                    "across SDK processes (RunInference large_model mode): use on GPU workers.")
parser.add_argument("--max_record_bytes", type=int, default=DEFAULT_MAX_RECORD_BYTES, help="Input records larger "
                    "than this are dead-lettered as oversized.")
parser.add_argument("--profiles_per_table", type=int, default=256, help="Profiles per Parquet row group written "
                    "(bounds writer memory).")

if __name__ == "__main__":
    answer_help(parser)  # before Beam, torch and the model code are imported: --help answers at once

# ---- the job (imported after the flags, so --help never waits for these) ------------------
import argparse
import logging
import sys
from datetime import datetime, timezone
from functools import partial

import apache_beam as beam
from apache_beam.ml.inference.base import RunInference
from pydantic import BaseModel, Field

from pipelines import faults
from pipelines.batching import Batching
from pipelines.combiners import AccumulatorFn, unchanged
from pipelines.compute_dtype import check_dtype, remote_note, run_dtype
from pipelines.half_life import check_half_life
from pipelines.inference import ComMerModelHandler, KeyBatches, SplitBatches, Tokenize, unbatch
from pipelines.io import (DEAD, check_fingerprints, check_unique_users, input_table, match, read_records,
                          read_tables, write_dead_letters, write_tables)
from pipelines.options import check_batching, dead_letter_folder, parse
from pipelines.previous_outputs import IN_PROFILE, ExplodePreviousProfiles, explode_compressions
from pipelines.profile_report import COUNTERS, print_report, summarize
from pipelines.profile_accumulator import Change, ProfileAccumulator, Update, apply_update
from pipelines.profile_steps import CARRY, REBUILD, REMOVE, Finalize, RebuildProfiles, Reconcile
from pipelines.reconcile import Event
from pipelines.rejections import Stream, check_run, top_reasons
from pipelines.runtime import (CliError, checkpoint_config, counter_values, distribution_values, new_run_id, run_cli,
                               run_pipeline, write_json)
from pipelines.tables import Commit, OutputTable, append_base, commit_outputs, paired_compressions, profile_tables
from schemas import DocumentCompression
from schemas.validation import parse_deletion, parse_json_line, validate_row

log = logging.getLogger(__name__)



class JobPlan(BaseModel):
    """Everything resolved before the pipeline is built (paths, model identity, run id)."""

    checkpoint: str = Field(description="Resolved checkpoint folder.")
    fingerprint: str = Field(description="Fingerprint of the checkpoint; stamped on every output row.")
    trained: bool = Field(description="Whether the checkpoint was trained (false = seeded untrained default).")
    backbone: str = Field(description="Backbone name recorded in the checkpoint.")
    K: int = Field(description="Compression tokens per document.")
    d: int = Field(description="Backbone hidden size.")
    dtype: str = Field(description="The dtype every worker computes in (--dtype auto resolved by the launcher).")
    max_document_tokens: int = Field(description="Token limit per document (longer ones are truncated).")
    input: str = Field(description="Input glob.")
    files: list[str] = Field(description="Input files (.parquet read as Parquet, others as JSONL).")
    output: str = Field(description="Output folder.")
    dead_letter_output: str = Field(description="Dead-letter folder.")
    document_compressions_output: str | None = Field(None, description="Per-document compressions folder.")
    previous_profile_files: list[str] = Field(default_factory=list, description="Previous profile shards.")
    previous_profiles_version: str | None = Field(None, description="The previous profiles' table@version read.")
    previous_compressions_version: str | None = Field(None, description="The previous compressions' table@version.")
    previous_compression_files: list[str] = Field(default_factory=list, description="Previous compression shards.")
    deletion_files: list[str] = Field(default_factory=list, description="Deletion request files.")
    run_id: str = Field(description="Unique id of this run; part of every shard name it writes.")
    now: datetime = Field(description="updated_at of every profile this run changes; the recency reference time.")
    half_life_days: float | None = Field(None, description="Recency half-life (None: the paper's plain mean).")

    @property
    def metadata(self) -> dict:
        return {"fingerprint": self.fingerprint, "backbone": self.backbone, "trained": self.trained,
                "run_id": self.run_id, "half_life_days": self.half_life_days, "dtype": self.dtype}


def make_plan(options: argparse.Namespace) -> JobPlan:
    check_batching(options)
    for flag in ("max_record_bytes", "profiles_per_table"):
        if getattr(options, flag) <= 0:
            raise CliError(f"--{flag} must be positive")
    checkpoint, config = checkpoint_config(options)
    input_glob = options.input or SAMPLE_INPUT
    files = match(input_glob, "--input")
    output = options.output.rstrip("/")
    plan = JobPlan(
        checkpoint=checkpoint, fingerprint=config.fingerprint, trained=config.trained,
        backbone=config.backbone_name or config.backbone, K=config.num_compression_tokens, d=config.hidden_size,
        dtype=run_dtype(options),
        max_document_tokens=config.max_document_tokens, input=input_glob,
        files=files, output=output, dead_letter_output=dead_letter_folder(options),
        document_compressions_output=(options.document_compressions_output.rstrip("/")
                                      if options.document_compressions_output else None),
        run_id=new_run_id(),
        now=datetime.now(timezone.utc), half_life_days=options.half_life_days,
    )
    if options.deletions:
        if not options.previous_profiles:
            raise CliError("--deletions removes documents from existing profiles: also pass --previous_profiles")
        if not options.previous_document_compressions:
            raise CliError("--deletions needs the stored per-document compressions to subtract exactly: pass "
                           "--previous_document_compressions (a previous run's --document_compressions_output)")
        plan.deletion_files = match(options.deletions, "--deletions")
    paired = None
    if options.previous_profiles:
        previous = input_table(options.previous_profiles, "--previous_profiles", "profiles")
        plan.previous_profile_files = previous.files
        if previous.version is not None:
            plan.previous_profiles_version = previous.version.at()
            paired = paired_compressions(previous.version)
        check_fingerprints(plan.previous_profile_files, plan.fingerprint, "--previous_profiles", "Profile")
        check_unique_users(plan.previous_profile_files, "--previous_profiles")
    if options.previous_document_compressions:
        stored = input_table(options.previous_document_compressions, "--previous_document_compressions",
                             "document_compressions", paired)
        plan.previous_compression_files = stored.files
        plan.previous_compressions_version = stored.version.at() if stored.version else None
        check_fingerprints(plan.previous_compression_files, plan.fingerprint, "--previous_document_compressions",
                           "DocumentCompression")
    elif plan.document_compressions_output and options.previous_profiles:
        log.warning("--document_compressions_output without --previous_document_compressions holds only this "
                    "run's new documents; later --deletions of older documents will not find them")
    check_half_life(plan.half_life_days, plan.previous_profile_files, plan.previous_compression_files)
    check_dtype(plan.dtype, [("--previous_profiles", options.previous_profiles, plan.previous_profile_files),
                             ("--previous_document_compressions", options.previous_document_compressions,
                              plan.previous_compression_files)])
    return plan


def parse_document(raw, source: str, max_record_bytes: int):
    """A JSONL line (bytes) or a Parquet row (dict) → ValidDocument | DeadLetter."""
    if isinstance(raw, dict):
        return validate_row(raw, source, max_record_bytes=max_record_bytes)
    return parse_json_line(raw, source, max_record_bytes)


# ---- the pipeline -------------------------------------------------------------------------

def build(p: beam.Pipeline, options: argparse.Namespace, plan: JobPlan, tables: dict[str, OutputTable]) -> None:
    docs, dead = read_records(p, "Documents", plan.files, partial(parse_document, max_record_bytes=options.max_record_bytes),
                              "records_read", "documents_valid", "dead_lettered", options.max_record_bytes, "--input")
    dead_letters = [dead]
    keyed = [docs | "KeyDocuments" >> beam.Map(lambda d: ((d.user_id, d.doc_id), Event.record(d)))]
    states = []
    if plan.previous_profile_files:
        previous = (read_tables(p, "PreviousProfiles", plan.previous_profile_files, "--previous_profiles")
                    | "ExplodePreviousProfiles" >> beam.ParDo(ExplodePreviousProfiles()).with_outputs(
                        IN_PROFILE, main="states"))
        states.append(previous.states)
        keyed.append(previous[IN_PROFILE])
    if plan.deletion_files:
        deletions, dead = read_records(p, "Deletions", plan.deletion_files, parse_deletion,
                                       None, "deletions_requested", "deletions_invalid", flag="--deletions")
        keyed.append(deletions | "KeyDeletions" >> beam.Map(lambda key: (key, Event.delete())))
        dead_letters.append(dead)
    if plan.previous_compression_files:
        keyed.append(read_tables(p, "PreviousCompressions", plan.previous_compression_files,
                                 "--previous_document_compressions")
                     | "ExplodeCompressions" >> beam.FlatMap(explode_compressions))

    reconciled = (keyed | "FlattenKeyed" >> beam.Flatten()
                  | "GroupByDocument" >> beam.GroupByKey()
                  | "Reconcile" >> beam.ParDo(Reconcile(plan.now)).with_outputs(DEAD, REMOVE, CARRY,
                                                                                 main="to_compress"))
    dead_letters.append(reconciled[DEAD])
    states.append(reconciled[REMOVE])

    handler = ComMerModelHandler(plan.checkpoint, options.backbone, plan.dtype, options.device,
                                 options.cache_dir, large_model=options.large_model, packed=options.packed)
    batching = Batching.from_flags(options, plan.K)
    compressed = (reconciled.to_compress
                  | "Tokenize" >> beam.ParDo(Tokenize(plan.checkpoint, options.backbone, options.cache_dir,
                                                      plan.max_document_tokens, options.length_bucket_tokens))
                  | "KeyBatches" >> KeyBatches(batching, options.batch_shards)
                  | "GroupByLength" >> beam.GroupByKey()
                  | "SplitBatches" >> beam.ParDo(SplitBatches(batching))
                  | "Compress" >> RunInference(handler)
                  | "Unbatch" >> beam.FlatMap(unbatch))
    can_rebuild = plan.half_life_days is not None and bool(plan.deletion_files)
    states.append(compressed | "KeyAdditions" >> beam.Map(lambda c: (c.user_id, Update(
        Change.ADD, c.doc_id, c.compression, created_at=c.created_at))))
    final = (states | "FlattenStates" >> beam.Flatten()
             | "MergeProfiles" >> beam.CombinePerKey(AccumulatorFn(partial(ProfileAccumulator, plan.half_life_days),
                                                                   apply_update, unchanged))
             | "Finalize" >> beam.ParDo(Finalize(plan.fingerprint, plan.now, can_rebuild)).with_outputs(
                 REBUILD, main="kept"))
    profiles = final.kept
    if can_rebuild:  # rare: deletions cancelled most of a user's weight
        documents = (compressed, reconciled[CARRY]) | "FlattenDocuments" >> beam.Flatten()
        rebuilt = (final[REBUILD], documents) | "RebuildProfiles" >> RebuildProfiles(
            plan.half_life_days, plan.fingerprint, plan.now)
        profiles = (profiles, rebuilt) | "FlattenProfiles" >> beam.Flatten()
    write_tables(profiles, "Profiles", tables["profiles"], options.profiles_per_table)
    if plan.document_compressions_output:
        records = ((compressed, reconciled[CARRY]) | "FlattenCompressions" >> beam.Flatten()
                   | "CompressionRecords" >> beam.Map(
                       lambda c, fp=plan.fingerprint: DocumentCompression(
                           user_id=c.user_id, doc_id=c.doc_id, compression=c.compression, model_fingerprint=fp,
                           created_at=c.created_at)))
        write_tables(records, "Compressions", tables["document compressions"], 1024)
    write_dead_letters(dead_letters, tables["dead letters"])


# ---- running and reporting ----------------------------------------------------------------

def run(argv: list[str]) -> dict:
    """Build, run, check, commit and report; returns the run summary (also written to OUTPUT/run_summary.json)."""
    flags, options = parse(parser, argv, required=parser.required_flags, check=True)
    plan = make_plan(flags)
    remote_note(flags, plan.dtype, options)
    tables = profile_tables(plan.output, plan.dead_letter_output, plan.document_compressions_output, plan.run_id,
                            (plan.K, plan.d), plan.metadata)
    if not plan.trained:
        print(f"note: checkpoint {plan.checkpoint} is UNTRAINED (seeded initialisation); profiles are valid "
              "but not yet useful for personalization", file=sys.stderr)
    result, seconds = run_pipeline(options, build, flags, plan, tables, progress_unit="documents compressed")
    counters = counter_values(result, COUNTERS)
    summary = summarize(plan, counters, seconds, distribution_values(result))
    faults.point("written")
    summary["dead_letter_reasons"] = top_reasons(tables["dead letters"])
    streams = [Stream("--input", counters["records_read"], counters["dead_lettered"]),
               Stream("--deletions", counters["deletions_requested"] + counters["deletions_invalid"],
                      counters["deletions_invalid"])]
    commits = [Commit(tables["dead letters"], {"summary": summary})]
    rejected = check_run(streams, flags.max_dead_letter_fraction, counters["profiles_written"], "profiles", summary,
                         tables["dead letters"])
    compressions = tables.get("document compressions")
    if rejected is None and compressions is not None:
        # Full runs and carrying refreshes wrote every current compression; others add to the previous state.
        base = None
        if plan.previous_profile_files and not plan.previous_compression_files:
            compressions.mode, base = "append", append_base(plan.previous_profiles_version, compressions)
        commits.append(Commit(compressions, {"summary": summary}, base=base))
    if rejected is None:
        commits.append(Commit(tables["profiles"], {"summary": summary}, pair_with=compressions))
    summary["committed"] = commit_outputs(commits)
    faults.point("committed")
    write_json(f"{plan.output}/run_summary.json", summary)
    if rejected is not None:
        raise rejected
    return summary


def main(argv: list[str]) -> int:
    if wants_help(parser, argv):
        return 0
    summary = run(argv)
    print_report(summary)
    return 0 if summary["reconciled"] else 1


if __name__ == "__main__":
    run_cli(main)
