"""Evaluation with controls (issue 11, item 4): is ComMer's gain personalization, and what does it cost?

    OMP_NUM_THREADS=1 python -m training.evaluate_controls \
        --data /work/shared/data/huffpost/news_category_v3_subset.jsonl \
               /work/shared/data/huffpost/news_category_v2_extra.jsonl \
        --checkpoint commer/checkpoints/default --max_examples 400 --output eval/controls

News headline task, test authors (`--split val`: validation authors, for choosing between
settings). Every row scores the SAME examples: documents are retrieved once at the largest n
(BM25 over the author's other articles, best first, cut to the first n per row) and the
2,900-character filter is applied at that largest n.

Rows
    none                 instruction only, frozen backbone
    prompt tuning        P soft tokens, no documents          (--prompt_tuning_nodocs or --prompt_tuning)
    ComMer own n         the author's own documents, n = 1 2 4 8 16 (mean of compressions); n = 0: no documents,
                         a checkpoint's own task prompt alone if it has one (generate --task_prompt=checkpoint)
    ComMer other 4       BM25 top-4 for the same query over ANOTHER test author's articles
                         (seeded choice per example, never the same author): the personalization control
    ComMer concat 4      the 4 compressions concatenated, 4·K soft tokens (paper Figure 7)
    text n               documents as text in the prompt, frozen backbone, n = 1 4 8
    ComMer retrieved top-M (bm25), similarity top-M, merge=all     (--retrieved_top_m; issue 16)
                         query-time merge of the author's most relevant stored compressions, chosen
                         among ALL the author's other articles as pipelines.generate --merge=retrieved
                         chooses them (training/evaluation/retrieved_rows.py)
    prompt tuning text n prompt tuning with documents as text, n = 1 4      (--prompt_tuning)
Columns: prompt tokens, token-level perplexity, ROUGE-1/L (greedy decoding; rouge-score
WITHOUT stemmer, LaMP's convention), seconds; paired bootstrap 95% intervals (examples
resampled, seeded) of each row's difference from ComMer own 4, and the own/other ratio.
Also: Figure 4's fit of perplexity against n, the reconstruction probe (training/probes.py)
against the number of merged documents, and Figure 6's train-n/test-m table when
--checkpoint_n1 and --checkpoint_n4 are given.

Outputs in --output: rows.jsonl, table.md, perplexity_vs_documents.png,
reconstruction_vs_merged.png, own_other_none.png; partial/ keeps each scored row for --resume
(training/evaluation/row_cache.py). From Python (the recipe): `evaluate(data=..., output=..., ...)`.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import logging
import shlex
import sys
from pathlib import Path

import numpy as np

from commer import ComMer
from commer.defaults import default_checkpoint
from commer.metrics import rouge
from training.evaluate_task import score_examples
from training.evaluation.cli import evaluation_cli, progress
from training.evaluation.rows import PlannedRow
from training.evaluation.reports import ROUGE_NOTE, controls_plots, controls_table, write_rows
from training.evaluation.retrieved_rows import RULES, AuthorPools, RetrievedScorer, plan_rows, pool_summary
from training.evaluation.row_cache import RowCache, folder_fingerprint
from training.evaluation.statistics import fit_power_law, paired_bootstrap, token_perplexity
from training.probes import news_documents, reconstruction_perplexity
from training.prompt_tuning import PromptTuning
from training.tasks import DataError, Example
from training.tasks import news

log = logging.getLogger(__name__)

REFERENCE = "ComMer own 4"
# Rows that never read the ComMer checkpoint's trained weights: they depend on its backbone and
# generator settings only, so a new checkpoint on the same backbone reuses them.
CHECKPOINT_FREE = ("none", "text", "prompt_tuning", "text_retrieved_bm25")


def rouge_pair(prediction: str, reference: str) -> dict[str, float]:
    """ROUGE-1 and ROUGE-L F-measure of one prediction, no stemmer (LaMP's convention)."""
    return rouge(prediction, reference, use_stemmer=False)


# ---- scoring -----------------------------------------------------------------------------

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
                   decode, progress=progress(label))
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


