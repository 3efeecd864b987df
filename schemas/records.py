"""The records every job exchanges, as pydantic models: the single source of truth.

Each field's Python type also decides its Arrow type (see schemas.arrow), so validation and
storage cannot drift apart. Tensor fields (soft prompts, compressions) hold numpy arrays of
shape K×d; K and d come from the checkpoint, so the Arrow schema is built per (K, d).
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Optional

import numpy as np
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, StringConstraints, field_validator,
                      model_validator)

# 2: recency-weighted profiles (issue 16): Profile.recency_*, DocumentCompression.created_at, file
# metadata half_life_days. Version-1 files still read: their rows are plain means (see Profile).
SCHEMA_VERSION = 2


class TensorSpec:
    """Marks a field as a K×d tensor stored with the given numpy dtype."""

    def __init__(self, dtype: str):
        self.dtype = dtype


def _tensor(dtype: str):
    return Annotated[
        np.ndarray,
        BeforeValidator(lambda v: np.asarray(v, dtype=dtype)),
        PlainSerializer(lambda v: np.asarray(v).tolist(), return_type=list),
        TensorSpec(dtype),
    ]


Float32Tensor = _tensor("float32")
Float64Tensor = _tensor("float64")
# Ids are stripped, then must be non-empty: " u1 " is "u1", and "   " is no id at all.
NonEmptyId = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=512)]


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


# The dates a record may carry (created_at): checked when a record is parsed, so a value at the edge of what
# Python or Parquet can represent never reaches storage (where converting it back, or to another time zone,
# would overflow in every later refresh). A naive datetime is taken as UTC.
EARLIEST_DATE = datetime(1000, 1, 1, tzinfo=timezone.utc)
LATEST_DATE = datetime(9000, 1, 1, tzinfo=timezone.utc)


def check_date(value: Optional[datetime]) -> Optional[datetime]:
    if value is None:
        return None
    aware = value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)
    try:
        inside = EARLIEST_DATE <= aware < LATEST_DATE
    except OverflowError:  # the offset carries it beyond year 1 or 9999
        inside = False
    if not inside:
        raise ValueError(f"date outside the supported range {EARLIEST_DATE.date()} to {LATEST_DATE.date()} (UTC)")
    return value


def blank_to_none(value: Optional[str]) -> Optional[str]:
    """An empty or whitespace-only reference is no reference (it is never scored)."""
    return None if isinstance(value, str) and not value.strip() else value


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, frozen=False)


class Document(Record):
    """One user document: the main job's input."""

    model_config = ConfigDict(extra="ignore", arbitrary_types_allowed=True, str_strict=True)

    user_id: NonEmptyId = Field(description="The user the document belongs to.")
    doc_id: NonEmptyId = Field(description="Unique within a user; refresh and deletion key on it.")
    text: str = Field(description="The document's text; must be non-empty after stripping whitespace.")
    created_at: Optional[datetime] = Field(None, description="When the document was written, if known.")

    @field_validator("text")
    @classmethod
    def _text_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("text is empty after stripping whitespace")
        return value

    _created_at_in_range = field_validator("created_at")(check_date)


