"""Recency-weighted profiles: incremental == full recompute, exact deletion, order-agnostic, no Beam."""
import math
import random
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from commer.merge import SumCount, merge_all
from commer.recency import (HalfLifeMismatchError, PrecisionLossError, RecencyState, effective_created_at,
                            recency_merge_all)

K, D = 4, 8
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def direct_weighted_mean(items, reference_time, half_life_days):
    """The definition, computed naively: w_i = 2 ** (-(ref - created_at) / half_life)."""
    weights = np.array([2.0 ** (-(reference_time - t).total_seconds() / 86400 / half_life_days) for _, t in items])
    xs = np.asarray([x for x, _ in items], dtype=np.float64)
    return np.tensordot(weights, xs, axes=1) / weights.sum(), weights.sum(), np.tensordot(weights, xs, axes=1)


@pytest.fixture
def docs():
    rng = np.random.default_rng(0)
    return [(rng.normal(size=(K, D)).astype(np.float32), T0 - timedelta(days=float(rng.uniform(0, 400))))
            for _ in range(9)]


def rel(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / np.max(np.abs(b)))


def test_weighted_mean_matches_the_definition(docs):
    ref = T0 + timedelta(days=3)
    state = recency_merge_all(docs, half_life_days=30).advance_to(ref)
    mean, weight, total = direct_weighted_mean(docs, ref, 30)
    assert rel(state.mean(), mean) < 1e-6
    assert math.isclose(state.total_weight, weight, rel_tol=1e-12)
    assert rel(state.weighted_sum, total) < 1e-12
    assert state.count == len(docs)


def test_moving_the_reference_rescales_sum_and_weight_by_one_factor_and_keeps_the_mean(docs):
    state = recency_merge_all(docs, half_life_days=30, reference_time=T0)
    mean, weight, total = state.mean(), state.total_weight, state.weighted_sum
    state.advance_to(T0 + timedelta(days=45))
    factor = 2.0 ** (-45 / 30)
    assert math.isclose(state.total_weight, weight * factor, rel_tol=1e-12)
    np.testing.assert_allclose(state.weighted_sum, total * factor, rtol=1e-12)
    np.testing.assert_array_equal(state.mean(), mean)
    with pytest.raises(ValueError, match="cannot move back"):
        state.advance_to(T0)


def test_recent_documents_weigh_more():
    old, new = np.zeros((K, D)), np.ones((K, D))
    state = recency_merge_all([(old, T0 - timedelta(days=30)), (new, T0)], half_life_days=30)
    np.testing.assert_allclose(state.mean(), np.full((K, D), 2 / 3), rtol=1e-6)


def test_plain_mean_is_half_life_none_bit_for_bit(docs):
    xs = [x for x, _ in docs]
    state, reference = RecencyState(half_life_days=None), SumCount()
    for x, t in docs:
        state.add(x, t)          # created_at is ignored for the plain mean
        reference.add(x)
    state.remove(xs[2]); reference.remove(xs[2])
    state.add(xs[2], None); reference.add(xs[2])
    other = RecencyState().add(xs[0]).add(xs[5])
    state.merge(other); reference.merge(merge_all([xs[0], xs[5]]))
    np.testing.assert_array_equal(state.total, reference.total)
    np.testing.assert_array_equal(state.mean(), reference.mean())
    assert state.count == reference.count and state.total_weight == reference.count


