"""generate --merge=retrieved: per query, merge only the user's top-M stored document compressions.

    compressions table (compress_users --document_compressions_output) ─► (user_id, StoredCompression)
    --retrieval=bm25:       + the user's documents (their text), matched by (user_id, doc_id)
    --retrieval=similarity: + each query's instruction compressed (adapter on), batched by RunInference
          ▼ CoGroupByKey by user (in pipelines.generate)
    UserPool: the user's candidates in doc_id order → per query the top M (commer.retrieval) → their mean

The mean is over the same K soft-token positions, so the generator reads a K×d soft prompt as
with a profile: generation costs what ComMer costs; only the merged set changes. M at least the
user's document count merges every document: exactly the profile's mean (commer.retrieval sums
in float64 in doc_id order). Ranking and merging are commer.retrieval's Beam-free functions.
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Iterable, Literal, Optional, TypeVar

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import ModelHandler, RunInference
from pydantic import BaseModel, Field

from commer import ComMer
from commer.retrieval import order_by_doc_id, retrieved_soft_prompt, top_m_by_bm25, top_m_by_similarity
from pipelines.elements import StoredCompression
from pipelines.inference import GenerationSettings, resolve_on_worker
from pipelines.io import check_fingerprints, input_table, read_tables
from pipelines.runtime import INFERENCE_NAMESPACE, CliError, counter
from schemas import tensor_column
from schemas.validation import text_key

log = logging.getLogger(__name__)

COMPRESSION_COLUMNS = ["user_id", "doc_id", "compression", "model_fingerprint"]
MERGE_COUNTERS = ("queries_candidates_without_text", "queries_some_candidates_without_text",
                  "compressions_without_document", "documents_without_compression", "stored_compression_duplicates")
RETRIEVALS = ("bm25", "similarity")
T = TypeVar("T")


class MergeSettings(BaseModel):
    """How a query's soft prompt is merged from the user's stored compressions (travels to workers)."""

    retrieval: Literal["bm25", "similarity"] = Field(
        "bm25", description="bm25: LaMP's BM25 between the instruction and the documents' text; similarity: "
                            "cosine between the instruction's compression and each stored compression.")
    top_m: int = Field(ge=1, description="Compressions merged per query, best first (all of them if fewer).")
    fingerprint: str = Field(description="The checkpoint's fingerprint; stored compressions must carry it.")


def merge_settings(flags, fingerprint: str) -> Optional[MergeSettings]:
    """The --merge flags checked together (one CLI line naming the flag and the fix), or None for --merge=all."""
    if flags.merge == "all":
        for name in ("top_m", "document_compressions", "retrieval"):
            if getattr(flags, name) is not None:
                raise CliError(f"--{name} applies only to --merge=retrieved; add --merge=retrieved or drop --{name}")
        return None
    if flags.mode != "commer":
        raise CliError(f"--merge=retrieved merges soft prompts, so it needs --mode=commer (got --mode={flags.mode})")
    if not flags.document_compressions:
        raise CliError("--merge=retrieved needs --document_compressions (compress_users' "
                       "--document_compressions_output folder)")
    if flags.top_m is None or flags.top_m < 1:
        raise CliError("--merge=retrieved needs --top_m M with M >= 1 (compressions merged per query)")
    retrieval = flags.retrieval or "bm25"
    if retrieval == "bm25" and not flags.documents:
        raise CliError("--retrieval=bm25 needs --documents (the documents the profiles were built from); "
                       "or use --retrieval=similarity, which needs no text")
    if retrieval == "similarity" and flags.documents:
        raise CliError("--retrieval=similarity ranks stored compressions and reads no text: drop --documents, "
                       "or use --retrieval=bm25")
    return MergeSettings(retrieval=retrieval, top_m=flags.top_m, fingerprint=fingerprint)


def merge_summary(merge: Optional[MergeSettings], counts: dict) -> dict:
    """run_summary.json's "merge": how each soft prompt was merged, and what the retrieved merge could not rank."""
    if merge is None:
        return {"merge": "all"}
    return {"merge": "retrieved", **merge.model_dump(exclude={"fingerprint"}),
            **{name: counts.get(name, 0) for name in MERGE_COUNTERS}}


