"""A user's profile state during a run: previous profile + added − removed. Plain numpy, no Beam.

Profile state stored between runs (see schemas.Profile): the float64 sum of the user's
document compressions, the sorted doc_ids merged into it, and the count. With that,
    refresh = previous sum + new compressions (skipping doc_ids already in the state)
    delete  = previous sum − the stored compression of the deleted document
are exact up to float64 rounding, so any chain of refreshes equals a full recompute, and a
rerun of the same refresh finds every doc_id already merged and changes nothing.

During a run, additions and removals are kept in two separate `commer.merge.SumCount`s:
partial states from different workers can then merge in any order (a removal may be seen
before the previous profile it applies to), and the result is only formed at the end.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from commer.merge import SumCount
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

    @classmethod
    def from_row(cls, row: dict, total: np.ndarray, soft_prompt: np.ndarray) -> "PreviousProfile":
        return cls(total=np.asarray(total, dtype=np.float64), doc_ids=list(row["doc_ids"]),
                   soft_prompt=np.asarray(soft_prompt, dtype=np.float32), updated_at=row["updated_at"],
                   fingerprint=row["model_fingerprint"], user_id=row.get("user_id", ""))


@dataclass
class ProfileState:
    """Accumulator for one user: mutable, merged in place."""

    previous: PreviousProfile | None = None
    added: SumCount = field(default_factory=SumCount)
    removed: SumCount = field(default_factory=SumCount)
    added_ids: set[str] = field(default_factory=set)
    removed_ids: set[str] = field(default_factory=set)

    def set_previous(self, previous: PreviousProfile, user_id: str = "") -> "ProfileState":
        if self.previous is not None:
            raise StateError(f"user {user_id or previous.user_id!r} appears twice in --previous_profiles")
        self.previous = previous
        return self

    def add(self, doc_id: str, compression: np.ndarray, user_id: str = "") -> "ProfileState":
        if doc_id in self.added_ids:
            raise StateError(f"document {doc_id!r} of user {user_id!r} was compressed twice in one run")
        self.added.add(compression)
        self.added_ids.add(doc_id)
        return self

    def remove(self, doc_id: str, compression: np.ndarray, user_id: str = "") -> "ProfileState":
        if doc_id in self.removed_ids:
            raise StateError(f"document {doc_id!r} of user {user_id!r} was removed twice in one run")
        self.removed.add(compression)  # summed as a positive SumCount, subtracted at the end
        self.removed_ids.add(doc_id)
        return self

    def merge(self, other: "ProfileState", user_id: str = "") -> "ProfileState":
        """Fold `other` into self; `other` is left untouched (Beam's combiner-lifting contract)."""
        if other.previous is not None:
            self.set_previous(other.previous, user_id)
        if self.added_ids & other.added_ids or self.removed_ids & other.removed_ids:
            raise StateError(f"user {user_id!r}: the same document reached the merge twice")
        self.added.merge(other.added)
        self.removed.merge(other.removed)
        self.added_ids |= other.added_ids
        self.removed_ids |= other.removed_ids
        return self

    @property
    def changed(self) -> bool:
        return bool(self.added_ids or self.removed_ids)

    def finalize(self, user_id: str, fingerprint: str, now: datetime) -> Profile | None:
        """The user's profile after this run; None when no document remains (the user is dropped)."""
        previous = self.previous
        if previous is not None and previous.fingerprint != fingerprint:
            raise StateError(f"user {user_id!r}: previous profile has fingerprint {previous.fingerprint}, "
                             f"this checkpoint has {fingerprint}")
        if previous is not None and not self.changed:
            # Untouched: carried over bit for bit, including when it was last changed.
            return Profile(user_id=user_id, doc_count=len(previous.doc_ids), soft_prompt=previous.soft_prompt,
                           soft_prompt_sum=previous.total, doc_ids=sorted(previous.doc_ids),
                           model_fingerprint=previous.fingerprint, updated_at=previous.updated_at)
        old_ids = set(previous.doc_ids) if previous is not None else set()
        if self.added_ids & old_ids:
            raise StateError(f"user {user_id!r}: a document already in the profile was added again")
        if not self.removed_ids <= old_ids:
            raise StateError(f"user {user_id!r}: a removed document is not in the previous profile")
        doc_ids = (old_ids - self.removed_ids) | self.added_ids
        if not doc_ids:
            return None
        state = SumCount()
        if previous is not None:
            state.merge(SumCount(previous.total, len(previous.doc_ids)))
        state.merge(self.added)
        if self.removed.total is not None:
            state.total = state.total - self.removed.total
            state.count -= self.removed.count
        if state.count != len(doc_ids):
            raise StateError(f"user {user_id!r}: count {state.count} does not match {len(doc_ids)} doc_ids")
        return Profile(user_id=user_id, doc_count=state.count, soft_prompt=state.mean(),
                       soft_prompt_sum=state.total, doc_ids=sorted(doc_ids), model_fingerprint=fingerprint,
                       updated_at=now)


class Change(enum.Enum):
    PREVIOUS = "previous"  # the user's stored profile
    ADD = "add"            # a newly compressed document
    REMOVE = "remove"      # a deleted document's stored compression


@dataclass(frozen=True)
class Update:
    """One input of a user's ProfileState: typed, so the merge never dispatches on strings."""

    change: Change
    doc_id: str = ""
    compression: np.ndarray | None = field(default=None, repr=False)
    previous: PreviousProfile | None = field(default=None, repr=False)


def apply_update(state: ProfileState, update: Update) -> ProfileState:
    """Fold one Update into a user's state (the CombineFn's add_input)."""
    if update.change is Change.PREVIOUS:
        return state.set_previous(update.previous)
    if update.change is Change.ADD:
        return state.add(update.doc_id, update.compression)
    return state.remove(update.doc_id, update.compression)