class Profile(Record):
    """One user's merged soft prompt, plus the state that makes the next refresh exact."""

    user_id: NonEmptyId = Field(description="The user.")
    doc_count: int = Field(ge=0, description="Documents merged into the soft prompt.")
    soft_prompt: Float32Tensor = Field(description="Mean of the user's document compressions, K×d.")
    soft_prompt_sum: Float64Tensor = Field(description="float64 sum of the compressions, K×d: refresh adds to it exactly.")
    doc_ids: list[str] = Field(description="Sorted doc_ids already merged: refresh skips them (idempotent).")
    model_fingerprint: str = Field(description="Fingerprint of the checkpoint that compressed the documents.")
    updated_at: datetime = Field(default_factory=utc_now, description="When this profile was last changed.")
    # Recency state (commer.recency.RecencyState.to_stored): soft_prompt_sum above is its `total`.
    recency_half_life_days: Optional[float] = Field(None, description="Half-life of the document weights in days; "
                                                    "None = the paper's plain mean (every weight 1).")
    recency_reference_time: Optional[datetime] = Field(None, description="The run date the weights were last "
                                                       "referred to (None for the plain mean).")
    recency_weight: float = Field(description="Total weight, scaled like soft_prompt_sum by 2**-recency_anchor "
                                  "(= doc_count for the plain mean).")
    recency_anchor: int = Field(0, description="Whole half-lives since 1970 that the stored sum and weights are "
                                "relative to (0 for the plain mean).")
    recency_gross_weight: float = Field(description="Weight of every add and remove since the state was last "
                                        "built from scratch: the cancellation guard's numerator.")

    @model_validator(mode="before")
    @classmethod
    def _plain_mean_by_default(cls, data):
        """Rows written before recency weighting (schema version 1) are plain means: weight = doc_count."""
        if isinstance(data, dict) and "doc_count" in data:
            data = dict(data)
            for name in ("recency_weight", "recency_gross_weight"):
                if data.get(name) is None:
                    data[name] = float(data["doc_count"])
            if data.get("recency_anchor") is None:
                data["recency_anchor"] = 0
        return data


class DocumentCompression(Record):
    """One document's compression: enables exact deletion and query-time merging."""

    user_id: NonEmptyId = Field(description="The user.")
    doc_id: NonEmptyId = Field(description="The document.")
    compression: Float32Tensor = Field(description="The document's K×d compression.")
    model_fingerprint: str = Field(description="Fingerprint of the checkpoint that compressed it.")
    created_at: Optional[datetime] = Field(None, description="The effective created_at the document was weighted "
                                           "with (missing → the run's date, future → clamped to it); a deletion "
                                           "subtracts the same weight. None in files written before version 2.")


class Query(Record):
    """A request to generate for a user: the generate job's input."""

    model_config = ConfigDict(extra="ignore", arbitrary_types_allowed=True)

    user_id: NonEmptyId = Field(description="The user whose profile personalises the answer.")
    query_id: NonEmptyId = Field(description="Unique id of the query.")
    instruction: str = Field(min_length=1, description="What to generate.")
    reference: Optional[str] = Field(None, description="Reference answer, for perplexity and ROUGE (blank: none).")

    _blank_reference = field_validator("reference")(blank_to_none)


class Prediction(Record):
    """A generated answer: the generate job's output, the evaluate job's input."""

    user_id: NonEmptyId = Field(description="The user.")
    query_id: NonEmptyId = Field(description="The query answered.")
    instruction: Optional[str] = Field(None, description="The query's instruction (what was asked).")
    prediction: str = Field(description="The generated text.")
    personalized: bool = Field(description="False when the user had no profile (generated without a soft prompt).")
    doc_count: int = Field(0, ge=0, description="Documents in the profile used (0 when not personalized).")
    reference: Optional[str] = Field(None, description="The query's reference answer, if it had one (blank: none).")
    perplexity: Optional[float] = Field(None, description="Perplexity of the reference given the soft prompt.")
    perplexity_unpersonalized: Optional[float] = Field(
        None, description="Perplexity of the same reference for the same instruction without the profile (no soft "
                          "prompt, no documents), scored in the same pass; set for personalized queries only, so "
                          "evaluate compares each query with itself.")
    prompt_tokens: int = Field(0, ge=0, description="Positions the generator processed before answering.")
    model_fingerprint: str = Field(description="Fingerprint of the checkpoint used.")

    _blank_reference = field_validator("reference")(blank_to_none)


