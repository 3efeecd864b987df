"""A user's profile accumulator during a run (MergeProfiles' CombineFn accumulator): previous profile + added
− removed. Plain numpy, no Beam.

Profile state stored between runs (see schemas.Profile): the float64 (recency-weighted) sum of
the user's document compressions, its total weight, the sorted doc_ids merged into it, and the
count. With that,
    refresh = previous sum + new compressions (skipping doc_ids already in the state)
    delete  = previous sum − the stored compression of the deleted document (at its stored weight)
are exact up to float64 rounding, so any chain of refreshes equals a full recompute, and a
rerun of the same refresh finds every doc_id already merged and changes nothing.

The sums are `commer.recency.RecencyState`s: with `half_life_days=None` (the default) every
weight is exactly 1 and the numbers are bit for bit the paper's plain mean (commer.merge.SumCount);
with a half-life, a document's weight halves every `half_life_days` before the run's date.
During a run, additions and removals are kept in two separate states: partial states from
different workers can then merge in any order (a removal may be seen before the previous profile
it applies to), and the result is only formed at the end. When deletions cancelled too much weight
for the incremental mean to be trusted, `finalize` returns a `Rebuild` instead: the user is then
recomputed from their stored per-document compressions (`rebuild_profile`).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Iterable

import numpy as np

from commer.recency import RecencyState, recency_merge_all
from pipelines.elements import CompressedDocument
from schemas import Profile


class StateError(ValueError):
    """Inconsistent state (the inputs contradict each other); the message names ids only."""


@dataclass
class PreviousProfile:
    """The parts of a stored profile a refresh needs."""

    total: np.ndarray            # float64 K×d
    doc_ids: list[str]
    soft_prompt: np.ndarray      # float32 K×d, carried unchanged when nothing changes
    updated_at: datetime
    fingerprint: str
    user_id: str = ""            # only for error messages (the CombineFn does not see the key)
    # The stored recency state (schemas.Profile.recency_*); the defaults are a plain-mean row's.
    half_life_days: float | None = None
    reference_time: datetime | None = None
    weight: float | None = None          # None: len(doc_ids), as in rows written before recency
    anchor: int = 0
    gross_weight: float | None = None

    @classmethod
    def from_row(cls, row: dict, total: np.ndarray, soft_prompt: np.ndarray) -> "PreviousProfile":
        """A stored profile row (a dict of its non-tensor columns); rows without recency columns are plain means."""
        return cls(total=np.asarray(total, dtype=np.float64), doc_ids=list(row["doc_ids"]),
                   soft_prompt=np.asarray(soft_prompt, dtype=np.float32), updated_at=row["updated_at"],
                   fingerprint=row["model_fingerprint"], user_id=row.get("user_id", ""),
                   half_life_days=row.get("recency_half_life_days"), reference_time=row.get("recency_reference_time"),
                   weight=row.get("recency_weight"), anchor=row.get("recency_anchor") or 0,
                   gross_weight=row.get("recency_gross_weight"))

    def state(self, half_life_days: float | None, user_id: str = "") -> RecencyState:
        """The stored state, resumed for a run with `half_life_days` (HalfLifeMismatchError if it differs)."""
        count = len(self.doc_ids)
        stored = {"half_life_days": self.half_life_days, "reference_time": self.reference_time, "total": self.total,
                  "weight": count if self.weight is None else self.weight, "anchor": self.anchor, "count": count,
                  "gross_weight": count if self.gross_weight is None else self.gross_weight}
        return RecencyState.from_stored(stored, half_life_days, user_id or self.user_id)


@dataclass(frozen=True)
class Rebuild:
    """A user whose incremental state lost precision to deletions: recompute from these documents."""

    user_id: str
    doc_ids: tuple[str, ...]


@dataclass
class ProfileAccumulator:
    """Accumulator for one user: mutable, merged in place."""

    half_life_days: float | None = None
    previous: PreviousProfile | None = None
    added: RecencyState | None = None
    removed: RecencyState | None = None  # summed positively, subtracted at the end
    added_ids: set[str] = field(default_factory=set)
    removed_ids: set[str] = field(default_factory=set)

    def __post_init__(self):
        self.added = self.added or RecencyState(self.half_life_days)
        self.removed = self.removed or RecencyState(self.half_life_days)

    def set_previous(self, previous: PreviousProfile, user_id: str = "") -> "ProfileAccumulator":
        if self.previous is not None:
            raise StateError(f"user {user_id or previous.user_id!r} appears twice in --previous_profiles")
        self.previous = previous
        return self

    def add(self, doc_id: str, compression: np.ndarray, created_at: datetime | None = None,
            user_id: str = "") -> "ProfileAccumulator":
        """A newly compressed document, with the effective created_at it is weighted with."""
        if doc_id in self.added_ids:
            raise StateError(f"document {doc_id!r} of user {user_id!r} was compressed twice in one run")
        self.added.add(compression, created_at)
        self.added_ids.add(doc_id)
        return self

    def remove(self, doc_id: str, compression: np.ndarray, created_at: datetime | None = None,
               user_id: str = "") -> "ProfileAccumulator":
        """A deleted document: its stored compression and the created_at it was added with."""
        if doc_id in self.removed_ids:
            raise StateError(f"document {doc_id!r} of user {user_id!r} was removed twice in one run")
        self.removed.add(compression, created_at)
        self.removed_ids.add(doc_id)
        return self

    def merge(self, other: "ProfileAccumulator", user_id: str = "") -> "ProfileAccumulator":
        """Fold `other` into self; `other` is left untouched (Beam's combiner-lifting contract)."""
        if other.previous is not None:
            self.set_previous(other.previous, user_id)
        if self.added_ids & other.added_ids or self.removed_ids & other.removed_ids:
            raise StateError(f"user {user_id!r}: the same document reached the merge twice")
        self.added.merge(other.added, user_id)
        self.removed.merge(other.removed, user_id)
        self.added_ids |= other.added_ids
        self.removed_ids |= other.removed_ids
        return self

    @property
    def changed(self) -> bool:
        return bool(self.added_ids or self.removed_ids)

    def finalize(self, user_id: str, fingerprint: str, now: datetime) -> Profile | Rebuild | None:
        """The user's profile after this run; None when no document remains (the user is dropped);
        a Rebuild when deletions cancelled too much weight to trust the incremental mean."""
        previous = self.previous
        if previous is not None and previous.fingerprint != fingerprint:
            raise StateError(f"user {user_id!r}: previous profile has fingerprint {previous.fingerprint}, "
                             f"this checkpoint has {fingerprint}")
        if previous is not None and not self.changed:
            # Untouched: carried over bit for bit, including when it was last changed. Its weighted
            # mean does not depend on the reference time, so time passing alone changes nothing.
            state = previous.state(self.half_life_days, user_id)
            return _profile(user_id, state, previous.soft_prompt, previous.doc_ids, previous.fingerprint,
                            previous.updated_at)
        old_ids = set(previous.doc_ids) if previous is not None else set()
        # A deleted document sent again in the same run is a replacement, not a second copy.
        if self.added_ids & (old_ids - self.removed_ids):
            raise StateError(f"user {user_id!r}: a document already in the profile was added again")
        if not self.removed_ids <= old_ids:
            raise StateError(f"user {user_id!r}: a removed document is not in the previous profile")
        doc_ids = (old_ids - self.removed_ids) | self.added_ids
        if not doc_ids:
            return None
        state = previous.state(self.half_life_days, user_id) if previous is not None \
            else RecencyState(self.half_life_days)
        state.merge(self.added, user_id).subtract(self.removed, user_id)
        # The reference never moves back (a clock behind the previous run's); the mean does not depend on it.
        state.advance_to(max(now, state.reference_time or now))
        if state.count != len(doc_ids):
            raise StateError(f"user {user_id!r}: count {state.count} does not match {len(doc_ids)} doc_ids")
        if state.decays and not state.reliable():
            return Rebuild(user_id, tuple(sorted(doc_ids)))
        return _profile(user_id, state, state.mean(), doc_ids, fingerprint, now)


def rebuild_profile(rebuild: Rebuild, documents: Iterable[CompressedDocument],
                    half_life_days: float | None, fingerprint: str, now: datetime) -> Profile:
    """A user recomputed from scratch from the stored compression and effective created_at of every
    document they keep: the exact answer when deletions made the incremental state unreliable."""
    documents = sorted(documents, key=lambda d: d.doc_id)  # a fixed order: the same sums on any runner
    found = tuple(d.doc_id for d in documents)
    if found != rebuild.doc_ids:
        missing = sorted(set(rebuild.doc_ids) - set(found))[:5]
        raise StateError(f"user {rebuild.user_id!r} must be rebuilt from stored compressions (deletions cancelled "
                         f"most of its weight) but {len(set(rebuild.doc_ids) - set(found))} of its documents have "
                         f"none (e.g. {missing}); pass every earlier run's compressions as "
                         "--previous_document_compressions")
    state = recency_merge_all(((d.compression, d.created_at) for d in documents), half_life_days).advance_to(now)
    return _profile(rebuild.user_id, state, state.mean(), found, fingerprint, now)


def _profile(user_id: str, state: RecencyState, soft_prompt: np.ndarray, doc_ids, fingerprint: str,
             updated_at: datetime) -> Profile:
    return Profile(user_id=user_id, doc_count=state.count, soft_prompt=soft_prompt, soft_prompt_sum=state.total,
                   doc_ids=sorted(doc_ids), model_fingerprint=fingerprint, updated_at=updated_at,
                   recency_half_life_days=state.half_life_days,
                   recency_reference_time=state.reference_time if state.decays else None,
                   recency_weight=state.weight, recency_anchor=state.anchor, recency_gross_weight=state.gross_weight)


class Change(enum.Enum):
    PREVIOUS = "previous"  # the user's stored profile
    ADD = "add"            # a newly compressed document
    REMOVE = "remove"      # a deleted document's stored compression


@dataclass(frozen=True)
class Update:
    """One input of a user's ProfileAccumulator: typed, so the merge never dispatches on strings."""

    change: Change
    doc_id: str = ""
    compression: np.ndarray | None = field(default=None, repr=False)
    previous: PreviousProfile | None = field(default=None, repr=False)
    created_at: datetime | None = None  # ADD / REMOVE: the effective created_at (the document's weight)


def apply_update(state: ProfileAccumulator, update: Update) -> ProfileAccumulator:
    """Fold one Update into a user's state (the CombineFn's add_input)."""
    if update.change is Change.PREVIOUS:
        return state.set_previous(update.previous)
    if update.change is Change.ADD:
        return state.add(update.doc_id, update.compression, update.created_at)
    return state.remove(update.doc_id, update.compression, update.created_at)
