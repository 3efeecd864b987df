"""Generate answers for queries from users' soft prompts (Beam batch job).

    python -m pipelines.generate --profiles commer_output --queries queries.jsonl --output predictions

    queries (JSONL | Parquet) ─ parse/validate ─► dead letters (reason)
          │ by user_id
          ▼
    CoGroupByKey with profiles (or, --mode=in_prompt, with the user's documents: BM25 top-n)
          ▼
    RunInference (one model per process, batches of --batch_size): greedy answer, perplexity of
    the reference when the query has one, prompt length
          ▼
    OUTPUT/predictions-*.parquet (schemas.Prediction)  [+ .jsonl]   OUTPUT/run_summary.json

A query whose user has no profile is still answered, without a soft prompt, and marked
personalized=false. Profiles made by another checkpoint (fingerprint) are refused before
anything runs. Modes: commer (soft prompt), in_prompt (documents as text, the baseline),
none (no personalisation), all on the same frozen backbone so quality and prompt length compare.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
from typing import Iterable, Optional

import apache_beam as beam
from apache_beam.ml.inference.base import ModelHandler, RunInference
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions
from pydantic import BaseModel, Field, ValidationError

from pipelines.common import (CliError, ModelOptions, counter_values, new_run_id, remove_stale_shards,
                              resolve_checkpoint, run_cli, run_pipeline, shared_model, with_local_runner)
from pipelines.flags import parse_flags, print_help, tolerant
from commer.prompting import UserDocuments, fit_documents
from schemas import DeadLetter, Document, Prediction, Query, arrow_schema, read_metadata, tensor_column
from commer.checkpoint import read_config
from commer.storage import filesystem, is_remote

log = logging.getLogger(__name__)

NAMESPACE = "commer_generate"
MODES = ("commer", "in_prompt", "none")
# In-prompt prompts hold whole documents: the checkpoint's instruction limit (sized for
# ComMer's short prompts) would cut them and make the baseline look cheaper than it is.
IN_PROMPT_MAX_TOKENS = 2048
PROFILE_COLUMNS = ["user_id", "doc_count", "soft_prompt", "model_fingerprint"]


class GenerateOptions(PipelineOptions):
    """Flags of the generate job (model flags come from ModelOptions)."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser = tolerant(parser)
        parser.add_argument("--profiles", default=None,
                            help="Profiles table from compress_users: its output folder (profiles/ inside is used), "
                                 "the profiles folder, or one .parquet file. Needed with --mode=commer.")
        parser.add_argument("--queries", default=None,
                            help="Queries: JSONL (.jsonl/.json, optionally .gz) or Parquet (.parquet) file or glob, "
                                 "with user_id, query_id, instruction and optional reference.")
        parser.add_argument("--output", default=None,
                            help="Output folder: predictions-*.parquet (and/or .jsonl), run_summary.json.")
        parser.add_argument("--output_format", default="parquet", choices=["parquet", "jsonl", "both"],
                            help="Predictions as Parquet (schemas.Prediction), JSON lines, or both.")
        parser.add_argument("--dead_letters", default=None,
                            help="Where rejected queries/documents go, with a reason (default OUTPUT/dead_letters).")
        parser.add_argument("--mode", default="commer", choices=list(MODES),
                            help="commer: the user's soft prompt; in_prompt: the user's top --num_documents documents "
                                 "by BM25 as plain text (baseline; needs --documents); none: no personalisation.")
        parser.add_argument("--documents", default=None,
                            help="Documents (same format as compress_users' input: user_id, doc_id, text) for "
                                 "--mode=in_prompt.")
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


class GenerationSettings(BaseModel):
    """What a worker needs to generate: travels with the ModelHandler."""

    checkpoint: str = Field(description="Checkpoint folder.")
    backbone: Optional[str] = Field(None, description="Backbone override.")
    dtype: str = Field("float32", description="Backbone precision.")
    device: str = Field("cpu", description="cpu or cuda.")
    cache_dir: Optional[str] = Field(None, description="Backbone cache folder.")
    fingerprint: str = Field(description="The checkpoint's fingerprint, written on every prediction.")
    mode: str = Field("commer", description="commer, in_prompt or none.")
    num_documents: int = Field(4, ge=0, description="In-prompt documents per query.")
    max_prompt_tokens: int = Field(0, ge=0, description="Prompt limit; 0 = the checkpoint's.")
    max_new_tokens: int = Field(32, gt=0, description="Most generated tokens.")
    do_sample: bool = Field(False, description="Sample instead of greedy.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus mass.")
    seed: int = Field(0, description="Base sampling seed.")
    batch_size: int = Field(16, gt=0, description="Queries per model call.")


