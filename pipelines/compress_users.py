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
    Tokenize ─► GroupByLength ─► SplitBatches (token budget) ─► Compress (RunInference, padded or packed)
        ▼
    MergeProfiles (CombinePerKey over user_id, profile_state.Update → ProfileState) ─► Finalize ─► WriteProfiles
    (--half_life_days and --deletions: users whose deletions cancelled most weight ─► RebuildProfiles)

Reconciliation: records_read = compressed + dead_lettered + duplicates + already_merged
(already_merged is 0 on a full run: records whose doc_id a previous profile already holds).
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
                    "Output folder (local or gs://): the profiles table OUTPUT/profiles/ (its CURRENT names the "
                    "run folder holding the Parquet shards), the dead letters OUTPUT/dead_letters/ and "
                    "OUTPUT/run_summary.json. An earlier run's profiles there are replaced once this run succeeds."))
parser.add_argument("--document_compressions_output", default=None, help="Optional folder for per-document K×d "
                    "compressions (Parquet). Keep it: it is what a later run needs as "
                    "--previous_document_compressions to apply --deletions exactly.")
parser.add_argument("--previous_profiles", default=None, help="Nightly refresh: the profiles folder (or file) of the "
                    "previous run. Only documents whose doc_id is not yet in a user's profile are compressed; users "
                    "without new documents are carried over unchanged.")
parser.add_argument("--previous_document_compressions", default=None, help="Document compressions of the previous "
                    "runs (their --document_compressions_output); required by --deletions, and carried into "
                    "--document_compressions_output.")
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
from apache_beam.io.parquetio import ReadAllFromParquetBatched
from apache_beam.ml.inference.base import RunInference
from pydantic import BaseModel, Field

from pipelines.batching import Batching
from pipelines.combiners import AccumulatorFn, unchanged
from pipelines.half_life import check_half_life
from pipelines.inference import ComMerModelHandler, SplitBatches, Tokenize, unbatch
from pipelines.io import (DEAD, DEAD_LETTER_LEGACY, IN_PROFILE, ExplodePreviousProfiles, check_fingerprints,
                          check_unique_users, explode_compressions, match, parquet_shards, read_records,
                          write_dead_letters, write_tables)
from pipelines.options import check_batching, dead_letter_folder, parse
from pipelines.output_state import phase, publish, publish_profiles, run_folder
from pipelines.profile_state import Change, ProfileState, Update, apply_update
from pipelines.profile_steps import CARRY, DATE_COUNTERS, REBUILD, REMOVE, Finalize, RebuildProfiles, Reconcile
from pipelines.reconcile import Event
from pipelines.runtime import (CliError, checkpoint_config, counter_values, new_run_id, run_cli,
                               run_pipeline, write_json)
from schemas import DocumentCompression, Profile, arrow_schema
from schemas.validation import parse_deletion, parse_json_line, validate_row

log = logging.getLogger(__name__)

COUNTERS = ("records_read", "documents_valid", "dead_lettered", "duplicates", "already_merged", "compressed",
            "truncated", "tokens", "deletions_requested", "deletions_applied", "deletions_unmatched",
            "deletions_invalid", "profiles_written", "profiles_new", "profiles_updated", "profiles_unchanged",
            "profiles_removed", "profiles_rebuilt", "previous_profiles_read", "padding_tokens", *DATE_COUNTERS)


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
    files: list[str] = Field(description="Input files (.parquet read as Parquet, others as JSONL).")
    output: str = Field(description="Output folder.")
    dead_letter_output: str = Field(description="Dead-letter folder.")
    document_compressions_output: str | None = Field(None, description="Per-document compressions folder.")
    previous_profile_files: list[str] = Field(default_factory=list, description="Previous profile shards.")
    previous_compression_files: list[str] = Field(default_factory=list, description="Previous compression shards.")
    deletion_files: list[str] = Field(default_factory=list, description="Deletion request files.")
    run_id: str = Field(description="Unique id of this run; part of every shard name it writes.")
    now: datetime = Field(description="updated_at of every profile this run changes; the recency reference time.")
    half_life_days: float | None = Field(None, description="Recency half-life (None: the paper's plain mean).")

    @property
    def metadata(self) -> dict:
        return {"fingerprint": self.fingerprint, "backbone": self.backbone, "trained": self.trained,
                "run_id": self.run_id, "half_life_days": self.half_life_days}


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
    if options.previous_profiles:
        plan.previous_profile_files = parquet_shards(options.previous_profiles, "--previous_profiles", "profiles")
        check_fingerprints(plan.previous_profile_files, plan.fingerprint, "--previous_profiles", "Profile")
        check_unique_users(plan.previous_profile_files, "--previous_profiles")
    if options.previous_document_compressions:
        plan.previous_compression_files = parquet_shards(options.previous_document_compressions,
                                                         "--previous_document_compressions",
                                                         "document_compressions", options.previous_profiles)
        check_fingerprints(plan.previous_compression_files, plan.fingerprint, "--previous_document_compressions",
                           "DocumentCompression")
    elif plan.document_compressions_output and options.previous_profiles:
        log.warning("--document_compressions_output without --previous_document_compressions holds only this "
                    "run's new documents; later --deletions of older documents will not find them")
    check_half_life(plan.half_life_days, plan.previous_profile_files, plan.previous_compression_files)
    return plan



