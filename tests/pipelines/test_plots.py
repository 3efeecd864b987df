"""Plots that tell the truth: a trend line only where buckets support one; integer count axes."""
import pytest

from pipelines import plots


def bucket(label, lo, n, r1=0.2):
    return {"bucket": label, "min_docs": lo, "max_docs": lo, "queries": n, "with_reference": n,
            "rouge1": r1, "rougeL": r1 / 2, "perplexity": {"mean": 50.0}}


@pytest.fixture
def figures(monkeypatch):
    saved = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: saved.append(fig))
    return saved


def test_trend_rule():
    assert plots.shows_trend([bucket("1", 1, 5), bucket("2", 2, 5), bucket("3-4", 3, 9)])
    assert not plots.shows_trend([bucket("1", 1, 5), bucket("2", 2, 5)])               # two buckets
    assert not plots.shows_trend([bucket("1", 1, 5), bucket("2", 2, 4), bucket("3", 3, 9)])  # one thin bucket


@pytest.mark.parametrize("rows, lines", [([bucket("5-8", 5, 12), bucket("0", 0, 1)], False),
                                         ([bucket("1", 1, 5), bucket("2", 2, 6), bucket("3-4", 3, 7)], True)])
def test_quality_plot_draws_a_line_only_for_a_trend(rows, lines, figures):
    plots.quality_vs_doc_count(rows, "unused.png")
    ax = figures[0].axes[0]
    styles = {line.get_linestyle() for line in ax.get_lines()}
    assert styles == ({"-"} if lines else {"None"})
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert all("(n=" in label for label in labels)  # every point says how many queries it stands for


def test_count_axes_have_integer_ticks(figures):
    plots.per_user_rouge({"count": 3, "mean": 0.2, "histogram": {"edges": [0, 0.25, 0.5, 0.75, 1.0],
                                                                "counts": [1, 2, 0, 0]}}, "unused.png")
    plots.perplexity_histogram({"count": 3, "geometric_mean": 40.0,
                                "histogram": {"edges": [1, 10, 100, 1000], "counts": [0, 2, 1], "above": 0}},
                               "unused.png")
    for fig in figures:
        ticks = fig.axes[0].get_yticks()
        assert all(float(t).is_integer() for t in ticks)
