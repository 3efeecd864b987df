"""Score predictions against references: metrics JSON and plots (Beam batch job).

    python -m pipelines.evaluate --predictions predictions --output metrics

    predictions (generate's table or Parquet/JSONL files)  [+ --references: LaMP outputs JSON, JSONL, Parquet]
          │ join by query_id (when --references is given); scored per (user_id, query_id)
          ▼
    per query: ROUGE-1, ROUGE-L (LaMP's conventions), perplexity (recorded by generate)
          ├─► OUTPUT/per_query   (Delta table, schemas.QueryScore)
          ├─► CombinePerKey by user ──► OUTPUT/per_user (Delta table, schemas.UserScore) ──► per-user distribution
          ├─► CombinePerKey by personalized / by document-count bucket
          └─► CombineGlobally overall
    OUTPUT/metrics.json and OUTPUT/*.png (quality vs documents, per-user ROUGE-L, perplexity)

It is a Beam job like the others, so it runs where generate's output lives and scales with it:
only fixed-size aggregates (sums and fixed-edge histograms) reach the launcher, which writes
the JSON and the plots. Perplexity needs the model, so it is computed by generate (for queries
that had a reference then) and only aggregated here.
"""
from __future__ import annotations

from pipelines.flags import add_dead_letter_flag, answer_help, job_parser, required_help, wants_help

parser = job_parser("python -m pipelines.evaluate", __doc__, required=("predictions", "output"))
parser.add_argument("--predictions", default=None,
                    help=required_help("generate's --output folder or its predictions table (PATH@VERSION or "
                                       "PATH@TIMESTAMP: an earlier version), or a predictions file/glob (.parquet or "
                                       ".jsonl)."))
parser.add_argument("--references", default=None,
                    help="Optional references by query_id: LaMP's outputs JSON ({\"task\", \"golds\": "
                         "[{\"id\", \"output\"}]}), or JSONL/Parquet rows with query_id (or id) and "
                         "reference (or output). Default: the reference stored on each prediction.")
parser.add_argument("--output", default=None,
                    help=required_help("Output folder: metrics.json, PNG plots, and the Delta tables per_query/ and "
                                       "per_user/."))
parser.add_argument("--use_stemmer", action="store_true",
                    help="Porter-stem words before ROUGE. Off by default, as in LaMP's evaluation "
                         "(HF evaluate's rouge defaults).")
parser.add_argument("--no_plots", action="store_true", help="Skip the PNG plots.")
add_dead_letter_flag(parser)

if __name__ == "__main__":
    answer_help(parser)  # before Beam and the metric libraries are imported: --help answers at once

# ---- the job (imported after the flags, so --help never waits for these) ------------------
import json
import logging
import time
from functools import partial

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from commer import metrics as m
from pipelines import faults, plots
from pipelines.combiners import AccumulatorFn
from pipelines.elements import AggregateLine
from pipelines.io import parse_as_dict, prediction_files, read_records, write_dead_letters, write_tables
from pipelines.options import dead_letter_folder, parse
from pipelines.references import AttachReference, check_references, read_references
from pipelines.rejections import Stream, check_run, report_reasons, top_reasons
from pipelines.runtime import counter_values, new_run_id, run_cli, run_pipeline, write_json
from pipelines.tables import Commit, check_separate, commit_outputs, plan_output
from schemas import DeadLetter, Prediction, QueryScore, UserScore, arrow_schema

log = logging.getLogger(__name__)

AGGREGATES = "_aggregates.jsonl"




def score_row(row: dict, use_stemmer: bool) -> dict:
    scores = m.score(row["prediction"], row["reference"], row["perplexity"], use_stemmer,
                     row.get("perplexity_unpersonalized"))
    return {"user_id": row["user_id"], "query_id": row["query_id"], "personalized": row["personalized"],
            "doc_count": row["doc_count"], "prompt_tokens": row["prompt_tokens"], **scores}


# ---- aggregation ------------------------------------------------------------------------

def aggregate_fn(with_histogram: bool = False) -> AccumulatorFn:
    """commer.metrics.Aggregate as a CombineFn."""
    return AccumulatorFn(partial(m.Aggregate, with_histogram=with_histogram))