def merge_report(summary: dict, answered: int) -> list[str]:
    """The report's line when the retrieved merge fell back (all or part of a user's candidates had no text)."""
    lost, partly = summary.get("queries_candidates_without_text", 0), summary.get("queries_some_candidates_without_text", 0)
    if not (lost or partly):
        return []
    return [f"merge=retrieved: {lost} of {answered} queries answered WITHOUT personalization (none of their user's "
            f"stored compressions has its text in --documents) and {partly} ranked only the ones that have; "
            f"{summary.get('compressions_without_document', 0)} stored compressions without text in all. Fix: pass "
            "--documents with every document the compressions were made from, or --retrieval=similarity (needs no "
            "text)"]


# ---- reading the compressions table -------------------------------------------------------

def compression_shards(flags, merge: MergeSettings) -> list[str]:
    """--document_compressions' files (the table's current version, or PATH@VERSION), refused before anything
    runs when they are not a compressions table or were made by another checkpoint (another embedding space)."""
    shards = input_table(flags.document_compressions, "--document_compressions", "document_compressions").files
    check_fingerprints(shards, merge.fingerprint, "--document_compressions", "DocumentCompression",
                       COMPRESSION_COLUMNS)
    log.info("merge=retrieved: per query the mean of the top %d compressions by %s%s", merge.top_m,
             merge.retrieval, "; --profiles is not used" if flags.profiles else "")
    return shards


def compression_rows(table) -> Iterable[tuple[str, StoredCompression]]:
    """(user_id, StoredCompression) from one Parquet record batch table."""
    comps = tensor_column(table, "compression")
    for i, row in enumerate(table.select(["user_id", "doc_id", "model_fingerprint"]).to_pylist()):
        yield row["user_id"], StoredCompression(row["doc_id"], comps[i].copy(), row["model_fingerprint"])


def read_compressions(pipeline, shards: list[str]):
    return (read_tables(pipeline, "Compressions", shards, "--document_compressions", COMPRESSION_COLUMNS)
            | "KeyCompressions" >> beam.FlatMap(compression_rows))


# ---- compressing instructions (--retrieval=similarity) ------------------------------------

_QUERY_MODELS: dict[tuple, ComMer] = {}
_QUERY_MODELS_LOCK = threading.Lock()


def query_compressor(s: GenerationSettings) -> ComMer:
    """A ComMer of its own (one per process) for compressing instructions.

    Not pipelines.inference.shared_model: compressing needs the LoRA adapter on and generating
    switches it off on the model object (peft's disable_adapter), so sharing one object between
    this stage and the generator would let a concurrent bundle compress with the adapter off.
    """
    dtype, device = resolve_on_worker(s.dtype, s.device)
    key = (s.checkpoint, s.backbone, dtype, device, s.cache_dir)
    with _QUERY_MODELS_LOCK:
        if key not in _QUERY_MODELS:
            model = ComMer.from_pretrained(s.checkpoint, backbone=s.backbone, dtype=dtype, cache=s.cache_dir)
            _QUERY_MODELS[key] = model.to(device).eval()
        return _QUERY_MODELS[key]


class InstructionCompressor(ModelHandler[dict, dict, ComMer]):
    """RunInference handler: query dicts (schemas.Query rows) → the same dicts plus their instruction's K×d
    compression ("query_compression"), by the compressor's own rule (commer.model.tokenize_documents, adapter on)."""

    def __init__(self, settings: GenerationSettings):
        self.settings = settings

    def load_model(self) -> ComMer:
        return query_compressor(self.settings)

    def run_inference(self, batch, model: ComMer, inference_args=None):
        queries = list(batch)
        comps = model.compress([q["instruction"] for q in queries], batch_size=len(queries)).numpy()
        return [{**q, "query_compression": c} for q, c in zip(queries, comps)]

    def batch_elements_kwargs(self):
        return {"min_batch_size": 1, "max_batch_size": self.settings.batch_size}

    def get_num_bytes(self, batch) -> int:
        return sum(len(q["instruction"]) for q in batch)

    def get_metrics_namespace(self) -> str:
        return INFERENCE_NAMESPACE


