"""Score predictions against references: metrics JSON and plots (Beam batch job).

    python -m pipelines.evaluate --predictions predictions --output metrics

    predictions (generate's Parquet or JSONL)  [+ --references: LaMP outputs JSON, JSONL, Parquet]
          │ join by query_id (when --references is given)
          ▼
    per query: ROUGE-1, ROUGE-L (LaMP's conventions), perplexity (recorded by generate)
          ├─► OUTPUT/per_query-*.jsonl
          ├─► CombinePerKey by user ──► OUTPUT/per_user-*.jsonl ──► per-user distribution
          ├─► CombinePerKey by personalised / by document-count bucket
          └─► CombineGlobally overall
    OUTPUT/metrics.json and OUTPUT/*.png (quality vs documents, per-user ROUGE-L, perplexity)

It is a Beam job like the others, so it runs where generate's output lives and scales with it:
only fixed-size aggregates (sums and fixed-edge histograms) reach the launcher, which writes
the JSON and the plots. Perplexity needs the model, so it is computed by generate (for queries
that had a reference then) and only aggregated here.
"""
from __future__ import annotations

import json
import logging
import time

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions
from pydantic import ValidationError

from commer import metrics as m
from pipelines import plots
from pipelines.common import (CliError, counter_values, new_run_id, remove_stale_shards, run_cli, run_pipeline,
                              with_local_runner)
from pipelines.flags import parse_flags, print_help, tolerant
from schemas import DeadLetter, Prediction
from commer.storage import filesystem, is_remote

log = logging.getLogger(__name__)

NAMESPACE = "commer_evaluate"
AGGREGATES = "_aggregates.jsonl"


class EvaluateOptions(PipelineOptions):
    """Flags of the evaluate job."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser = tolerant(parser)
        parser.add_argument("--predictions", default=None,
                            help="generate's --output folder, or a predictions file/glob (.parquet or .jsonl).")
        parser.add_argument("--references", default=None,
                            help="Optional references by query_id: LaMP's outputs JSON ({\"task\", \"golds\": "
                                 "[{\"id\", \"output\"}]}), or JSONL/Parquet rows with query_id (or id) and "
                                 "reference (or output). Default: the reference stored on each prediction.")
        parser.add_argument("--output", default=None,
                            help="Output folder: metrics.json, per_query-*.jsonl, per_user-*.jsonl, PNG plots.")
        parser.add_argument("--use_stemmer", action="store_true",
                            help="Porter-stem words before ROUGE. Off by default, as in LaMP's evaluation "
                                 "(HF evaluate's rouge defaults).")
        parser.add_argument("--no_plots", action="store_true", help="Skip the PNG plots.")


# ---- inputs -----------------------------------------------------------------------------

def prediction_files(path: str) -> tuple[list[str], str]:
    """(files, 'parquet' | 'jsonl') for generate's folder, a file, or a glob."""
    fs, root = filesystem(path)
    if fs.isdir(root):
        listed = sorted(fs.ls(root, detail=False))
        files = [f for f in listed if f.endswith(".parquet")] or [f for f in listed if f.endswith(".jsonl")]
    else:
        files = sorted(fs.glob(root)) if any(c in root for c in "*?[") else ([root] if fs.exists(root) else [])
    if not files:
        raise CliError(f"--predictions {path}: no .parquet or .jsonl predictions found (pass generate's --output)")
    kind = "parquet" if files[0].endswith(".parquet") else "jsonl"
    return [fs.unstrip_protocol(f) if is_remote(path) else f for f in files], kind


def parse_prediction(raw, source: str):
    """(row, None) or (None, DeadLetter) for one predictions row or JSONL line."""
    try:
        row = json.loads(raw) if isinstance(raw, str) else raw
        return Prediction.model_validate(row).model_dump(), None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'record'}: {e['msg']}"
                             for e in exc.errors(include_input=False, include_url=False))
        reason = f"invalid prediction: {problems}"
    except json.JSONDecodeError as exc:
        reason = f"prediction is not valid JSON ({exc.msg})"
    return None, DeadLetter(stage="validate", reason=reason, source=source,
                            record=raw if isinstance(raw, str) else json.dumps(raw, default=str))


class ParsePredictions(beam.DoFn):
    def __init__(self, source: str):
        self.source = source
        self.read = Metrics.counter(NAMESPACE, "predictions_read")
        self.invalid = Metrics.counter(NAMESPACE, "predictions_invalid")

    def process(self, raw):
        if isinstance(raw, str) and not raw.strip():
            return []
        self.read.inc()
        row, dead = parse_prediction(raw, self.source)
        if dead is not None:
            self.invalid.inc()
            return [beam.pvalue.TaggedOutput("dead", dead)]
        return [row]


