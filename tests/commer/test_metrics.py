"""Evaluation arithmetic (commer.metrics) without Beam: ROUGE values, mergeable aggregates."""
import math
import random

import pytest

from commer import metrics as m

# (prediction, reference, ROUGE-1 F, ROUGE-L F) without stemming, worked out by hand:
# unigram overlap 2PR/(P+R); ROUGE-L uses the longest common subsequence instead of overlap.
FIXED = [
    ("the cat sat on the mat", "the cat is on the mat", 5 / 6, 5 / 6),                # 5 of 6 tokens shared
    ("Council approves new bicycle lanes", "City council votes for bicycle lanes downtown", 0.5, 0.5),  # 3/5, 3/7
    ("lanes bicycle council", "council bicycle lanes", 1.0, 1 / 3),                    # same words, LCS of 1
    ("Markets rallied", "market rallies", 0.0, 0.0),                                   # only equal after stemming
    ("", "something", 0.0, 0.0),
    ("  Hello, WORLD!  ", "hello world", 1.0, 1.0),                                    # case and punctuation
]


@pytest.mark.parametrize("prediction,reference,rouge1,rougeL", FIXED)
def test_rouge_exact_values(prediction, reference, rouge1, rougeL):
    scores = m.rouge(prediction, reference)
    assert scores["rouge1"] == pytest.approx(rouge1, abs=1e-12)
    assert scores["rougeL"] == pytest.approx(rougeL, abs=1e-12)


def test_rouge_equals_rouge_score_directly():
    from rouge_score.rouge_scorer import RougeScorer
    direct = RougeScorer(["rouge1", "rougeL"], use_stemmer=False)
    for prediction, reference, *_ in FIXED:
        expected = direct.score(reference.strip(), prediction.strip())
        ours = m.rouge(prediction, reference)
        assert ours == {k: expected[k].fmeasure for k in ("rouge1", "rougeL")}


def test_stemmer_flag():
    assert m.rouge("Markets rallied", "market rallies", use_stemmer=True) == {"rouge1": 1.0, "rougeL": 1.0}


def test_score_without_reference_has_no_rouge():
    assert m.score("anything", None, 12.5) == {"rouge1": None, "rougeL": None, "perplexity": 12.5,
                                               "perplexity_unpersonalized": None}


def _rows(n, seed=0):
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        has_ref = rng.random() < 0.8
        rows.append({"personalized": rng.random() < 0.7, "doc_count": rng.randint(0, 40),
                     "prompt_tokens": rng.randint(5, 300),
                     "rouge1": rng.random() if has_ref else None, "rougeL": rng.random() if has_ref else None,
                     "perplexity": math.exp(rng.uniform(0, 9)) if has_ref else None})
        if has_ref and rows[-1]["personalized"]:
            rows[-1]["perplexity_unpersonalized"] = rows[-1]["perplexity"] * math.exp(rng.uniform(-1, 2))
    return rows


def test_aggregate_means_and_counts():
    rows = _rows(50)
    summary = m.aggregate(rows, with_histogram=True)
    refs = [r for r in rows if r["rouge1"] is not None]
    assert summary["queries"] == 50 and summary["with_reference"] == len(refs)
    assert summary["personalized"] == sum(r["personalized"] for r in rows)
    assert summary["rouge1"] == pytest.approx(sum(r["rouge1"] for r in refs) / len(refs))
    assert summary["rougeL"] == pytest.approx(sum(r["rougeL"] for r in refs) / len(refs))
    ppl = [r["perplexity"] for r in refs]
    assert "mean" not in summary["perplexity"]  # one mean for perplexity: the geometric one
    assert summary["perplexity"]["geometric_mean"] == pytest.approx(math.exp(sum(map(math.log, ppl)) / len(ppl)))
    assert summary["perplexity"]["min"] == min(ppl) and summary["perplexity"]["max"] == max(ppl)
    hist = summary["perplexity"]["histogram"]
    assert sum(hist["counts"]) + hist["below"] + hist["above"] == len(ppl)
    assert summary["prompt_tokens_mean"] == pytest.approx(sum(r["prompt_tokens"] for r in rows) / 50)


def test_paired_perplexity_compares_each_query_with_itself():
    """The profile's effect over the same queries: a query without its unpersonalized pair is left out, and the
    ratio is the geometric mean of the per-query ratios (so one other user's hard query cannot fake an effect)."""
    rows = [{"perplexity": 100.0, "perplexity_unpersonalized": 200.0, "personalized": True},
            {"perplexity": 10.0, "perplexity_unpersonalized": 10.0, "personalized": True},
            {"perplexity": 5.0, "personalized": False}]  # not personalized: no pair
    paired = m.aggregate(rows)["paired"]
    assert paired["queries"] == 2
    assert paired["perplexity_with_profile"] == pytest.approx(math.sqrt(100 * 10))
    assert paired["perplexity_without_profile"] == pytest.approx(math.sqrt(200 * 10))
    assert paired["ratio"] == pytest.approx(math.sqrt(0.5 * 1.0))


def test_aggregate_merge_is_order_free_and_mutates_only_first():
    rows = _rows(60, seed=1)
    whole = m.aggregate(rows, with_histogram=True)
    parts = [m.Aggregate(with_histogram=True) for _ in range(3)]
    for i, row in enumerate(rows):
        parts[i % 3].add(row)
    second = m.Aggregate(with_histogram=True).merge(parts[1])
    merged = parts[2].merge(parts[0]).merge(parts[1])
    assert _close(merged.summary(), whole)
    assert second.summary() == parts[1].summary()  # parts[1] was only read


def _close(a, b):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, float):
        return math.isclose(a, b, rel_tol=1e-12)  # sums in another order: rounding only
    return a == b


def test_empty_aggregate_has_no_means():
    summary = m.Aggregate().summary()
    assert summary["queries"] == 0 and summary["rouge1"] is None and summary["perplexity"]["geometric_mean"] is None
    assert summary["paired"] == {"queries": 0, "perplexity_with_profile": None, "perplexity_without_profile": None,
                                 "ratio": None}


def test_doc_count_buckets():
    assert [m.doc_count_bucket(n) for n in (0, 1, 2, 3, 4, 5, 8, 9, 16, 17)] == [
        (0, 0), (1, 1), (2, 2), (3, 4), (3, 4), (5, 8), (5, 8), (9, 16), (9, 16), (17, 32)]
    assert m.bucket_label(3, 4) == "3-4" and m.bucket_label(1, 1) == "1"


def test_histogram_keeps_top_edge_and_counts_overflow():
    h = m.Histogram(m.ROUGE_EDGES)
    for v in (0.0, 0.04, 0.05, 1.0, 1.5, -0.1):
        h.add(v)
    d = h.to_dict()
    assert d["counts"][0] == 2 and d["counts"][1] == 1 and d["counts"][-1] == 1
    assert d["below"] == 1 and d["above"] == 1
    with pytest.raises(ValueError):
        h.merge(m.Histogram(m.PERPLEXITY_EDGES))


def test_distribution_summary():
    d = m.Distribution()
    for v in (0.1, 0.5, 0.9):
        d.add(v)
    other = m.Distribution().add(0.3)
    s = d.merge(other).summary()
    assert s["count"] == 4 and s["mean"] == pytest.approx(0.45) and s["min"] == 0.1 and s["max"] == 0.9