# ---- reading inputs ---------------------------------------------------------------------

def _is_parquet(path: str) -> bool:
    return path.rstrip("/").endswith(".parquet")


def _errors(exc: ValidationError) -> str:
    # Field names and messages only: input values could be private text.
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'record'}: {e['msg']}"
                     for e in exc.errors(include_input=False, include_url=False))


def _raw_text(raw) -> str:
    return raw if isinstance(raw, str) else json.dumps(raw, default=str)


def parse_record(raw, record_type, source: str, kind: str):
    """(record, None) or (None, DeadLetter) for one JSONL line or Parquet row dict."""
    if isinstance(raw, str):
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as exc:
            return None, DeadLetter(stage="parse", reason=f"{kind} is not valid JSON ({exc.msg} at column {exc.colno})",
                                    source=source, record=raw)
    else:
        row = raw
    if not isinstance(row, dict):
        return None, DeadLetter(stage="parse", reason=f"{kind} is not a JSON object", source=source,
                                record=_raw_text(raw))
    user_id = row.get("user_id") if isinstance(row.get("user_id"), str) else None
    doc_id = row.get("doc_id") if isinstance(row.get("doc_id"), str) else None
    try:
        return record_type.model_validate(row), None
    except ValidationError as exc:
        reason = f"invalid {kind}: {_errors(exc)}"
        if kind == "query" and isinstance(row.get("query_id"), str):
            reason = f"invalid query {row['query_id']!r}: {_errors(exc)}"
        return None, DeadLetter(stage="validate", reason=reason, source=source, user_id=user_id,
                                doc_id=doc_id, record=_raw_text(raw))


class ParseRecords(beam.DoFn):
    """Validated records as dicts on the main output, DeadLetters on 'dead'."""

    def __init__(self, record_type, kind: str, source: str):
        self.record_type, self.kind, self.source = record_type, kind, source
        self.read = Metrics.counter(NAMESPACE, f"{kind}_read")
        self.rejected = Metrics.counter(NAMESPACE, f"{kind}_dead_lettered")

    def process(self, element):
        source, raw = element if isinstance(element, tuple) else (self.source, element)
        if isinstance(raw, str) and not raw.strip():
            return []  # a blank line is not a record
        self.read.inc()
        record, dead = parse_record(raw, self.record_type, source, self.kind)
        if dead is not None:
            self.rejected.inc()
            return [beam.pvalue.TaggedOutput("dead", dead)]
        return [record.model_dump(mode="python")]


def read_records(pipeline, path: str, record_type, kind: str):
    """(valid dicts, dead letters) from a JSONL or Parquet file/glob."""
    label = kind.capitalize()
    if _is_parquet(path):
        raw = pipeline | f"Read{label}" >> beam.io.ReadFromParquet(path)
    else:
        raw = pipeline | f"Read{label}" >> beam.io.ReadFromTextWithFilename(path)
    parsed = raw | f"Parse{label}" >> beam.ParDo(ParseRecords(record_type, kind, path)).with_outputs(
        "dead", main="records")
    return parsed.records, parsed.dead


def profile_files(path: str) -> list[str]:
    """The Parquet shards of a profiles table given its job folder, its folder or one file."""
    fs, root = filesystem(path)
    if not fs.exists(root):
        raise CliError(f"--profiles {path} does not exist; pass compress_users' --output folder")
    if fs.isdir(root):
        if fs.isdir(f"{root.rstrip('/')}/profiles"):
            root = f"{root.rstrip('/')}/profiles"
        files = sorted(f for f in fs.find(root) if f.endswith(".parquet"))
    else:
        files = [root]
    if not files:
        raise CliError(f"--profiles {path}: no .parquet files found (expected compress_users' OUTPUT/profiles/)")
    return [fs.unstrip_protocol(f) if is_remote(path) else f for f in files]