# ---- the run -----------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.evaluate_controls", description=__doc__.split("\n")[0])
    p.add_argument("--data", nargs="+", required=True, help="HuffPost JSONL file(s); rows are concatenated.")
    p.add_argument("--checkpoint", default=None, help="ComMer checkpoint (default: the bundled one).")
    p.add_argument("--prompt_tuning", default=None, help="Prompt-tuning folder for the documents-as-text rows "
                                                          "(and the no-documents row unless --prompt_tuning_nodocs).")
    p.add_argument("--prompt_tuning_nodocs", default=None, help="Prompt-tuning folder for the no-documents row.")
    p.add_argument("--checkpoint_n1", default=None, help="Figure 6: ComMer trained with 1 document.")
    p.add_argument("--checkpoint_n4", default=None, help="Figure 6: ComMer trained with 4 documents.")
    p.add_argument("--documents", nargs="+", type=int, default=[1, 2, 4, 8, 16], help="ComMer own n (0: no documents -- the checkpoint's own task prompt alone, if it has one).")
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
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="Precision of the ComMer model (compression, scoring, decoding; issue 27's check: "
                        "training.evaluation.compare_runs pairs a float32 and a bfloat16 run on the same examples).")
    p.add_argument("--cache_dir", default=None)
    p.add_argument("--output", required=True, help="Output folder.")
    p.add_argument("--resume", action="store_true", help="Reuse rows an earlier, interrupted run of the same "
                                                         "settings saved in OUTPUT/partial/.")
    return p


def check_args(args) -> int:
    """Checks and completes the flags; returns the n the examples are built (and length-filtered) at."""
    if any(n < 0 for n in args.documents):
        raise DataError("--documents takes n >= 0 (0: no documents)")
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
    return max(args.documents + args.text_documents + args.prompt_tuning_documents
               + [args.other_documents, args.concat_documents, args.example_documents or 0])


def plan(args, examples: list[Example], articles: dict[str, list[dict]], skipped: list[str]) -> list[PlannedRow]:
    """The table's rows in order; what the flags leave out is noted in `skipped`."""
    rows = [PlannedRow("none", "none", "none", 0, examples)]
    if args.prompt_tuning_nodocs or args.prompt_tuning:
        rows.append(PlannedRow("prompt tuning (no documents)", "prompt_tuning_nodocs", "prompt_tuning", 0, examples))
    else:
        skipped.append("prompt tuning rows (no --prompt_tuning checkpoint given)")
    rows += [PlannedRow(f"ComMer own {n}", "own", "commer", n, examples) for n in args.documents]
    rows.append(PlannedRow(f"ComMer other {args.other_documents}", "other", "commer", args.other_documents,
                           news.other_author_examples(examples, articles, args.other_documents, args.seed)))
    if args.concat_documents:
        rows.append(PlannedRow(f"ComMer concat {args.concat_documents}", "concat", "commer_concat",
                               args.concat_documents, examples))
    rows += plan_rows(args, examples)
    if not args.retrieved_top_m:
        skipped.append("query-time merge rows (no --retrieved_top_m given)")
    rows += [PlannedRow(f"text {n} (frozen)", "text", "text", n, examples) for n in args.text_documents]
    if args.prompt_tuning:
        rows += [PlannedRow(f"prompt tuning text {n}", "prompt_tuning_text", "prompt_tuning", n, examples)
                 for n in args.prompt_tuning_documents]
    return rows


def score_rows(planned: list[PlannedRow], model: ComMer, pools: AuthorPools, cache: RowCache, args) -> list[dict]:
    """Every planned row, from the cache (--resume) or scored and saved as it finishes."""
    pt_nodocs = args.prompt_tuning_nodocs or args.prompt_tuning
    pt_models: dict[str, PromptTuning] = {}
    fingerprints: dict[str, str] = {}
    rows = []
    for i, (label, group, method, n, exs) in enumerate(planned, 1):
        print(f"[{i}/{len(planned)}] {label}", file=sys.stderr, flush=True)
        path = None if method != "prompt_tuning" else pt_nodocs if group == "prompt_tuning_nodocs" else args.prompt_tuning
        if path is not None and path not in fingerprints:
            fingerprints[path] = folder_fingerprint(path)
        own_model = fingerprints.get(path)
        free = method in CHECKPOINT_FREE
        if args.resume and (done := cache.get(label, own_model, decodes(args, n, method), free)) is not None:
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
        cache.put(rows[-1], own_model, free)
    return rows


def figure6(args, rows: list[dict], examples: list[Example], fingerprint: str, cache: RowCache) -> dict:
    """Paper Figure 6: perplexity of checkpoints trained with n = 1 and 4 documents, tested with m = 1 and 4."""
    fig_args = copy.copy(args)
    fig_args.no_generate = True
    table: dict[str, dict[str, float]] = {"1": {}, "4": {}}
    for n, path in ((1, args.checkpoint_n1), (4, args.checkpoint_n4)):
        trained_on = None  # loaded only if a row is not cached
        path_fingerprint = folder_fingerprint(path)
        for m in (1, 4):
            label = f"train {n} / test {m}"
            # The run's own checkpoint has scored these already, as "ComMer own m".
            row = next((r for r in rows if path_fingerprint == fingerprint and r["label"] == f"ComMer own {m}"), None)
            row = row or (cache.get(label, path_fingerprint) if args.resume else None)
            if row is None:
                print(f"[figure 6] {label}", file=sys.stderr, flush=True)
                trained_on = trained_on or ComMer.from_pretrained(path, cache=args.cache_dir).to(args.device)
                row = score_row(label, "figure6", trained_on, "commer", examples, m, fig_args)
                cache.put(row, path_fingerprint)
            table[str(m)][str(n)] = row["perplexity"]
    return {"train": [1, 4], "test": [1, 4], "perplexity": table,
            "difference": {m: {n: table[m][n] - table[n][n] for n in ("1", "4")} for m in ("1", "4")}}


