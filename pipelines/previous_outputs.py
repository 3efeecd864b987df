"""A previous run's tables read back as compress_users' keyed inputs, each row checked before it is carried.

    ExplodePreviousProfiles   previous profiles → the user's Update(PREVIOUS) + an IN_PROFILE event per doc_id
    explode_compressions      stored document compressions → a STORED event per (user_id, doc_id)

A corrupt stored table (a non-finite value, one beyond MAGNITUDE_BOUND, a profile whose counts disagree)
is refused in one line (InputError), never merged into new profiles.
"""
from __future__ import annotations

import math

import apache_beam as beam
import numpy as np
import pyarrow as pa

from pipelines.profile_accumulator import Change, PreviousProfile, Update
from pipelines.reconcile import Event
from pipelines.runtime import InputError, counter
from schemas import tensor_column

IN_PROFILE = "in_profile"
# A stored soft prompt or compression with a value beyond this is not one a model wrote (hidden states stay
# many orders of magnitude below; a bit flip in an exponent does not): the table is refused, never carried.
MAGNITUDE_BOUND = 1e6


def check_stored(values: np.ndarray, what: str, bound: float) -> None:
    """Stored vectors are finite and within `bound`, or the table is refused (InputError, one line)."""
    if values.size and not (np.isfinite(values).all() and float(np.abs(values).max()) <= bound):
        raise InputError(f"{what} holds a non-finite value or one beyond {bound:g}: the stored table is corrupt; "
                         "read an earlier version (PATH@VERSION) or rebuild it with a full run")


class ExplodePreviousProfiles(beam.DoFn):
    """A table of previous profiles → the user's Update(PREVIOUS) and an IN_PROFILE event per doc_id.
    Each profile is checked first: finite, within MAGNITUDE_BOUND, its mean its sum over its weight,
    its doc_ids as many as its doc_count (a corrupt table is refused, never carried into new profiles)."""

    def __init__(self, flag: str = "--previous_profiles"):
        self.flag = flag
        self.read = counter("previous_profiles_read")

    def process(self, table: pa.Table):
        sums, prompts = tensor_column(table, "soft_prompt_sum"), tensor_column(table, "soft_prompt")
        # Every scalar column: the recency state's too (files written before it have none: plain means).
        for i, row in enumerate(table.drop_columns(["soft_prompt_sum", "soft_prompt"]).to_pylist()):
            self.read.inc()
            check_profile(row, sums[i], prompts[i], self.flag)
            previous = PreviousProfile.from_row(row, sums[i], prompts[i])
            yield row["user_id"], Update(Change.PREVIOUS, previous=previous)
            for doc_id in previous.doc_ids:
                yield beam.pvalue.TaggedOutput(IN_PROFILE, ((row["user_id"], doc_id), Event.in_profile()))


def check_profile(row: dict, total: np.ndarray, soft_prompt: np.ndarray, flag: str) -> None:
    where = f"{flag}: the profile of user {row.get('user_id')!r}"
    weight = row.get("recency_weight") if row.get("recency_weight") is not None else row.get("doc_count")
    doc_ids = row.get("doc_ids") or []
    if row.get("doc_count") != len(doc_ids) or weight is None or not math.isfinite(weight) or weight < 0:
        raise InputError(f"{where} is inconsistent (doc_count {row.get('doc_count')}, {len(doc_ids)} doc_ids, "
                         f"weight {weight}): the stored table is corrupt; read an earlier version (PATH@VERSION) "
                         "or rebuild it with a full run")
    check_stored(np.asarray(soft_prompt, dtype=np.float64), f"{where} (soft_prompt)", MAGNITUDE_BOUND)
    check_stored(np.asarray(total, dtype=np.float64), f"{where} (soft_prompt_sum)",
                 MAGNITUDE_BOUND * max(float(weight), 1.0))


def explode_compressions(table: pa.Table, flag: str = "--previous_document_compressions"):
    comps = tensor_column(table, "compression")
    check_stored(np.asarray(comps, dtype=np.float64), f"{flag}: a stored compression", MAGNITUDE_BOUND)
    for i, row in enumerate(table.drop_columns(["compression"]).to_pylist()):  # created_at: none before version 2
        yield (row["user_id"], row["doc_id"]), Event.stored(comps[i], row.get("created_at"))