class QueryScore(Record):
    """One scored query: evaluate's per-query table."""

    user_id: str = Field(description="The user.")
    query_id: str = Field(description="The query (scored per user_id and query_id).")
    personalized: bool = Field(description="Whether the answer had the user's profile.")
    doc_count: int = Field(0, description="Documents in the profile used.")
    prompt_tokens: int = Field(0, description="Positions the generator processed before answering.")
    rouge1: Optional[float] = Field(None, description="ROUGE-1 F-measure (None without a reference).")
    rougeL: Optional[float] = Field(None, description="ROUGE-L F-measure (None without a reference).")
    perplexity: Optional[float] = Field(None, description="Perplexity of the reference, as generate recorded it.")
    perplexity_unpersonalized: Optional[float] = Field(
        None, description="Perplexity of the same reference without the profile, as generate recorded it "
                          "(personalized queries only).")


class UserScore(Record):
    """One user's scores: evaluate's per-user table (commer.metrics.Aggregate, flattened)."""

    user_id: str = Field(description="The user.")
    queries: int = Field(description="Queries scored.")
    personalized: int = Field(description="Of them, answered with the user's profile.")
    with_reference: int = Field(description="Of them, with a reference (ROUGE's denominator).")
    rouge1: Optional[float] = Field(None, description="Mean ROUGE-1 over queries with a reference.")
    rougeL: Optional[float] = Field(None, description="Mean ROUGE-L over queries with a reference.")
    perplexity_count: int = Field(0, description="Queries with a finite perplexity.")
    perplexity_geometric_mean: Optional[float] = Field(None, description="exp(mean log perplexity): the one "
                                                       "mean of perplexity (commer.metrics).")
    perplexity_min: Optional[float] = Field(None, description="Lowest perplexity.")
    perplexity_max: Optional[float] = Field(None, description="Highest perplexity.")
    paired_queries: int = Field(0, description="Personalized queries scored with and without the profile.")
    paired_perplexity_with_profile: Optional[float] = Field(None, description="Their geometric mean perplexity "
                                                            "with the profile.")
    paired_perplexity_without_profile: Optional[float] = Field(None, description="The same queries' geometric "
                                                               "mean perplexity without it.")
    paired_ratio: Optional[float] = Field(None, description="with / without (< 1: the profile helps).")
    prompt_tokens_mean: Optional[float] = Field(None, description="Mean prompt positions.")
    doc_count_max: int = Field(0, description="Most documents in a profile used.")


class DeadLetter(Record):
    """An input record that could not be used, and why.

    This is a data output (access-controlled like the input), never a log line: it may keep the
    raw record so nothing is lost; logs and metrics only ever see ids and reasons.
    """

    stage: str = Field(description="Where it was rejected (parse, validate, duplicate, ...).")
    reason: str = Field(description="Why, in words a data engineer can act on.")
    source: str = Field("", description="Input file it came from, when known.")
    user_id: Optional[str] = Field(None, description="The record's user_id, when it could be read.")
    doc_id: Optional[str] = Field(None, description="The record's doc_id, when it could be read.")
    record: Optional[str] = Field(None, description="The raw record as read (decoded text, or a hex prefix of undecodable bytes).")
    escaped: bool = Field(False, description="True when a field held what JSON/UTF-8 cannot (lone surrogates): "
                          "those characters are written as \\uXXXX text instead.")

    @model_validator(mode="after")
    def _writable(self) -> "DeadLetter":
        """Writing a dead letter can never fail on the content it carries: invalid Unicode is escaped."""
        changed = False
        for name in ("stage", "reason", "source", "user_id", "doc_id", "record"):
            value = getattr(self, name)
            if isinstance(value, str) and (safe := json_safe(value)) != value:
                object.__setattr__(self, name, safe)
                changed = True
        if changed and not self.escaped:
            self.escaped = True
            self.reason += " [invalid Unicode in this dead letter escaped as \\uXXXX]"
        return self


def json_safe(value: str) -> str:
    """`value` unchanged when UTF-8 can hold it; otherwise lone surrogates written as \\uXXXX text."""
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