# ---- parsing and reconciling --------------------------------------------------------------

def parse_document(raw, source: str, max_record_bytes: int):
    """A JSONL line (bytes) or a Parquet row (dict) → ValidDocument | DeadLetter."""
    if isinstance(raw, dict):
        return validate_row(raw, source, max_record_bytes=max_record_bytes)
    return parse_json_line(raw, source, max_record_bytes)


# ---- the pipeline -------------------------------------------------------------------------

def build(p: beam.Pipeline, options: argparse.Namespace, plan: JobPlan) -> None:
    docs, dead = read_records(p, "Documents", plan.files, partial(parse_document, max_record_bytes=options.max_record_bytes),
                              "records_read", "documents_valid", "dead_lettered", options.max_record_bytes)
    dead_letters = [dead]
    keyed = [docs | "KeyDocuments" >> beam.Map(lambda d: ((d.user_id, d.doc_id), Event.record(d)))]
    states = []
    if plan.previous_profile_files:
        previous = (p | "ListPreviousProfiles" >> beam.Create(plan.previous_profile_files)
                    | "ReadPreviousProfiles" >> ReadAllFromParquetBatched()
                    | "ExplodePreviousProfiles" >> beam.ParDo(ExplodePreviousProfiles()).with_outputs(
                        IN_PROFILE, main="states"))
        states.append(previous.states)
        keyed.append(previous[IN_PROFILE])
    if plan.deletion_files:
        deletions, dead = read_records(p, "Deletions", plan.deletion_files, parse_deletion,
                                       None, "deletions_requested", "deletions_invalid")
        keyed.append(deletions | "KeyDeletions" >> beam.Map(lambda key: (key, Event.delete())))
        dead_letters.append(dead)
    if plan.previous_compression_files:
        keyed.append(p | "ListPreviousCompressions" >> beam.Create(plan.previous_compression_files)
                     | "ReadPreviousCompressions" >> ReadAllFromParquetBatched()
                     | "ExplodeCompressions" >> beam.FlatMap(explode_compressions))

    reconciled = (keyed | "FlattenKeyed" >> beam.Flatten()
                  | "GroupByDocument" >> beam.GroupByKey()
                  | "Reconcile" >> beam.ParDo(Reconcile(plan.now)).with_outputs(DEAD, REMOVE, CARRY,
                                                                                 main="to_compress"))
    dead_letters.append(reconciled[DEAD])
    states.append(reconciled[REMOVE])

    handler = ComMerModelHandler(plan.checkpoint, options.backbone, options.dtype, options.device,
                                 options.cache_dir, large_model=options.large_model, packed=options.packed)
    compressed = (reconciled.to_compress
                  | "Tokenize" >> beam.ParDo(Tokenize(plan.checkpoint, options.backbone, options.cache_dir,
                                                      plan.max_document_tokens, options.length_bucket_tokens,
                                                      options.batch_shards))
                  | "GroupByLength" >> beam.GroupByKey()
                  | "SplitBatches" >> beam.ParDo(SplitBatches(Batching.from_flags(options, plan.K)))
                  | "Compress" >> RunInference(handler)
                  | "Unbatch" >> beam.FlatMap(unbatch))
    can_rebuild = plan.half_life_days is not None and bool(plan.deletion_files)
    states.append(compressed | "KeyAdditions" >> beam.Map(lambda x: (x[0], Update(Change.ADD, x[1], x[2],
                                                                                  created_at=x[3]))))
    final = (states | "FlattenStates" >> beam.Flatten()
             | "MergeProfiles" >> beam.CombinePerKey(AccumulatorFn(partial(ProfileState, plan.half_life_days),
                                                                   apply_update, unchanged))
             | "Finalize" >> beam.ParDo(Finalize(plan.fingerprint, plan.now, can_rebuild)).with_outputs(
                 REBUILD, main="kept"))
    profiles = final.kept
    if can_rebuild:  # rare: deletions cancelled most of a user's weight
        documents = (compressed, reconciled[CARRY]) | "FlattenDocuments" >> beam.Flatten()
        rebuilt = (final[REBUILD], documents) | "RebuildProfiles" >> RebuildProfiles(
            plan.half_life_days, plan.fingerprint, plan.now)
        profiles = (profiles, rebuilt) | "FlattenProfiles" >> beam.Flatten()
    write_tables(profiles, "Profiles", f"{run_folder(plan.output + '/profiles', plan.run_id)}/profiles-{plan.run_id}",
                 arrow_schema(Profile, (plan.K, plan.d), plan.metadata), options.profiles_per_table)
    if plan.document_compressions_output:
        records = ((compressed, reconciled[CARRY]) | "FlattenCompressions" >> beam.Flatten()
                   | "CompressionRecords" >> beam.MapTuple(
                       lambda user_id, doc_id, comp, when, fp=plan.fingerprint: DocumentCompression(
                           user_id=user_id, doc_id=doc_id, compression=comp, model_fingerprint=fp, created_at=when)))
        write_tables(records, "Compressions", f"{run_folder(plan.document_compressions_output, plan.run_id)}/"
                     f"document_compressions-{plan.run_id}",
                     arrow_schema(DocumentCompression, (plan.K, plan.d), plan.metadata), 1024)
    write_dead_letters(dead_letters, plan.dead_letter_output, plan.run_id)


