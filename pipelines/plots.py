"""PNG plots of an evaluation, drawn from the metrics JSON alone (no per-query data needed).

Every plot is written even when there is nothing to show (e.g. no references), with a note
saying so, so a report that links to them never has a broken image.
"""
from __future__ import annotations

import io

import matplotlib
from apache_beam.io.filesystems import FileSystems

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

QUALITY_PLOT = "quality_vs_doc_count.png"
USER_ROUGE_PLOT = "per_user_rougeL.png"
PERPLEXITY_PLOT = "perplexity_histogram.png"
# A line between buckets claims a trend: drawn only across this many buckets with this many scored queries each.
TREND_MIN_BUCKETS = 3
TREND_MIN_QUERIES = 5


def shows_trend(rows: list[dict]) -> bool:
    """Whether the buckets support a trend line (else points only, each with its count)."""
    return len(rows) >= TREND_MIN_BUCKETS and all(r["with_reference"] >= TREND_MIN_QUERIES for r in rows)


def _save(fig, path: str) -> None:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    with FileSystems.create(path) as f:
        f.write(buffer.getvalue())


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="grey")
    ax.set_xticks([])
    ax.set_yticks([])


def quality_vs_doc_count(by_doc_count: list[dict], path: str, title: str = "") -> None:
    """Mean ROUGE-1/ROUGE-L (and perplexity) per bucket of the user's document count."""
    rows = [r for r in by_doc_count if r["queries"]]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    if not any(r["with_reference"] for r in rows):
        _empty(ax, "no predictions with a reference")
    else:
        rows = [r for r in rows if r["with_reference"]]
        labels = [("none" if r["bucket"] == "0" else r["bucket"]) + f"\n(n={r['with_reference']})" for r in rows]
        x = list(range(len(rows)))
        line = "-" if shows_trend(rows) else "none"  # points only: too few buckets or queries for a trend
        for key, name, marker, shift in (("rouge1", "ROUGE-1", "o", -0.06), ("rougeL", "ROUGE-L", "s", 0.06)):
            at = x if line == "-" else [i + shift for i in x]  # side by side, so equal values both show
            ax.plot(at, [r[key] if r[key] is not None else float("nan") for r in rows], marker=marker, label=name,
                    linestyle=line)
        if line == "none":
            title = title or (f"Quality against the number of documents\n(points only: a trend needs ≥ "
                              f"{TREND_MIN_BUCKETS} buckets with ≥ {TREND_MIN_QUERIES} queries each)")
        ax.set_xlim(-0.5, len(rows) - 0.5)
        ax.set_xticks(x, labels)
        ax.set_xlabel("documents behind the answer: in the soft prompt, or in the prompt text (n = queries scored)")
        ax.set_ylabel("mean F-measure")
        ax.set_ylim(0, max(0.05, max((r["rouge1"] or 0) for r in rows) * 1.25))
        ppl = [r["perplexity"]["mean"] for r in rows]
        if any(p is not None for p in ppl):
            twin = ax.twinx()
            twin.plot(x, [p if p is not None else float("nan") for p in ppl], color="tab:red",
                      linestyle="--" if line == "-" else "none", marker="^", label="perplexity")
            twin.set_ylabel("mean perplexity of the reference", color="tab:red")
            known = [p for p in ppl if p is not None]
            if max(known) > 10 * min(known):  # a log axis only where the values span a decade
                twin.set_yscale("log")
            lines = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
            ax.legend(lines, [ln.get_label() for ln in lines], loc="upper left", fontsize=8)
        else:
            ax.legend(loc="upper left", fontsize=8)
    ax.set_title(title or "Quality against the number of documents")
    _save(fig, path)


def _bars(ax, histogram: dict, log_x: bool = False) -> None:
    edges, counts = histogram["edges"], histogram["counts"]
    lefts, widths = edges[:-1], [b - a for a, b in zip(edges[:-1], edges[1:])]
    ax.bar(lefts, counts, width=widths, align="edge", edgecolor="white", color="tab:blue")
    if log_x:
        ax.set_xscale("log")
    used = [i for i, c in enumerate(counts) if c]
    if used:
        ax.set_xlim(edges[used[0]], edges[used[-1] + 1])


def per_user_rouge(distribution: dict, path: str, title: str = "") -> None:
    """Histogram of per-user mean ROUGE-L: is quality even across users, or driven by a few?"""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    if not distribution["count"]:
        _empty(ax, "no users with a reference")
    else:
        _bars(ax, distribution["histogram"])
        ax.set_xlim(0, 1)
        ax.axvline(distribution["mean"], color="tab:orange", linestyle="--",
                   label=f"mean over users = {distribution['mean']:.3f}")
        ax.set_xlabel("mean ROUGE-L of the user's queries")
        ax.set_ylabel("users")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=8)
    ax.set_title(title or f"Per-user ROUGE-L ({distribution['count']} users)")
    _save(fig, path)


def perplexity_histogram(perplexity: dict, path: str, title: str = "") -> None:
    """Histogram of per-query perplexity of the reference, on a log axis."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    histogram = perplexity.get("histogram")
    if not perplexity["count"] or histogram is None:
        _empty(ax, "no perplexities (no query had a reference)")
    else:
        _bars(ax, histogram, log_x=True)
        ax.axvline(perplexity["geometric_mean"], color="tab:orange", linestyle="--",
                   label=f"geometric mean = {perplexity['geometric_mean']:.3g}")
        if histogram["above"]:
            ax.text(0.98, 0.95, f"{histogram['above']} above {histogram['edges'][-1]:.0e}",
                    ha="right", va="top", transform=ax.transAxes, fontsize=8)
        ax.set_xlabel("perplexity of the reference answer (log scale)")
        ax.set_ylabel("queries")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=8)
    ax.set_title(title or f"Perplexity of the reference ({perplexity['count']} queries)")
    _save(fig, path)


def write_all(metrics: dict, folder: str) -> list[str]:
    """The three plots for a metrics JSON; returns their paths."""
    folder = folder.rstrip("/")
    paths = [f"{folder}/{QUALITY_PLOT}", f"{folder}/{USER_ROUGE_PLOT}", f"{folder}/{PERPLEXITY_PLOT}"]
    quality_vs_doc_count(metrics["by_doc_count"], paths[0])
    per_user_rouge(metrics["per_user"]["rougeL"], paths[1])
    perplexity_histogram(metrics["overall"]["perplexity"], paths[2])
    return paths
