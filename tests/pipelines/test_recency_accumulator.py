"""Recency-weighted profile state (issue 16) on the Beam-free path the job takes: ProfileAccumulator, finalize,
the stored row read back as ExplodePreviousProfiles reads it, the next night. No Beam, no model."""
from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pytest

from commer.merge import SumCount
from commer.recency import HalfLifeMismatchError, recency_merge_all
from pipelines.elements import CompressedDocument
from pipelines.profile_accumulator import PreviousProfile, ProfileAccumulator, Rebuild, StateError, rebuild_profile
from pipelines.reconcile import dated
from schemas import Profile, arrow_schema, from_table, read_metadata, tensor_column, to_table
from schemas.validation import ValidDocument

FP = "fp-test"
SHAPE = (4, 16)
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def compressions(n, seed=0):
    rng = np.random.default_rng(seed)
    return {f"d{i:03d}": (rng.standard_normal(SHAPE) * rng.choice([0.01, 1.0, 50.0])).astype(np.float32)
            for i in range(n)}


def stored_and_read_back(profile: Profile, half_life) -> PreviousProfile:
    """Through the Arrow form the job writes, and back as previous_outputs.ExplodePreviousProfiles reads it."""
    table = to_table([profile], arrow_schema(Profile, SHAPE, {"fingerprint": FP, "half_life_days": half_life}))
    assert read_metadata(table)["half_life_days"] == half_life
    row = table.drop_columns(["soft_prompt_sum", "soft_prompt"]).to_pylist()[0]
    return PreviousProfile.from_row(row, tensor_column(table, "soft_prompt_sum")[0],
                                    tensor_column(table, "soft_prompt")[0])


def rel(a, b) -> float:
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def test_thirty_nights_with_decay_and_deletions_equal_a_full_recompute():
    half_life = 30.0
    pool = compressions(400)
    ids = sorted(pool)
    current: dict = {}   # doc_id -> (compression, effective created_at)
    previous = None
    rng = np.random.default_rng(1)
    for night in range(30):
        now = T0 + timedelta(days=night, hours=2)
        state = ProfileAccumulator(half_life)
        if previous is not None:
            state.set_previous(previous)
        for j, doc_id in enumerate(ids[night * 12:(night + 1) * 12]):
            when = T0 + timedelta(days=night - 90 * (j % 3), minutes=7 * j)  # today's and back-filled documents
            state.add(doc_id, pool[doc_id], when)
            current[doc_id] = (pool[doc_id], when)
        if night % 3 == 2:  # some nights delete a few older documents, with the weight they were added with
            for doc_id in rng.choice(sorted(set(current) - state.added_ids), 3, replace=False):
                state.remove(doc_id, *current.pop(doc_id))
        profile = state.finalize("u", FP, now)
        assert profile.doc_ids == sorted(current) and profile.recency_reference_time == now
        full = recency_merge_all(current.values(), half_life, now)
        assert rel(profile.soft_prompt, full.mean()) <= 1e-6
        assert abs(profile.recency_weight * 2.0 ** (profile.recency_anchor - full.anchor) / full.weight - 1) <= 1e-9
        previous = stored_and_read_back(profile, half_life)
    state = previous.state(half_life)
    assert rel(state.total / state.weight, full.total / full.weight) <= 1e-9
    # The weights decay: a plain mean of the same documents is something else.
    plain = np.mean([c for c, _ in current.values()], axis=0)
    assert rel(profile.soft_prompt, plain) > 1e-3


def test_no_half_life_is_bit_for_bit_the_plain_sum_count():
    comps = compressions(9)
    previous_sum = SumCount()
    state = ProfileAccumulator()
    for k in list(comps)[:6]:
        state.add(k, comps[k], T0)
        previous_sum.add(comps[k])
    profile = state.finalize("u", FP, T0)
    assert np.array_equal(profile.soft_prompt_sum, previous_sum.total)
    assert np.array_equal(profile.soft_prompt, previous_sum.mean())
    assert profile.recency_half_life_days is None and profile.recency_reference_time is None
    assert profile.recency_weight == 6.0 and profile.recency_anchor == 0

    refresh = ProfileAccumulator().set_previous(stored_and_read_back(profile, None))
    added, removed = SumCount(), SumCount()
    for k in list(comps)[6:]:
        refresh.add(k, comps[k], T0 + timedelta(days=400))  # dates are ignored by the plain mean
        added.add(comps[k])
    refresh.remove("d001", comps["d001"], T0)
    removed.add(comps["d001"])
    # Today's arithmetic (before recency): previous sum, merge the additions, subtract the removals.
    today = SumCount().merge(SumCount(profile.soft_prompt_sum, 6)).merge(added)
    today.total, today.count = today.total - removed.total, today.count - removed.count
    again = refresh.finalize("u", FP, T0)
    assert np.array_equal(again.soft_prompt_sum, today.total) and np.array_equal(again.soft_prompt, today.mean())