def check_references(path: str) -> None:
    """Fail before running on a missing references file, or a JSON one that does not parse.

    LaMP's outputs files are one JSON document each (a few MB): a corrupt one would otherwise
    fail deep inside the pipeline, and a partly read one would silently skew the metrics.
    """
    fs, root = filesystem(path)
    files = fs.glob(root)
    if not files:
        raise CliError(f"--references {path} does not exist")
    if path.endswith(".json"):
        for file in files:
            with fs.open(file, "r") as f:
                try:
                    pairs = parse_reference_file(f.read())
                except (json.JSONDecodeError, AttributeError, TypeError):
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
        self.read = Metrics.counter(NAMESPACE, "references_read")
        self.invalid = Metrics.counter(NAMESPACE, "references_invalid")

    def process(self, row):
        if isinstance(row, str):
            if not row.strip():
                return []
            try:
                row = json.loads(row)
            except json.JSONDecodeError:
                self.invalid.inc()
                return []
        pairs = reference_pairs(row)
        if not pairs:
            self.invalid.inc()
        self.read.inc(len(pairs))
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
        self.orphans = Metrics.counter(NAMESPACE, "references_without_prediction")
        self.duplicates = Metrics.counter(NAMESPACE, "predictions_duplicate_query_id")
        self.replaced = Metrics.counter(NAMESPACE, "references_from_file")
        self.dropped_ppl = Metrics.counter(NAMESPACE, "perplexity_dropped_reference_changed")

    def process(self, element):
        query_id, groups = element
        predictions = sorted(groups["predictions"], key=lambda p: p["user_id"])
        references = list(groups["references"])
        if not predictions:
            self.orphans.inc(1 if references else 0)
            return []
        if len(predictions) > 1:
            self.duplicates.inc(len(predictions) - 1)
        row = predictions[0]
        if references:
            reference = references[0]
            self.replaced.inc()
            if row["reference"] != reference and row["perplexity"] is not None:
                # generate scored another text; its perplexity says nothing about this one.
                self.dropped_ppl.inc()
                row = {**row, "perplexity": None}
            row = {**row, "reference": reference}
        return [row]


def score_row(row: dict, use_stemmer: bool) -> dict:
    scores = m.score(row["prediction"], row["reference"], row["perplexity"], use_stemmer)
    return {"user_id": row["user_id"], "query_id": row["query_id"], "personalized": row["personalized"],
            "doc_count": row["doc_count"], "prompt_tokens": row["prompt_tokens"], **scores}


# ---- aggregation ------------------------------------------------------------------------

class _AccumulatorFn(beam.CombineFn):
    """A CombineFn over a Beam-free accumulator from commer.metrics (add / merge / summary);
    subclasses only say which accumulator. Merging mutates only the first one (combiner lifting)."""

    def add_input(self, accumulator, value):
        return accumulator.add(value)

    def merge_accumulators(self, accumulators):
        accumulators = iter(accumulators)
        first = next(accumulators)
        for other in accumulators:
            first.merge(other)
        return first

    def extract_output(self, accumulator):
        return accumulator.summary()


class AggregateFn(_AccumulatorFn):
    """metrics.Aggregate as a CombineFn (the arithmetic lives in commer.metrics)."""

    def __init__(self, with_histogram: bool = False):
        self.with_histogram = with_histogram

    def create_accumulator(self):
        return m.Aggregate(with_histogram=self.with_histogram)


class DistributionFn(_AccumulatorFn):
    def create_accumulator(self):
        return m.Distribution()


