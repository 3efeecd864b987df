"""Length bucketing (pipelines.batching): plain Python."""
import pytest

from pipelines.batching import batch_key, length_bucket, padding_fraction


def test_length_buckets_bound_padding():
    assert [length_bucket(n, 32) for n in (0, 1, 32, 33, 64, 65)] == [0, 0, 0, 1, 1, 2]
    lengths = [3, 17, 31, 40, 63, 200, 210]
    buckets = {}
    for n in lengths:
        buckets.setdefault(length_bucket(n, 32), []).append([0] * n)
    for batch in buckets.values():
        width = max(len(x) for x in batch)
        assert all(width - len(x) < 32 for x in batch)
    assert padding_fraction([[0] * 10, [0] * 10]) == 0.0
    assert padding_fraction([[0] * 5, [0] * 10]) == pytest.approx(0.25)


def test_batch_key_is_stable_and_spreads_shards():
    assert batch_key("u", "d", 40, 32, 4) == batch_key("u", "d", 40, 32, 4)
    keys = {batch_key("u", f"d{i}", 40, 32, 4) for i in range(100)}
    assert keys == {f"1:{s}" for s in range(4)}
