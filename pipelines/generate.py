"""Generate answers for queries from users' soft prompts (Beam batch job).

    python -m pipelines.generate --profiles commer_output --queries queries.jsonl --output predictions

    queries (JSONL | Parquet) ─ parse/validate ─► dead letters (reason)
          │ by user_id
          ▼
    CoGroupByKey with profiles (or, --mode=in_prompt, with the user's documents: BM25 top-n;
          or, --merge=retrieved, with the user's stored compressions: per query the mean of the top M)
          ▼
    RunInference (one model per process, batches of --batch_size): greedy answer, perplexity of
    the reference when the query has one (with the profile, and without it for personalized
    queries: evaluate compares each query with itself), prompt length
          ▼
    OUTPUT/predictions: a Delta table (schemas.Prediction), this run's files committed as one new version
    after the pipeline succeeded (pipelines.tables: a kill leaves the previous version or this one)
    OUTPUT/dead_letters (Delta), OUTPUT/run_summary.json

A query whose user has no profile is still answered, marked personalized=false: with the task
prompt (--task_prompt: 8 soft tokens trained on the task without documents, bundled beside the
default checkpoint) or, with --task_prompt=none, without a soft prompt. Profiles made by another checkpoint (fingerprint) are refused before
anything runs. Modes: commer (soft prompt), in_prompt (documents as text, the baseline),
none (no personalization), all on the same frozen backbone so quality and prompt length compare.
"""
from __future__ import annotations

from pipelines.flags import (IN_PROMPT_MAX_TOKENS, add_dead_letter_flag, add_merge_flags, add_model_flags, answer_help,
                             job_parser, required_help, wants_help)

MODES = ("commer", "in_prompt", "none")

parser = job_parser("python -m pipelines.generate", __doc__, required=("queries", "output"))
parser.add_argument("--profiles", default=None,
                    help="Profiles table from compress_users: its output folder (profiles/ inside is used) or the "
                         "table folder (PATH@VERSION or PATH@TIMESTAMP: an earlier version), or one .parquet file. "
                         "Needed with --mode=commer.")
parser.add_argument("--queries", default=None,
                    help=required_help("Queries: JSONL (.jsonl/.json, optionally .gz) or Parquet (.parquet) file or "
                                       "glob, with user_id, query_id, instruction and optional reference."))
parser.add_argument("--output", default=None,
                    help=required_help("Output folder: the predictions Delta table OUTPUT/predictions (a new "
                                       "version once this run succeeds), OUTPUT/dead_letters, OUTPUT/run_summary.json."))
parser.add_argument("--mode", default="commer", choices=list(MODES),
                    help="commer: the user's soft prompt; in_prompt: the user's top --num_documents documents "
                         "by BM25 as plain text (baseline; needs --documents); none: no personalization.")
parser.add_argument("--documents", default=None,
                    help="Documents (same format as compress_users' input: user_id, doc_id, text) for "
                         "--mode=in_prompt and --merge=retrieved --retrieval=bm25.")
parser.add_argument("--num_documents", type=int, default=4,
                    help="In-prompt mode: documents put in the prompt, best BM25 match first.")
parser.add_argument("--max_prompt_tokens", type=int, default=0,
                    help="Prompt token limit (instruction, plus documents in in_prompt mode). 0: the "
                         f"checkpoint's limit, or {IN_PROMPT_MAX_TOKENS} in in_prompt mode; in-prompt "
                         "drops the lowest-ranked documents until the prompt fits.")
parser.add_argument("--max_new_tokens", type=int, default=32, help="Most tokens generated per answer.")
parser.add_argument("--do_sample", action="store_true",
                    help="Sample instead of greedy decoding (the paper evaluates greedy).")
parser.add_argument("--temperature", type=float, default=1.0, help="Sampling temperature (--do_sample).")
parser.add_argument("--top_p", type=float, default=1.0, help="Nucleus sampling mass (--do_sample).")
parser.add_argument("--seed", type=int, default=0,
                    help="Sampling seed; each query samples with a seed derived from it and its query_id, "
                         "so results do not depend on batching.")