def build(pipeline, opts, files: list[str], tables: dict) -> None:
    predictions, dead = read_records(pipeline, "Predictions", files, partial(parse_as_dict, Prediction),
                                     "predictions_read", "predictions_valid", "predictions_invalid",
                                     flag="--predictions")
    if opts.references:
        references = read_references(pipeline, opts.references)
        predictions = ({"predictions": predictions | "KeyByQuery" >> beam.Map(lambda p: (p["query_id"], p)),
                        "references": references}
                       | "JoinReferences" >> beam.CoGroupByKey()
                       | "AttachReferences" >> beam.ParDo(AttachReference()))
    stemmer = opts.use_stemmer
    scored = predictions | "Score" >> beam.Map(score_row, stemmer)

    write_tables(scored, "PerQuery", tables["per query"], 4096)

    overall = (scored | "Overall" >> beam.CombineGlobally(aggregate_fn(with_histogram=True))
               | "TagOverall" >> beam.Map(lambda s: AggregateLine("overall", None, s)))
    by_personalization = (
        scored
        | "KeyPersonalized" >> beam.Map(lambda r: ("personalized" if r["personalized"] else "not_personalized", r))
        | "ByPersonalization" >> beam.CombinePerKey(aggregate_fn())
        | "TagPersonalization" >> beam.MapTuple(lambda key, s: AggregateLine("by_personalization", key, s)))
    by_doc_count = (
        scored
        | "KeyDocCount" >> beam.Map(lambda r: (m.doc_count_bucket(r["doc_count"]), r))
        | "ByDocCount" >> beam.CombinePerKey(aggregate_fn())
        | "TagDocCount" >> beam.MapTuple(lambda bucket, s: AggregateLine("by_doc_count", list(bucket), s)))
    per_user = (scored
                | "KeyUser" >> beam.Map(lambda r: (r["user_id"], r))
                | "PerUser" >> beam.CombinePerKey(aggregate_fn())
                | "UserRow" >> beam.MapTuple(lambda user_id, s: {"user_id": user_id, **s}))
    write_tables(per_user | "UserRows" >> beam.Map(user_row), "PerUser", tables["per user"], 4096)
    distributions = []
    for name in ("rouge1", "rougeL"):
        distributions.append(
            per_user
            | f"User{name}" >> beam.FlatMap(lambda u, k=name: [u[k]] if u[k] is not None else [])
            | f"UserDistribution{name}" >> beam.CombineGlobally(AccumulatorFn(m.Distribution))
            | f"TagUser{name}" >> beam.Map(lambda s, k=name: AggregateLine("per_user", k, s)))
    users = (per_user | "CountUsers" >> beam.combiners.Count.Globally()
             | "TagUsers" >> beam.Map(lambda n: AggregateLine("per_user", "users", n)))

    ([overall, by_personalization, by_doc_count, users] + distributions
     | "AllAggregates" >> beam.Flatten()
     | "AggregateJson" >> beam.Map(json.dumps)
     | "WriteAggregates" >> beam.io.WriteToText(aggregates_path(opts, tables), shard_name_template="", num_shards=1))
    write_dead_letters([dead], tables["dead letters"])


def aggregates_path(opts, tables: dict) -> str:
    """The pipeline's few aggregate lines, for the launcher (a file beside the tables, removed once read)."""
    return f"{opts.output.rstrip('/')}/{AGGREGATES.removesuffix('.jsonl')}-{tables['per query'].run_id}.jsonl"


def user_row(user: dict) -> dict:
    """A per-user aggregate (commer.metrics.Aggregate.summary) as a flat schemas.UserScore row."""
    perplexity, paired = user.get("perplexity") or {}, user.get("paired") or {}
    return {**{k: v for k, v in user.items() if k not in ("perplexity", "paired")},
            "perplexity_count": perplexity.get("count", 0),
            **{f"perplexity_{k}": perplexity.get(k) for k in ("geometric_mean", "min", "max")},
            **{f"paired_{k}": paired.get(k) for k in ("perplexity_with_profile", "perplexity_without_profile", "ratio")},
            "paired_queries": paired.get("queries", 0)}


