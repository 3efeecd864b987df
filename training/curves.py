"""A training run's curves: the stages' metrics.jsonl in one file, validation perplexity plotted."""
from __future__ import annotations

import json
from pathlib import Path


def combined_metrics(out: Path) -> Path:
    """metrics.jsonl of the stages (and the baseline), each record tagged with its stage."""
    target = out / "metrics.jsonl"
    with target.open("w") as f:
        for stage in ("stage1", "stage2", "baseline"):
            source = out / stage / "metrics.jsonl"
            if source.exists():
                for line in source.read_text().splitlines():
                    f.write(json.dumps({"stage": stage, **json.loads(line)}) + "\n")
    return target


def plot_validation(metrics: Path, target: Path) -> None:
    """Validation perplexity against steps, one panel per stage (stage 1 = reconstruction); the
    baseline (prompt tuning, no documents) shares stage 2's panel: same validation examples."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    titles = {"stage1": "stage 1: single-document reconstruction", "stage2": "stage 2: news headlines"}
    labels = {"stage1": "ComMer", "stage2": "ComMer (own documents)", "baseline": "prompt tuning, no documents"}
    for ax, stages in zip(axes, (("stage1",), ("stage2", "baseline"))):
        for stage in stages:
            points = [(r["step"], r["val_ppl"]) for r in rows if r["stage"] == stage and "val_ppl" in r]
            if points:
                ax.plot(*zip(*points), marker="o", label=labels[stage])
                ax.set_yscale("log")
        if len(stages) > 1:
            ax.legend()
        ax.set_title(titles[stages[0]])
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("validation perplexity (log)")
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    fig.savefig(target, dpi=110)
    plt.close(fig)
