"""The elements that pass between the jobs' Beam steps, with named fields.

A step gets whatever the step before it yielded. With positional tuples every reader had to know
which index meant what (`x[2]` was the token ids in one step and the compression in the next).
These NamedTuples give each element a name and a type, as Beam does for its own handlers
(`PredictionResult`, `ModelHandler[ExampleT, PredictionT, ModelT]`).

    compress_users  Tokenize ─► TokenizedDocument ─► SplitBatches ─► list[TokenizedDocument]
                    ─► Compress (PredictionResult: that list, [n, K, d]) ─► Unbatch ─► CompressedDocument
                    (Reconcile's CARRY yields CompressedDocument too: a stored compression carried over)
    generate        profiles ─► StoredProfile,  compressions ─► StoredCompression  ─► PlanUser
                    ─► GenerationRequest ─► Generate (RunInference) ─► schemas.Prediction rows
    evaluate        the combiners' results ─► AggregateLine ─► one JSON line each ─► metrics.json

The records read and written (schemas.ValidDocument, Query, Prediction, DocumentCompression, ...) are
pydantic records in schemas/. The types here only carry data between steps inside one run. They
are plain NamedTuples with no Beam import. Beam encodes them with its fallback coder, pickling them by
reference to this module. A NamedTuple type hint becomes `Any` in Beam's type conversion, so
annotating a step with one never selects a schema RowCoder, which has no type for an ndarray field.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple, Optional

import numpy as np

# ---- compress_users ----------------------------------------------------------------------


class TokenizedDocument(NamedTuple):
    """One document ready to compress (Tokenize → GroupByLength → SplitBatches → Compress)."""

    user_id: str  # the profile the compression merges into
    doc_id: str  # its name in the profile and the compressions table; with user_id, the tie-break that
    #              makes a rerun form the same batches
    token_ids: list[int]  # by the compressor's rule, cut to max_document_tokens; buckets and budgets count them
    created_at: Optional[datetime] = None  # the effective date Reconcile gave it, carried past the model to
    #                                        the recency weight and the stored row


class CompressedDocument(NamedTuple):
    """One document's compression while the run is going: Unbatch's output, and Reconcile's CARRY (a
    stored compression carried into this run's table). It feeds MergeProfiles (as an ADD),
    RebuildProfiles and the compressions table, whose row (schemas.DocumentCompression) adds the
    checkpoint fingerprint and is checked when it is written."""

    user_id: str  # the profile it belongs to (MergeProfiles' and RebuildProfiles' key)
    doc_id: str  # which document: a later deletion names it
    compression: np.ndarray  # [K, d] float32: what is merged into the profile and stored
    created_at: Optional[datetime]  # its effective date: the recency weight it is added with, and the
    #                                 same weight a later deletion subtracts


# ---- generate ----------------------------------------------------------------------------


class StoredProfile(NamedTuple):
    """The columns of one user's profile (a schemas.Profile row) that generate needs, keyed by user_id."""

    soft_prompt: np.ndarray  # [K, d]: what the user's queries are answered with
    doc_count: int  # documents merged: reported on each prediction; 0 means no soft prompt. Also used to
    #                 choose among a user's several rows
    model_fingerprint: str  # checked against the checkpoint's: one embedding space


class StoredCompression(NamedTuple):
    """One stored document compression (a schemas.DocumentCompression row), keyed by user_id: a
    candidate for --merge=retrieved."""

    doc_id: str  # matches the document's text (BM25) and sets the canonical candidate order
    compression: np.ndarray  # [K, d]: ranked by similarity, averaged when chosen
    model_fingerprint: str  # checked against the checkpoint's: one embedding space


class GenerationRequest(NamedTuple):
    """One query to answer, planned by PlanUser with what personalizes it: the ComMerGenerator's example."""

    user_id: str  # copied to the prediction
    query_id: str  # copied to the prediction; with --do_sample it also seeds the query's own sample
    instruction: str  # the query as asked (the prompt, unless documents go before it)
    reference: Optional[str]  # the reference answer: its perplexity is scored when given
    soft_prompt: Optional[np.ndarray]  # [K, d] the user's (or the task prompt, unpersonalized); None: none
    doc_count: int  # documents behind the soft prompt (--mode=in_prompt: counted again as the prompt fits them)
    documents: Optional[list[str]]  # --mode=in_prompt: the user's top documents, best first; else None
    personalized: bool  # the user's profile or documents were used: such a query is scored without them too


# ---- evaluate ----------------------------------------------------------------------------


class AggregateLine(NamedTuple):
    """One aggregate the pipeline hands its launcher, one JSON line (an array) each, assembled into
    metrics.json."""

    section: str  # overall, by_personalization, by_doc_count or per_user: where it goes in metrics.json
    key: Any  # which one within the section (None, "personalized", a bucket's [min, max], "rougeL", ...)
    value: Any  # the aggregate's summary (commer.metrics), or a count
