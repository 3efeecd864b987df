"""What the evaluations write: rows.jsonl, the markdown tables (table.md) and the plots.

A row is a dict; keys starting with "_" hold its per-example arrays, which stay out of every
output (`public`). Intervals print as 'value [lo, hi]' (`with_interval`).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from training.evaluation.retrieved_rows import notes

ROUGE_NOTE = "ROUGE: rouge-score F-measure, no stemmer (LaMP's convention)"


def public(row: dict) -> dict:
    """The row without its per-example arrays."""
    return {k: v for k, v in row.items() if not k.startswith("_")}


def write_rows(path: Path, header: dict, rows: list[dict], extras: dict | None = None) -> None:
    """rows.jsonl: the header, one line per row, then one line per extra result (fit, probe, ...)."""
    with open(path, "w") as f:
        f.write(json.dumps({"kind": "header", **header}) + "\n")
        for row in rows:
            f.write(json.dumps(public(row)) + "\n")
        for name, value in (extras or {}).items():
            f.write(json.dumps({"kind": name, "value": value}) + "\n")


def with_interval(row: dict, key: str, digits: int) -> str:
    """'value [lo, hi]' (signed for differences), '' when the row has no such value."""
    if key not in row:
        return ""
    sign = "+" if key.startswith("delta") else ""
    text = f"{row[key]:{sign}.{digits}f}"
    if f"{key}_ci" in row:
        lo, hi = row[f"{key}_ci"]
        text += f" [{lo:{sign}.{digits}f}, {hi:{sign}.{digits}f}]"
    return text


# ---- the evaluation with controls --------------------------------------------------------

def controls_table(path: Path, rows: list[dict], extras: dict, header: dict, reference: str) -> str:
    """table.md of the evaluation with controls: the rows, then the notes, fits, probe and Figure 6."""
    generated = any("rougeL" in r for r in rows)
    lines = [f"### Evaluation with controls — news headlines, {header['split']} authors ({header['date']})", "",
             f"`{header['command']}`", "",
             f"Checkpoint `{header['checkpoint']}` (trained={header['trained']}, fingerprint "
             f"`{header['fingerprint'][:12]}`), {header['examples']} examples from {header['authors']} {header['split']} authors, "
             f"the same examples in every row (retrieved and length-filtered at n={header['largest_n']}). "
             f"Perplexity is token-level over answer tokens; intervals are paired bootstrap 95% "
             f"({header['resamples']} resamples of examples, seed {header['seed']}); Δ is the row minus "
             f"**{reference}**. " + (f"Greedy decoding, {ROUGE_NOTE}; seconds include decoding where a row has ROUGE."
                                       if generated else "ROUGE skipped (--no_generate)."),
             ""]
    cols = ["Row", "Docs used (mean)", "Prompt tokens", "Perplexity [95% CI]", "Δ perplexity [95% CI]"]
    if generated:
        cols += ["ROUGE-1", "ROUGE-L", "Δ ROUGE-L [95% CI]"]
    cols += ["Seconds"]
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [r["label"], f"{r['mean_documents']:.2f}", f"{r['mean_prompt_tokens']:.1f}", with_interval(r, "perplexity", 2),
                 with_interval(r, "delta_perplexity", 2)]
        if generated:
            cells += [f"{r['rouge1']:.4f}", f"{r['rougeL']:.4f}", with_interval(r, "delta_rougeL", 4)] if "rougeL" in r \
                else ["–", "–", "–"]
        cells += [f"{r['seconds']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    for note in header["skipped"]:
        lines.append(f"\n_Skipped: {note}_")
    lines += notes(rows, extras.get("retrieval"))
    ref = next((r for r in rows if r["label"] == reference), None)
    if ref and "own_other_perplexity_ratio" in ref:
        lo, hi = ref["own_other_perplexity_ratio_ci"]
        lines += ["", f"**Personalization control**: perplexity own/other (4 documents) = "
                      f"{ref['own_other_perplexity_ratio']:.3f} [95% CI {lo:.3f}, {hi:.3f}] (below 1: the author's own "
                      f"documents help more than another author's)."]
        if "own_other_rougeL_ratio" in ref:
            lo, hi = ref["own_other_rougeL_ratio_ci"]
            lines.append(f"ROUGE-L own/other = {ref['own_other_rougeL_ratio']:.3f} [95% CI {lo:.3f}, {hi:.3f}].")
    fit = extras.get("fit")
    if fit:
        ll = fit["loglog"]
        text = f"**Figure 4 fit** (ComMer own, n = {', '.join(map(str, fit['n']))}): log-log line perplexity ≈ " \
               f"{ll['a']:.3f}·n^{ll['b']:.4f}, R² = {ll['r2']:.3f}"
        if "power" in fit:
            pw = fit["power"]
            text += f"; with offset {pw['a']:.3f}·n^{pw['b']:.3f} + {pw['c']:.3f}, R² = {pw['r2']:.3f}"
        lines += ["", text + "."]
    probe = extras.get("probe")
    if probe:
        lines += ["", f"**Reconstruction probe** (stands in for PerLTQA, Figure 5): perplexity of reading one "
                      f"held-out HuffPost short description (≤150 chars, {header['split']} authors, {probe[0]['examples']} targets, "
                      f"the same at every m) back out of the mean of m compressions, format of the pretraining task.", "",
                  "| Merged documents m | " + " | ".join(str(p["num_merged"]) for p in probe) + " | no soft prompt |",
                  "|---|" + "---|" * (len(probe) + 1),
                  "| Perplexity | " + " | ".join(f"{p['perplexity']:.2f}" for p in probe)
                  + f" | {probe[0].get('reference_perplexity', float('nan')):.2f} |"]
    fig6 = extras.get("figure6")
    if fig6:
        lines += ["", "**Figure 6** (perplexity; in brackets the difference from the diagonal, "
                      "perplexity(test m, train n) − perplexity(test n, train n)):", "",
                  "| Test m \\ Train n | " + " | ".join(str(n) for n in fig6["train"]) + " |",
                  "|---|" + "---|" * len(fig6["train"])]
        for m in fig6["test"]:
            lines.append(f"| {m} | " + " | ".join(
                f"{fig6['perplexity'][str(m)][str(n)]:.2f} ({fig6['difference'][str(m)][str(n)]:+.2f})"
                for n in fig6["train"]) + " |")
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


def controls_plots(folder: Path, rows: list[dict], extras: dict, reference: str) -> list[str]:
    """perplexity_vs_documents.png, reconstruction_vs_merged.png, own_other_none.png (those with data)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullLocator

    written = []

    def save(fig, name: str) -> None:
        fig.tight_layout()
        fig.savefig(folder / name, dpi=120)
        plt.close(fig)
        written.append(name)

    def err(r):
        lo, hi = r.get("perplexity_ci", (r["perplexity"], r["perplexity"]))
        return [[r["perplexity"] - lo], [hi - r["perplexity"]]]

    def count_axis(ax, ticks):
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([str(t) for t in ticks])

    own = [r for r in rows if r["group"] == "own" and r["num_documents"] > 0]  # n = 0 is a line, like "none"
    if own:
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        ns = [r["num_documents"] for r in own]
        for r in own:
            ax.errorbar(r["num_documents"], r["perplexity"], yerr=err(r), fmt="o", color="C0", capsize=3)
        for j, r in enumerate(r for r in rows if r["method"] == "retrieved_bm25"):  # offset so the bars stay apart
            ax.errorbar(r["num_documents"] * 1.06, r["perplexity"], yerr=err(r), fmt="s", color="C2", capsize=3,
                        label=None if j else "retrieved top-M (bm25) among all the author's articles")
        fit = extras.get("fit")
        if fit:
            grid = np.geomspace(min(ns), max(ns), 100)
            ll = fit["loglog"]
            ax.plot(grid, ll["a"] * grid ** ll["b"], "--", color="C0",
                    label=f"log-log fit {ll['a']:.2f}·n^{ll['b']:.3f} (R²={ll['r2']:.2f})")
            if "power" in fit:
                pw = fit["power"]
                ax.plot(grid, pw["a"] * grid ** pw["b"] + pw["c"], ":", color="C3",
                        label=f"{pw['a']:.2f}·n^{pw['b']:.2f}+{pw['c']:.2f} (R²={pw['r2']:.2f})")
        for r, color in ((next((r for r in rows if r["label"] == "none"), None), "C7"),
                         (next((r for r in rows if r["group"] == "own" and r["num_documents"] == 0), None), "C5"),
                         (next((r for r in rows if r["group"] == "other"), None), "C1"),
                         (next((r for r in rows if r["method"] == "merge_all"), None), "C4")):
            if r is not None:
                ax.axhline(r["perplexity"], color=color, lw=1, label=f"{r['label']} ({r['perplexity']:.2f})")
        count_axis(ax, ns)
        ax.set_xlabel("number of the author's documents merged (n)")
        ax.set_ylabel("perplexity (token-level)")
        ax.set_title("ComMer: perplexity vs number of documents (95% CI)")
        ax.legend(fontsize=8)
        save(fig, "perplexity_vs_documents.png")

    probe = extras.get("probe")
    if probe:
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        ms = [p["num_merged"] for p in probe]
        ax.plot(ms, [p["perplexity"] for p in probe], "o-", label="ComMer: mean of m compressions")
        if "reference_perplexity" in probe[0]:
            ax.axhline(probe[0]["reference_perplexity"], color="C7", ls="--",
                       label=f"no soft prompt ({probe[0]['reference_perplexity']:.1f})")
        count_axis(ax, ms)
        values = [p["perplexity"] for p in probe] + [probe[0].get("reference_perplexity", probe[0]["perplexity"])]
        if max(values) / max(min(values), 1e-9) > 10:
            from matplotlib.ticker import ScalarFormatter
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.set_xlabel("documents merged (m)")
        ax.set_ylabel("reconstruction perplexity of one document")
        ax.set_title("Knowledge probe: reading one document back out of a merge")
        ax.legend(fontsize=8)
        save(fig, "reconstruction_vs_merged.png")

    bars = [r for r in rows if r["label"] in ("none", "prompt tuning (no documents)", "ComMer other 4", reference)]
    if bars:
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        x = np.arange(len(bars))
        lo = [r["perplexity"] - r.get("perplexity_ci", [r["perplexity"]] * 2)[0] for r in bars]
        hi = [r.get("perplexity_ci", [r["perplexity"]] * 2)[1] - r["perplexity"] for r in bars]
        colors = {"none": "C7", "prompt tuning (no documents)": "C2", "ComMer other 4": "C1", reference: "C0"}
        ax.bar(x, [r["perplexity"] for r in bars], yerr=[lo, hi], capsize=6, color=[colors[r["label"]] for r in bars])
        for xi, r in zip(x, bars):
            ax.annotate(f"{r['perplexity']:.2f}", (xi, r["perplexity"]), textcoords="offset points", xytext=(10, 4),
                        fontsize=8)
        ax.set_xticks(x)
        import textwrap
        ax.set_xticklabels([textwrap.fill(r["label"], 14) for r in bars], fontsize=9)
        low = min(r["perplexity"] - l for r, l in zip(bars, lo))
        high = max(r["perplexity"] + h for r, h in zip(bars, hi))
        ax.set_ylim(max(0.0, low - 0.5 * (high - low) - 1e-3), high + 0.25 * (high - low) + 1e-3)
        ax.set_ylabel("perplexity (token-level, 95% CI)")
        ax.set_title("Own vs another author's documents vs none")
        save(fig, "own_other_none.png")
    return written


