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
    OUTPUT/RUN_ID/predictions-*.parquet (schemas.Prediction) [+ .jsonl], committed by OUTPUT/CURRENT
    (pipelines.output_state: a kill leaves the previous run's predictions or these, never both)
    OUTPUT/run_summary.json

A query whose user has no profile is still answered, without a soft prompt, and marked
personalized=false. Profiles made by another checkpoint (fingerprint) are refused before
anything runs. Modes: commer (soft prompt), in_prompt (documents as text, the baseline),
none (no personalization), all on the same frozen backbone so quality and prompt length compare.
"""
from __future__ import annotations

from pipelines.flags import (IN_PROMPT_MAX_TOKENS, add_dead_letter_flag, add_merge_flags, add_model_flags, answer_help,
                             job_parser, required_help, wants_help)

MODES = ("commer", "in_prompt", "none")

parser = job_parser("python -m pipelines.generate", __doc__, required=("queries", "output"))
parser.add_argument("--profiles", default=None,
                    help="Profiles table from compress_users: its output folder (profiles/ inside is used), "
                         "the profiles folder, or one .parquet file. Needed with --mode=commer.")
parser.add_argument("--queries", default=None,
                    help=required_help("Queries: JSONL (.jsonl/.json, optionally .gz) or Parquet (.parquet) file or "
                                       "glob, with user_id, query_id, instruction and optional reference."))
parser.add_argument("--output", default=None,
                    help=required_help("Output folder: RUN_ID/predictions-*.parquet (and/or .jsonl) named by CURRENT, "
                                       "run_summary.json. An earlier run's predictions there are replaced once this "
                                       "run succeeds."))
parser.add_argument("--output_format", default="parquet", choices=["parquet", "jsonl", "both"],
                    help="Predictions as Parquet (schemas.Prediction), JSON lines, or both.")
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
from pipelines.inference import ComMerGenerator, GenerationSettings, generation_settings
from pipelines.io import (DEAD, DEAD_LETTER_LEGACY, PREDICTION_SHARDS, check_fingerprints, match, parquet_shards,
                          parse_as_dict, read_records, write_dead_letters)
from pipelines.options import dead_letter_folder, parse
from pipelines.output_state import phase, publish, run_folder
from pipelines.retrieved_merge import (MergeSettings, UserPool, compress_instructions, compression_shards,
                                       merge_report, merge_settings, merge_summary, read_compressions)
from pipelines.runtime import (CliError, checkpoint_config, counter, counter_values, counters, new_run_id, run_cli,
                               run_pipeline, write_json)
from schemas import DeadLetter, Document, Prediction, Query, arrow_schema, tensor_column

log = logging.getLogger(__name__)

PROFILE_COLUMNS = ["user_id", "doc_count", "soft_prompt", "model_fingerprint"]


def profile_rows(table) -> Iterable[tuple[str, dict]]:
    """(user_id, profile) pairs from one Parquet record batch table."""
    soft = tensor_column(table, "soft_prompt")
    plain = table.select(["user_id", "doc_count", "model_fingerprint"]).to_pylist()
    for i, row in enumerate(plain):
        yield row["user_id"], {"soft_prompt": soft[i].copy(), "doc_count": row["doc_count"],
                               "model_fingerprint": row["model_fingerprint"]}


# ---- joining a user's queries with their profile or documents ---------------------------

class PlanUser(beam.DoFn):
    """A user's queries → generation requests, with the user's soft prompt or documents.

    Queries are never dropped for lack of a profile: they become non-personalized requests.
    """

    def __init__(self, settings: GenerationSettings, merge: MergeSettings | None = None):
        self.settings, self.merge = settings, merge
        self.counters = counters("queries_without_profile", "query_duplicates", "users_with_several_profiles")

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
            profile = max(profiles, key=lambda p: p["doc_count"], default=None)
            if profile is not None and profile["model_fingerprint"] != self.settings.fingerprint:
                raise ValueError(f"profile of user {user_id} has fingerprint {profile['model_fingerprint']}, "
                                 f"expected {self.settings.fingerprint}")
            if profile is not None and profile["doc_count"] > 0:
                soft, doc_count = profile["soft_prompt"], profile["doc_count"]
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
                self.counters["queries_without_profile"].inc()
            yield {"user_id": user_id, "query_id": query["query_id"], "instruction": query["instruction"],
                   "reference": query.get("reference"), "soft_prompt": soft, "doc_count": doc_count,
                   "documents": documents, "personalized": personalized}


# ---- the pipeline -----------------------------------------------------------------------

def build(pipeline, opts, settings: GenerationSettings, query_files: list[str], document_files: list[str],
          profile_shards: list[str], run_id: str, merge: MergeSettings | None = None):
    """Wire the job into `pipeline`; returns nothing (the sinks are the outputs). With `merge`,
    `profile_shards` are the document compressions' shards."""
    queries, query_dead = read_records(pipeline, "Queries", query_files, partial(parse_as_dict, Query),
                                       "query_read", "query_valid", "query_dead_lettered")
    if merge is not None and merge.retrieval == "similarity":
        queries = compress_instructions(queries, settings)
    grouped = {"queries": queries | "KeyQueries" >> beam.Map(lambda q: (q["user_id"], q))}
    dead = [query_dead]
    if merge is not None:
        grouped["compressions"] = read_compressions(pipeline, profile_shards)
    elif settings.mode == "commer":
        grouped["profiles"] = (
            pipeline
            | "ProfileShards" >> beam.Create(profile_shards)
            | "ReadProfiles" >> beam.io.ReadAllFromParquetBatched(columns=PROFILE_COLUMNS)
            | "KeyProfiles" >> beam.FlatMap(profile_rows))
    if document_files:  # --mode=in_prompt, or --merge=retrieved --retrieval=bm25
        documents, doc_dead = read_records(pipeline, "Documents", document_files, partial(parse_as_dict, Document),
                                           "document_read", "document_valid", "document_dead_lettered")
        grouped["documents"] = documents | "KeyDocuments" >> beam.Map(
            lambda d: (d["user_id"], {"doc_id": d["doc_id"], "text": d["text"]}))
        dead.append(doc_dead)

    planned = (grouped
               | "JoinByUser" >> beam.CoGroupByKey()
               | "PlanQueries" >> beam.ParDo(PlanUser(settings, merge)).with_outputs(DEAD, main="requests"))
    dead.append(planned.dead)

    predictions = (planned.requests
                   | "Generate" >> RunInference(ComMerGenerator(settings))
                   | "Count" >> beam.Map(_count_prediction))
    prefix = f"{run_folder(opts.output, run_id)}/predictions-{run_id}"  # committed later by publish
    if opts.output_format in ("parquet", "both"):
        schema = arrow_schema(Prediction, metadata={"fingerprint": settings.fingerprint, "mode": settings.mode,
                                                   "checkpoint": settings.checkpoint})
        predictions | "WriteParquet" >> beam.io.WriteToParquet(prefix, schema, file_name_suffix=".parquet")
    if opts.output_format in ("jsonl", "both"):
        (predictions
         | "ToJson" >> beam.Map(json.dumps)
         | "WriteJsonl" >> beam.io.WriteToText(prefix, file_name_suffix=".jsonl"))
    write_dead_letters(dead, dead_letter_folder(opts), run_id)


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
    settings = generation_settings(opts)
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
        shards = parquet_shards(opts.profiles, "--profiles", "profiles")
        check_fingerprints(shards, settings.fingerprint, "--profiles", "Profile", PROFILE_COLUMNS)
    elif opts.profiles:
        log.info("--profiles is not used in --mode=%s", settings.mode)

    output, run_id = opts.output.rstrip("/"), new_run_id()
    result, seconds = run_pipeline(options, build, opts, settings, query_files, document_files, shards,
                                   run_id, merge, progress_unit="queries answered")
    phase("written")  # pipelines.output_state: switch --output's CURRENT (the commit), then the dead letters'
    publish(output, run_id, legacy=PREDICTION_SHARDS)
    publish(dead_letter_folder(opts), run_id, legacy=DEAD_LETTER_LEGACY)

    counts = counter_values(result)
    read, rejected = counts.get("query_read", 0), counts.get("query_dead_lettered", 0)
    answered, duplicates = counts.get("predictions", 0), counts.get("query_duplicates", 0)
    summary = {
        "mode": settings.mode, "checkpoint": settings.checkpoint, "fingerprint": settings.fingerprint,
        "queries_read": read, "queries_dead_lettered": rejected, "query_duplicates": duplicates,
        "predictions": answered, "predictions_personalized": counts.get("predictions_personalized", 0),
        "predictions_not_personalized": answered - counts.get("predictions_personalized", 0),
        "users_with_several_profiles": counts.get("users_with_several_profiles", 0),
        "documents_read": counts.get("document_read", 0),
        "documents_dead_lettered": counts.get("document_dead_lettered", 0),
        "prompt_tokens_mean": counts.get("prompt_tokens", 0) / answered if answered else None,
        "reconciled": read == answered + rejected + duplicates,
        "seconds": round(seconds, 2),
        "settings": settings.model_dump(),
        "merge": merge_summary(merge, counts),
    }
    write_json(f"{output}/run_summary.json", summary)
    print(f"queries: {read} read, {answered} answered ({summary['predictions_personalized']} personalized, "
          f"{summary['predictions_not_personalized']} not), {rejected} dead-lettered, {duplicates} duplicates  "
          f"({seconds:.1f} s)")
    for line in merge_report(summary["merge"], answered):
        print(line)
    extension = "jsonl" if opts.output_format == "jsonl" else "parquet"
    print(f"predictions: {run_folder(output, run_id)}/predictions-*.{extension} (named by {output}/CURRENT)  "
          f"dead letters: {dead_letter_folder(opts)}  summary: {output}/run_summary.json")
    if not summary["reconciled"]:
        log.error("queries read (%d) != answered + dead-lettered + duplicates; see run_summary.json", read)
        return 1
    return 0


if __name__ == "__main__":
    run_cli(main)
