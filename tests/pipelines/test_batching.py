"""Length bucketing and the batch keys (pipelines.batching): plain Python.

The job's batches against the bare loop's (commer.packing.plan_batches over all documents at once, issue 27):
keyed by (length bucket, one of 8 shards), 400 news-like documents became 14 keys and more, emptier, more padded
batches; keys planned from the data give a small job the loop's batches and a large one many keys."""
import random

import pytest

from batching_helpers import job_batches, measure
from commer.packing import plan_batches
from pipelines.batching import (KEY_BATCHES, SORT_WINDOW_BATCHES, Batching, batch_key, length_bucket,
                                padding_fraction, plan_keys, split_batches)
from pipelines.elements import TokenizedDocument
from pipelines.flags import add_batching_flags

K, BUDGET = 8, 1024  # the default checkpoint's K, the CPU default budget (the benchmark's tokens:1024)


def news_like(n: int, seed: int = 0, users: int = 60) -> list[TokenizedDocument]:
    """Documents with the token lengths of the HuffPost sample under the default checkpoint (mean ~47, 21–64,
    truncated at 64)."""
    rng = random.Random(seed)
    return [TokenizedDocument(f"u{rng.randrange(users)}", f"d{i}", [5] * min(64, max(21, round(rng.gauss(46, 9)))))
            for i in range(n)]


def loop(docs) -> dict:
    lengths = [len(doc.token_ids) for doc in docs]
    return measure([[docs[i] for i in b] for b in plan_batches(lengths, BUDGET, K, padded=True)], K, BUDGET)


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
    keys = {1: (0, 4)}
    assert batch_key("u", "d", 1, keys) == batch_key("u", "d", 1, keys)
    assert {batch_key("u", f"d{i}", 1, keys) for i in range(100)} == {f"0:{s}" for s in range(4)}


def test_small_buckets_join_their_neighbours_and_large_ones_split():
    worth = KEY_BATCHES * BUDGET  # positions of KEY_BATCHES full batches
    sizes = {0: (5, 300), 1: (40, worth // 2), 2: (900, worth // 2 - 300), 3: (9000, 5 * worth + 1), 4: (3, 200)}
    keys = plan_keys(sizes, BUDGET)
    assert keys[0] == keys[1] == keys[2] == (0, 1)  # joined until worth KEY_BATCHES batches
    assert keys[3] == keys[4] == (3, 6)  # the small last bucket joins the group before; ceil(5.0…) = 6 keys
    assert plan_keys({0: (1, worth + 1)}, BUDGET) == {0: (0, 2)}  # just over: two keys of half the size
    assert plan_keys(dict(reversed(list(sizes.items()))), BUDGET) == keys  # the sizes alone decide
    assert plan_keys({7: (10, 500)}, BUDGET) == {7: (7, 1)}
    assert plan_keys({}, BUDGET) == {}
    assert plan_keys(sizes, BUDGET, shards=8) == {b: (b, 8) for b in sizes}  # --batch_shards: as before
    # Under a document cap, documents fill a batch before tokens do: 16 × 48 one-token documents are 48 batches.
    capped = plan_keys({0: (16 * KEY_BATCHES * 3, 9 * 16 * KEY_BATCHES * 3)}, 10 ** 9, max_batch_documents=16)
    assert capped == {0: (0, 3)}


@pytest.mark.parametrize("seed", [0, 1])
def test_a_small_job_forms_the_loops_batches(seed):
    docs = news_like(400, seed)
    want = loop(docs)
    got = measure(job_batches(docs, Batching(K=K), BUDGET), K, BUDGET)
    assert got["count"] == want["count"]
    assert got["fill"] == pytest.approx(want["fill"]) and got["padding"] == pytest.approx(want["padding"])
    assert got["padding"] >= 0.95
    # What it replaced: 8 hash shards per 32-token bucket cut the same documents into ~14 keys, each ending in a
    # partly filled batch, and sparser keys pad more.
    before = measure(job_batches(docs, Batching(K=K), BUDGET, shards=8), K, BUDGET)
    assert before["count"] >= want["count"] + 4 and before["fill"] < want["fill"] - 0.1


def test_a_large_job_spreads_over_many_keys_with_nearly_the_loops_batches():
    docs = news_like(20000, seed=2, users=3000)
    want = loop(docs)
    batches = job_batches(docs, Batching(K=K), BUDGET)
    got = measure(batches, K, BUDGET)
    assert got["count"] <= want["count"] * 1.03 and got["fill"] >= want["fill"] - 0.03
    assert got["padding"] >= 0.95
    # One key per KEY_BATCHES batches' worth at most (and at least half that), so the work spreads over
    # ~20 keys here, each planned in one sorted window.
    sizes = {}
    for doc in docs:
        b = length_bucket(len(doc.token_ids), 32)
        n, p = sizes.get(b, (0, 0))
        sizes[b] = (n + 1, p + len(doc.token_ids) + K)
    plan = plan_keys(sizes, BUDGET)
    n_keys = sum(shards for group, shards in set(plan.values()))
    worth = sum(p for n, p in sizes.values()) / BUDGET / KEY_BATCHES
    assert worth <= n_keys <= 2 * worth and n_keys >= 20
    per_key = {}
    for doc in docs:
        key = batch_key(doc.user_id, doc.doc_id, length_bucket(len(doc.token_ids), 32), plan)
        per_key[key] = per_key.get(key, 0) + len(doc.token_ids) + K
    assert len(per_key) == n_keys and max(per_key.values()) < SORT_WINDOW_BATCHES * BUDGET


def test_reruns_form_the_same_batches_and_every_document_is_in_one():
    docs = news_like(3000, seed=4) + [TokenizedDocument("u", "long", [5] * 2000)]  # longer than the budget
    shuffled = docs[:]
    random.Random(9).shuffle(shuffled)
    runs = [[[doc.doc_id for doc in batch] for batch in job_batches(d, Batching(K=K), BUDGET)] for d in (docs, shuffled)]
    assert runs[0] == runs[1]
    assert sorted(i for batch in runs[0] for i in batch) == sorted(doc.doc_id for doc in docs)  # each exactly once
    assert ["long"] in runs[0]  # alone, never cut or dropped


def test_under_a_document_cap_a_window_holds_that_many_batches_of_documents():
    """A count batch's budget is unlimited, so the sort window must also close on documents (bounded memory)."""
    docs = [TokenizedDocument("u", f"d{i}", [5] * (10 if i % 2 else 1)) for i in range(8)]
    batching = Batching(K=K, max_batch_documents=2)
    batches = list(split_batches(("k", iter(docs)), batching, 10 ** 9, window_batches=2))
    assert [[len(doc.token_ids) for doc in batch] for batch in batches] == [[1, 1], [10, 10]] * 2  # two windows of 4


def test_the_flags_say_what_the_planner_does():
    import argparse
    parser = argparse.ArgumentParser()
    add_batching_flags(parser)
    text = " ".join(parser.format_help().split())
    assert f"{KEY_BATCHES} batches" in text and f"{KEY_BATCHES // 2} to {KEY_BATCHES} batches" in text
    assert f"{SORT_WINDOW_BATCHES} batches' worth" in text
    assert parser.parse_args([]).batch_shards is None  # from the data, unless given
