"""Recency-weighted profiles on news headlines (issue 16 part 2): plain mean vs half-lives.

    nice -n 19 env OMP_NUM_THREADS=1 python -m training.evaluate_recency \
        --data /work/shared/data/huffpost/news_category_v3_subset.jsonl \
               /work/shared/data/huffpost/news_category_v2_extra.jsonl \
        --half_lives 30 180 720 --max_authors 40 --queries_per_author 4 --profile_documents 16 \
        --output eval/recency

Split by date within each test author (the news task's author split): the author's newest Q
articles with a short description are the queries (news task format: instruction from the
description, answer = the headline); the up to P articles dated strictly BEFORE the earliest
query are the profile, formatted as the news task formats documents. Strictly before: dates are
days, and a same-day article is neither clearly older nor newer. Each profile document is
compressed once; every row then merges the same compressions with `commer.recency` as of the
earliest query's date (the profile a nightly refresh would have served then) and scores the
same queries:

    none         no soft prompt (instruction only, frozen backbone)
    plain mean   the paper's merge (half_life_days=None, bit-for-bit commer.merge.SumCount)
    h=D          weights 2^(-age/D), age in days at the earliest query's date

Columns: token-level perplexity of the headlines, Δ vs plain mean, each with a paired
bootstrap 95% interval that resamples AUTHORS (an author's queries share one soft prompt, so
they are not independent draws); the weighted mean age of the profile and its effective number
of documents (Σw)²/Σw², both per author then averaged. The 2,900-character example filter of
the news task is not applied: the profile is never in the prompt, each document is compressed
alone (cut at the checkpoint's max_document_tokens).

Outputs in --output: rows.jsonl (header, then one row per setting), table.md.
"""
from __future__ import annotations

import argparse
import datetime
import logging
import random
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from commer import ComMer
from commer.defaults import default_checkpoint
from commer.recency import effective_created_at, recency_merge_all
from training.evaluation.cli import evaluation_cli
from training.evaluation.reports import recency_table, write_rows
from training.evaluation.statistics import author_bootstrap, token_perplexity
from training.tasks import DataError, Example
from training.tasks import news

log = logging.getLogger(__name__)

REFERENCE = "plain mean"
SECONDS_PER_DAY = 86400.0


# ---- the split by date -------------------------------------------------------------------

def article_date(article: dict) -> datetime.datetime | None:
    """The article's `date` (ISO day or timestamp) as a UTC datetime; None if missing or unreadable."""
    value = article.get("date")
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        when = datetime.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return when.replace(tzinfo=datetime.timezone.utc) if when.tzinfo is None else when


@dataclass(frozen=True)
class AuthorSplit:
    """One author's date split: the newest articles as queries, the older ones as the profile."""
    author: str
    queries: list[dict]            # the newest Q articles with a description, oldest first
    profile: list[dict]            # up to P articles dated strictly before query_time, oldest first
    query_time: datetime.datetime  # the earliest query's date: the profile is built as of then

    def profile_dates(self) -> list[datetime.datetime]:
        return [article_date(a) for a in self.profile]

    def profile_ages_days(self) -> np.ndarray:
        return np.array([(self.query_time - d).total_seconds() / SECONDS_PER_DAY for d in self.profile_dates()])

    def profile_texts(self) -> list[str]:
        return [news.format_document(a["headline"], a["short_description"]) for a in self.profile]

    def examples(self) -> list[Example]:
        """The queries in the news task's format (its INSTRUCTION; the answer is the headline)."""
        return [Example(documents=[], instruction=news.INSTRUCTION.format(a["short_description"].strip()),
                        answer=a["headline"].strip(), user_id=self.author,
                        example_id=a.get("link") or f"{self.author}@{a['date']}#{i}")
                for i, a in enumerate(self.queries)]


def split_by_date(author: str, articles: list[dict], queries_per_author: int, profile_documents: int,
                  min_profile_documents: int) -> AuthorSplit | None:
    """The author's date split, or None when they lack Q queries or min_profile_documents older ones.

    Undated articles are left out. A repeated article (same headline and description, e.g. in
    both data files) is kept once, at its earliest date, so it can never be both a query and a
    profile document. Same-date ties are broken by headline, so file order never matters.
    """
    ordered = sorted((a for a in articles if article_date(a) is not None),
                     key=lambda a: (article_date(a), a["headline"].strip(), a["short_description"].strip()))
    unique: dict[tuple[str, str], dict] = {}
    for a in ordered:   # a repeat keeps its earliest date
        unique.setdefault((a["headline"].strip(), a["short_description"].strip()), a)
    dated = list(unique.values())
    queries = [a for a in dated if a["short_description"].strip()][-queries_per_author:]
    if len(queries) < queries_per_author:
        return None
    query_time = article_date(queries[0])
    profile = [a for a in dated if article_date(a) < query_time][-profile_documents:]
    if len(profile) < min_profile_documents:
        return None
    return AuthorSplit(author, queries, profile, query_time)


