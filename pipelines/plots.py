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
    """The profile's effect by the user's document count, like with like: per bucket, the perplexity of the
    SAME queries' references with and without the profile (geometric means; generate scores both). Comparing
    buckets with each other would compare different users and queries, so no line joins them."""
    rows = [r for r in by_doc_count if (r.get("paired") or {}).get("queries")]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    if not rows:
        _empty(ax, "no query scored with and without its profile\n(no personalized query with a reference, or "
                   "predictions from\na generate that did not score both)")
    else:
        x = list(range(len(rows)))
        without = [r["paired"]["perplexity_without_profile"] for r in rows]
        with_profile = [r["paired"]["perplexity_with_profile"] for r in rows]
        ax.bar([i - 0.2 for i in x], without, width=0.4, color="tab:gray", label="without the profile")
        ax.bar([i + 0.2 for i in x], with_profile, width=0.4, color="tab:blue", label="with the profile")
        for i, r in zip(x, rows):
            ax.annotate(f"×{r['paired']['ratio']:.2f}", (i, max(without[i], with_profile[i])), ha="center",
                        va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")
        if max(without + with_profile) > 10 * min(without + with_profile):
            ax.set_yscale("log")  # a log axis only where the values span a decade
        ax.set_xticks(x, [f"{r['bucket']}\n(n={r['paired']['queries']})" for r in rows])
        ax.set_xlabel("documents in the user's profile (n = queries scored both ways)")
        ax.set_ylabel("perplexity of the reference\n(geometric mean over the same queries)")
        ax.legend(loc="upper right", fontsize=8)
    ax.set_title(title or "What the profile changes, on the same queries (×: with / without)")
    _save(fig, path)


def _bars(ax, histogram: dict, log_x: bool = False) -> float:
    """Histogram bars; the axis spans the bins that hold values. Returns the upper edge of the last one."""
    edges, counts = histogram["edges"], histogram["counts"]
    lefts, widths = edges[:-1], [b - a for a, b in zip(edges[:-1], edges[1:])]
    ax.bar(lefts, counts, width=widths, align="edge", edgecolor="white", color="tab:blue")
    if log_x:
        ax.set_xscale("log")
    used = [i for i, c in enumerate(counts) if c]
    if used:
        ax.set_xlim(edges[used[0]], edges[used[-1] + 1])
    return edges[used[-1] + 1] if used else edges[-1]


def per_user_rouge(distribution: dict, path: str, title: str = "") -> None:
    """Histogram of per-user mean ROUGE-L: is quality even across users, or driven by a few?"""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    if not distribution["count"]:
        _empty(ax, "no users with a reference")
    else:
        top = _bars(ax, distribution["histogram"])
        ax.set_xlim(0, top)  # from 0 (the scale's floor) to the highest bin used: all values readable
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