parser.add_argument("--batch_size", type=int, default=16, help="Queries generated together per model call.")
parser.add_argument("--task_prompt", default="default",
                    help="--mode=commer, a user without a profile (personalized=false, counted): default: the "
                         "task prompt bundled beside the default checkpoint if it fits the checkpoint's backbone, "
                         "else the checkpoint's own if it has one; checkpoint: its own, alone; a folder "
                         "(training.train --method prompt_tuning --num_documents 0); none: no soft prompt.")
add_merge_flags(parser)
add_dead_letter_flag(parser)
add_model_flags(parser)

if __name__ == "__main__":
    answer_help(parser)  # before Beam, torch and the model code are imported: --help answers at once

# ---- the job (imported after the flags, so --help never waits for these) ------------------
import json
import logging
from functools import partial
from typing import Iterable

import apache_beam as beam
from apache_beam.ml.inference.base import RunInference

from commer.prompting import UserDocuments
from pipelines import faults
from pipelines.elements import GenerationRequest, StoredProfile
from pipelines.inference import ComMerGenerator, GenerationSettings, cold_start_prompt, generation_settings
from pipelines.io import (DEAD, check_fingerprints, input_table, match, parse_as_dict, read_records, read_tables,
                          write_dead_letters, write_tables)
from pipelines.options import dead_letter_folder, parse
from pipelines.rejections import Stream, check_run, report_reasons, top_reasons
from pipelines.retrieved_merge import (MergeSettings, UserPool, compress_instructions, compression_shards,
                                       merge_report, merge_settings, merge_summary, read_compressions)
from pipelines.runtime import (CliError, counter, counter_values, counters, new_run_id, run_cli, run_pipeline,
                               write_json)
from pipelines.tables import Commit, check_separate, commit_outputs, plan_output
from schemas import DeadLetter, Document, Prediction, Query, arrow_schema, tensor_column

log = logging.getLogger(__name__)

PROFILE_COLUMNS = ["user_id", "doc_count", "soft_prompt", "model_fingerprint"]


def profile_rows(table) -> Iterable[tuple[str, StoredProfile]]:
    """(user_id, profile) pairs from one Parquet record batch table."""
    soft = tensor_column(table, "soft_prompt")
    plain = table.select(["user_id", "doc_count", "model_fingerprint"]).to_pylist()
    for i, row in enumerate(plain):
        yield row["user_id"], StoredProfile(soft[i].copy(), row["doc_count"], row["model_fingerprint"])


# ---- joining a user's queries with their profile or documents ---------------------------

class PlanUser(beam.DoFn):
    """A user's queries → GenerationRequests, with the user's soft prompt or documents.

    Queries are never dropped for lack of a profile: they become non-personalized requests, with the
    task prompt when there is one (`cold_start`, (K, d)).
    """

    def __init__(self, settings: GenerationSettings, merge: MergeSettings | None = None, cold_start=None):
        self.settings, self.merge, self.cold_start = settings, merge, cold_start
        self.counters = counters("queries_without_profile", "queries_task_prompt", "query_duplicates",
                                 "users_with_several_profiles")

    def process(self, element):
        user_id, groups = element
        queries = sorted(groups["queries"], key=lambda q: q["query_id"])
        # Users with a profile but no query: nothing to do (the join still had to see them).
        return list(self._plan(user_id, queries, groups)) if queries else []

    def _plan(self, user_id, queries, groups):
        soft, doc_count, ranked, pool = None, 0, None, None
        if self.merge is not None:  # --merge=retrieved: a soft prompt per query, from the stored compressions
            pool = UserPool(user_id, groups.get("compressions", []), groups.get("documents"), self.merge)
        elif self.settings.mode == "commer":
            profiles = list(groups.get("profiles", []))
            if len(profiles) > 1:
                # The main job writes one row per user; keep the fullest one rather than fail.
                self.counters["users_with_several_profiles"].inc()
                log.warning("user %s has %d profiles; using the one with the most documents", user_id, len(profiles))
            profile = max(profiles, key=lambda p: p.doc_count, default=None)
            if profile is not None and profile.model_fingerprint != self.settings.fingerprint:
                raise ValueError(f"profile of user {user_id} has fingerprint {profile.model_fingerprint}, "
                                 f"expected {self.settings.fingerprint}")
            if profile is not None and profile.doc_count > 0:
                soft, doc_count = profile.soft_prompt, profile.doc_count
        elif self.settings.mode == "in_prompt":
            ranked = UserDocuments(groups.get("documents", []))

        seen = set()
        for query in queries:
            if query["query_id"] in seen:
                self.counters["query_duplicates"].inc()
                yield beam.pvalue.TaggedOutput("dead", DeadLetter(
                    stage="duplicate", reason=f"query_id {query['query_id']!r} appears more than once for this user; "
                                              "the first was answered", user_id=user_id,
                    record=json.dumps(query)))
                continue
            seen.add(query["query_id"])
            if pool is not None:
                soft, doc_count = pool.soft_prompt(query)
            documents = ranked.top(query["instruction"], self.settings.num_documents) if ranked else None
            personalized = soft is not None or bool(documents)
            if not personalized:
                self.counters["queries_without_profile" if self.cold_start is None else "queries_task_prompt"].inc()
            yield GenerationRequest(user_id=user_id, query_id=query["query_id"], instruction=query["instruction"],
                                    reference=query.get("reference"),
                                    soft_prompt=soft if personalized else self.cold_start, doc_count=doc_count,
                                    documents=documents, personalized=personalized)