def select_authors(data, queries_per_author: int, profile_documents: int, min_profile_documents: int,
                   max_authors: int, seed: int) -> tuple[list[AuthorSplit], dict]:
    """Date splits of the test authors that qualify; a seeded sample of max_authors if more do."""
    articles = news.authors_of(data, "test")
    splits = [s for a in sorted(articles) if (s := split_by_date(a, articles[a], queries_per_author,
                                                                 profile_documents, min_profile_documents))]
    counts = {"test_authors": len(articles), "qualifying_authors": len(splits),
              "undated_articles": sum(article_date(x) is None for rows in articles.values() for x in rows)}
    if len(splits) > max_authors:
        chosen = set(random.Random(seed).sample(range(len(splits)), max_authors))
        splits = [s for i, s in enumerate(splits) if i in chosen]
    return splits, counts


# ---- profiles ----------------------------------------------------------------------------

def recency_profile(compressions: np.ndarray, dates: list[datetime.datetime], half_life_days: float | None,
                    query_time: datetime.datetime) -> tuple[np.ndarray, np.ndarray]:
    """(soft prompt K×d float32, normalised weight per document) of commer.recency as of query_time.

    Documents are dated by the product's rule (effective_created_at: a date after the query
    time is clamped to it), then merged exactly as compress_users merges them.
    """
    dated = [(c, effective_created_at(d, query_time)) for c, d in zip(compressions, dates)]
    state = recency_merge_all(dated, half_life_days, reference_time=query_time)
    weights = np.array([state.weight_of(d) for _, d in dated])
    return state.mean(), weights / weights.sum()


# ---- scoring -----------------------------------------------------------------------------

@torch.inference_mode()
def answer_nll(model: ComMer, soft_prompts: list, examples: list[Example],
               batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Summed NLL of each query's answer tokens and their count (for token-level perplexity)."""
    nll, tokens = [], []
    for start in range(0, len(examples), batch_size):
        batch = examples[start: start + batch_size]
        n, c = model.answer_nll(soft_prompts[start: start + batch_size], [e.instruction for e in batch],
                                [e.answer for e in batch])
        nll += n.float().cpu().tolist()
        tokens += c.cpu().tolist()
    return np.asarray(nll, float), np.asarray(tokens, float)


def score_setting(model: ComMer, label: str, half_life_days: float | None, splits: list[AuthorSplit],
                  compressions: list[np.ndarray] | None, batch_size: int) -> dict:
    """One row: every author's profile built with this setting (none: no soft prompt), every query scored."""
    started = time.time()
    prompts, examples, ages, effective = [], [], [], []
    for i, split in enumerate(splits):
        author_examples = split.examples()
        soft = None
        if compressions is not None:
            soft, weights = recency_profile(compressions[i], split.profile_dates(), half_life_days, split.query_time)
            ages.append(float(weights @ split.profile_ages_days()))
            effective.append(float(1.0 / (weights ** 2).sum()))
        prompts += [soft] * len(author_examples)
        examples += author_examples
    nll, tokens = answer_nll(model, prompts, examples, batch_size)
    row = {"kind": "row", "label": label, "half_life_days": half_life_days, "soft_prompt": compressions is not None,
           "authors": len(splits), "queries": len(examples), "perplexity": token_perplexity(nll, tokens),
           "weighted_profile_age_days": float(np.mean(ages)) if ages else None,
           "effective_documents": float(np.mean(effective)) if effective else None,
           "seconds": round(time.time() - started, 1), "_nll": nll, "_tokens": tokens}
    log.info("%s: perplexity %.3f over %d queries (%.1f s)", label, row["perplexity"], len(examples), row["seconds"])
    return row


# ---- main --------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.evaluate_recency", description=__doc__.split("\n")[0])
    p.add_argument("--data", nargs="+", required=True,
                   help="HuffPost JSONL file(s) with a `date`; rows are concatenated.")
    p.add_argument("--checkpoint", default=None, help="ComMer checkpoint (default: the bundled one).")
    p.add_argument("--half_lives", nargs="+", type=float, default=[30.0, 180.0, 720.0], help="Half-lives in days.")
    p.add_argument("--max_authors", type=int, default=40, help="Seeded sample of qualifying test authors.")
    p.add_argument("--queries_per_author", type=int, default=4, help="The newest Q articles of each author.")
    p.add_argument("--profile_documents", type=int, default=16, help="At most P older articles per profile.")
    p.add_argument("--min_profile_documents", type=int, default=4,
                   help="Authors with fewer older articles than this are left out.")
    p.add_argument("--resamples", type=int, default=1000)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num_threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="torch device (e.g. cuda).")
    p.add_argument("--cache_dir", default=None)
    p.add_argument("--output", required=True, help="Output folder.")
    return p


