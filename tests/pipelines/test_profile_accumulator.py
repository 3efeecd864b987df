"""Profile state math (previous + added − removed): exactness over chained refreshes, no Beam."""
from datetime import datetime, timezone

import numpy as np
import pytest

from pipelines.profile_accumulator import PreviousProfile, ProfileAccumulator, StateError
from schemas import Profile, arrow_schema, from_table, to_table

FP = "fp-test"
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
SHAPE = (4, 16)


def compressions(n, seed=0):
    rng = np.random.default_rng(seed)
    # Mixed magnitudes, like real hidden states, so cancellation would show up.
    return {f"d{i}": (rng.standard_normal(SHAPE) * rng.choice([0.01, 1.0, 50.0])).astype(np.float32)
            for i in range(n)}


def roundtrip(profile: Profile) -> PreviousProfile:
    """Through Parquet's Arrow form, as the next night's run reads it."""
    table = to_table([profile], arrow_schema(Profile, SHAPE, {"fingerprint": FP}))
    back = from_table(table, Profile)[0]
    return PreviousProfile(total=back.soft_prompt_sum, doc_ids=back.doc_ids, soft_prompt=back.soft_prompt,
                           updated_at=back.updated_at, fingerprint=back.model_fingerprint)


def full(comps: dict) -> np.ndarray:
    return np.mean(np.stack([comps[k] for k in sorted(comps)]).astype(np.float64), axis=0)


def max_rel_error(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def test_thirty_chained_refreshes_with_deletions_equal_a_full_recompute():
    pool = compressions(400)
    ids = list(pool)
    current: dict = {}
    previous = None
    rng = np.random.default_rng(1)
    for night in range(30):
        state = ProfileAccumulator()
        if previous is not None:
            state.set_previous(previous)
        for doc_id in ids[night * 12:(night + 1) * 12]:
            state.add(doc_id, pool[doc_id])
            current[doc_id] = pool[doc_id]
        if night % 3 == 2:  # some nights also delete a few old documents
            for doc_id in rng.choice(sorted(set(current) - state.added_ids), 3, replace=False):
                state.remove(doc_id, current.pop(doc_id))
        profile = state.finalize("u", FP, T0)
        assert profile.doc_ids == sorted(current) and profile.doc_count == len(current)
        assert max_rel_error(profile.soft_prompt, full(current)) <= 1e-5
        previous = roundtrip(profile)
    assert max_rel_error(previous.total / len(current), full(current)) <= 1e-9


def test_merge_is_order_free_and_mutates_only_the_first():
    comps = compressions(9)
    parts = []
    for chunk in (["d0", "d1", "d2"], ["d3", "d4"], ["d5", "d6", "d7", "d8"]):
        s = ProfileAccumulator()
        for k in chunk:
            s.add(k, comps[k])
        parts.append(s)
    second_before = parts[1].added.total.copy()
    a = ProfileAccumulator().merge(parts[0]).merge(parts[1]).merge(parts[2]).finalize("u", FP, T0)
    assert np.array_equal(parts[1].added.total, second_before)
    b = ProfileAccumulator().merge(parts[2]).merge(parts[0]).merge(parts[1]).finalize("u", FP, T0)
    np.testing.assert_allclose(a.soft_prompt, b.soft_prompt, rtol=1e-6)
    np.testing.assert_allclose(a.soft_prompt, full(comps), rtol=1e-5, atol=1e-6)


def test_removal_may_arrive_before_the_previous_profile():
    comps = compressions(3)
    base = ProfileAccumulator()
    for k, v in comps.items():
        base.add(k, v)
    previous = roundtrip(base.finalize("u", FP, T0))
    removal = ProfileAccumulator().remove("d1", comps["d1"])
    merged = removal.merge(ProfileAccumulator().set_previous(previous))
    profile = merged.finalize("u", FP, datetime(2026, 2, 1, tzinfo=timezone.utc))
    assert profile.doc_ids == ["d0", "d2"]
    np.testing.assert_allclose(profile.soft_prompt, full({k: comps[k] for k in ("d0", "d2")}), rtol=1e-5, atol=1e-6)


def test_untouched_profile_is_carried_bit_for_bit_and_empty_user_dropped():
    comps = compressions(2)
    base = ProfileAccumulator()
    for k, v in comps.items():
        base.add(k, v)
    previous = roundtrip(base.finalize("u", FP, T0))
    carried = ProfileAccumulator().set_previous(previous).finalize("u", FP, datetime(2030, 1, 1, tzinfo=timezone.utc))
    assert carried.updated_at == T0
    assert np.array_equal(carried.soft_prompt, previous.soft_prompt)
    assert np.array_equal(carried.soft_prompt_sum, previous.total)
    emptied = ProfileAccumulator().set_previous(previous)
    for k, v in comps.items():
        emptied.remove(k, v)
    assert emptied.finalize("u", FP, T0) is None


def test_inconsistent_inputs_are_refused():
    comps = compressions(2)
    base = ProfileAccumulator().add("d0", comps["d0"])
    previous = roundtrip(base.finalize("u", FP, T0))
    with pytest.raises(StateError, match="twice"):
        ProfileAccumulator().set_previous(previous).set_previous(previous)
    with pytest.raises(StateError, match="already in the profile"):
        ProfileAccumulator().set_previous(previous).add("d0", comps["d0"]).finalize("u", FP, T0)
    with pytest.raises(StateError, match="fingerprint"):
        ProfileAccumulator().set_previous(previous).finalize("u", "another-fp", T0)
    with pytest.raises(StateError, match="not in the previous profile"):
        ProfileAccumulator().set_previous(previous).remove("d9", comps["d1"]).finalize("u", FP, T0)


def test_a_user_twice_in_previous_profiles_is_named():
    """Issue 15: the user id used to be lost on the way to the message (user '')."""
    previous = PreviousProfile(np.zeros((1, 2)), ["d"], np.zeros((1, 2), np.float32), None, "fp", user_id="u7")
    state = ProfileAccumulator().set_previous(previous)
    with pytest.raises(StateError, match="'u7'"):
        state.merge(ProfileAccumulator().set_previous(previous))
