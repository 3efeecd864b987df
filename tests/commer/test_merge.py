"""Merge math: associative, order-agnostic, exact removal; no Beam or model needed."""
import itertools

import numpy as np
import pytest
import torch

from commer.merge import SumCount, concat_merge, mean_pool, merge_all


@pytest.fixture
def compressions():
    rng = np.random.default_rng(0)
    return [rng.normal(size=(4, 8)).astype(np.float32) for _ in range(7)]


def test_mean_is_the_plain_mean(compressions):
    np.testing.assert_allclose(merge_all(compressions).mean(), np.mean(np.asarray(compressions, np.float64), axis=0), rtol=1e-6)
    assert merge_all(compressions).count == 7


def test_order_does_not_matter(compressions):
    reference = merge_all(compressions).mean()
    for perm in itertools.islice(itertools.permutations(range(7)), 50):
        np.testing.assert_allclose(merge_all([compressions[i] for i in perm]).mean(), reference, rtol=1e-12, atol=1e-12)


def test_merging_partial_states_is_associative(compressions):
    whole = merge_all(compressions)
    a, b, c = merge_all(compressions[:2]), merge_all(compressions[2:5]), merge_all(compressions[5:])
    left = SumCount().merge(a).merge(b).merge(c)
    right = SumCount().merge(c).merge(SumCount().merge(b).merge(a))
    for state in (left, right):
        assert state.count == whole.count
        np.testing.assert_allclose(state.total, whole.total, rtol=1e-12)


def test_merge_mutates_only_the_first_state(compressions):
    a, b = merge_all(compressions[:3]), merge_all(compressions[3:])
    b_before = b.total.copy()
    a.merge(b)
    np.testing.assert_array_equal(b.total, b_before)
    assert b.count == 4 and a.count == 7
    a.total += 1  # a must not share memory with b
    np.testing.assert_array_equal(b.total, b_before)


def test_empty_state_merges_as_identity(compressions):
    state = merge_all(compressions)
    before = state.total.copy()
    state.merge(SumCount())
    np.testing.assert_array_equal(state.total, before)
    assert SumCount().merge(state).count == 7
    assert SumCount().mean() is None


def test_remove_undoes_add(compressions):
    state = merge_all(compressions)
    state.remove(compressions[3])
    expected = np.mean([c for i, c in enumerate(compressions) if i != 3], axis=0)
    np.testing.assert_allclose(state.mean(), expected, rtol=1e-6)
    for c in compressions[:3] + compressions[4:]:
        state.remove(c)
    assert state.count == 0 and state.mean() is None
    with pytest.raises(ValueError):
        state.remove(compressions[0])


def test_shape_mismatch_is_refused(compressions):
    with pytest.raises(ValueError, match="shapes differ"):
        merge_all(compressions).add(np.zeros((3, 8)))


def test_mean_pool_groups_and_gradients():
    x = torch.randn(5, 2, 3, requires_grad=True)
    group = torch.tensor([0, 1, 0, 2, 1])
    out = mean_pool(x, group, 3)
    torch.testing.assert_close(out[0], (x[0] + x[2]) / 2)
    torch.testing.assert_close(out[2], x[3])
    out.sum().backward()
    torch.testing.assert_close(x.grad[0], torch.full((2, 3), 0.5))
    with pytest.raises(ValueError):
        mean_pool(x, torch.tensor([0, 0, 0, 0, 0]), 2)


def test_concat_merge_stacks_tokens():
    parts = [torch.ones(2, 3), torch.zeros(2, 3)]
    assert concat_merge(parts).shape == (4, 3)