# ---- the pipeline -----------------------------------------------------------------------

def build(pipeline, opts, settings: GenerationSettings, query_files: list[str], document_files: list[str],
          profile_shards: list[str], tables: dict, merge: MergeSettings | None = None):
    """Wire the job into `pipeline`; returns nothing (the sinks are the outputs). With `merge`,
    `profile_shards` are the document compressions' shards."""
    queries, query_dead = read_records(pipeline, "Queries", query_files, partial(parse_as_dict, Query),
                                       "query_read", "query_valid", "query_dead_lettered", flag="--queries")
    if merge is not None and merge.retrieval == "similarity":
        queries = compress_instructions(queries, settings)
    grouped = {"queries": queries | "KeyQueries" >> beam.Map(lambda q: (q["user_id"], q))}
    dead = [query_dead]
    if merge is not None:
        grouped["compressions"] = read_compressions(pipeline, profile_shards)
    elif settings.mode == "commer":
        grouped["profiles"] = (read_tables(pipeline, "Profiles", profile_shards, "--profiles", PROFILE_COLUMNS)
                               | "KeyProfiles" >> beam.FlatMap(profile_rows))
    if document_files:  # --mode=in_prompt, or --merge=retrieved --retrieval=bm25
        documents, doc_dead = read_records(pipeline, "Documents", document_files, partial(parse_as_dict, Document),
                                           "document_read", "document_valid", "document_dead_lettered",
                                           flag="--documents")
        grouped["documents"] = documents | "KeyDocuments" >> beam.Map(
            lambda d: (d["user_id"], {"doc_id": d["doc_id"], "text": d["text"]}))
        dead.append(doc_dead)

    planned = (grouped
               | "JoinByUser" >> beam.CoGroupByKey()
               | "PlanQueries" >> beam.ParDo(PlanUser(settings, merge, cold_start_prompt(settings))).with_outputs(DEAD, main="requests"))
    dead.append(planned.dead)

    predictions = (planned.requests
                   | "Generate" >> RunInference(ComMerGenerator(settings))
                   | "Count" >> beam.Map(_count_prediction))
    write_tables(predictions, "Predictions", tables["predictions"], opts.batch_size * 16)
    write_dead_letters(dead, tables["dead letters"])


_written = counter("predictions")
_personalized = counter("predictions_personalized")
_prompt_tokens = counter("prompt_tokens")


def _count_prediction(row: dict) -> dict:
    _written.inc()
    _prompt_tokens.inc(row["prompt_tokens"])
    if row["personalized"]:
        _personalized.inc()
    return row


