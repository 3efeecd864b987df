"""Query-time merge of the relevant compressions: rankings, ties, and the merged soft prompt."""
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
import torch

from commer.merge import merge_all
from commer.recency import recency_merge_all
from commer.retrieval import (cosine_similarities, order_by_doc_id, retrieved_soft_prompt, top_m_by_bm25,
                              top_m_by_similarity)

K, D = 4, 8
TEXTS = ["the cat sat on the mat", "stock markets fell sharply today", "my cat loves fish",
         "weather is sunny", "markets rallied after the cat video went viral"]


@pytest.fixture
def compressions():
    return np.random.default_rng(0).normal(size=(6, K, D)).astype(np.float32)


def test_bm25_ranks_matching_documents_first():
    top = top_m_by_bm25("cat fish", TEXTS, 2)
    assert top[0] == 2 and set(top) <= {0, 2, 4}
    assert top_m_by_bm25("markets", TEXTS, 1) in ([1], [4])


def test_bm25_edge_cases():
    assert top_m_by_bm25("cat", [], 3) == []
    assert top_m_by_bm25("cat", TEXTS, 0) == []
    assert sorted(top_m_by_bm25("cat", TEXTS, 99)) == list(range(len(TEXTS)))
    with pytest.raises(ValueError, match="non-negative"):
        top_m_by_bm25("cat", TEXTS, -1)
    assert top_m_by_bm25("zebra", ["a b", "c d", "e f"], 3) == [0, 1, 2]   # all tie: position order


def test_similarity_picks_the_identical_compression_first(compressions):
    for j in range(len(compressions)):
        assert top_m_by_similarity(compressions[j], compressions, 1) == [j]
    assert cosine_similarities(compressions[3], compressions)[3] == pytest.approx(1.0, abs=1e-12)


def test_similarity_flattens_k_and_d(compressions):
    q = compressions[0]
    expected = [float(q.ravel().astype(np.float64) @ c.ravel() / np.linalg.norm(q.ravel().astype(np.float64))
                      / np.linalg.norm(c.ravel().astype(np.float64))) for c in compressions]
    np.testing.assert_allclose(cosine_similarities(q, compressions), expected, rtol=1e-12)


def test_similarity_ties_are_stable(compressions):
    dup = np.stack([compressions[1], compressions[0], compressions[1], 2 * compressions[1], compressions[1]])
    # a copy and a power-of-two multiple score bit-identically (cosine ignores scale): position order
    assert top_m_by_similarity(compressions[1], dup, 5) == [0, 2, 3, 4, 1]
    # exact ties: identical rows score bit-identically and keep position order
    same = np.stack([compressions[2]] * 4)
    assert top_m_by_similarity(compressions[0], same, 4) == [0, 1, 2, 3]
    zeros = np.zeros((3, K, D))
    assert top_m_by_similarity(compressions[0], zeros, 2) == [0, 1]   # zero vectors score 0, no NaN


def test_similarity_accepts_torch_and_checks_shapes(compressions):
    assert top_m_by_similarity(torch.tensor(compressions[4]), torch.tensor(compressions), 2)[0] == 4
    with pytest.raises(ValueError, match="does not match"):
        top_m_by_similarity(np.zeros((K, D + 1)), compressions, 1)
    with pytest.raises(ValueError, match="non-finite"):
        top_m_by_similarity(np.full((K, D), np.nan), compressions, 1)


def test_m_at_least_n_is_the_plain_mean(compressions):
    full = merge_all(compressions).mean()
    for m in (len(compressions), len(compressions) + 5):
        for indices in (top_m_by_similarity(compressions[2], compressions, m), top_m_by_bm25("cat", TEXTS + ["x"], m)):
            assert len(indices) == len(compressions)
            np.testing.assert_array_equal(retrieved_soft_prompt(compressions, indices), full)


def test_retrieved_soft_prompt_is_the_mean_of_the_chosen(compressions):
    out = retrieved_soft_prompt(compressions, [4, 1])
    assert out.shape == (K, D) and out.dtype == np.float32
    np.testing.assert_array_equal(out, retrieved_soft_prompt(compressions, [1, 4]))   # ranking order irrelevant
    np.testing.assert_allclose(out, (compressions[1].astype(np.float64) + compressions[4]) / 2, rtol=1e-6)
    assert retrieved_soft_prompt(compressions, []) is None
    with pytest.raises(ValueError, match="twice"):
        retrieved_soft_prompt(compressions, [1, 1])
    with pytest.raises(ValueError, match="out of range"):
        retrieved_soft_prompt(compressions, [6])


def test_recency_weighted_retrieval(compressions):
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    created = [t0 - timedelta(days=10 * i) for i in range(len(compressions))]
    out = retrieved_soft_prompt(compressions, [0, 3], created_at=created, half_life_days=30)
    expected = recency_merge_all([(compressions[0], created[0]), (compressions[3], created[3])], 30).mean()
    np.testing.assert_array_equal(out, expected)
    with pytest.raises(ValueError, match="created_at"):
        retrieved_soft_prompt(compressions, [0], half_life_days=30)


def test_order_by_doc_id_makes_results_read_order_free(compressions):
    ids = ["d5", "d2", "d9", "d1", "d7", "d3"]
    texts = ["cat"] * 6   # every text ties: the winner must be the smallest doc_id, however read
    rng = np.random.default_rng(1)
    winners = set()
    for _ in range(5):
        perm = rng.permutation(6)
        sid, sc, st = order_by_doc_id([ids[i] for i in perm], compressions[perm], [texts[i] for i in perm])
        assert sid == sorted(ids)
        winners.add(sid[top_m_by_bm25("cat", st, 1)[0]])
        np.testing.assert_array_equal(sc[sid.index("d9")], compressions[2])
    assert winners == {"d1"}
    with pytest.raises(ValueError, match="unique"):
        order_by_doc_id(["a", "a"], compressions[:2])
    with pytest.raises(ValueError, match="doc_ids"):
        order_by_doc_id(["a", "b"], compressions[:3])


def test_new_modules_respect_the_layers():
    """commer never imports Beam, training or pipelines (DESIGN.md, invariant 10)."""
    import ast
    from pathlib import Path

    import commer

    for name in ("recency.py", "retrieval.py"):
        tree = ast.parse((Path(commer.__file__).parent / name).read_text())
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        roots = {m.split(".")[0] for m in imported}
        assert not roots & {"apache_beam", "training", "pipelines", "benchmarks"}, (name, roots)
