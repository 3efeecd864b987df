"""Evaluation with controls (issue 11, item 4): is ComMer's gain personalization, and what does it cost?

    OMP_NUM_THREADS=1 python -m training.evaluate_controls \
        --data /work/shared/data/huffpost/news_category_v3_subset.jsonl \
               /work/shared/data/huffpost/news_category_v2_extra.jsonl \
        --checkpoint commer/checkpoints/default --max_examples 400 --output eval/controls

News headline task, test authors (`--split val`: validation authors, for choosing between settings). Every row scores the SAME examples: documents are retrieved
once at the largest n (BM25 over the author's other articles, best first, cut to the first n
per row) and the 2,900-character filter is applied at that largest n.

Rows
    none                 instruction only, frozen backbone
    prompt tuning        P soft tokens, no documents          (--prompt_tuning_nodocs or --prompt_tuning)
    ComMer own n         the author's own documents, n = 1 2 4 8 16 (mean of compressions)
    ComMer other 4       BM25 top-4 for the same query over ANOTHER test author's articles
                         (seeded choice per example, never the same author): the personalization control
    ComMer concat 4      the 4 compressions concatenated, 4·K soft tokens (paper Figure 7)
    text n               documents as text in the prompt, frozen backbone, n = 1 4 8
    ComMer retrieved top-M (bm25), similarity top-M, merge=all     (--retrieved_top_m; issue 16)
                         query-time merge of the author's most relevant stored compressions, chosen
                         among ALL the author's other articles as pipelines.generate --merge=retrieved
                         chooses them (training/retrieved_rows.py)
    prompt tuning text n prompt tuning with documents as text, n = 1 4      (--prompt_tuning)
Columns: prompt tokens, token-level perplexity, ROUGE-1/L (greedy decoding; rouge-score
WITHOUT stemmer, LaMP's convention), seconds; paired bootstrap 95% intervals (examples
resampled, seeded) of each row's difference from ComMer own 4, and the own/other ratio.
Also: Figure 4's fit of perplexity against n, the reconstruction probe (training/probes.py)
against the number of merged documents, and Figure 6's train-n/test-m table when
--checkpoint_n1 and --checkpoint_n4 are given.

Outputs in --output: rows.jsonl, table.md, perplexity_vs_documents.png,
reconstruction_vs_merged.png, own_other_none.png.
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import random
import re
import shlex
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from commer import ComMer
from commer.checkpoint import CheckpointError
from commer.defaults import default_checkpoint
from commer.metrics import rouge
from training.evaluate_task import score_examples
from training.probes import news_documents, reconstruction_perplexity
from training.prompt_tuning import PromptTuning
from training.retrieved_rows import RULES, AuthorPools, RetrievedScorer, notes, plan_rows, pool_summary
from training.tasks import DataError, Example
from training.tasks import news

log = logging.getLogger("training.evaluate_controls")

REFERENCE = "ComMer own 4"
ROUGE_NOTE = "ROUGE: rouge-score F-measure, no stemmer (LaMP's convention)"


# ---- ROUGE: one wrapper, so the metric's home can move without touching the rest -------

def rouge_pair(prediction: str, reference: str) -> dict[str, float]:
    """ROUGE-1 and ROUGE-L F-measure of one prediction, no stemmer (LaMP's convention)."""
    return rouge(prediction, reference, use_stemmer=False)


# ---- data --------------------------------------------------------------------------------

def test_articles(data) -> dict[str, list[dict]]:
    """Articles of the test-split authors (the news task's split)."""
    return news.authors_of(data, "test")


other_author_examples = news.other_author_examples  # the control's rule lives with the task


# ---- statistics --------------------------------------------------------------------------

def token_perplexity(nll: np.ndarray, tokens: np.ndarray, idx: np.ndarray | None = None):
    """exp(Σ NLL / Σ tokens); with idx (B, N) resample indices, one value per resample."""
    if idx is None:
        return float(np.exp(nll.sum() / max(tokens.sum(), 1.0)))
    return np.exp(nll[idx].sum(1) / np.maximum(tokens[idx].sum(1), 1.0))


def interval(samples: np.ndarray) -> list[float]:
    lo, hi = np.percentile(samples, [2.5, 97.5])
    return [float(lo), float(hi)]


def bootstrap(rows: list[dict], reference: dict, other: dict | None, resamples: int, seed: int) -> None:
    """Adds 95% percentile intervals in place: each row's perplexity and ROUGE, its paired
    difference from the reference row, and (on the reference row) the own/other ratio."""
    n = len(reference["_nll"])
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    ref_ppl = token_perplexity(reference["_nll"], reference["_tokens"], idx)
    for row in rows:
        if len(row["_nll"]) != n:
            continue
        ppl = token_perplexity(row["_nll"], row["_tokens"], idx)
        row["perplexity_ci"] = interval(ppl)
        row["delta_perplexity"] = row["perplexity"] - reference["perplexity"]
        row["delta_perplexity_ci"] = interval(ppl - ref_ppl)
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


# ---- scoring -----------------------------------------------------------------------------

def _progress(label: str):
    tty = sys.stderr.isatty()
    start = "\r" if tty else ""

    def report(done: int, total: int) -> None:
        end = "" if tty and done < total else "\n"
        print(f"{start}  {label}: {done}/{total} examples", end=end, file=sys.stderr, flush=True)
    return report


def decodes(args, n: int, method: str = "") -> bool:
    """Whether a row with n documents is decoded for ROUGE (greedy decoding is most of a row's time on CPU).
    merge=all's n is not a document count (it merges every candidate): only decoded when all rows are."""
    if args.no_generate:
        return False
    return args.rouge_documents is None or (method != "merge_all" and n in args.rouge_documents)


def score_row(label: str, group: str, model, method: str, examples: list[Example], n: int, args,
              score=score_examples) -> dict:
    decode = decodes(args, n, method)
    scored = score(model, method, examples, n, args.batch_size, args.max_new_tokens,
                   decode, progress=_progress(label))
    nll, tokens = np.asarray(scored["nll"], float), np.asarray(scored["tokens"], float)
    row = {"kind": "row", "group": group, "label": label, "method": method, "num_documents": n,
           "examples": len(examples), "mean_documents": float(np.mean(scored["documents"])),
           "mean_prompt_tokens": float(np.mean(scored["prompt_tokens"])),
           "perplexity": token_perplexity(nll, tokens), "seconds": scored["seconds"],
           "_nll": nll, "_tokens": tokens}
    if scored.get("overlap"):  # query-time merge rows: share of the chosen documents own M also used
        row["overlap_with_own"] = float(np.mean(scored["overlap"]))
    if decode:
        scores = [rouge_pair(p, e.answer) for p, e in zip(scored["predictions"], examples)]
        for metric in ("rouge1", "rougeL"):
            row[f"_{metric}"] = np.asarray([s[metric] for s in scores], float)
            row[metric] = float(row[f"_{metric}"].mean())
    log.info("%s: perplexity %.3f%s (%.1f s)", label, row["perplexity"],
             "" if not decode else f", ROUGE-1 {row['rouge1']:.4f}, ROUGE-L {row['rougeL']:.4f}", row["seconds"])
    return row


# Rows that never read the ComMer checkpoint's trained weights: they depend on its backbone and
# generator settings only, so a new checkpoint on the same backbone reuses them.
CHECKPOINT_FREE = ("none", "text", "prompt_tuning", "text_retrieved_bm25")


class RowCache:
    """Each scored row (with its per-example arrays) saved as it finishes, so a killed run can
    go on with --resume; rows are reused only when the run's signature (checkpoint, data,
    examples, settings) and the row's own model are the same. A checkpoint-free row (no
    personalization, documents as text, prompt tuning) is keyed on `backbone` (the backbone's
    content hash and generator settings) instead of the checkpoint."""

    def __init__(self, folder: Path, signature: dict, backbone: dict | None = None):
        self.folder, self.signature, self.backbone = folder, signature, backbone

    def _expected(self, model: str | None, checkpoint_free: bool) -> dict:
        signature = dict(self.signature)
        if checkpoint_free and self.backbone is not None:
            del signature["checkpoint"], signature["fingerprint"]
            signature["backbone"] = self.backbone
        return {**signature, "model": model}

    def _path(self, label: str) -> Path:
        return self.folder / (re.sub(r"[^A-Za-z0-9]+", "_", label).strip("_") + ".json")

    def get(self, label: str, model: str | None = None, decoded: bool = False,
            checkpoint_free: bool = False) -> dict | None:
        """`model`: the folder a row scores with when it is not the run's checkpoint (prompt tuning,
        Figure 6), so adding or changing it re-scores only its own rows. `decoded`: the row needs
        ROUGE; a saved row with ROUGE also serves a row that does not."""
        path = self._path(label)
        if not path.exists():
            return None
        saved = json.loads(path.read_text())
        signature = dict(saved.get("signature", {}))
        saved_decoded = not signature.pop("no_generate", True)
        if signature != self._expected(model, checkpoint_free) or (decoded and not saved_decoded):
            return None
        row = saved["row"]
        for key, values in saved["arrays"].items():
            row[key] = np.asarray(values, float)
        return row

    def put(self, row: dict, model: str | None = None, checkpoint_free: bool = False) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        arrays = {k: v.tolist() for k, v in row.items() if k.startswith("_")}
        tmp = self._path(row["label"]).with_suffix(".tmp")
        signature = {**self._expected(model, checkpoint_free), "no_generate": "rougeL" not in row}
        tmp.write_text(json.dumps({"signature": signature, "row": public(row), "arrays": arrays}))
        os.replace(tmp, self._path(row["label"]))


def public(row: dict) -> dict:
    return {k: v for k, v in row.items() if not k.startswith("_")}


# ---- outputs -----------------------------------------------------------------------------

def _ci(row: dict, key: str, digits: int) -> str:
    """'value [lo, hi]' (signed for differences), '' when the row has no such value."""
    if key not in row:
        return ""
    sign = "+" if key.startswith("delta") else ""
    text = f"{row[key]:{sign}.{digits}f}"
    if f"{key}_ci" in row:
        lo, hi = row[f"{key}_ci"]
        text += f" [{lo:{sign}.{digits}f}, {hi:{sign}.{digits}f}]"
    return text


def write_table(path: Path, rows: list[dict], extras: dict, header: dict) -> str:
    generated = any("rougeL" in r for r in rows)
    lines = [f"### Evaluation with controls — news headlines, {header['split']} authors ({header['date']})", "",
             f"`{header['command']}`", "",
             f"Checkpoint `{header['checkpoint']}` (trained={header['trained']}, fingerprint "
             f"`{header['fingerprint'][:12]}`), {header['examples']} examples from {header['authors']} {header['split']} authors, "
             f"the same examples in every row (retrieved and length-filtered at n={header['largest_n']}). "
             f"Perplexity is token-level over answer tokens; intervals are paired bootstrap 95% "
             f"({header['resamples']} resamples of examples, seed {header['seed']}); Δ is the row minus "
             f"**{REFERENCE}**. " + (f"Greedy decoding, {ROUGE_NOTE}; seconds include decoding where a row has ROUGE."
                                       if generated else "ROUGE skipped (--no_generate)."),
             ""]
    cols = ["Row", "Docs used (mean)", "Prompt tokens", "Perplexity [95% CI]", "Δ perplexity [95% CI]"]
    if generated:
        cols += ["ROUGE-1", "ROUGE-L", "Δ ROUGE-L [95% CI]"]
    cols += ["Seconds"]
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [r["label"], f"{r['mean_documents']:.2f}", f"{r['mean_prompt_tokens']:.1f}", _ci(r, "perplexity", 2),
                 _ci(r, "delta_perplexity", 2)]
        if generated:
            cells += [f"{r['rouge1']:.4f}", f"{r['rougeL']:.4f}", _ci(r, "delta_rougeL", 4)] if "rougeL" in r \
                else ["–", "–", "–"]
        cells += [f"{r['seconds']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    for note in header["skipped"]:
        lines.append(f"\n_Skipped: {note}_")
    lines += notes(rows, extras.get("retrieval"))
    ref = next((r for r in rows if r["label"] == REFERENCE), None)
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


def plot_all(folder: Path, rows: list[dict], extras: dict) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullLocator

    written = []

    def err(r):
        lo, hi = r.get("perplexity_ci", (r["perplexity"], r["perplexity"]))
        return [[r["perplexity"] - lo], [hi - r["perplexity"]]]

    def count_axis(ax, ticks):
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([str(t) for t in ticks])

    own = [r for r in rows if r["group"] == "own"]
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
                         (next((r for r in rows if r["group"] == "other"), None), "C1"),
                         (next((r for r in rows if r["method"] == "merge_all"), None), "C4")):
            if r is not None:
                ax.axhline(r["perplexity"], color=color, lw=1, label=f"{r['label']} ({r['perplexity']:.2f})")
        count_axis(ax, ns)
        ax.set_xlabel("number of the author's documents merged (n)")
        ax.set_ylabel("perplexity (token-level)")
        ax.set_title("ComMer: perplexity vs number of documents (95% CI)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(folder / "perplexity_vs_documents.png", dpi=120)
        plt.close(fig)
        written.append("perplexity_vs_documents.png")

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
        fig.tight_layout()
        fig.savefig(folder / "reconstruction_vs_merged.png", dpi=120)
        plt.close(fig)
        written.append("reconstruction_vs_merged.png")

    bars = [r for r in rows if r["label"] in ("none", "prompt tuning (no documents)", "ComMer other 4", REFERENCE)]
    if bars:
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        x = np.arange(len(bars))
        lo = [r["perplexity"] - r.get("perplexity_ci", [r["perplexity"]] * 2)[0] for r in bars]
        hi = [r.get("perplexity_ci", [r["perplexity"]] * 2)[1] - r["perplexity"] for r in bars]
        colors = {"none": "C7", "prompt tuning (no documents)": "C2", "ComMer other 4": "C1", REFERENCE: "C0"}
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
        fig.tight_layout()
        fig.savefig(folder / "own_other_none.png", dpi=120)
        plt.close(fig)
        written.append("own_other_none.png")
    return written


# ---- main --------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.evaluate_controls", description=__doc__.split("\n")[0])
    p.add_argument("--data", nargs="+", required=True, help="HuffPost JSONL file(s); rows are concatenated.")
    p.add_argument("--checkpoint", default=None, help="ComMer checkpoint (default: the bundled one).")
    p.add_argument("--prompt_tuning", default=None, help="Prompt-tuning folder for the documents-as-text rows "
                                                          "(and the no-documents row unless --prompt_tuning_nodocs).")
    p.add_argument("--prompt_tuning_nodocs", default=None, help="Prompt-tuning folder for the no-documents row.")
    p.add_argument("--checkpoint_n1", default=None, help="Figure 6: ComMer trained with 1 document.")
    p.add_argument("--checkpoint_n4", default=None, help="Figure 6: ComMer trained with 4 documents.")
    p.add_argument("--documents", nargs="+", type=int, default=[1, 2, 4, 8, 16], help="ComMer own n.")
    p.add_argument("--other_documents", type=int, default=4)
    p.add_argument("--concat_documents", type=int, default=4, help="Concatenated compressions row (0: skip).")
    p.add_argument("--text_documents", nargs="*", type=int, default=[1, 4, 8])
    p.add_argument("--prompt_tuning_documents", nargs="*", type=int, default=[1, 4])
    p.add_argument("--retrieved_top_m", nargs="*", type=int, default=[],
                   help="Query-time merge rows (issue 16): ComMer retrieved top-M (bm25) for each M, plus the "
                        "similarity rows and ComMer merge=all; candidates = all of the author's other articles. "
                        "Default: none (rows skipped).")
    p.add_argument("--similarity_top_m", nargs="*", type=int, default=[4],
                   help="With --retrieved_top_m: ComMer similarity top-M rows (instruction's compression vs stored).")
    p.add_argument("--retrieved_text_top_m", nargs="*", type=int, default=None,
                   help="With --retrieved_top_m: the in-prompt baseline with the same documents as the bm25 rows, "
                        "for these M (default: every --retrieved_top_m).")
    p.add_argument("--example_documents", type=int, default=None,
                   help="Build and length-filter the examples at this n even if no row uses that many documents, "
                        "so rows can be added or left out later (--resume) on the same examples.")
    p.add_argument("--split", default="test", choices=["val", "test"],
                   help="Authors to evaluate on: test (reported figures) or val (choosing between settings, "
                        "so the test authors are never tuned on); the other-author control and the probe "
                        "use the same split.")
    p.add_argument("--max_examples", type=int, default=400)
    p.add_argument("--max_examples_per_user", type=int, default=None)
    p.add_argument("--probe_examples", type=int, default=64, help="Target documents of the reconstruction probe (0: skip).")
    p.add_argument("--probe_merged", nargs="+", type=int, default=[1, 2, 4, 8, 16])
    p.add_argument("--resamples", type=int, default=1000)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--max_new_tokens", type=int, default=24)
    p.add_argument("--no_generate", action="store_true", help="Perplexity only (skip greedy decoding/ROUGE).")
    p.add_argument("--rouge_documents", nargs="+", type=int, default=None,
                   help="Decode (ROUGE) only the rows with these numbers of documents, e.g. 0 4: the no-documents rows "
                        "and every row at n = 4 (default: all rows). ROUGE differences need the reference row "
                        "(ComMer own 4) decoded, in this run or a cached one.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num_threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="torch device for every model (e.g. cuda).")
    p.add_argument("--cache_dir", default=None)
    p.add_argument("--output", required=True, help="Output folder.")
    p.add_argument("--resume", action="store_true", help="Reuse rows an earlier, interrupted run of the same "
                                                         "settings saved in OUTPUT/partial/.")
    return p


def run(args) -> dict:
    if 4 not in args.documents:
        raise DataError("--documents must include 4: the reference row is ComMer with 4 own documents")
    if not args.retrieved_top_m:
        args.similarity_top_m = []  # the similarity and text rows come with the query-time merge rows
        args.retrieved_text_top_m = []
    elif args.retrieved_text_top_m is None:
        args.retrieved_text_top_m = list(args.retrieved_top_m)
    if any(m < 1 for m in args.retrieved_top_m + args.similarity_top_m + args.retrieved_text_top_m):
        raise DataError("--retrieved_top_m, --similarity_top_m and --retrieved_text_top_m take M >= 1")
    # Not the query-time rows' M: they choose among all articles, and must not change the example set.
    largest = max(args.documents + args.text_documents + args.prompt_tuning_documents
                  + [args.other_documents, args.concat_documents, args.example_documents or 0])
    examples = news.load(args.data, args.split, largest, seed=args.seed, max_examples=args.max_examples,
                         max_examples_per_user=args.max_examples_per_user)
    if not examples:
        raise DataError(f"{args.data}: no {args.split} examples for the news task")
    if len(examples) < args.max_examples:
        log.warning("only %d examples survive the 2,900-character filter at n=%d (asked for %d)",
                    len(examples), largest, args.max_examples)
    articles = news.authors_of(args.data, args.split)
    checkpoint = args.checkpoint or default_checkpoint(args.cache_dir)
    model = ComMer.from_pretrained(checkpoint, cache=args.cache_dir).to(args.device)
    skipped: list[str] = []

    plan = [("none", "none", "none", 0, examples)]
    pt_nodocs = args.prompt_tuning_nodocs or args.prompt_tuning
    if pt_nodocs:
        plan.append(("prompt tuning (no documents)", "prompt_tuning_nodocs", "prompt_tuning", 0, examples))
    else:
        skipped.append("prompt tuning rows (no --prompt_tuning checkpoint given)")
    plan += [(f"ComMer own {n}", "own", "commer", n, examples) for n in args.documents]
    plan.append((f"ComMer other {args.other_documents}", "other", "commer", args.other_documents,
                 other_author_examples(examples, articles, args.other_documents, args.seed)))
    if args.concat_documents:
        plan.append((f"ComMer concat {args.concat_documents}", "concat", "commer_concat", args.concat_documents,
                     examples))
    plan += plan_rows(args, examples)
    if not args.retrieved_top_m:
        skipped.append("query-time merge rows (no --retrieved_top_m given)")
    plan += [(f"text {n} (frozen)", "text", "text", n, examples) for n in args.text_documents]
    if args.prompt_tuning:
        plan += [(f"prompt tuning text {n}", "prompt_tuning_text", "prompt_tuning", n, examples)
                 for n in args.prompt_tuning_documents]

    folder = Path(args.output)
    folder.mkdir(parents=True, exist_ok=True)
    partial = RowCache(folder / "partial", {
        "checkpoint": checkpoint, "fingerprint": model.config.fingerprint, "data": [str(d) for d in args.data],
        "examples": [e.example_id for e in examples], "other_documents": args.other_documents,
        "max_new_tokens": args.max_new_tokens}, backbone={
        "hash": model.identity.content_hash,
        **model.config.model_dump(include={"prompt_template", "max_prompt_tokens", "max_answer_tokens"})})
    pt_models: dict[str, PromptTuning] = {}
    pools = AuthorPools(model, articles, args.batch_size)  # compresses an author's articles on first use
    rows = []
    for i, (label, group, method, n, exs) in enumerate(plan, 1):
        print(f"[{i}/{len(plan)}] {label}", file=sys.stderr, flush=True)
        path = None if method != "prompt_tuning" else pt_nodocs if group == "prompt_tuning_nodocs" else args.prompt_tuning
        free = method in CHECKPOINT_FREE
        if args.resume and (done := partial.get(label, path, decodes(args, n, method), free)) is not None:
            log.info("%s: kept from an earlier run (--resume)", label)
            rows.append(done)
            continue
        scorer = model
        if path is not None:
            if path not in pt_models:
                pt_models[path] = PromptTuning.from_pretrained(path, cache=args.cache_dir).to(args.device)
            scorer = pt_models[path]
        rows.append(score_row(label, group, scorer, method, exs, n, args,
                              RetrievedScorer(pools) if method in RULES else score_examples))
        partial.put(rows[-1], path, free)
    reference = next(r for r in rows if r["label"] == REFERENCE)
    bootstrap(rows, reference, next(r for r in rows if r["group"] == "other"), args.resamples, args.seed)

    extras: dict = {}
    if pools.compressed:
        extras["retrieval"] = pool_summary(pools)
    own = [r for r in rows if r["group"] == "own"]
    if len(own) >= 2:
        extras["fit"] = {"n": [r["num_documents"] for r in own],
                         **fit_power_law([r["num_documents"] for r in own], [r["perplexity"] for r in own])}
    if args.probe_examples:
        docs = news_documents(args.data, args.split, seed=args.seed)
        print(f"[probe] reconstruction, m = {args.probe_merged}", file=sys.stderr, flush=True)
        extras["probe"] = [reconstruction_perplexity(model, docs, m, args.probe_examples, args.seed, args.batch_size,
                                                     reference=(j == 0))
                           for j, m in enumerate(args.probe_merged)]
    if args.checkpoint_n1 and args.checkpoint_n4:
        import copy
        fig_args = copy.copy(args)
        fig_args.no_generate = True
        table: dict[str, dict[str, float]] = {"1": {}, "4": {}}
        for n, path in ((1, args.checkpoint_n1), (4, args.checkpoint_n4)):
            trained_on = None  # loaded only if a row is not cached
            same = Path(path).resolve() == Path(checkpoint).resolve()
            for m in (1, 4):
                label = f"train {n} / test {m}"
                # The run's own checkpoint has scored these already, as "ComMer own m".
                row = next((r for r in rows if same and r["label"] == f"ComMer own {m}"), None)
                row = row or (partial.get(label, path) if args.resume else None)
                if row is None:
                    print(f"[figure 6] {label}", file=sys.stderr, flush=True)
                    trained_on = trained_on or ComMer.from_pretrained(path, cache=args.cache_dir).to(args.device)
                    row = score_row(label, "figure6", trained_on, "commer", examples, m, fig_args)
                    partial.put(row, path)
                table[str(m)][str(n)] = row["perplexity"]
        extras["figure6"] = {"train": [1, 4], "test": [1, 4], "perplexity": table,
                             "difference": {m: {n: table[m][n] - table[n][n] for n in ("1", "4")} for m in ("1", "4")}}
    elif args.checkpoint_n1 or args.checkpoint_n4:
        skipped.append("Figure 6 (needs both --checkpoint_n1 and --checkpoint_n4)")
    else:
        skipped.append("Figure 6 (no --checkpoint_n1/--checkpoint_n4 given)")

    header = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "command": "python -m training.evaluate_controls " + " ".join(shlex.quote(a) for a in args.argv),
              "checkpoint": checkpoint, "trained": bool(model.config.trained), "fingerprint": model.config.fingerprint,
              "split": args.split, "examples": len(examples), "authors": len({e.user_id for e in examples}),
              "largest_n": largest,
              "resamples": args.resamples, "seed": args.seed, "no_generate": args.no_generate, "skipped": skipped}
    with open(folder / "rows.jsonl", "w") as f:
        f.write(json.dumps({"kind": "header", **header,
                            "rouge": ROUGE_NOTE if any("rougeL" in r for r in rows) else None}) + "\n")
        for row in rows:
            f.write(json.dumps(public(row)) + "\n")
        for name, value in extras.items():
            f.write(json.dumps({"kind": name, "value": value}) + "\n")
    table_md = write_table(folder / "table.md", rows, extras, header)
    plots = plot_all(folder, rows, extras)
    return {"rows": rows, "extras": extras, "header": header, "table": table_md, "plots": plots}


def evaluation_cli(argv: list[str] | None, build_parser, run) -> int:
    """The evaluation scripts' shared entry: parse, set threads, run, print the table; a data or
    checkpoint problem is one line (exit 2), never a traceback."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    torch.set_num_threads(args.num_threads or max(1, os.cpu_count() or 1))
    try:
        result = run(args)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except CheckpointError as exc:
        print(f"error: --checkpoint: {exc}", file=sys.stderr)
        return 2
    print(result["table"])
    return 0


def main(argv: list[str] | None = None) -> int:
    return evaluation_cli(argv, build_parser, run)


if __name__ == "__main__":
    sys.exit(main())
