"""Score predictions against references: metrics JSON and plots (Beam batch job).

    python -m pipelines.evaluate --predictions predictions --output metrics

    predictions (generate's Parquet or JSONL)  [+ --references: LaMP outputs JSON, JSONL, Parquet]
          │ join by query_id (when --references is given)
          ▼
    per query: ROUGE-1, ROUGE-L (LaMP's conventions), perplexity (recorded by generate)
          ├─► OUTPUT/RUN_ID/per_query-*.jsonl           (RUN_ID: the run OUTPUT/CURRENT names)
          ├─► CombinePerKey by user ──► OUTPUT/RUN_ID/per_user-*.jsonl ──► per-user distribution
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
                    help=required_help("generate's --output folder, or a predictions file/glob (.parquet or .jsonl)."))
parser.add_argument("--references", default=None,
                    help="Optional references by query_id: LaMP's outputs JSON ({\"task\", \"golds\": "
                         "[{\"id\", \"output\"}]}), or JSONL/Parquet rows with query_id (or id) and "
                         "reference (or output). Default: the reference stored on each prediction.")
parser.add_argument("--output", default=None,
                    help=required_help("Output folder: metrics.json, PNG plots, RUN_ID/per_query-*.jsonl and "
                                       "RUN_ID/per_user-*.jsonl (the run CURRENT names)."))
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
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems

from commer import metrics as m
from pipelines import plots
from pipelines.combiners import AccumulatorFn
from pipelines.io import DEAD_LETTER_LEGACY, match, parse_as_dict, prediction_files, read_records, write_dead_letters
from pipelines.offline import stands_in
from pipelines.options import dead_letter_folder, parse
from pipelines.output_state import phase, publish, run_folder
from pipelines.runtime import CliError, counter_values, counters, new_run_id, run_cli, run_pipeline, write_json
from schemas import Prediction

log = logging.getLogger(__name__)

AGGREGATES = "_aggregates.jsonl"


# ---- inputs -----------------------------------------------------------------------------

def check_references(path: str) -> None:
    """Fail before running on a missing references file, or a JSON one that does not parse.

    LaMP's outputs files are one JSON document each (a few MB): a corrupt one would otherwise
    fail deep inside the pipeline, and a partly read one would silently skew the metrics.
    """
    files = match(path, "--references")
    if path.endswith(".json") and not stands_in(path):
        for file in files:
            with FileSystems.open(file) as f:
                try:
                    pairs = parse_reference_file(f.read().decode("utf-8"))
                except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, TypeError):
                    pairs = None
            if not pairs:
                raise CliError(f"--references {file} is not LaMP outputs JSON ({{\"task\": ..., \"golds\": "
                               "[{\"id\": ..., \"output\": ...}]}) with at least one reference")


def reference_pairs(row) -> list[tuple[str, str]]:
    """(query_id, reference) pairs from one references row; LaMP's 'id'/'output' or ours."""
    if not isinstance(row, dict):
        return []
    query_id = row.get("query_id", row.get("id"))
    reference = row.get("reference", row.get("output"))
    if query_id is None or not isinstance(reference, str):
        return []
    return [(str(query_id), reference)]


def parse_reference_file(text: str) -> list[tuple[str, str]]:
    """A whole JSON references file: LaMP's {"task", "golds": [...]}, or a plain list of rows."""
    data = json.loads(text)
    rows = data.get("golds", []) if isinstance(data, dict) else data
    return [pair for row in rows for pair in reference_pairs(row)]


class CountReferences(beam.DoFn):
    def __init__(self):
        self.counters = counters("references_read", "references_invalid")

    def process(self, row):
        if isinstance(row, str):
            if not row.strip():
                return []
            try:
                row = json.loads(row)
            except json.JSONDecodeError:
                self.counters["references_invalid"].inc()
                return []
        pairs = reference_pairs(row)
        if not pairs:
            self.counters["references_invalid"].inc()
        self.counters["references_read"].inc(len(pairs))
        return pairs


