"""evaluate's references: LaMP outputs JSON, JSONL or Parquet → (query_id, reference), joined to predictions.

Every form goes through the checked readers (a whole LaMP JSON file is parsed before anything runs; JSONL by
the bounded line reader, which refuses a truncated compressed file; Parquet with its checksums), and no
reference line can take the job down: one no JSON decoder takes, or an empty reference, is counted invalid.
References carry no user, so one query_id's reference applies to every user who was asked that query_id;
each (user_id, query_id) is scored once.
"""
from __future__ import annotations

import json

import apache_beam as beam
import pyarrow as pa
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems

from pipelines.io import ReadParquet, check_parquet, match
from pipelines.jsonl_reader import ReadJsonLines
from pipelines.offline import stands_in
from pipelines.runtime import CliError, counters
from schemas.validation import DEFAULT_MAX_RECORD_BYTES, decode_line


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
                except (ValueError, RecursionError, UnicodeDecodeError, AttributeError, TypeError):
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
    if query_id is None or not isinstance(reference, str) or not reference.strip():
        return []  # an empty reference is not a reference: never scored
    return [(str(query_id), reference)]


def parse_reference_file(text: str) -> list[tuple[str, str]]:
    """A whole JSON references file: LaMP's {"task", "golds": [...]}, or a plain list of rows."""
    data = json.loads(text)
    rows = data.get("golds", []) if isinstance(data, dict) else data
    return [pair for row in rows for pair in reference_pairs(row)]


class CountReferences(beam.DoFn):
    def __init__(self):
        self.counters = counters("references_read", "references_invalid")

    def process(self, element):
        _, row = element
        if isinstance(row, pa.Table):
            return [pair for r in row.to_pylist() for pair in self.process((None, r))]
        if isinstance(row, (bytes, str)) or not isinstance(row, dict):
            if isinstance(row, (bytes, str)) and not row.strip():
                return []
            decoded = decode_line(row)  # never raises: a line no JSON decoder takes is an invalid reference
            if not isinstance(decoded, tuple):
                self.counters["references_invalid"].inc()
                return []
            row = decoded[0]
        pairs = reference_pairs(row)
        if not pairs:
            self.counters["references_invalid"].inc()
        self.counters["references_read"].inc(len(pairs))
        return pairs


def read_references(pipeline, path: str):
    """(query_id, reference) pairs from a LaMP outputs JSON, JSONL or Parquet (the bounded, checked readers)."""
    files = match(path, "--references")
    if path.endswith(".parquet"):
        check_parquet(files, "--references")
        rows = (pipeline | "ListReferences" >> beam.Create(files)
                | "ReadReferences" >> beam.ParDo(ReadParquet("--references")))
    elif path.endswith(".json"):
        # One JSON document per file (LaMP's format): read whole files, not lines.
        rows = (pipeline
                | "MatchReferences" >> fileio.MatchFiles(path)
                | "OpenReferences" >> fileio.ReadMatches()
                | "ParseReferenceFile" >> beam.FlatMap(
                    lambda f: [(None, {"query_id": q, "reference": r}) for q, r in parse_reference_file(f.read_utf8())]))
    else:
        rows = (pipeline | "ListReferences" >> beam.Create(files)
                | "ReadReferences" >> ReadJsonLines(DEFAULT_MAX_RECORD_BYTES, "--references"))
    return rows | "CountReferences" >> beam.ParDo(CountReferences())


class AttachReference(beam.DoFn):
    """One query's prediction with the reference from the references file."""

    def __init__(self):
        self.counters = counters("references_without_prediction", "predictions_duplicate_query_id",
                                 "references_from_file", "perplexity_dropped_reference_changed")

    def process(self, element):
        query_id, groups = element
        references = list(groups["references"])
        by_user: dict = {}
        for prediction in sorted(groups["predictions"], key=lambda p: (p["user_id"], json.dumps(p, sort_keys=True,
                                                                                               default=str))):
            by_user.setdefault(prediction["user_id"], []).append(prediction)
        if not by_user:
            self.counters["references_without_prediction"].inc(1 if references else 0)
            return []
        rows = []
        # Users may share a query_id (each asked their own "q1"): each is scored; only the same (user_id, query_id)
        # twice is a duplicate.
        for predictions in by_user.values():
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
            rows.append(row)
        return rows