def main(argv: list[str]) -> int:
    if wants_help(parser, argv):
        return 0
    opts, options = parse(parser, argv, required=parser.required_flags, check=True)
    settings = generation_settings(opts, options)
    merge = merge_settings(opts, settings.fingerprint)
    if opts.mode == "commer" and not opts.profiles and merge is None:
        raise CliError("--mode=commer needs --profiles (compress_users' --output folder); "
                       "or use --mode=none for unpersonalized answers")
    if opts.mode == "in_prompt" and not opts.documents:
        raise CliError("--mode=in_prompt needs --documents (the users' documents, as given to compress_users)")
    query_files = match(opts.queries, "--queries")
    document_files = match(opts.documents, "--documents") if opts.documents and (opts.mode == "in_prompt" or merge) else []
    shards: list[str] = []
    if merge is not None:
        shards = compression_shards(opts, merge)
    elif settings.mode == "commer":
        shards = input_table(opts.profiles, "--profiles", "profiles").files
        check_fingerprints(shards, settings.fingerprint, "--profiles", "Profile", PROFILE_COLUMNS)
    elif opts.profiles:
        log.info("--profiles is not used in --mode=%s", settings.mode)

    output, run_id = opts.output.rstrip("/"), new_run_id()
    schema = arrow_schema(Prediction, metadata={"fingerprint": settings.fingerprint, "mode": settings.mode,
                                               "checkpoint": settings.checkpoint, "dtype": settings.dtype})
    tables = {"predictions": plan_output("predictions", "--output", f"{output}/predictions", schema, run_id),
              "dead letters": plan_output("dead letters", "--dead_letter_output", dead_letter_folder(opts),
                                          arrow_schema(DeadLetter), run_id)}
    check_separate(list(tables.values()))
    result, seconds = run_pipeline(options, build, opts, settings, query_files, document_files, shards,
                                   tables, merge, progress_unit="queries answered")
    faults.point("written")
    counts = counter_values(result)
    read, rejected = counts.get("query_read", 0), counts.get("query_dead_lettered", 0)
    answered, duplicates = counts.get("predictions", 0), counts.get("query_duplicates", 0)
    summary = {
        "run_id": run_id, "mode": settings.mode, "checkpoint": settings.checkpoint, "fingerprint": settings.fingerprint,
        "queries_read": read, "queries_dead_lettered": rejected, "query_duplicates": duplicates,
        "predictions": answered, "predictions_personalized": counts.get("predictions_personalized", 0),
        "predictions_not_personalized": answered - counts.get("predictions_personalized", 0),
        "predictions_task_prompt": counts.get("queries_task_prompt", 0),
        "users_with_several_profiles": counts.get("users_with_several_profiles", 0),
        "documents_read": counts.get("document_read", 0),
        "documents_dead_lettered": counts.get("document_dead_lettered", 0),
        "prompt_tokens_mean": counts.get("prompt_tokens", 0) / answered if answered else None,
        "reconciled": read == answered + rejected + duplicates,
        "seconds": round(seconds, 2),
        "settings": settings.model_dump(),
        "merge": merge_summary(merge, counts),
        "dead_letter_reasons": top_reasons(tables["dead letters"]),
    }
    streams = [Stream("--queries", read, rejected),
               Stream("--documents", summary["documents_read"], summary["documents_dead_lettered"])]
    refused = check_run(streams, opts.max_dead_letter_fraction, answered, "predictions", summary, tables["dead letters"])
    commits = [Commit(tables["dead letters"], {"summary": summary})]
    summary["committed"] = commit_outputs(commits + ([] if refused else [Commit(tables["predictions"], {"summary": summary})]))
    faults.point("committed")
    write_json(f"{output}/run_summary.json", summary)
    if refused:
        raise refused
    task = f", {summary['predictions_task_prompt']} of them with the task prompt" if summary["predictions_task_prompt"] else ""
    print(f"queries: {read} read, {answered} answered ({summary['predictions_personalized']} personalized, "
          f"{summary['predictions_not_personalized']} not{task}), {rejected} dead-lettered, {duplicates} duplicates  "
          f"({seconds:.1f} s)")
    for line in merge_report(summary["merge"], answered):
        print(line)
    report_reasons(summary)
    print(f"predictions: {output}/predictions (version {summary['committed']['predictions']})  "
          f"dead letters: {dead_letter_folder(opts)}  summary: {output}/run_summary.json")
    if not summary["reconciled"]:
        log.error("queries read (%d) != answered + dead-lettered + duplicates; see run_summary.json", read)
        return 1
    return 0


if __name__ == "__main__":
    run_cli(main)
