"""pipelines.reconcile.decide: every combination of events for one (user_id, doc_id), no Beam."""
import itertools

import numpy as np
import pytest

from pipelines.reconcile import Decision, Deletion, Event, ReconcileError, decide
from schemas.validation import ValidDocument, pick_one

A = ValidDocument("u", "d", "first text")
B = ValidDocument("u", "d", "second text")
STORED = np.full((2, 3), 7.0, dtype=np.float32)


def events(records: int, in_profile: bool, delete: bool, stored: bool) -> list[Event]:
    out = [Event.record(doc) for doc in (A, B)[:records]]
    out += [Event.in_profile()] * in_profile + [Event.delete()] * delete + [Event.stored(STORED)] * stored
    return out


COMBINATIONS = list(itertools.product((0, 1, 2), (False, True), (False, True), (False, True)))


@pytest.mark.parametrize("records,in_profile,delete,stored", COMBINATIONS)
def test_every_combination(records, in_profile, delete, stored):
    evs = events(records, in_profile, delete, stored)
    if delete and in_profile and not stored:
        with pytest.raises(ReconcileError, match="'d' of user 'u'"):
            decide("u", "d", evs)
        return
    decision = decide("u", "d", evs)
    kept, dups = pick_one((A, B)[:records])
    still_in_profile = in_profile and not delete

    # Deletions act on the previous state.
    assert decision.deletion == (None if not delete else Deletion.APPLIED if in_profile else Deletion.UNMATCHED)
    assert (decision.remove is STORED) == (delete and in_profile)
    assert (decision.remove is None) == (not (delete and in_profile))
    # A stored compression is carried only for a document the profile keeps.
    assert (decision.carry is STORED) == (stored and still_in_profile)
    assert (decision.carry is None) == (not (stored and still_in_profile))
    # New records: one kept (compressed, or already merged), the rest duplicates.
    assert decision.duplicates == dups
    assert decision.compress == (kept if kept is not None and not still_in_profile else None)
    assert decision.already_merged == (kept is not None and still_in_profile)
    # Nothing lost: every record is in exactly one place.
    assert (decision.compress is not None) + decision.already_merged + len(decision.duplicates) == records


@pytest.mark.parametrize("records,in_profile,delete,stored",
                         [c for c in COMBINATIONS if not (c[2] and c[1] and not c[3])])
def test_order_of_events_does_not_matter(records, in_profile, delete, stored):
    evs = events(records, in_profile, delete, stored)
    first = decide("u", "d", evs)
    for perm in itertools.permutations(evs):
        d = decide("u", "d", perm)
        assert (d.compress, d.already_merged, d.duplicates, d.deletion) == \
               (first.compress, first.already_merged, first.duplicates, first.deletion)
        assert (d.remove is None) == (first.remove is None) and (d.carry is None) == (first.carry is None)


def test_no_events_decide_nothing():
    assert decide("u", "d", []) == Decision()


def test_a_deleted_document_sent_again_is_compressed_again():
    decision = decide("u", "d", [Event.delete(), Event.record(A), Event.in_profile(), Event.stored(STORED)])
    assert decision.compress == A and decision.remove is STORED and decision.carry is None
    assert decision.deletion is Deletion.APPLIED and not decision.already_merged


def test_error_names_ids_never_text():
    with pytest.raises(ReconcileError) as info:
        decide("u", "d", [Event.record(A), Event.in_profile(), Event.delete()])
    assert A.text not in str(info.value)