def check_args(args) -> None:
    """One-line errors naming the flag and the fix (raised as DataError, printed by main)."""
    for flag in ("max_authors", "queries_per_author", "profile_documents", "min_profile_documents",
                 "resamples", "batch_size"):
        if getattr(args, flag) < 1:
            raise DataError(f"--{flag} must be at least 1 (got {getattr(args, flag)})")
    if args.min_profile_documents > args.profile_documents:
        raise DataError(f"--min_profile_documents ({args.min_profile_documents}) must not exceed "
                        f"--profile_documents ({args.profile_documents}); lower it or raise --profile_documents")
    bad = [h for h in args.half_lives if not (np.isfinite(h) and h > 0)]
    if bad:
        raise DataError(f"--half_lives must be positive numbers of days (got {bad[0]:g})")
    if len(set(args.half_lives)) != len(args.half_lives):
        raise DataError("--half_lives lists a half-life twice; give each once")


def run(args) -> dict:
    check_args(args)
    splits, counts = select_authors(args.data, args.queries_per_author, args.profile_documents,
                                    args.min_profile_documents, args.max_authors, args.seed)
    if not splits:
        raise DataError(f"--data: no test author has {args.queries_per_author} queries and "
                        f"{args.min_profile_documents} older dated articles; lower --queries_per_author or "
                        f"--min_profile_documents")
    checkpoint = args.checkpoint or default_checkpoint(args.cache_dir)
    model = ComMer.from_pretrained(checkpoint, cache=args.cache_dir).to(args.device)

    texts = [t for s in splits for t in s.profile_texts()]
    print(f"[compress] {len(texts)} profile documents of {len(splits)} authors, once", file=sys.stderr, flush=True)
    started = time.time()
    flat = model.compress(texts, batch_size=args.batch_size).numpy()
    compress_seconds = round(time.time() - started, 1)
    compressions, at = [], 0
    for s in splits:
        compressions.append(flat[at: at + len(s.profile)])
        at += len(s.profile)

    settings = [("none", None, None), (REFERENCE, None, compressions)]
    settings += [(f"h={h:g}", h, compressions) for h in args.half_lives]
    rows = []
    for i, (label, half_life, comps) in enumerate(settings, 1):
        print(f"[{i}/{len(settings)}] {label}", file=sys.stderr, flush=True)
        rows.append(score_setting(model, label, half_life, splits, comps, args.batch_size))
    author_bootstrap(rows, rows[1], len(splits), args.queries_per_author, args.resamples, args.seed)

    ages = np.concatenate([s.profile_ages_days() for s in splits])
    header = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "command": "python -m training.evaluate_recency " + " ".join(shlex.quote(a) for a in args.argv),
              "checkpoint": checkpoint, "trained": bool(model.config.trained), "fingerprint": model.config.fingerprint,
              **counts, "authors": len(splits), "queries": len(splits) * args.queries_per_author,
              "queries_per_author": args.queries_per_author, "profile_documents": args.profile_documents,
              "min_profile_documents": args.min_profile_documents, "total_profile_documents": len(texts),
              "mean_profile_documents": len(texts) / len(splits), "mean_profile_age_days": float(ages.mean()),
              "median_profile_age_days": float(np.median(ages)), "min_profile_age_days": float(ages.min()),
              "max_profile_age_days": float(ages.max()), "reference_time": "the earliest query's date, per author",
              "compress_seconds": compress_seconds, "resamples": args.resamples, "bootstrap_unit": "author",
              "seed": args.seed, "half_lives": args.half_lives}
    folder = Path(args.output)
    folder.mkdir(parents=True, exist_ok=True)
    write_rows(folder / "rows.jsonl", header, rows)
    table = recency_table(folder / "table.md", rows, header, REFERENCE)
    return {"rows": rows, "header": header, "splits": splits, "table": table}


def main(argv: list[str] | None = None) -> int:
    return evaluation_cli(argv, build_parser, run)


if __name__ == "__main__":
    sys.exit(main())