def test_a_file_in_the_old_layout_reads_as_a_plain_mean():
    comps = compressions(3)
    total = np.sum([comps[k].astype(np.float64) for k in comps], axis=0)
    k, d = SHAPE
    old = pa.table({  # schema version 1: no recency columns, no half_life_days in the metadata
        "user_id": ["u"], "doc_count": [3],
        "soft_prompt": pa.FixedShapeTensorArray.from_numpy_ndarray(np.stack([total / 3]).astype(np.float32)),
        "soft_prompt_sum": pa.FixedShapeTensorArray.from_numpy_ndarray(np.stack([total])),
        "doc_ids": [sorted(comps)], "model_fingerprint": [FP], "updated_at": [T0]},
        metadata={b"commer": b'{"schema_version": 1, "record": "Profile", "K": %d, "d": %d}' % (k, d)})
    record = from_table(old, Profile)[0]
    assert record.recency_half_life_days is None and record.recency_weight == record.recency_gross_weight == 3.0
    row = old.drop_columns(["soft_prompt_sum", "soft_prompt"]).to_pylist()[0]
    previous = PreviousProfile.from_row(row, tensor_column(old, "soft_prompt_sum")[0],
                                        tensor_column(old, "soft_prompt")[0])
    new = compressions(4, seed=5)["d003"]
    refreshed = ProfileAccumulator().set_previous(previous).add("new", new, T0).finalize("u", FP, T0)
    np.testing.assert_allclose(refreshed.soft_prompt, (total + new) / 4, rtol=1e-6)
    carried = ProfileAccumulator().set_previous(previous).finalize("u", FP, T0)
    assert np.array_equal(carried.soft_prompt, previous.soft_prompt) and carried.updated_at == T0
    with pytest.raises(HalfLifeMismatchError, match="'u'"):
        ProfileAccumulator(30.0).set_previous(previous).add("new", new, T0).finalize("u", FP, T0)


def test_deletions_that_cancel_most_weight_ask_for_a_rebuild_that_is_exact():
    comps = compressions(3)
    dates = {"d000": datetime(2020, 1, 1, tzinfo=timezone.utc), "d001": datetime(2020, 1, 2, tzinfo=timezone.utc),
             "d002": datetime(2020, 3, 1, tzinfo=timezone.utc)}  # 60 half-lives newer than the others
    base = ProfileAccumulator(1.0)
    for k in comps:
        base.add(k, comps[k], dates[k])
    previous = stored_and_read_back(base.finalize("u", FP, T0), 1.0)
    deleting = ProfileAccumulator(1.0).set_previous(previous).remove("d002", comps["d002"], dates["d002"])
    result = deleting.finalize("u", FP, T0)
    assert result == Rebuild("u", ("d000", "d001"))
    kept = [CompressedDocument("u", k, comps[k], dates[k]) for k in ("d001", "d000")]
    rebuilt = rebuild_profile(result, kept, 1.0, FP, T0)
    exact = (comps["d000"].astype(np.float64) + 2 * comps["d001"]) / 3  # d001 is one half-life newer
    assert rel(rebuilt.soft_prompt, exact) <= 1e-6 and rebuilt.doc_ids == ["d000", "d001"]
    assert rebuilt.recency_gross_weight == rebuilt.recency_weight  # a fresh state: the guard is reset
    with pytest.raises(StateError, match="'u'.*d000.*--previous_document_compressions"):
        rebuild_profile(result, kept[:1], 1.0, FP, T0)


def test_documents_are_dated_by_rule_and_counted():
    counted = {"missing": 0, "future": 0}

    def count(name):
        return lambda: counted.__setitem__(name, counted[name] + 1)

    run = datetime(2026, 11, 27, 3, tzinfo=timezone.utc)
    docs = [ValidDocument("u", "a", "x"), ValidDocument("u", "b", "x", datetime(2099, 1, 1, tzinfo=timezone.utc)),
            ValidDocument("u", "c", "x", datetime(2026, 1, 1))]  # naive: taken as UTC
    got = [dated(d, run, count("missing"), count("future")).created_at for d in docs]
    assert got == [run, run, datetime(2026, 1, 1, tzinfo=timezone.utc)]
    assert counted == {"missing": 1, "future": 1}


def test_a_run_clock_behind_the_previous_run_keeps_the_reference():
    comps = compressions(2)
    first = ProfileAccumulator(30.0).add("d000", comps["d000"], T0).finalize("u", FP, T0 + timedelta(days=2))
    behind = T0 + timedelta(days=1)
    again = ProfileAccumulator(30.0).set_previous(stored_and_read_back(first, 30.0)).add("d001", comps["d001"], behind)
    profile = again.finalize("u", FP, behind)
    assert profile.recency_reference_time == T0 + timedelta(days=2) and profile.updated_at == behind
    expected = (comps["d000"].astype(np.float64) + 2 ** (1 / 30) * comps["d001"]) / (1 + 2 ** (1 / 30))
    assert rel(profile.soft_prompt, expected) <= 1e-6
