"""The main job's per-document and per-user steps around pipelines.reconcile and pipelines.profile_accumulator.

    Reconcile        one (user_id, doc_id)'s events → compress (dated) | REMOVE | CARRY | duplicates (DEAD)
    Finalize         one user's merged ProfileAccumulator → Profile | REBUILD | dropped
    RebuildProfiles  the rare users whose recency state deletions cancelled (Finalize's REBUILD), recomputed
                     from their documents' compressions (the run's additions and the carried stored ones)

The decisions and the arithmetic are Beam-free (reconcile.decide, profile_accumulator); these wrap them
with counters and tagged outputs. Every element of the document streams is a
pipelines.elements.CompressedDocument (user_id, doc_id, K×d compression, effective created_at).
"""
from __future__ import annotations

from datetime import datetime

import apache_beam as beam

from pipelines.elements import CompressedDocument
from pipelines.io import DEAD
from pipelines.profile_accumulator import Change, Rebuild, StateError, Update, rebuild_profile
from pipelines.reconcile import Deletion, dated, decide
from pipelines.runtime import counters
from schemas.validation import duplicate_letter

REMOVE, CARRY, REBUILD = "remove", "carry", "rebuild"
# Documents dated by commer.recency's rule (missing → the run's date, future → clamped to it).
DATE_COUNTERS = ("created_at_missing", "created_at_in_future")


class Reconcile(beam.DoFn):
    """Beam wrapper over pipelines.reconcile.decide: routes one document's Decision to the outputs.
    A document to compress leaves with its effective created_at (stored with its compression)."""

    def __init__(self, now: datetime):
        self.now = now
        self.counters = counters("duplicates", "already_merged", "deletions_applied", "deletions_unmatched",
                                 "deletions_duplicate", *DATE_COUNTERS)

    def process(self, element):
        (user_id, doc_id), events = element
        decision = decide(user_id, doc_id, events)
        if decision.deletion is not None:
            self.counters[f"deletions_{decision.deletion.value}"].inc()
            # The same document named again (ids are compared stripped, as documents' are): counted, not lost.
            self.counters["deletions_duplicate"].inc(decision.deletion_duplicates)
        if decision.deletion is Deletion.APPLIED:
            yield beam.pvalue.TaggedOutput(REMOVE, (user_id, Update(Change.REMOVE, doc_id, decision.remove,
                                                                    created_at=decision.stored_created_at)))
        if decision.carry is not None:
            yield beam.pvalue.TaggedOutput(CARRY, CompressedDocument(user_id, doc_id, decision.carry,
                                                                     decision.stored_created_at))
        for dup in decision.duplicates:
            self.counters["duplicates"].inc()
            yield beam.pvalue.TaggedOutput(DEAD, duplicate_letter(dup))
        if decision.already_merged:
            self.counters["already_merged"].inc()
        if decision.compress is not None:
            yield dated(decision.compress, self.now, self.counters["created_at_missing"].inc,
                        self.counters["created_at_in_future"].inc)


class Finalize(beam.DoFn):
    """(user_id, ProfileAccumulator) → the Profile, or a Rebuild on REBUILD (counted as written and updated).

    Only a run with deletions can need a rebuild (additions alone never lower the weight left per weight
    ever added), so the job wires RebuildProfiles only then; `can_rebuild=False` makes a Rebuild an
    error instead of a user silently left out."""

    def __init__(self, fingerprint: str, now: datetime, can_rebuild: bool = True):
        self.fingerprint, self.now, self.can_rebuild = fingerprint, now, can_rebuild
        self.counters = counters("profiles_written", "profiles_new", "profiles_updated", "profiles_unchanged",
                                 "profiles_removed", "profiles_rebuilt", "compressed")

    def process(self, element):
        user_id, state = element
        self.counters["compressed"].inc(len(state.added_ids))
        profile = state.finalize(user_id, self.fingerprint, self.now)
        if profile is None:
            self.counters["profiles_removed"].inc()
            return
        self.counters["profiles_written"].inc()
        kind = "new" if state.previous is None else ("updated" if state.changed else "unchanged")
        self.counters[f"profiles_{kind}"].inc()
        if isinstance(profile, Rebuild):
            if not self.can_rebuild:
                raise StateError(f"user {user_id!r} must be rebuilt from stored compressions, in a run without "
                                 "deletions; its stored profile state is inconsistent: recompute it with a full run")
            self.counters["profiles_rebuilt"].inc()
            yield beam.pvalue.TaggedOutput(REBUILD, profile)
        else:
            yield profile


class RebuildProfiles(beam.PTransform):
    """(Rebuilds, documents) → the rebuilt Profiles. Only the rebuilt users' documents are shuffled: they
    are picked by a side input of the (rare, few) users to rebuild."""

    def __init__(self, half_life_days: float | None, fingerprint: str, now: datetime):
        super().__init__()
        self.half_life_days, self.fingerprint, self.now = half_life_days, fingerprint, now

    def expand(self, inputs):
        rebuilds, documents = inputs
        keyed = rebuilds | "KeyRebuilds" >> beam.Map(lambda r: (r.user_id, r))
        users = beam.pvalue.AsDict(keyed)
        docs = (documents | "OnlyRebuiltUsers" >> beam.Filter(lambda d, users: d.user_id in users, users)
                | "KeyByUser" >> beam.Map(lambda d: (d.user_id, d)))
        return ({"rebuild": keyed, "documents": docs} | "GroupRebuilt" >> beam.CoGroupByKey()
                | "Rebuild" >> beam.FlatMap(self._rebuild))

    def _rebuild(self, element):
        _, grouped = element
        for rebuild in grouped["rebuild"]:  # exactly one for every user grouped here
            yield rebuild_profile(rebuild, grouped["documents"], self.half_life_days, self.fingerprint, self.now)
