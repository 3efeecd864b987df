"""Recency-weighted profiles (issue 16): exact, incremental, deletable. Plain numpy, no Beam.

A document's weight halves every `half_life_days`:

    w_i = 2 ** (-(reference_time - created_at_i) / half_life)      profile = sum(w_i x_i) / sum(w_i)

Why the state looks the way it does
-----------------------------------
* **Moving the reference is one factor.** Advancing the reference by D multiplies every weight by
  the same 2 ** (-D / half_life), so the weighted sum S_ref and the total weight W_ref scale by
  that one factor and the weighted *mean* does not change at all. A user with no new documents
  keeps the same soft prompt; only new documents (which arrive with larger weights) move it.
* **Underflow guard: the factor is kept as an exponent, never applied to the array.** With a
  short half-life (1 day: 2 ** -1074 is reached after ~3 years) multiplying the stored sum on
  every nightly move would underflow old users to 0 and lose their profile. Instead we store
  the sum *relative to an anchor* that is a whole number of half-lives after the Unix epoch:

      total  = sum_i x_i * 2 ** (l_i - anchor)      weight = sum_i 2 ** (l_i - anchor)
      l_i    = (created_at_i - epoch) / half_life   (in half-lives)

  The anchor is the largest floor(l_i) ever added, so every stored weight is < 2 (no overflow),
  and the newest documents have weights in [1, 2) (no underflow where it matters; a document
  ~1000 half-lives older than the newest one underflows, but its share of the mean is
  < 2 ** -1000 anyway). S_ref and W_ref are derived on demand (`weighted_sum`, `total_weight`).
* **Exact and order-agnostic.** A weight is computed as ldexp(2 ** frac(l_i), floor(l_i) - anchor):
  the mantissa depends on the document alone and the anchor only shifts the binary exponent,
  so raising the anchor (on a newer document, or when merging two states) rescales by an exact
  power of two. Adding, merging and removing therefore give the same numbers, up to float64
  rounding of the sums, in any order — the same guarantee as commer.merge.SumCount.
* **Deletion** subtracts exactly what was added, so it needs the document's *effective*
  created_at — the one used when it was added (see `effective_created_at`). Store it with the
  document's compression.
* **Cancellation guard.** Subtracting a heavy (recent) document from a state whose remaining
  documents are all much lighter cancels digits: the error of the mean grows like
  eps * gross_weight / weight, where gross_weight is the total weight ever added or removed
  since the state was last recomputed from scratch. `precision_loss` reports that ratio,
  `reliable()` says when to rebuild the user from their stored per-document compressions, and
  `mean()` of a decaying state raises PrecisionLossError rather than return a wrong profile.
  gross_weight is part of the stored state so the guard survives across refreshes.
* **half_life_days=None is the plain mean**: every weight is exactly 1.0, created_at is ignored,
  and the numbers are bit-for-bit those of commer.merge.SumCount for the same sequence of
  operations.
* **One half-life per state.** Mixing half-lives would silently produce a profile that matches
  neither; it raises `HalfLifeMismatchError` instead.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Optional

import numpy as np

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
SECONDS_PER_DAY = 86400.0
# Below this ratio (~1e-10 relative error at float64) the incremental mean is trusted.
DEFAULT_MAX_PRECISION_LOSS = 1e6


class HalfLifeMismatchError(ValueError):
    """Two recency states (or a stored state and this run's setting) use different half-lives."""

    def __init__(self, stored: Optional[float], requested: Optional[float], user_id: str = ""):
        self.stored, self.requested = stored, requested
        who = f"user {user_id!r}: " if user_id else ""
        super().__init__(
            f"{who}recency half-life mismatch: the stored profile state was built with "
            f"half_life_days={_fmt(stored)} but this run uses half_life_days={_fmt(requested)}. "
            f"Weights of different half-lives cannot be combined incrementally. Either run with "
            f"half_life_days={_fmt(stored)}, or recompute the profiles from scratch (from the stored "
            f"per-document compressions and created_at) with half_life_days={_fmt(requested)}.")


class PrecisionLossError(ValueError):
    """Deletions cancelled so much weight that the incremental mean can no longer be trusted."""


def _fmt(half_life: Optional[float]) -> str:
    return "None (plain mean)" if half_life is None else f"{half_life:g}"


def _utc(t: datetime) -> datetime:
    """Naive datetimes are taken as UTC (as the schemas' ISO strings with 'Z' are)."""
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t


def halvings_since_epoch(t: datetime, half_life_days: float) -> float:
    """(t - 1970-01-01 UTC) in half-lives: the document's log2 weight up to a common offset."""
    return (_utc(t) - EPOCH).total_seconds() / (half_life_days * SECONDS_PER_DAY)


def effective_created_at(created_at: Optional[datetime], run_time: datetime,
                         on_missing: Optional[Callable[[], None]] = None,
                         on_future: Optional[Callable[[], None]] = None) -> datetime:
    """The created_at a document is weighted with. Store the result: deletion needs it.

    Rule: a document without created_at is dated at the run that first merges it (`run_time`,
    the refresh's date), i.e. treated as new when it is first seen; a created_at after
    `run_time` (clock skew, bad data) is clamped to `run_time`, so no document outweighs a
    fresh one. Both cases call their hook once (e.g. a Beam counter's `inc`), so the job can
    report how many documents were dated by rule. The returned value must be stored with the
    document's compression, because a later deletion has to subtract the same weight.
    """
    run_time = _utc(run_time)
    if created_at is None:
        if on_missing is not None:
            on_missing()
        return run_time
    created_at = _utc(created_at)
    if created_at > run_time:
        if on_future is not None:
            on_future()
        return run_time
    return created_at


@dataclass
class RecencyState:
    """Running recency-weighted (sum, weight) of K×d compressions for one user.

    `total` and `weight` are relative to `anchor` (see the module docstring); use `mean()`,
    `weighted_sum` and `total_weight` rather than reading them directly. `count` is the number
    of documents in the state. Everything mutates in place and returns self (for chaining);
    `merge` and `subtract` leave their argument untouched (Beam's combiner contract).
    """

    half_life_days: Optional[float] = None
    reference_time: Optional[datetime] = None
    total: Optional[np.ndarray] = None   # float64 K×d, times 2 ** -anchor
    weight: float = 0.0                  # times 2 ** -anchor
    anchor: int = 0                      # whole half-lives since the epoch (0 for the plain mean)
    count: int = 0
    gross_weight: float = 0.0            # weight of every add and remove since the last rebuild

    def __post_init__(self):
        if self.half_life_days is not None:
            if not (isinstance(self.half_life_days, (int, float)) and math.isfinite(self.half_life_days)
                    and self.half_life_days > 0):
                raise ValueError(f"half_life_days must be a positive number or None, got {self.half_life_days!r}")
            self.half_life_days = float(self.half_life_days)
        if self.reference_time is not None:
            self.reference_time = _utc(self.reference_time)

    # ---- weights -------------------------------------------------------------------------
    @property
    def decays(self) -> bool:
        return self.half_life_days is not None

    def _log_weight(self, created_at: Optional[datetime]) -> tuple[float, int]:
        """(mantissa in [1, 2), whole half-lives since the epoch) of a document's weight."""
        if not self.decays:
            return 1.0, 0
        if created_at is None:
            raise ValueError("a recency-weighted state needs the document's created_at; date documents "
                             "without one with commer.recency.effective_created_at and store that date")
        level = halvings_since_epoch(created_at, self.half_life_days)
        whole = math.floor(level)
        return 2.0 ** (level - whole), whole

    def _raise_anchor(self, anchor: int) -> None:
        """Re-express the state relative to a later anchor: an exact power-of-two rescale."""
        if anchor <= self.anchor:
            return
        if self.total is not None:
            shift = self.anchor - anchor
            self.total = np.ldexp(self.total, shift)
            self.weight = math.ldexp(self.weight, shift)
            self.gross_weight = math.ldexp(self.gross_weight, shift)
        self.anchor = anchor

    def weight_of(self, created_at: Optional[datetime]) -> float:
        """The document's weight relative to the current anchor (1.0 for the plain mean)."""
        mantissa, whole = self._log_weight(created_at)
        return math.ldexp(mantissa, whole - self.anchor)

    # ---- updates -------------------------------------------------------------------------
    def add(self, compression: np.ndarray, created_at: Optional[datetime] = None) -> "RecencyState":
        """Add one K×d compression with its (effective) created_at."""
        x = np.asarray(compression, dtype=np.float64)
        mantissa, whole = self._log_weight(created_at)
        if self.total is None:
            self.anchor = whole
        self._raise_anchor(whole)
        w = math.ldexp(mantissa, whole - self.anchor)
        contribution = x if w == 1.0 else x * w   # w == 1.0: bit-identical to SumCount
        if self.total is None:
            self.total = contribution.copy()
        else:
            _check_shape(self.total, contribution)
            self.total += contribution
        self.weight += w
        self.gross_weight += w
        self.count += 1
        return self

    def remove(self, compression: np.ndarray, created_at: Optional[datetime] = None) -> "RecencyState":
        """Subtract one previously added compression; `created_at` must be the one it was added with."""
        if self.count <= 0 or self.total is None:
            raise ValueError("cannot remove a compression from an empty recency state")
        x = np.asarray(compression, dtype=np.float64)
        _check_shape(self.total, x)
        mantissa, whole = self._log_weight(created_at)
        if whole > self.anchor:
            raise ValueError("cannot remove a document dated after every document in the state; "
                             "pass the created_at it was added with")
        w = math.ldexp(mantissa, whole - self.anchor)
        self.total -= x if w == 1.0 else x * w
        self.weight -= w
        self.gross_weight += w
        self.count -= 1
        if self.count == 0:
            self._clear()
        return self

    def merge(self, other: "RecencyState", user_id: str = "") -> "RecencyState":
        """Fold `other` into self (associative); the later reference time wins."""
        self._check_compatible(other, user_id)
        self._later_reference(other.reference_time)
        if other.total is None:
            return self
        if self.total is None:
            self.total, self.weight, self.anchor = other.total.copy(), other.weight, other.anchor
            self.count, self.gross_weight = other.count, other.gross_weight
            return self
        _check_shape(self.total, other.total)
        self._raise_anchor(other.anchor)
        shift = other.anchor - self.anchor   # <= 0
        self.total += other.total if shift == 0 else np.ldexp(other.total, shift)
        self.weight += math.ldexp(other.weight, shift)
        self.gross_weight += math.ldexp(other.gross_weight, shift)
        self.count += other.count
        return self

    def subtract(self, removed: "RecencyState", user_id: str = "") -> "RecencyState":
        """Remove a whole state of deleted documents (the run's removals, summed positively)."""
        self._check_compatible(removed, user_id)
        self._later_reference(removed.reference_time)
        if removed.total is None:
            return self
        if self.total is None or removed.count > self.count:
            raise ValueError(f"user {user_id!r}: removing {removed.count} documents from a state of {self.count}")
        _check_shape(self.total, removed.total)
        if removed.anchor > self.anchor:
            raise ValueError(f"user {user_id!r}: removed documents are newer than every document in the state")
        shift = removed.anchor - self.anchor
        self.total -= removed.total if shift == 0 else np.ldexp(removed.total, shift)
        self.weight -= math.ldexp(removed.weight, shift)
        self.gross_weight += math.ldexp(removed.gross_weight, shift)
        self.count -= removed.count
        if self.count == 0:
            self._clear()
        return self

    def advance_to(self, reference_time: datetime) -> "RecencyState":
        """Move the reference (the refresh's date) forward. O(1): the factor lives in the exponent."""
        reference_time = _utc(reference_time)
        if self.reference_time is not None and reference_time < self.reference_time:
            raise ValueError(f"reference time cannot move back: state is at {self.reference_time.isoformat()}, "
                             f"asked for {reference_time.isoformat()}")
        self.reference_time = reference_time
        return self

    def _later_reference(self, other: Optional[datetime]) -> None:
        if other is not None and (self.reference_time is None or other > self.reference_time):
            self.reference_time = other

    def _check_compatible(self, other: "RecencyState", user_id: str) -> None:
        if other.half_life_days != self.half_life_days:
            raise HalfLifeMismatchError(self.half_life_days, other.half_life_days, user_id)

    def _clear(self) -> None:
        self.total, self.weight, self.gross_weight = None, 0.0, 0.0

    # ---- results -------------------------------------------------------------------------
    def mean(self, max_loss: float = DEFAULT_MAX_PRECISION_LOSS) -> Optional[np.ndarray]:
        """The recency-weighted soft prompt (float32), or None for a user with no documents.

        Independent of the anchor and of the reference time (both only scale sum and weight).
        A decaying state refuses (PrecisionLossError) rather than return a mean that deletions
        have cancelled beyond `max_loss`: a silently wrong profile is worse than a rebuild.
        The plain mean (half_life_days=None) behaves exactly like SumCount.mean.
        """
        if self.total is None or self.count == 0:
            return None
        if not self.decays:
            return (self.total / self.count).astype(np.float32)   # exactly SumCount.mean
        if not self.reliable(max_loss):
            raise PrecisionLossError(
                f"recency state lost precision to deletions (gross/remaining weight {self.precision_loss:.3g} "
                f"> {max_loss:.3g}); rebuild the user from the stored per-document compressions "
                f"(RecencyState.rebuilt() + add each remaining document)")
        return (self.total / self.weight).astype(np.float32)

    def _to_reference(self) -> float:
        """log2 of the factor from anchor scale to reference scale."""
        if not self.decays:
            return 0.0
        if self.reference_time is None:
            raise ValueError("the state has no reference_time; call advance_to(run date) first")
        return self.anchor - halvings_since_epoch(self.reference_time, self.half_life_days)

    @property
    def weighted_sum(self) -> Optional[np.ndarray]:
        """S_ref = sum_i w_i x_i with w_i = 2 ** (-age_i / half_life) at reference_time.

        For reporting: it can underflow for a state whose newest document is very old, which is
        why the state itself never stores it.
        """
        if self.total is None:
            return None
        return self.total * 2.0 ** self._to_reference()

    @property
    def total_weight(self) -> float:
        """W_ref = sum_i w_i at reference_time (the count, for the plain mean)."""
        if self.total is None:
            return 0.0
        return self.weight * 2.0 ** self._to_reference()

    @property
    def precision_loss(self) -> float:
        """gross_weight / weight: the relative error of mean() is about 1.1e-16 times this."""
        if self.total is None:
            return 1.0
        return self.gross_weight / self.weight if self.weight > 0 else math.inf

    def reliable(self, max_loss: float = DEFAULT_MAX_PRECISION_LOSS) -> bool:
        """False when deletions have cancelled so much weight that the user should be rebuilt."""
        return self.precision_loss <= max_loss

    def rebuilt(self) -> "RecencyState":
        """An empty state with the same settings, for recomputing a user from scratch."""
        return RecencyState(half_life_days=self.half_life_days, reference_time=self.reference_time)

    # ---- storage -------------------------------------------------------------------------
    def to_stored(self) -> dict:
        """Plain values to store with the profile (one column each; total as float64 K×d)."""
        return {"half_life_days": self.half_life_days, "reference_time": self.reference_time,
                "total": self.total, "weight": self.weight, "anchor": self.anchor,
                "count": self.count, "gross_weight": self.gross_weight}

    @classmethod
    def from_stored(cls, stored: dict, half_life_days: Optional[float], user_id: str = "") -> "RecencyState":
        """Resume a stored state for a run configured with `half_life_days` (must match)."""
        stored_half_life = stored.get("half_life_days")
        stored_half_life = None if stored_half_life is None else float(stored_half_life)
        requested = None if half_life_days is None else float(half_life_days)
        if stored_half_life != requested:
            raise HalfLifeMismatchError(stored_half_life, requested, user_id)
        total = stored.get("total")
        return cls(half_life_days=requested, reference_time=stored.get("reference_time"),
                   total=None if total is None else np.array(total, dtype=np.float64),
                   weight=float(stored["weight"]), anchor=int(stored["anchor"]), count=int(stored["count"]),
                   gross_weight=float(stored["gross_weight"]))


def _check_shape(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"compression shapes differ: {a.shape} vs {b.shape}")


def recency_merge_all(items, half_life_days: Optional[float],
                      reference_time: Optional[datetime] = None) -> RecencyState:
    """RecencyState over an iterable of (K×d compression, effective created_at) pairs: a full recompute."""
    state = RecencyState(half_life_days=half_life_days, reference_time=reference_time)
    for compression, created_at in items:
        state.add(compression, created_at)
    return state