# ---- recency -------------------------------------------------------------------------------

def recency_table(path: Path, rows: list[dict], header: dict, reference: str) -> str:
    """table.md of the recency evaluation."""
    lines = [f"### Recency-weighted profiles — news headlines, test authors, split by date ({header['date']})", "",
             f"`{header['command']}`", "",
             f"Checkpoint `{header['checkpoint']}` (trained={header['trained']}, fingerprint "
             f"`{header['fingerprint'][:12]}`). {header['authors']} test authors (of {header['qualifying_authors']} "
             f"qualifying, {header['test_authors']} in the test split), {header['queries_per_author']} queries each "
             f"({header['queries']} in all): per author the newest {header['queries_per_author']} articles are the "
             f"queries and the up to {header['profile_documents']} articles dated strictly before the earliest of them "
             f"are the profile (at least {header['min_profile_documents']}; mean "
             f"{header['mean_profile_documents']:.1f} per author), each compressed once. Every soft prompt is "
             f"`commer.recency`'s mean as of the **earliest query's date**, weights 2^(−age/h). Profile documents' "
             f"age at that date: mean {header['mean_profile_age_days']:.0f} days (median "
             f"{header['median_profile_age_days']:.0f}, range {header['min_profile_age_days']:.0f}–"
             f"{header['max_profile_age_days']:.0f}). Perplexity is token-level over the headline tokens; intervals "
             f"are paired bootstrap 95% ({header['resamples']} resamples of **authors**, each with all its queries, "
             f"seed {header['seed']}); Δ is the row minus **{reference}** (negative: better).", "",
             "| Row | Weighted profile age (days) | Effective documents | Perplexity [95% CI] | "
             "Δ vs plain mean [95% CI] |", "|---|---|---|---|---|"]
    for r in rows:
        age = "—" if r["weighted_profile_age_days"] is None else f"{r['weighted_profile_age_days']:.0f}"
        eff = "—" if r["effective_documents"] is None else f"{r['effective_documents']:.1f}"
        lines.append(f"| {r['label']} | {age} | {eff} | {with_interval(r, 'perplexity', 3)} | {with_interval(r, 'delta_perplexity', 3)} |")
    lines += ["", "Weighted profile age: Σ w·age / Σ w per author, averaged; effective documents: (Σw)²/Σw² per "
                  "author, averaged (the plain mean uses every document fully)."]
    if header["undated_articles"]:
        lines.append(f"\n_{header['undated_articles']} test-author articles without a readable date were left out._")
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text