def check_profile_fingerprints(files: list[str], expected: str) -> None:
    """Refuse profiles compressed by another checkpoint: their soft prompts live in another space.

    Reads only Parquet footers and the fingerprint column (tiny, dictionary-encoded), so it
    stays cheap for millions of users.
    """
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    for file in files:
        fs, local = filesystem(file)
        with fs.open(local, "rb") as f:
            parquet = pq.ParquetFile(f)
            meta = read_metadata(parquet.schema_arrow)
            missing = [c for c in PROFILE_COLUMNS if c not in parquet.schema_arrow.names]
            if missing or meta.get("record", "Profile") != "Profile":
                raise CliError(f"--profiles: {file} is not a profiles table (record {meta.get('record')!r}, "
                               f"missing columns {missing}); pass compress_users' --output folder")
            found = {meta["fingerprint"]} if meta.get("fingerprint") else set()
            if "model_fingerprint" in parquet.schema_arrow.names:
                column = parquet.read(columns=["model_fingerprint"]).column("model_fingerprint")
                found |= set(pc.unique(column).to_pylist())
        wrong = sorted(fp for fp in found if fp != expected)
        if wrong:
            raise CliError(
                f"profiles in {file} were made with checkpoint fingerprint {', '.join(wrong)}, but the checkpoint "
                f"given has fingerprint {expected}: their soft prompts are in another embedding space. Pass the "
                "--checkpoint that compress_users used, or recompute the profiles with this checkpoint")


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

    Queries are never dropped for lack of a profile: they become non-personalised requests.
    """

    def __init__(self, settings: GenerationSettings):
        self.settings = settings
        self.unpersonalized = Metrics.counter(NAMESPACE, "queries_without_profile")
        self.duplicates = Metrics.counter(NAMESPACE, "query_duplicates")
        self.duplicate_profiles = Metrics.counter(NAMESPACE, "users_with_several_profiles")

    def process(self, element):
        user_id, groups = element
        queries = sorted(groups["queries"], key=lambda q: q["query_id"])
        # Users with a profile but no query: nothing to do (the join still had to see them).
        return list(self._plan(user_id, queries, groups)) if queries else []

    def _plan(self, user_id, queries, groups):
        soft, doc_count, ranked = None, 0, None
        if self.settings.mode == "commer":
            profiles = list(groups.get("profiles", []))
            if len(profiles) > 1:
                # The main job writes one row per user; keep the fullest one rather than fail.
                self.duplicate_profiles.inc()
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
                self.duplicates.inc()
                yield beam.pvalue.TaggedOutput("dead", DeadLetter(
                    stage="duplicate", reason=f"query_id {query['query_id']!r} appears more than once for this user; "
                                              "the first was answered", user_id=user_id,
                    record=json.dumps(query)))
                continue
            seen.add(query["query_id"])
            documents = ranked.top(query["instruction"], self.settings.num_documents) if ranked else None
            personalized = soft is not None or bool(documents)
            if not personalized:
                self.unpersonalized.inc()
            yield {"user_id": user_id, "query_id": query["query_id"], "instruction": query["instruction"],
                   "reference": query.get("reference"), "soft_prompt": soft, "doc_count": doc_count,
                   "documents": documents, "personalized": personalized}


# ---- generation -------------------------------------------------------------------------

class _Loaded:
    """The shared model seen with this job's prompt limit, plus an unlimited one for counting."""

    def __init__(self, model, max_prompt_tokens: int):
        self.model = _with_prompt_limit(model, max_prompt_tokens) if max_prompt_tokens else model
        self.counter = _with_prompt_limit(model, 1 << 30)


def _with_prompt_limit(model, limit: int):
    # A shallow copy shares every weight with the process-wide model; only its config differs.
    view = copy.copy(model)
    view.config = model.config.model_copy(update={"max_prompt_tokens": limit})
    return view