def run(args) -> dict:
    largest = check_args(args)
    examples = news.load(args.data, args.split, largest, seed=args.seed, max_examples=args.max_examples,
                         max_examples_per_user=args.max_examples_per_user)
    if not examples:
        raise DataError(f"{args.data}: no {args.split} examples for the news task")
    if len(examples) < args.max_examples:
        log.warning("only %d examples survive the 2,900-character filter at n=%d (asked for %d)",
                    len(examples), largest, args.max_examples)
    articles = news.authors_of(args.data, args.split)
    checkpoint = args.checkpoint or default_checkpoint(args.cache_dir)
    model = ComMer.from_pretrained(checkpoint, cache=args.cache_dir, dtype=args.dtype).to(args.device)
    skipped: list[str] = []
    planned = plan(args, examples, articles, skipped)

    folder = Path(args.output)
    folder.mkdir(parents=True, exist_ok=True)
    fingerprint = model.config.fingerprint or model.fingerprint()
    generator = model.config.model_dump(include={"prompt_template", "max_prompt_tokens", "max_answer_tokens"})
    cache = RowCache(folder / "partial", run={
        "data": [str(d) for d in args.data], "examples": [e.example_id for e in examples],
        "other_documents": args.other_documents, "max_new_tokens": args.max_new_tokens,
        **({"dtype": args.dtype} if args.dtype != "float32" else {})},  # float32 rows cached before --dtype stay valid
        checkpoint={"fingerprint": fingerprint, **generator},
        backbone={"hash": model.identity.content_hash, **generator})
    pools = AuthorPools(model, articles, args.batch_size)  # compresses an author's articles on first use
    rows = score_rows(planned, model, pools, cache, args)
    reference = next(r for r in rows if r["label"] == REFERENCE)
    paired_bootstrap(rows, reference, next(r for r in rows if r["group"] == "other"), args.resamples, args.seed)

    extras: dict = {}
    if pools.compressed:
        extras["retrieval"] = pool_summary(pools)
    own = [r for r in rows if r["group"] == "own" and r["num_documents"] > 0]  # n = 0 has no place on a log axis
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
        extras["figure6"] = figure6(args, rows, examples, fingerprint, cache)
    elif args.checkpoint_n1 or args.checkpoint_n4:
        skipped.append("Figure 6 (needs both --checkpoint_n1 and --checkpoint_n4)")
    else:
        skipped.append("Figure 6 (no --checkpoint_n1/--checkpoint_n4 given)")

    header = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "command": "python -m training.evaluate_controls " + " ".join(shlex.quote(a) for a in args.argv),
              "checkpoint": checkpoint, "trained": bool(model.config.trained), "fingerprint": model.config.fingerprint,
              "split": args.split, "dtype": args.dtype, "examples": len(examples), "authors": len({e.user_id for e in examples}),
              "largest_n": largest,
              "resamples": args.resamples, "seed": args.seed, "no_generate": args.no_generate, "skipped": skipped}
    write_rows(folder / "rows.jsonl", {**header, "rouge": ROUGE_NOTE if any("rougeL" in r for r in rows) else None},
               rows, extras)
    table_md = controls_table(folder / "table.md", rows, extras, header, REFERENCE)
    plots = controls_plots(folder, rows, extras, REFERENCE)
    return {"rows": rows, "extras": extras, "header": header, "table": table_md, "plots": plots}


def evaluate(**flags) -> dict:
    """The evaluation as a function call (the recipe): flag name → value (a list for several values,
    True for a switch), in the order the table's command line shows them; the rest keep their defaults."""
    argv: list[str] = []
    for name, value in flags.items():
        if value is True:
            argv.append(f"--{name}")
        elif value is not None and value is not False:
            argv += [f"--{name}", *map(str, value if isinstance(value, (list, tuple)) else [value])]
    args = build_parser().parse_args(argv)
    args.argv = argv
    return run(args)


def main(argv: list[str] | None = None) -> int:
    return evaluation_cli(argv, build_parser, run)


if __name__ == "__main__":
    sys.exit(main())