# ---- running and reporting ----------------------------------------------------------------

def summarize(plan: JobPlan, counters: dict[str, int], seconds: float) -> dict:
    accounted = (counters["compressed"] + counters["dead_lettered"] + counters["duplicates"]
                 + counters["already_merged"])
    useful = counters["tokens"] + plan.K * counters["compressed"]
    processed = useful + counters["padding_tokens"]
    return {
        "run_id": plan.run_id,
        "users": counters["profiles_written"],
        # What this run did to each user's profile, and to each deletion request (a refresh's report).
        "profiles_changed": {k: counters[f"profiles_{k}"] for k in ("new", "updated", "unchanged", "removed", "rebuilt")},
        "deletions": {k: counters[f"deletions_{k}"] for k in ("requested", "applied", "unmatched", "invalid")},
        "documents_read": counters["records_read"],
        "documents_compressed": counters["compressed"],
        "dead_letters": counters["dead_lettered"],
        "duplicates": counters["duplicates"],
        "already_merged": counters["already_merged"],
        "truncated": counters["truncated"],
        # Documents weighted and stored with a created_at set by rule (commer.recency.effective_created_at).
        "created_at_missing": counters["created_at_missing"],
        "created_at_in_future": counters["created_at_in_future"],
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
        "half_life_days": plan.half_life_days,
        "finished_at": datetime.now(timezone.utc).isoformat(),
    }


def run(argv: list[str]) -> dict:
    """Build, run and report; returns the run summary (also written to OUTPUT/run_summary.json)."""
    flags, options = parse(parser, argv, required=parser.required_flags, check=True)
    plan = make_plan(flags)
    if not plan.trained:
        print(f"note: checkpoint {plan.checkpoint} is UNTRAINED (seeded initialisation); profiles are valid "
              "but not yet useful for personalization", file=sys.stderr)
    result, seconds = run_pipeline(options, build, flags, plan, progress_unit="documents compressed")
    summary = summarize(plan, counter_values(result, COUNTERS), seconds)
    phase("written")  # pipelines.output_state: the profiles' switch commits both tables (PAIRED)
    # Full runs and carrying refreshes wrote every current compression; others add to the previous state.
    adds_to_previous = bool(plan.previous_profile_files and not plan.previous_compression_files)
    publish_profiles(f"{plan.output}/profiles", plan.run_id, plan.document_compressions_output,
                     keep_previous_compressions=adds_to_previous, previous_profiles=flags.previous_profiles)
    publish(plan.dead_letter_output, plan.run_id, legacy=DEAD_LETTER_LEGACY)
    write_json(f"{plan.output}/run_summary.json", summary)
    return summary


def main(argv: list[str]) -> int:
    if wants_help(parser, argv):
        return 0
    summary = run(argv)
    changed = summary["profiles_changed"]
    print(f"users: {summary['users']} ({changed['new']} new, {changed['updated']} updated, {changed['unchanged']} "
          f"unchanged; {changed['removed']} removed with no documents left)  documents: {summary['documents_compressed']} compressed of "
          f"{summary['documents_read']} read  dead letters: {summary['dead_letters']}  duplicates: "
          f"{summary['duplicates']}  already merged: {summary['already_merged']}  truncated: {summary['truncated']}  "
          f"created_at missing/in future: {summary['created_at_missing']}/{summary['created_at_in_future']}")
    if any(summary["deletions"].values()):
        print("deletions: {requested} requested, {applied} applied, {unmatched} matched no stored document, "
              "{invalid} invalid (dead-lettered)".format(**summary["deletions"]))
    print(f"{summary['documents_per_second']} documents/second ({summary['seconds']} s)  reconciled: "
          f"{summary['reconciled']}")
    print(f"profiles: {summary['profiles']}  dead letters: {summary['dead_letter_output']}  "
          f"summary: {summary['profiles'].rsplit('/', 1)[0]}/run_summary.json")
    return 0 if summary["reconciled"] else 1


if __name__ == "__main__":
    run_cli(main)
