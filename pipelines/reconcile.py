"""What happens to one (user_id, doc_id) in a run: a pure function over typed events. No Beam.

The compress job gathers, per (user_id, doc_id), every event that concerns the document:

    RECORD      a new input record with this id (there may be several: duplicates)
    IN_PROFILE  the user's previous profile already holds this doc_id
    DELETE      a deletion request names this document
    STORED      a previous run's stored compression of this document (--previous_document_compressions),
                with the effective created_at it was weighted with

and `decide` turns them into one `Decision`. Deletions apply to the previous state first; a
new record with the same id then (re-)adds the document. Rules, in order:

  1. DELETE with IN_PROFILE: the stored compression is subtracted (`remove`); without a stored
     compression the deletion cannot be exact and `ReconcileError` is raised. DELETE without
     IN_PROFILE matches nothing (`deletion = UNMATCHED`).
  2. STORED with IN_PROFILE (and not deleted): the stored compression is carried into this
     run's compressions output (`carry`), so that output keeps holding every current document.
  3. Among RECORDs the one with the smallest content hash is kept, the rest are duplicates
     (schemas.validation.pick_one: the same choice in any order or sharding).
  4. The kept record is compressed, unless the profile still holds the id (`already_merged`).

The result does not depend on the order of the events. Every input record ends in exactly one
of `compress`, `already_merged` or `duplicates` (invariant 6). `dated` then gives a document to
compress the created_at it is weighted and stored with (commer.recency's rule: missing → the run's
date, future → clamped to it).
"""
from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable, Iterable

import numpy as np

from commer.recency import effective_created_at
from schemas.validation import ValidDocument, pick_one


class Kind(enum.Enum):
    RECORD = "record"
    IN_PROFILE = "in_profile"
    DELETE = "delete"
    STORED = "stored"


@dataclass(frozen=True)
class Event:
    """One fact about a (user_id, doc_id); only RECORD carries a document, only STORED a compression."""

    kind: Kind
    document: ValidDocument | None = None
    compression: np.ndarray | None = field(default=None, repr=False)
    created_at: datetime | None = None   # STORED: the effective created_at stored with the compression

    @classmethod
    def record(cls, document: ValidDocument) -> "Event":
        return cls(Kind.RECORD, document=document)

    @classmethod
    def in_profile(cls) -> "Event":
        return cls(Kind.IN_PROFILE)

    @classmethod
    def delete(cls) -> "Event":
        return cls(Kind.DELETE)

    @classmethod
    def stored(cls, compression: np.ndarray, created_at: datetime | None = None) -> "Event":
        return cls(Kind.STORED, compression=compression, created_at=created_at)


class Deletion(enum.Enum):
    APPLIED = "applied"
    UNMATCHED = "unmatched"


class ReconcileError(RuntimeError):
    """The inputs cannot be reconciled exactly; the message names ids only."""


@dataclass
class Decision:
    compress: ValidDocument | None = None       # compress it and add it to the profile
    already_merged: bool = False                # a new record the profile already holds: skipped
    duplicates: list[ValidDocument] = field(default_factory=list)  # dead-lettered as duplicates
    remove: np.ndarray | None = None            # subtract this stored compression from the profile
    carry: np.ndarray | None = None             # stored compression of a document the profile keeps
    deletion: Deletion | None = None            # outcome of a deletion request, if there was one
    deletion_duplicates: int = 0                # further requests naming the same (normalised) document
    stored_created_at: datetime | None = None   # with `remove` or `carry`: the created_at stored with it


def decide(user_id: str, doc_id: str, events: Iterable[Event]) -> Decision:
    """The fate of one document of one user (see the module docstring for the rules)."""
    records: list[ValidDocument] = []
    in_profile = False
    deleted = 0
    stored = stored_created_at = None
    for event in events:
        if event.kind is Kind.RECORD:
            records.append(event.document)
        elif event.kind is Kind.IN_PROFILE:
            in_profile = True
        elif event.kind is Kind.DELETE:
            deleted += 1
        elif event.kind is Kind.STORED:
            stored, stored_created_at = event.compression, event.created_at
    decision = Decision(deletion_duplicates=max(deleted - 1, 0))
    if deleted:
        if in_profile:
            if stored is None:
                raise ReconcileError(
                    f"cannot delete document {doc_id!r} of user {user_id!r} exactly: it is not in "
                    "--previous_document_compressions (pass the compressions of every earlier run)")
            decision.deletion, decision.remove = Deletion.APPLIED, stored
            decision.stored_created_at = stored_created_at
            in_profile, stored = False, None
        else:
            decision.deletion = Deletion.UNMATCHED
    if stored is not None and in_profile:
        decision.carry, decision.stored_created_at = stored, stored_created_at
    kept, decision.duplicates = pick_one(records)
    if kept is not None and in_profile:
        decision.already_merged = True
    elif kept is not None:
        decision.compress = kept
    return decision


def dated(document: ValidDocument, run_time: datetime, on_missing: Callable[[], None] | None = None,
          on_future: Callable[[], None] | None = None) -> ValidDocument:
    """The document with the effective created_at it is weighted and stored with (hooks count the dated-by-rule)."""
    return dataclasses.replace(document, created_at=effective_created_at(document.created_at, run_time, on_missing,
                                                                         on_future))