def compress_instructions(queries, settings: GenerationSettings):
    return queries | "CompressInstructions" >> RunInference(InstructionCompressor(settings))


# ---- one user's candidates ----------------------------------------------------------------

_DUPLICATES = counter("stored_compression_duplicates")
_WITHOUT_TEXT = counter("compressions_without_document")
_WITHOUT_COMPRESSION = counter("documents_without_compression")
# Queries answered WITHOUT personalization because none of the user's stored compressions has its text in
# --documents, and queries ranked among only some of them: never a silent fall-back (issue 26).
_QUERIES_NO_TEXT = counter("queries_candidates_without_text")
_QUERIES_SOME_TEXT = counter("queries_some_candidates_without_text")


def _one_per_doc(rows: Iterable[tuple[str, T]], content: Callable[[T], Any]) -> dict[str, T]:
    """(doc_id, row) pairs → doc_id → one row; among rows sharing a doc_id the smallest by `content` (any read
    order keeps the same)."""
    kept: dict[str, T] = {}
    for doc_id, row in rows:
        if doc_id in kept:
            _DUPLICATES.inc()
            if content(row) >= content(kept[doc_id]):
                continue
        kept[doc_id] = row
    return kept


class UserPool:
    """One user's candidate compressions in doc_id order (the canonical order that makes ties and the
    float64 sum independent of read order), with their texts for BM25."""

    def __init__(self, user_id: str, compressions: Iterable[StoredCompression], documents: Optional[Iterable[dict]],
                 merge: MergeSettings):
        self.merge = merge
        stored = _one_per_doc(((c.doc_id, c) for c in compressions), lambda c: c.compression.tobytes())
        for row in stored.values():
            if row.model_fingerprint != merge.fingerprint:
                raise ValueError(f"document compression {row.doc_id!r} of user {user_id} has fingerprint "
                                 f"{row.model_fingerprint}, expected {merge.fingerprint}")
        texts: Optional[dict[str, dict]] = None
        self.without_text = 0  # stored compressions BM25 cannot rank: their document is not in --documents
        if merge.retrieval == "bm25":
            # Only documents with both a compression and a text can be ranked and merged; with the
            # documents the profiles were built from, both counters stay at 0.
            texts = _one_per_doc(((d["doc_id"], d) for d in documents or []), lambda d: text_key(d["text"]))
            self.without_text = len(stored.keys() - texts.keys())
            _WITHOUT_TEXT.inc(self.without_text)
            _WITHOUT_COMPRESSION.inc(len(texts.keys() - stored.keys()))
            stored = {d: row for d, row in stored.items() if d in texts}
        ids = list(stored)
        self.doc_ids, self.compressions, self.texts = (
            order_by_doc_id(ids, np.stack([stored[d].compression for d in ids]).astype(np.float64),
                            None if texts is None else [texts[d]["text"] for d in ids])
            if ids else ([], None, []))

    def soft_prompt(self, query: dict) -> tuple[Optional[np.ndarray], int]:
        """(the mean of the query's top-M compressions, M used); (None, 0) when the user has none. A query
        whose user's compressions all lack text, or some do, is counted (generate reports both)."""
        if self.without_text:
            (_QUERIES_NO_TEXT if not self.doc_ids else _QUERIES_SOME_TEXT).inc()
        if not self.doc_ids:
            return None, 0
        if self.merge.retrieval == "bm25":
            chosen = top_m_by_bm25(query["instruction"], self.texts, self.merge.top_m)
        else:
            chosen = top_m_by_similarity(query["query_compression"], self.compressions, self.merge.top_m)
        return retrieved_soft_prompt(self.compressions, chosen), len(chosen)