def read_references(pipeline, path: str):
    """(query_id, reference) pairs from a LaMP outputs JSON, JSONL or Parquet."""
    if path.endswith(".parquet"):
        rows = pipeline | "ReadReferences" >> beam.io.ReadFromParquet(path)
    elif path.endswith(".json"):
        # One JSON document per file (LaMP's format): read whole files, not lines.
        rows = (pipeline
                | "MatchReferences" >> fileio.MatchFiles(path)
                | "OpenReferences" >> fileio.ReadMatches()
                | "ParseReferenceFile" >> beam.FlatMap(
                    lambda f: [{"query_id": q, "reference": r} for q, r in parse_reference_file(f.read_utf8())]))
    else:
        rows = pipeline | "ReadReferences" >> beam.io.ReadFromText(path)
    return rows | "CountReferences" >> beam.ParDo(CountReferences())


class AttachReference(beam.DoFn):
    """One query's prediction with the reference from the references file."""

    def __init__(self):
        self.counters = counters("references_without_prediction", "predictions_duplicate_query_id",
                                 "references_from_file", "perplexity_dropped_reference_changed")

    def process(self, element):
        query_id, groups = element
        predictions = sorted(groups["predictions"], key=lambda p: p["user_id"])
        references = list(groups["references"])
        if not predictions:
            self.counters["references_without_prediction"].inc(1 if references else 0)
            return []
        if len(predictions) > 1:
            self.counters["predictions_duplicate_query_id"].inc(len(predictions) - 1)
        row = predictions[0]
        if references:
            reference = references[0]
            self.counters["references_from_file"].inc()
            if row["reference"] != reference and row["perplexity"] is not None:
                # generate scored another text; its perplexity says nothing about this one.
                self.counters["perplexity_dropped_reference_changed"].inc()
                row = {**row, "perplexity": None, "perplexity_unpersonalized": None}
            row = {**row, "reference": reference}
        return [row]


def score_row(row: dict, use_stemmer: bool) -> dict:
    scores = m.score(row["prediction"], row["reference"], row["perplexity"], use_stemmer,
                     row.get("perplexity_unpersonalized"))
    return {"user_id": row["user_id"], "query_id": row["query_id"], "personalized": row["personalized"],
            "doc_count": row["doc_count"], "prompt_tokens": row["prompt_tokens"], **scores}


# ---- aggregation ------------------------------------------------------------------------

def aggregate_fn(with_histogram: bool = False) -> AccumulatorFn:
    """commer.metrics.Aggregate as a CombineFn."""
    return AccumulatorFn(partial(m.Aggregate, with_histogram=with_histogram))


def build(pipeline, opts, files: list[str], run_id: str) -> None:
    output = run_folder(opts.output, run_id)  # committed later by publish (pipelines.output_state)
    predictions, dead = read_records(pipeline, "Predictions", files, partial(parse_as_dict, Prediction),
                                     "predictions_read", "predictions_valid", "predictions_invalid")
    if opts.references:
        references = read_references(pipeline, opts.references)
        predictions = ({"predictions": predictions | "KeyByQuery" >> beam.Map(lambda p: (p["query_id"], p)),
                        "references": references}
                       | "JoinReferences" >> beam.CoGroupByKey()
                       | "AttachReferences" >> beam.ParDo(AttachReference()))
    stemmer = opts.use_stemmer
    scored = predictions | "Score" >> beam.Map(score_row, stemmer)

    (scored | "PerQueryJson" >> beam.Map(json.dumps)
     | "WritePerQuery" >> beam.io.WriteToText(f"{output}/per_query-{run_id}", file_name_suffix=".jsonl"))

    overall = (scored | "Overall" >> beam.CombineGlobally(aggregate_fn(with_histogram=True))
               | "TagOverall" >> beam.Map(lambda s: ("overall", None, s)))
    by_personalization = (
        scored
        | "KeyPersonalized" >> beam.Map(lambda r: ("personalized" if r["personalized"] else "not_personalized", r))
        | "ByPersonalization" >> beam.CombinePerKey(aggregate_fn())
        | "TagPersonalization" >> beam.Map(lambda kv: ("by_personalization", kv[0], kv[1])))
    by_doc_count = (
        scored
        | "KeyDocCount" >> beam.Map(lambda r: (m.doc_count_bucket(r["doc_count"]), r))
        | "ByDocCount" >> beam.CombinePerKey(aggregate_fn())
        | "TagDocCount" >> beam.Map(lambda kv: ("by_doc_count", list(kv[0]), kv[1])))
    per_user = (scored
                | "KeyUser" >> beam.Map(lambda r: (r["user_id"], r))
                | "PerUser" >> beam.CombinePerKey(aggregate_fn())
                | "UserRow" >> beam.Map(lambda kv: {"user_id": kv[0], **kv[1]}))
    (per_user | "PerUserJson" >> beam.Map(json.dumps)
     | "WritePerUser" >> beam.io.WriteToText(f"{output}/per_user-{run_id}", file_name_suffix=".jsonl"))
    distributions = []
    for name in ("rouge1", "rougeL"):
        distributions.append(
            per_user
            | f"User{name}" >> beam.FlatMap(lambda u, k=name: [u[k]] if u[k] is not None else [])
            | f"UserDistribution{name}" >> beam.CombineGlobally(AccumulatorFn(m.Distribution))
            | f"TagUser{name}" >> beam.Map(lambda s, k=name: ("per_user", k, s)))
    users = (per_user | "CountUsers" >> beam.combiners.Count.Globally()
             | "TagUsers" >> beam.Map(lambda n: ("per_user", "users", n)))

    ([overall, by_personalization, by_doc_count, users] + distributions
     | "AllAggregates" >> beam.Flatten()
     | "AggregateJson" >> beam.Map(json.dumps)
     | "WriteAggregates" >> beam.io.WriteToText(f"{output}/{AGGREGATES}", shard_name_template="", num_shards=1))
    write_dead_letters([dead], dead_letter_folder(opts), run_id)


