"""Plots that tell the truth: the profile's effect on the same queries, never across users; axes that fit the
values; integer count axes."""
import pytest

from pipelines import plots


def bucket(label, lo, pairs, without=200.0, with_profile=150.0):
    paired = {"queries": pairs, "perplexity_without_profile": without if pairs else None,
              "perplexity_with_profile": with_profile if pairs else None,
              "ratio": with_profile / without if pairs else None}
    return {"bucket": label, "min_docs": lo, "max_docs": lo, "queries": max(pairs, 1), "with_reference": max(pairs, 1),
            "rouge1": 0.2, "rougeL": 0.1, "perplexity": {"geometric_mean": 50.0}, "paired": paired}


@pytest.fixture
def figures(monkeypatch):
    saved = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: saved.append(fig))
    return saved


def test_quality_plot_compares_each_bucket_with_itself(figures):
    """The issue's case: 'none (n=1)' beside '5-8 (n=12)' read as 'personalization hurts'. Now a bucket without
    pairs (no profile) is not drawn, each drawn bucket shows the same queries both ways, and no line joins buckets."""
    plots.quality_vs_doc_count([bucket("0", 0, 0), bucket("5-8", 5, 12, 474.6, 420.0)], "unused.png")
    ax = figures[0].axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["5-8\n(n=12)"]
    heights = sorted(round(p.get_height(), 1) for p in ax.patches)
    assert heights == [420.0, 474.6]
    assert not ax.get_lines()  # no trend line across different users' queries
    assert any(t.get_text() == "×0.88" for t in ax.texts)


def test_quality_plot_without_pairs_says_so(figures):
    plots.quality_vs_doc_count([bucket("0", 0, 0)], "unused.png")
    assert "no query scored with and without its profile" in figures[0].axes[0].texts[0].get_text()


def test_per_user_axis_fits_the_values(figures):
    """Every per-user ROUGE-L below 0.2 used to sit in the left fifth of a fixed 0-1 axis."""
    edges = [i / 20 for i in range(21)]
    counts = [1, 2, 3, 1] + [0] * 16  # values in [0, 0.2)
    plots.per_user_rouge({"count": 7, "mean": 0.09, "histogram": {"edges": edges, "counts": counts}}, "unused.png")
    assert figures[0].axes[0].get_xlim() == (0.0, 0.2)


def test_count_axes_have_integer_ticks(figures):
    plots.per_user_rouge({"count": 3, "mean": 0.2, "histogram": {"edges": [0, 0.25, 0.5, 0.75, 1.0],
                                                                "counts": [1, 2, 0, 0]}}, "unused.png")
    plots.perplexity_histogram({"count": 3, "geometric_mean": 40.0,
                                "histogram": {"edges": [1, 10, 100, 1000], "counts": [0, 2, 1], "above": 0}},
                               "unused.png")
    for fig in figures:
        ticks = fig.axes[0].get_yticks()
        assert all(float(t).is_integer() for t in ticks)