def sample_seed(seed: int, query_id: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{query_id}".encode()).digest()[:4], "little")


class ComMerGenerator(ModelHandler):
    """RunInference handler: a batch of requests → Prediction rows."""

    def __init__(self, settings: GenerationSettings):
        self.settings = settings

    def load_model(self):
        s = self.settings
        model = shared_model(s.checkpoint, s.backbone, s.dtype, s.device, s.cache_dir)
        limit = s.max_prompt_tokens or (IN_PROMPT_MAX_TOKENS if s.mode == "in_prompt" else 0)
        return _Loaded(model, limit)

    def batch_elements_kwargs(self):
        return {"min_batch_size": self.settings.batch_size, "max_batch_size": self.settings.batch_size}

    def get_num_bytes(self, batch) -> int:
        return sum(len(r["instruction"]) + (r["soft_prompt"].nbytes if r["soft_prompt"] is not None else 0)
                   for r in batch)

    def get_metrics_namespace(self) -> str:
        return NAMESPACE

    def run_inference(self, batch, model: _Loaded, inference_args=None):
        s, m = self.settings, model.model
        rows = list(batch)
        instructions, doc_counts = [], []
        for r in rows:
            if r["documents"] is None:
                instructions.append(r["instruction"])
                doc_counts.append(r["doc_count"])
            else:
                text, used = fit_documents(r["documents"], r["instruction"],
                                           lambda t: len(model.counter.prompt_ids(t)), m.config.max_prompt_tokens)
                instructions.append(text)
                doc_counts.append(used if r["documents"] else 0)
        soft = [r["soft_prompt"] for r in rows]
        options = dict(max_new_tokens=s.max_new_tokens, do_sample=s.do_sample, temperature=s.temperature,
                       top_p=s.top_p)
        if s.do_sample:
            # One seed per query, so a query's sample does not depend on what it was batched with.
            texts = [m.generate([p], [x], seed=sample_seed(s.seed, r["query_id"]), **options)[0]
                     for p, x, r in zip(soft, instructions, rows)]
        else:
            texts = m.generate(soft, instructions, seed=s.seed, **options)
        scored = [i for i, r in enumerate(rows) if r["reference"] is not None]
        perplexity = [None] * len(rows)
        if scored:
            values = m.perplexity([soft[i] for i in scored], [instructions[i] for i in scored],
                                  [rows[i]["reference"] for i in scored]).tolist()
            for i, v in zip(scored, values):
                perplexity[i] = float(v)
        for r, text, p, x, n, ppl in zip(rows, texts, soft, instructions, doc_counts, perplexity):
            tokens = len(m.prompt_ids(x)) + (m.K if p is not None else 0)
            yield Prediction(user_id=r["user_id"], query_id=r["query_id"], prediction=text,
                             personalized=r["personalized"], doc_count=n, reference=r["reference"],
                             perplexity=ppl, prompt_tokens=tokens, model_fingerprint=s.fingerprint).model_dump()


# ---- the pipeline -----------------------------------------------------------------------

def build(pipeline, opts, settings: GenerationSettings, profile_shards: list[str], run_id: str):
    """Wire the job into `pipeline`; returns nothing (the sinks are the outputs)."""
    queries, query_dead = read_records(pipeline, opts.queries, Query, "query")
    grouped = {"queries": queries | "KeyQueries" >> beam.Map(lambda q: (q["user_id"], q))}
    dead = [query_dead]
    if settings.mode == "commer":
        grouped["profiles"] = (
            pipeline
            | "ProfileShards" >> beam.Create(profile_shards)
            | "ReadProfiles" >> beam.io.ReadAllFromParquetBatched(columns=PROFILE_COLUMNS)
            | "KeyProfiles" >> beam.FlatMap(profile_rows))
    elif settings.mode == "in_prompt":
        documents, doc_dead = read_records(pipeline, opts.documents, Document, "document")
        grouped["documents"] = documents | "KeyDocuments" >> beam.Map(
            lambda d: (d["user_id"], {"doc_id": d["doc_id"], "text": d["text"]}))
        dead.append(doc_dead)

    planned = (grouped
               | "JoinByUser" >> beam.CoGroupByKey()
               | "PlanQueries" >> beam.ParDo(PlanUser(settings)).with_outputs("dead", main="requests"))
    dead.append(planned.dead)

    predictions = (planned.requests
                   | "Generate" >> RunInference(ComMerGenerator(settings))
                   | "Count" >> beam.Map(_count_prediction))
    output = opts.output.rstrip("/")
    if opts.output_format in ("parquet", "both"):
        schema = arrow_schema(Prediction, metadata={"fingerprint": settings.fingerprint, "mode": settings.mode,
                                                   "checkpoint": settings.checkpoint})
        predictions | "WriteParquet" >> beam.io.WriteToParquet(f"{output}/predictions-{run_id}", schema,
                                                               file_name_suffix=".parquet")
    if opts.output_format in ("jsonl", "both"):
        (predictions
         | "ToJson" >> beam.Map(json.dumps)
         | "WriteJsonl" >> beam.io.WriteToText(f"{output}/predictions-{run_id}", file_name_suffix=".jsonl"))
    (dead
     | "AllDeadLetters" >> beam.Flatten()
     | "DeadToJson" >> beam.Map(lambda d: d.model_dump_json())
     | "WriteDeadLetters" >> beam.io.WriteToText(f"{dead_letter_folder(opts)}/dead_letters-{run_id}",
                                                 file_name_suffix=".jsonl"))


_written = Metrics.counter(NAMESPACE, "predictions")
_personalized = Metrics.counter(NAMESPACE, "predictions_personalized")
_prompt_tokens = Metrics.counter(NAMESPACE, "prompt_tokens")


def _count_prediction(row: dict) -> dict:
    _written.inc()
    _prompt_tokens.inc(row["prompt_tokens"])
    if row["personalized"]:
        _personalized.inc()
    return row


def dead_letter_folder(opts) -> str:
    return (opts.dead_letters or f"{opts.output.rstrip('/')}/dead_letters").rstrip("/")


def settings_from(opts, model: ModelOptions) -> GenerationSettings:
    checkpoint = resolve_checkpoint(model)
    config = read_config(checkpoint)
    if not config.fingerprint:
        raise CliError(f"--checkpoint {checkpoint} records no fingerprint; re-save it with save_pretrained")
    if not config.trained and opts.mode == "commer":
        log.warning("checkpoint %s is untrained (trained=false): soft prompts carry little meaning", checkpoint)
    try:
        return GenerationSettings(
            checkpoint=checkpoint, backbone=model.backbone, dtype=model.dtype, device=model.device,
            cache_dir=model.cache_dir, fingerprint=config.fingerprint, mode=opts.mode,
            num_documents=opts.num_documents, max_prompt_tokens=opts.max_prompt_tokens,
            max_new_tokens=opts.max_new_tokens, do_sample=opts.do_sample, temperature=opts.temperature,
            top_p=opts.top_p, seed=opts.seed, batch_size=opts.batch_size)
    except ValidationError as exc:
        raise CliError(f"invalid flag value: {_errors(exc)} (see --help)") from None


def _help(argv: list[str]) -> bool:
    if "--help" not in argv and "-h" not in argv:
        return False
    print_help("python -m pipelines.generate", __doc__, {"generate": GenerateOptions, "model": ModelOptions})
    return True


def _require_files(flag: str, pattern: str) -> None:
    fs, root = filesystem(pattern)
    if not fs.glob(root):
        raise CliError(f"{flag} {pattern}: no such file")


def main(argv: list[str]) -> int:
    if _help(argv):
        return 0
    options = PipelineOptions(with_local_runner(argv))
    opts, model_opts = parse_flags(GenerateOptions, argv), options.view_as(ModelOptions)
    for flag in ("queries", "output"):
        if not getattr(opts, flag):
            raise CliError(f"--{flag} is required (see --help)")
    if opts.mode == "commer" and not opts.profiles:
        raise CliError("--mode=commer needs --profiles (compress_users' --output folder); "
                       "or use --mode=none for unpersonalised answers")
    if opts.mode == "in_prompt" and not opts.documents:
        raise CliError("--mode=in_prompt needs --documents (the users' documents, as given to compress_users)")
    _require_files("--queries", opts.queries)
    if opts.mode == "in_prompt":
        _require_files("--documents", opts.documents)
    settings = settings_from(opts, model_opts)
    shards: list[str] = []
    if settings.mode == "commer":
        shards = profile_files(opts.profiles)
        check_profile_fingerprints(shards, settings.fingerprint)
    elif opts.profiles:
        log.info("--profiles is not used in --mode=%s", settings.mode)

    output, run_id = opts.output.rstrip("/"), new_run_id()
    result, seconds = run_pipeline(options, build, opts, settings, shards, run_id)
    remove_stale_shards(output, run_id, "predictions-*")
    remove_stale_shards(dead_letter_folder(opts), run_id, "dead_letters-*")

    counts = counter_values(result, NAMESPACE)
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
    }
    import fsspec
    with fsspec.open(f"{output}/run_summary.json", "w") as f:
        json.dump(summary, f, indent=2)
    log.info("generate: %d queries read, %d answered (%d personalised), %d dead-lettered, %d duplicates, %.1f s",
             read, answered, summary["predictions_personalized"], rejected, duplicates, seconds)
    if not summary["reconciled"]:
        log.error("queries read (%d) != answered + dead-lettered + duplicates; see run_summary.json", read)
        return 1
    return 0


if __name__ == "__main__":
    run_cli(main)