def assemble(aggregate_lines: list[str], counts: dict, use_stemmer: bool) -> dict:
    """metrics.json from the pipeline's aggregates (a handful of lines) and its counters."""
    out: dict = {
        "rouge": {"library": "rouge-score", "types": list(m.ROUGE_TYPES), "measure": "fmeasure",
                  "use_stemmer": use_stemmer, "aggregation": "mean over queries with a reference",
                  "conventions": "LaMP (texts stripped, default tokenizer)"},
        "perplexity": m.PERPLEXITY_AGGREGATION,
        "counts": counts, "overall": None, "by_personalization": {}, "by_doc_count": [], "per_user": {},
    }
    for line in aggregate_lines:
        section, key, value = json.loads(line)
        if section == "overall":
            out["overall"] = value
        elif section == "by_personalization":
            out["by_personalization"][key] = value
        elif section == "by_doc_count":
            out["by_doc_count"].append({"bucket": m.bucket_label(*key), "min_docs": key[0], "max_docs": key[1],
                                        **value})
        elif section == "per_user":
            out["per_user"][key] = value
    out["by_doc_count"].sort(key=lambda r: r["min_docs"])
    return out


def main(argv: list[str]) -> int:
    if wants_help(parser, argv):
        return 0
    opts, options = parse(parser, argv, required=parser.required_flags, check=True)
    files = prediction_files(opts.predictions, "--predictions")
    if opts.references:
        check_references(opts.references)

    output = opts.output.rstrip("/")
    run_id, started = new_run_id(), time.perf_counter()
    result, _ = run_pipeline(options, build, opts, files, run_id)
    aggregates_path = f"{run_folder(output, run_id)}/{AGGREGATES}"
    with FileSystems.open(aggregates_path) as f:
        lines = [line for line in f.read().decode("utf-8").splitlines() if line.strip()]
    FileSystems.delete([aggregates_path])
    phase("written")  # switch --output's CURRENT (per_query + per_user: the commit), then the dead letters'
    publish(output, run_id, legacy=("per_query-*.jsonl", "per_user-*.jsonl", AGGREGATES))
    publish(dead_letter_folder(opts), run_id, legacy=DEAD_LETTER_LEGACY)

    # metrics.json and the plots: one file each, replaced after the commit; run_id says which run they sum up.
    metrics = {"run_id": run_id, **assemble(lines, counter_values(result), opts.use_stemmer)}
    committed = run_folder(output, run_id)
    metrics["files"] = {kind: f"{committed}/{kind}-*.jsonl" for kind in ("per_query", "per_user")}
    metrics["files"]["plots"] = [] if opts.no_plots else plots.write_all(metrics, output)
    metrics["seconds"] = round(time.perf_counter() - started, 2)  # pipeline + plots
    write_json(f"{output}/metrics.json", metrics)
    for line in m.describe(metrics["overall"]):
        print(line)
    print(f"metrics: {output}/metrics.json  per query/user: {committed}/  "
          f"plots: {' '.join(metrics['files']['plots']) or 'none (--no_plots)'}")
    return 0


if __name__ == "__main__":
    run_cli(main)
