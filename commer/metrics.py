"""Evaluation metrics, free of Beam: ROUGE per query and mergeable aggregates.

ROUGE follows LaMP's evaluation (LaMP/metrics/generation_metrics.py): both texts stripped,
`rouge_score` with its default tokenizer and no stemmer (HF `evaluate`'s rouge default, which
LaMP calls), F-measure, averaged over queries. LaMP reports the bootstrap aggregator's `mid`,
which is a resampling estimate of that same mean; we report the exact mean, so the numbers agree
up to the bootstrap's noise.

Perplexity is summarised by one mean everywhere: the geometric mean over queries, exp(mean of
log perplexity) — each query's perplexity is itself exp(mean token NLL), so this is the per-token
NLL averaged per query, and a few queries the model finds absurd cannot dominate it as they do an
arithmetic mean. The effect of a profile is measured on pairs: the same query's reference scored
with and without the profile (generate scores both in one pass), never across different queries.

Aggregates are (count, sum) style accumulators with fixed histogram edges, so merging them in
any order or grouping gives the same result (Beam combiners may merge partial results freely).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Iterable, Optional

ROUGE_TYPES = ("rouge1", "rougeL")
PERPLEXITY_AGGREGATION = {
    "aggregation": "geometric mean over queries: exp(mean log perplexity), each query's perplexity being "
                   "exp(mean token NLL of its reference)",
    "paired": "the same personalized queries scored with and without the profile (generate scores both); "
              "ratio < 1: the profile makes the references more likely"}

# Perplexity histogram: log-spaced bins from 1 to 1e6 (10 per decade), then an overflow bin.
PERPLEXITY_EDGES = tuple(10 ** (i / 10) for i in range(0, 61))
# Per-user mean ROUGE-L lies in [0, 1].
ROUGE_EDGES = tuple(i / 20 for i in range(0, 21))


@functools.lru_cache(maxsize=2)
def _scorer(use_stemmer: bool):
    from rouge_score.rouge_scorer import RougeScorer
    return RougeScorer(list(ROUGE_TYPES), use_stemmer=use_stemmer)


def rouge(prediction: str, reference: str, use_stemmer: bool = False) -> dict[str, float]:
    """ROUGE-1 and ROUGE-L F-measure of one prediction against one reference."""
    scores = _scorer(use_stemmer).score(reference.strip(), prediction.strip())
    return {name: float(scores[name].fmeasure) for name in ROUGE_TYPES}


def doc_count_bucket(n: int) -> tuple[int, int]:
    """Bucket (lo, hi) for a document count: 0, 1, 2, 3-4, 5-8, 9-16, ... (powers of two)."""
    if n <= 2:
        return (max(n, 0), max(n, 0))
    hi = 1 << (n - 1).bit_length()
    return (hi // 2 + 1, hi)


def bucket_label(lo: int, hi: int) -> str:
    return str(lo) if lo == hi else f"{lo}-{hi}"


@dataclass
class Histogram:
    """Counts over fixed edges: [under, bins..., over]. Fixed edges make merges exact."""

    edges: tuple[float, ...]
    counts: list[int] = field(default_factory=list)

    def __post_init__(self):
        if not self.counts:
            self.counts = [0] * (len(self.edges) + 1)

    def add(self, value: float) -> None:
        import bisect
        # bisect_right puts a value equal to an edge into the bin that starts there; the top
        # edge itself is kept in the last bin (ROUGE-L = 1.0 is a real score, not overflow).
        i = bisect.bisect_right(self.edges, value)
        if i == len(self.edges) and value == self.edges[-1]:
            i -= 1
        self.counts[i] += 1

    def merge(self, other: "Histogram") -> None:
        if tuple(other.edges) != tuple(self.edges):
            raise ValueError("cannot merge histograms with different edges")
        self.counts = [a + b for a, b in zip(self.counts, other.counts)]

    def to_dict(self) -> dict:
        return {"edges": list(self.edges), "counts": self.counts[1:-1],
                "below": self.counts[0], "above": self.counts[-1]}


@dataclass
class Aggregate:
    """Sums over scored queries; `summary()` gives means. One per group (overall, user, bucket)."""

    with_histogram: bool = False
    queries: int = 0
    personalized: int = 0
    with_reference: int = 0
    rouge1_sum: float = 0.0
    rougeL_sum: float = 0.0
    perplexity_count: int = 0
    log_perplexity_sum: float = 0.0
    # Pairs: a personalized query's reference with the profile and without it (the same query).
    paired_count: int = 0
    paired_log_with_sum: float = 0.0
    paired_log_without_sum: float = 0.0
    perplexity_min: float = math.inf
    perplexity_max: float = -math.inf
    prompt_tokens_sum: int = 0
    doc_count_max: int = 0
    perplexity_histogram: Optional[Histogram] = None

    def __post_init__(self):
        if self.with_histogram and self.perplexity_histogram is None:
            self.perplexity_histogram = Histogram(PERPLEXITY_EDGES)

    def add(self, row: dict) -> "Aggregate":
        """Add one scored query: keys personalized, rouge1, rougeL, perplexity, perplexity_unpersonalized,
        prompt_tokens, doc_count."""
        self.queries += 1
        self.personalized += int(bool(row.get("personalized")))
        self.prompt_tokens_sum += int(row.get("prompt_tokens") or 0)
        self.doc_count_max = max(self.doc_count_max, int(row.get("doc_count") or 0))
        if row.get("rouge1") is not None:
            self.with_reference += 1
            self.rouge1_sum += row["rouge1"]
            self.rougeL_sum += row["rougeL"]
        ppl = row.get("perplexity")
        if ppl is not None and math.isfinite(ppl):
            self.perplexity_count += 1
            self.log_perplexity_sum += math.log(ppl)
            self.perplexity_min = min(self.perplexity_min, ppl)
            self.perplexity_max = max(self.perplexity_max, ppl)
            if self.perplexity_histogram is not None:
                self.perplexity_histogram.add(ppl)
            without = row.get("perplexity_unpersonalized")
            if without is not None and math.isfinite(without) and without > 0:
                self.paired_count += 1
                self.paired_log_with_sum += math.log(ppl)
                self.paired_log_without_sum += math.log(without)
        return self

    def merge(self, other: "Aggregate") -> "Aggregate":
        """Add `other` into self (only self changes)."""
        for name in ("queries", "personalized", "with_reference", "rouge1_sum", "rougeL_sum", "perplexity_count",
                     "log_perplexity_sum", "paired_count", "paired_log_with_sum", "paired_log_without_sum",
                     "prompt_tokens_sum"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.perplexity_min = min(self.perplexity_min, other.perplexity_min)
        self.perplexity_max = max(self.perplexity_max, other.perplexity_max)
        self.doc_count_max = max(self.doc_count_max, other.doc_count_max)
        if self.perplexity_histogram is not None and other.perplexity_histogram is not None:
            self.perplexity_histogram.merge(other.perplexity_histogram)
        return self

    def summary(self) -> dict:
        n_ref, n_ppl, n_pair = self.with_reference, self.perplexity_count, self.paired_count
        out = {
            "queries": self.queries,
            "personalized": self.personalized,
            "with_reference": n_ref,
            "rouge1": self.rouge1_sum / n_ref if n_ref else None,
            "rougeL": self.rougeL_sum / n_ref if n_ref else None,
            "perplexity": {
                "count": n_ppl,
                # The one mean of perplexity (module docstring): exp(mean log perplexity) over queries.
                "geometric_mean": math.exp(self.log_perplexity_sum / n_ppl) if n_ppl else None,
                "min": self.perplexity_min if n_ppl else None,
                "max": self.perplexity_max if n_ppl else None,
            },
            # The same queries with and without the profile: what the profile changes, like with like.
            "paired": {
                "queries": n_pair,
                "perplexity_with_profile": math.exp(self.paired_log_with_sum / n_pair) if n_pair else None,
                "perplexity_without_profile": math.exp(self.paired_log_without_sum / n_pair) if n_pair else None,
                "ratio": (math.exp((self.paired_log_with_sum - self.paired_log_without_sum) / n_pair)
                          if n_pair else None),
            },
            "prompt_tokens_mean": self.prompt_tokens_sum / self.queries if self.queries else None,
            "doc_count_max": self.doc_count_max,
        }
        if self.perplexity_histogram is not None:
            out["perplexity"]["histogram"] = self.perplexity_histogram.to_dict()
        return out


@dataclass
class Distribution:
    """Count, mean, min, max and a fixed-edge histogram of one number (e.g. per-user ROUGE-L)."""

    edges: tuple[float, ...] = ROUGE_EDGES
    count: int = 0
    total: float = 0.0
    low: float = math.inf
    high: float = -math.inf
    histogram: Optional[Histogram] = None

    def __post_init__(self):
        if self.histogram is None:
            self.histogram = Histogram(self.edges)

    def add(self, value: float) -> "Distribution":
        self.count += 1
        self.total += value
        self.low, self.high = min(self.low, value), max(self.high, value)
        self.histogram.add(value)
        return self

    def merge(self, other: "Distribution") -> "Distribution":
        self.count += other.count
        self.total += other.total
        self.low, self.high = min(self.low, other.low), max(self.high, other.high)
        self.histogram.merge(other.histogram)
        return self

    def summary(self) -> dict:
        n = self.count
        return {"count": n, "mean": self.total / n if n else None, "min": self.low if n else None,
                "max": self.high if n else None, "histogram": self.histogram.to_dict()}


def aggregate(rows: Iterable[dict], with_histogram: bool = False) -> dict:
    """Summary of scored rows in one pass (the plain-Python form of the Beam combiner)."""
    acc = Aggregate(with_histogram=with_histogram)
    for row in rows:
        acc.add(row)
    return acc.summary()


def score(prediction: str, reference: Optional[str], perplexity: Optional[float],
          use_stemmer: bool = False, perplexity_unpersonalized: Optional[float] = None) -> dict:
    """Per-query scores: ROUGE when there is a reference, perplexity (with and without the profile) as
    recorded by generate."""
    out: dict = {"rouge1": None, "rougeL": None, "perplexity": perplexity,
                 "perplexity_unpersonalized": perplexity_unpersonalized}
    if reference is not None:
        out.update(rouge(prediction, reference, use_stemmer))
    return out


def describe(summary: dict) -> list[str]:
    """The console lines of an overall summary: quality, then the profile's effect on the same queries."""
    def fmt(value, digits=4):
        return "n/a" if value is None else f"{value:.{digits}f}"

    lines = [f"predictions: {summary['queries']}, {summary['with_reference']} with a reference: ROUGE-1 "
             f"{fmt(summary['rouge1'])}, ROUGE-L {fmt(summary['rougeL'])}, perplexity (geometric mean) "
             f"{fmt(summary['perplexity']['geometric_mean'], 1)}"]
    paired = summary["paired"]
    if paired["queries"]:
        lines.append(f"the profile's effect on the same {paired['queries']} queries: perplexity "
                     f"{paired['perplexity_without_profile']:.1f} without it, {paired['perplexity_with_profile']:.1f} "
                     f"with it (×{paired['ratio']:.3f})")
    return lines