def test_deletion_is_exact(docs):
    state = recency_merge_all(docs, half_life_days=7, reference_time=T0)
    for i in (1, 4, 6):
        state.remove(*docs[i])
    kept = [d for i, d in enumerate(docs) if i not in (1, 4, 6)]
    recomputed = recency_merge_all(kept, half_life_days=7, reference_time=T0)
    assert state.count == recomputed.count == len(kept)
    np.testing.assert_allclose(state.mean(), recomputed.mean(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(state.weighted_sum, recomputed.weighted_sum, rtol=1e-9, atol=1e-12)
    assert math.isclose(state.total_weight, recomputed.total_weight, rel_tol=1e-9)
    for d in kept:
        state.remove(*d)
    assert state.count == 0 and state.mean() is None and state.total is None
    with pytest.raises(ValueError, match="empty"):
        state.remove(*docs[0])


def test_add_then_remove_the_newest_restores_the_state(docs):
    state = recency_merge_all(docs, half_life_days=30, reference_time=T0)
    before = state.mean()
    newest = (np.ones((K, D)), T0 + timedelta(days=90))   # raises the anchor
    state.add(*newest).remove(*newest)
    np.testing.assert_allclose(state.mean(), before, rtol=1e-6, atol=1e-7)


def test_order_agnostic(docs):
    reference = recency_merge_all(docs, half_life_days=10, reference_time=T0)
    rng = random.Random(1)
    for _ in range(20):
        shuffled = docs[:]
        rng.shuffle(shuffled)
        cut1, cut2 = sorted(rng.sample(range(1, len(docs)), 2))
        parts = [recency_merge_all(shuffled[a:b], 10, T0 - timedelta(days=rng.randint(0, 5)))
                 for a, b in ((0, cut1), (cut1, cut2), (cut2, len(docs)))]
        rng.shuffle(parts)
        state = RecencyState(half_life_days=10)
        for p in parts:
            state.merge(p)
        assert state.count == reference.count and state.anchor == reference.anchor
        np.testing.assert_allclose(state.total, reference.total, rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(state.mean(), reference.mean(), rtol=1e-6)


def test_merge_is_associative_and_takes_the_later_reference(docs):
    a = recency_merge_all(docs[:3], 30, T0 - timedelta(days=10))
    b = recency_merge_all(docs[3:6], 30, T0)
    c = recency_merge_all(docs[6:], 30, T0 - timedelta(days=20))
    copies = lambda s: RecencyState(**{**s.to_stored(), "total": s.total.copy()})
    left = copies(a).merge(b).merge(c)
    right = copies(c).merge(copies(b).merge(a))
    whole = recency_merge_all(docs, 30, T0)
    for state in (left, right):
        assert state.reference_time == T0 and state.count == len(docs)
        np.testing.assert_allclose(state.weighted_sum, whole.weighted_sum, rtol=1e-12, atol=1e-13)
        assert math.isclose(state.total_weight, whole.total_weight, rel_tol=1e-12)


def test_merge_leaves_its_argument_untouched(docs):
    a = recency_merge_all(docs[:3], 30, T0)
    b = recency_merge_all([(np.ones((K, D)), T0 + timedelta(days=400))], 30, T0)  # forces a rescale of a
    a_stored = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in a.to_stored().items()}
    b.merge(a)
    for key, value in a.to_stored().items():
        np.testing.assert_array_equal(value, a_stored[key])
    a.total += 1
    assert not np.shares_memory(a.total, b.total)


def test_subtract_undoes_merge(docs):
    whole = recency_merge_all(docs, 30, T0)
    removed = recency_merge_all(docs[2:5], 30, T0)
    whole.subtract(removed)
    recomputed = recency_merge_all(docs[:2] + docs[5:], 30, T0)
    np.testing.assert_allclose(whole.mean(), recomputed.mean(), rtol=1e-6, atol=1e-7)
    assert whole.count == recomputed.count
    with pytest.raises(ValueError, match="newer"):
        whole.subtract(recency_merge_all([(np.ones((K, D)), T0 + timedelta(days=400))], 30))
    with pytest.raises(ValueError, match="removing 9 documents"):
        recency_merge_all(docs[:2], 30).subtract(recency_merge_all(docs, 30))


def test_half_life_mismatch_is_refused(docs):
    stored = recency_merge_all(docs, 30, T0).to_stored()
    with pytest.raises(HalfLifeMismatchError, match=r"half_life_days=30.*half_life_days=14") as err:
        RecencyState.from_stored(stored, half_life_days=14, user_id="u1")
    assert "recompute" in str(err.value) and "u1" in str(err.value)
    assert isinstance(err.value, ValueError)
    with pytest.raises(HalfLifeMismatchError, match="None"):
        RecencyState.from_stored(stored, half_life_days=None)
    with pytest.raises(HalfLifeMismatchError):
        recency_merge_all(docs, 30).merge(recency_merge_all(docs, 31))
    with pytest.raises(HalfLifeMismatchError):
        recency_merge_all(docs, 30).subtract(recency_merge_all(docs[:1], None))
    assert RecencyState.from_stored(stored, half_life_days=30.0).count == len(docs)


def test_invalid_half_life_is_refused():
    for bad in (0, -1, float("nan"), float("inf"), "30"):
        with pytest.raises(ValueError, match="half_life_days"):
            RecencyState(half_life_days=bad)


def test_missing_created_at_rule_and_counters():
    run = datetime(2026, 3, 1, 2, 0, tzinfo=timezone.utc)
    counts = {"missing": 0, "future": 0}
    hook = lambda key: (lambda: counts.__setitem__(key, counts[key] + 1))
    kw = dict(on_missing=hook("missing"), on_future=hook("future"))
    assert effective_created_at(None, run, **kw) == run
    assert effective_created_at(T0, run, **kw) == T0
    assert effective_created_at(run + timedelta(days=2), run, **kw) == run
    assert effective_created_at(datetime(2026, 1, 1), run, **kw) == T0   # naive = UTC
    assert counts == {"missing": 1, "future": 1}
    with pytest.raises(ValueError, match="effective_created_at"):
        RecencyState(half_life_days=30).add(np.zeros((K, D)), None)
    # Dated by rule, the document weighs as new on the night it is first merged.
    state = recency_merge_all([(np.zeros((K, D)), T0), (np.ones((K, D)), effective_created_at(None, T0))], 30)
    np.testing.assert_allclose(state.mean(), np.full((K, D), 0.5), rtol=1e-6)


def test_very_old_documents_do_not_underflow_the_state():
    """Half-life 1 day, documents 8 years old: 2 ** -2900 is 0 in float64, the state is not."""
    rng = np.random.default_rng(3)
    old = [(rng.normal(size=(K, D)), T0 - timedelta(days=2920 + i)) for i in range(3)]
    state = recency_merge_all(old, half_life_days=1, reference_time=T0)
    assert state.total_weight == 0.0                       # S_ref, W_ref underflow (reporting only) ...
    weights = np.array([2.0 ** -i for i in range(3)])      # ... but the mean is well defined
    expected = np.tensordot(weights, np.asarray([x for x, _ in old]), axes=1) / weights.sum()
    assert rel(state.mean(), expected) < 1e-6
    state.advance_to(T0 + timedelta(days=10000))
    assert rel(state.mean(), expected) < 1e-6
    state.remove(*old[0])
    assert rel(state.mean(), np.tensordot(weights[1:], np.asarray([x for x, _ in old[1:]]), axes=1) / 0.75) < 1e-6
    assert state.reliable()


def test_cancellation_is_reported_not_hidden():
    """Deleting the one recent document of a user whose others are 200 half-lives older."""
    rng = np.random.default_rng(4)
    ancient = [(rng.normal(size=(K, D)), T0 - timedelta(days=200 + i)) for i in range(2)]
    recent = (rng.normal(size=(K, D)), T0)
    state = recency_merge_all(ancient + [recent], half_life_days=1, reference_time=T0)
    assert state.reliable()
    state.remove(*recent)
    assert not state.reliable()
    with pytest.raises(PrecisionLossError, match="rebuild"):
        state.mean()
    rebuilt = recency_merge_all(ancient, half_life_days=1, reference_time=T0)
    assert rebuilt.reliable() and rebuilt.precision_loss == 1.0


def test_stored_round_trip(docs):
    state = recency_merge_all(docs, 30, T0)
    again = RecencyState.from_stored(state.to_stored(), half_life_days=30)
    np.testing.assert_array_equal(again.mean(), state.mean())
    assert again.to_stored()["anchor"] == state.anchor
    empty = RecencyState.from_stored(RecencyState(half_life_days=None).to_stored(), None)
    assert empty.mean() is None and empty.count == 0


@pytest.mark.parametrize("half_life_days", [None, 0.5, 7.0, 45.0])
def test_thirty_nightly_refreshes_equal_a_full_recompute(half_life_days):
    """Each night: resume the stored state, delete some documents, add new ones (some without
    created_at, some dated in the future), move the reference to the run date, store it.
    Compared every night with a full recompute of the surviving documents, and with the
    definition itself."""
    rng = np.random.default_rng(7)
    pyrng = random.Random(7)
    stored = None
    live = {}          # doc_id -> (compression, effective created_at), what the store keeps
    next_id = 0
    counts = {"missing": 0, "future": 0}
    for night in range(30):
        run = T0 + timedelta(days=night, hours=2)
        state = (RecencyState(half_life_days=half_life_days) if stored is None
                 else RecencyState.from_stored(stored, half_life_days=half_life_days))
        for doc_id in pyrng.sample(sorted(live), min(len(live), pyrng.randint(0, 3))):
            state.remove(*live.pop(doc_id))
        for _ in range(pyrng.randint(0, 6)):
            roll = pyrng.random()
            created = (None if roll < 0.15 else run + timedelta(days=3) if roll < 0.2
                       else run - timedelta(days=float(rng.uniform(0, 900))))
            when = effective_created_at(created, run,
                                        on_missing=lambda: counts.__setitem__("missing", counts["missing"] + 1),
                                        on_future=lambda: counts.__setitem__("future", counts["future"] + 1))
            x = rng.normal(size=(K, D)).astype(np.float32)
            live[f"d{next_id}"] = (x, when)
            next_id += 1
            state.add(x, when)
        state.advance_to(run)
        stored = state.to_stored()

        full = recency_merge_all([live[k] for k in sorted(live)], half_life_days, run)
        assert state.count == full.count == len(live)
        if not live:
            assert state.mean() is None
            continue
        assert state.reliable()
        assert rel(state.mean(), full.mean()) <= 1e-6
        assert math.isclose(state.total_weight, full.total_weight, rel_tol=1e-6)
        if half_life_days is not None and half_life_days >= 7:
            mean, weight, _ = direct_weighted_mean(list(live.values()), run, half_life_days)
            assert rel(state.mean(), mean) <= 1e-6
            assert math.isclose(state.total_weight, weight, rel_tol=1e-9)
        if half_life_days is None:
            np.testing.assert_allclose(state.mean(), merge_all([x for x, _ in live.values()]).mean(), rtol=1e-6)
    assert counts["missing"] > 0 and counts["future"] > 0
    assert next_id > 60