def assemble(aggregate_lines: list[str], counts: dict, use_stemmer: bool) -> dict:
    """metrics.json from the pipeline's AggregateLines (a handful, one JSON array each) and its counters."""
    out: dict = {
        "rouge": {"library": "rouge-score", "types": list(m.ROUGE_TYPES), "measure": "fmeasure",
                  "use_stemmer": use_stemmer, "aggregation": "mean over queries with a reference",
                  "conventions": "LaMP (texts stripped, default tokenizer)"},
        "perplexity": m.PERPLEXITY_AGGREGATION,
        "counts": counts, "overall": None, "by_personalization": {}, "by_doc_count": [], "per_user": {},
    }
    for line in (AggregateLine(*json.loads(text)) for text in aggregate_lines):
        if line.section == "overall":
            out["overall"] = line.value
        elif line.section in ("by_personalization", "per_user"):
            out[line.section][line.key] = line.value
        elif line.section == "by_doc_count":
            low, high = line.key
            out["by_doc_count"].append({"bucket": m.bucket_label(low, high), "min_docs": low, "max_docs": high,
                                        **line.value})
    out["by_doc_count"].sort(key=lambda r: r["min_docs"])
    return out


def main(argv: list[str]) -> int:
    if wants_help(parser, argv):
        return 0
    opts, options = parse(parser, argv, required=parser.required_flags, check=True)
    files = prediction_files(opts.predictions, "--predictions").files
    if opts.references:
        check_references(opts.references)

    output = opts.output.rstrip("/")
    run_id, started = new_run_id(), time.perf_counter()
    tables = {"per query": plan_output("per query", "--output", f"{output}/per_query", arrow_schema(QueryScore), run_id),
              "per user": plan_output("per user", "--output", f"{output}/per_user", arrow_schema(UserScore), run_id),
              "dead letters": plan_output("dead letters", "--dead_letter_output", dead_letter_folder(opts),
                                          arrow_schema(DeadLetter), run_id)}
    check_separate(list(tables.values()))
    result, _ = run_pipeline(options, build, opts, files, tables)
    with FileSystems.open(aggregates_path(opts, tables)) as f:
        lines = [line for line in f.read().decode("utf-8").splitlines() if line.strip()]
    FileSystems.delete([aggregates_path(opts, tables)])
    faults.point("written")
    counts = counter_values(result)
    metrics = {"run_id": run_id, **assemble(lines, counts, opts.use_stemmer),
               "dead_letter_reasons": top_reasons(tables["dead letters"])}
    streams = [Stream("--predictions", counts.get("predictions_read", 0), counts.get("predictions_invalid", 0)),
               Stream("--references", counts.get("references_read", 0) + counts.get("references_invalid", 0),
                      counts.get("references_invalid", 0))]
    scored = (metrics["overall"] or {}).get("queries", 0)
    refused = check_run(streams, opts.max_dead_letter_fraction, scored, "scores", metrics, tables["dead letters"])
    main_commits = [] if refused else [Commit(tables["per query"], {"summary": {"run_id": run_id}}),
                                       Commit(tables["per user"], {"summary": {"run_id": run_id}})]
    metrics["committed"] = commit_outputs([Commit(tables["dead letters"], {"summary": {"run_id": run_id}}),
                                           *main_commits])
    faults.point("committed")
    if refused:
        raise refused

    # metrics.json and the plots: one file each, replaced after the commit; run_id says which run they sum up.
    metrics["files"] = {kind: f"{tables[kind].path}@{metrics['committed'][kind]}" for kind in ("per query", "per user")}
    metrics["files"]["plots"] = [] if opts.no_plots else plots.write_all(metrics, output)
    metrics["seconds"] = round(time.perf_counter() - started, 2)  # pipeline + plots
    write_json(f"{output}/metrics.json", metrics)
    for line in m.describe(metrics["overall"]):
        print(line)
    report_reasons(metrics)
    print(f"metrics: {output}/metrics.json  per query/user: {output}/per_query, {output}/per_user  "
          f"plots: {' '.join(metrics['files']['plots']) or 'none (--no_plots)'}")
    return 0


if __name__ == "__main__":
    run_cli(main)
