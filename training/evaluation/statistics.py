"""The evaluations' statistics: token-level perplexity, paired bootstrap intervals, the power-law fit.

Pure numpy on a row's per-example arrays (`_nll`: summed answer NLL, `_tokens`: answer tokens):
intervals resample examples (or authors, with all their queries) with one seeded index matrix
shared by every row, so a row's difference from the reference row is paired.
"""
from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)


def token_perplexity(nll: np.ndarray, tokens: np.ndarray, idx: np.ndarray | None = None):
    """exp(Σ NLL / Σ tokens); with idx (B, N) resample indices, one value per resample."""
    if idx is None:
        return float(np.exp(nll.sum() / max(tokens.sum(), 1.0)))
    return np.exp(nll[idx].sum(1) / np.maximum(tokens[idx].sum(1), 1.0))


def interval(samples: np.ndarray) -> list[float]:
    """The 95% percentile interval of bootstrap samples."""
    lo, hi = np.percentile(samples, [2.5, 97.5])
    return [float(lo), float(hi)]


def perplexity_intervals(row: dict, reference: dict, idx: np.ndarray, reference_samples: np.ndarray) -> None:
    """In place: the row's perplexity interval, and its difference from the reference row with its interval."""
    ppl = token_perplexity(row["_nll"], row["_tokens"], idx)
    row["perplexity_ci"] = interval(ppl)
    row["delta_perplexity"] = row["perplexity"] - reference["perplexity"]
    row["delta_perplexity_ci"] = interval(ppl - reference_samples)


def paired_bootstrap(rows: list[dict], reference: dict, other: dict | None, resamples: int, seed: int) -> None:
    """Adds 95% percentile intervals in place, resampling examples: each row's perplexity and ROUGE,
    its paired difference from the reference row, and (on the reference row) the own/other ratio."""
    n = len(reference["_nll"])
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    ref_ppl = token_perplexity(reference["_nll"], reference["_tokens"], idx)
    for row in rows:
        if len(row["_nll"]) != n:
            continue
        perplexity_intervals(row, reference, idx, ref_ppl)
        for metric in ("rouge1", "rougeL"):
            if row.get(f"_{metric}") is not None and reference.get(f"_{metric}") is not None:
                diff = row[f"_{metric}"] - reference[f"_{metric}"]
                row[f"delta_{metric}"] = float(diff.mean())
                row[f"delta_{metric}_ci"] = interval(diff[idx].mean(1))
                row[f"{metric}_ci"] = interval(row[f"_{metric}"][idx].mean(1))
    if other is not None:
        own_other = ref_ppl / token_perplexity(other["_nll"], other["_tokens"], idx)
        reference["own_other_perplexity_ratio"] = reference["perplexity"] / other["perplexity"]
        reference["own_other_perplexity_ratio_ci"] = interval(own_other)
        if reference.get("_rougeL") is not None and other.get("_rougeL") is not None:
            r_own, r_other = reference["_rougeL"][idx].mean(1), other["_rougeL"][idx].mean(1)
            reference["own_other_rougeL_ratio"] = float(reference["_rougeL"].mean() / max(other["_rougeL"].mean(), 1e-12))
            reference["own_other_rougeL_ratio_ci"] = interval(r_own / np.maximum(r_other, 1e-12))


def author_bootstrap(rows: list[dict], reference: dict, num_authors: int, queries_per_author: int,
                     resamples: int, seed: int) -> None:
    """Paired 95% intervals in place, resampling authors with all their queries (rows are author-major,
    Q queries each): each row's perplexity, and its difference from the reference row. An author's
    queries share one soft prompt, so they are not independent draws."""
    authors = np.random.default_rng(seed).integers(0, num_authors, size=(resamples, num_authors))
    idx = (authors[:, :, None] * queries_per_author + np.arange(queries_per_author)).reshape(resamples, -1)
    ref_ppl = token_perplexity(reference["_nll"], reference["_tokens"], idx)
    for row in rows:
        perplexity_intervals(row, reference, idx, ref_ppl)


def fit_power_law(ns: list[int], ppl: list[float]) -> dict:
    """Figure 4: perplexity = a·n^b + c (least squares), and the log-log line log p = log a + b log n; R² of each."""
    x, y = np.asarray(ns, float), np.asarray(ppl, float)

    def r2(pred):
        ss = float(((y - y.mean()) ** 2).sum())
        return 1.0 - float(((y - pred) ** 2).sum()) / ss if ss > 0 else 1.0

    b, log_a = np.polyfit(np.log(x), np.log(y), 1)
    out = {"loglog": {"a": float(np.exp(log_a)), "b": float(b), "r2": r2(np.exp(log_a) * x ** b)}}
    if len(x) >= 4:
        try:
            from scipy.optimize import curve_fit
            p0 = (max(y[0] - y[-1], 1e-3), -0.5, float(y.min()) * 0.9)
            (pa, pb, pc), _ = curve_fit(lambda n, a, b, c: a * n ** b + c, x, y, p0=p0, maxfev=20000,
                                        bounds=([-np.inf, -5.0, -np.inf], [np.inf, 5.0, np.inf]))
            out["power"] = {"a": float(pa), "b": float(pb), "c": float(pc), "r2": r2(pa * x ** pb + pc)}
        except Exception as exc:  # no convergence: the log-log line still stands
            log.warning("power-law fit with offset did not converge (%s)", exc.__class__.__name__)
    return out