def build(pipeline, opts, files: list[str], kind: str, run_id: str) -> None:
    output = opts.output.rstrip("/")
    if kind == "parquet":
        raw = (pipeline | "PredictionFiles" >> beam.Create(files)
               | "ReadPredictions" >> beam.io.ReadAllFromParquet())
    else:
        raw = (pipeline | "PredictionFiles" >> beam.Create(files)
               | "ReadPredictions" >> beam.io.ReadAllFromText())
    parsed = raw | "ParsePredictions" >> beam.ParDo(ParsePredictions(opts.predictions)).with_outputs(
        "dead", main="rows")
    predictions = parsed.rows
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

    overall = (scored | "Overall" >> beam.CombineGlobally(AggregateFn(with_histogram=True))
               | "TagOverall" >> beam.Map(lambda s: ("overall", None, s)))
    by_personalization = (
        scored
        | "KeyPersonalized" >> beam.Map(lambda r: ("personalized" if r["personalized"] else "not_personalized", r))
        | "ByPersonalization" >> beam.CombinePerKey(AggregateFn())
        | "TagPersonalization" >> beam.Map(lambda kv: ("by_personalization", kv[0], kv[1])))
    by_doc_count = (
        scored
        | "KeyDocCount" >> beam.Map(lambda r: (m.doc_count_bucket(r["doc_count"]), r))
        | "ByDocCount" >> beam.CombinePerKey(AggregateFn())
        | "TagDocCount" >> beam.Map(lambda kv: ("by_doc_count", list(kv[0]), kv[1])))
    per_user = (scored
                | "KeyUser" >> beam.Map(lambda r: (r["user_id"], r))
                | "PerUser" >> beam.CombinePerKey(AggregateFn())
                | "UserRow" >> beam.Map(lambda kv: {"user_id": kv[0], **kv[1]}))
    (per_user | "PerUserJson" >> beam.Map(json.dumps)
     | "WritePerUser" >> beam.io.WriteToText(f"{output}/per_user-{run_id}", file_name_suffix=".jsonl"))
    distributions = []
    for name in ("rouge1", "rougeL"):
        distributions.append(
            per_user
            | f"User{name}" >> beam.FlatMap(lambda u, k=name: [u[k]] if u[k] is not None else [])
            | f"UserDistribution{name}" >> beam.CombineGlobally(DistributionFn())
            | f"TagUser{name}" >> beam.Map(lambda s, k=name: ("per_user", k, s)))
    users = (per_user | "CountUsers" >> beam.combiners.Count.Globally()
             | "TagUsers" >> beam.Map(lambda n: ("per_user", "users", n)))

    ([overall, by_personalization, by_doc_count, users] + distributions
     | "AllAggregates" >> beam.Flatten()
     | "AggregateJson" >> beam.Map(json.dumps)
     | "WriteAggregates" >> beam.io.WriteToText(f"{output}/{AGGREGATES}", shard_name_template="", num_shards=1))
    (parsed.dead | "DeadToJson" >> beam.Map(lambda d: d.model_dump_json())
     | "WriteDeadLetters" >> beam.io.WriteToText(f"{output}/dead_letters/dead_letters-{run_id}", file_name_suffix=".jsonl"))


def assemble(aggregate_lines: list[str], counts: dict, use_stemmer: bool) -> dict:
    """metrics.json from the pipeline's aggregates (a handful of lines) and its counters."""
    out: dict = {
        "rouge": {"library": "rouge-score", "types": list(m.ROUGE_TYPES), "measure": "fmeasure",
                  "use_stemmer": use_stemmer, "aggregation": "mean over queries with a reference",
                  "conventions": "LaMP (texts stripped, default tokenizer)"},
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


def _help(argv: list[str]) -> bool:
    if "--help" not in argv and "-h" not in argv:
        return False
    print_help("python -m pipelines.evaluate", __doc__, {"evaluate": EvaluateOptions})
    return True


def main(argv: list[str]) -> int:
    if _help(argv):
        return 0
    options = PipelineOptions(with_local_runner(argv))
    opts = parse_flags(EvaluateOptions, argv)
    for flag in ("predictions", "output"):
        if not getattr(opts, flag):
            raise CliError(f"--{flag} is required (see --help)")
    files, kind = prediction_files(opts.predictions)
    if opts.references:
        check_references(opts.references)

    import fsspec

    output = opts.output.rstrip("/")
    fs, root = filesystem(output)
    run_id, started = new_run_id(), time.perf_counter()
    result, _ = run_pipeline(options, build, opts, files, kind, run_id)
    for folder, pattern in ((output, "per_query-*"), (output, "per_user-*"), (f"{output}/dead_letters", "dead_letters-*")):
        remove_stale_shards(folder, run_id, pattern)

    aggregates_path = f"{root}/{AGGREGATES}"
    with fs.open(aggregates_path, "r") as f:
        lines = [line for line in f.read().splitlines() if line.strip()]
    fs.rm(aggregates_path)
    counts = counter_values(result, NAMESPACE)
    metrics = assemble(lines, counts, opts.use_stemmer)
    metrics["files"] = {"per_query": f"{output}/per_query-*.jsonl", "per_user": f"{output}/per_user-*.jsonl",
                        "plots": [] if opts.no_plots else plots.write_all(metrics, output)}
    metrics["seconds"] = round(time.perf_counter() - started, 2)  # pipeline + plots
    with fsspec.open(f"{output}/metrics.json", "w") as f:
        json.dump(metrics, f, indent=2)
    overall = metrics["overall"]
    log.info("evaluate: %d predictions, %d with a reference: ROUGE-1 %s, ROUGE-L %s, mean perplexity %s -> %s",
             overall["queries"], overall["with_reference"], _fmt(overall["rouge1"]), _fmt(overall["rougeL"]),
             _fmt(overall["perplexity"]["mean"]), f"{output}/metrics.json")
    return 0


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


if __name__ == "__main__":
    run_cli(main)
