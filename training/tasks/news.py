"""Personalized news headlines from the public HuffPost News Category data (LaMP-4's source).

One user per author (rows with an empty `authors` belong to no user). For each of an author's
articles with a non-empty short description, the example is
    instruction  "Generate a headline for the following article: {short_description}"
    answer       the headline
    documents    the author's OTHER articles, formatted like LaMP-4 documents
                 ("Text: {short_description} Title: {headline}"), the top-n by BM25
                 (query = the short description, corpus = "headline short_description",
                 whitespace tokens — LaMP-4's rule).
Split (fixed, written down): an author goes to train / val / test by the first 12 hex digits
of sha256(author name) read as a fraction of 16**12: [0, 0.8) train, [0.8, 0.9) val,
[0.9, 1) test. So no author is in two splits, and the split does not depend on file order.
Examples over 2,900 characters are excluded.
"""
from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from commer.prompting import bm25_top
from training.tasks.base import DataError, Example, drop_long, read_jsonl, split_of

INSTRUCTION = "Generate a headline for the following article: {}"
FRACTIONS = (0.8, 0.1, 0.1)
FIELDS = ("headline", "short_description", "authors")


def format_document(headline: str, description: str) -> str:
    return f"Text: {description.strip()} Title: {headline.strip()}" if description.strip() else f"Title: {headline.strip()}"


def read_articles(path: str | Path | Sequence[str | Path]) -> dict[str, list[dict]]:
    """Articles grouped by author, in file order. Several files: their rows are concatenated
    in the order given (the author split is by name, so it does not depend on the files)."""
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    by_author: dict[str, list[dict]] = defaultdict(list)
    for one in paths:
        for number, row in enumerate(read_jsonl(one, "news (HuffPost JSONL)"), 1):
            missing = [k for k in FIELDS if not isinstance(row.get(k), str)]
            if missing:
                raise DataError(f"{one}: record {number} of the news file lacks string field(s) {missing}")
            author = row["authors"].strip()
            if author and row["headline"].strip():
                by_author[author].append(row)
    return by_author


def load(data: str | Path | Sequence[str | Path], split: str, num_documents: int, seed: int = 0, max_examples: int | None = None,
         max_examples_per_user: int | None = None) -> list[Example]:
    """Examples of the authors in `split`; documents retrieved per example by BM25.

    `data` is one HuffPost JSONL file or a list of them (rows concatenated).
    Sampling (per-author cap, then overall cap) happens before retrieval, seeded, so a capped
    evaluation set is the same every run.
    """
    rng = random.Random(seed)
    candidates = []
    for author, articles in sorted(read_articles(data).items()):
        if len(articles) < 2 or split_of(author, FRACTIONS) != split:
            continue
        queries = [i for i, a in enumerate(articles) if a["short_description"].strip()]
        if max_examples_per_user is not None and len(queries) > max_examples_per_user:
            queries = sorted(rng.sample(queries, max_examples_per_user))
        candidates.extend((author, articles, i) for i in queries)
    rest: list = []
    if max_examples is not None and len(candidates) > max_examples:
        # Oversample a little: some candidates may fall to the length filter. If too many do,
        # the remaining candidates are drawn next, in a seeded order, until the cap is met.
        chosen = rng.sample(range(len(candidates)), min(len(candidates), int(max_examples * 1.2) + 8))
        taken = set(chosen)
        rest = [candidates[i] for i in range(len(candidates)) if i not in taken]
        rng.shuffle(rest)
        candidates = [candidates[i] for i in chosen]

    def build(author, articles, i) -> Example:
        query = articles[i]
        return Example(
            documents=top_documents(query["short_description"], [a for j, a in enumerate(articles) if j != i],
                                    num_documents),
            instruction=INSTRUCTION.format(query["short_description"].strip()),
            answer=query["headline"].strip(),
            user_id=author,
            example_id=query.get("link") or f"{author}#{i}",
            meta={"description": query["short_description"].strip()},
        )

    examples = drop_long(build(*c) for c in candidates)
    while max_examples is not None and len(examples) < max_examples and rest:
        batch, rest = rest[: max_examples - len(examples)], rest[max_examples - len(examples):]
        examples += drop_long(build(*c) for c in batch)
    return examples[:max_examples] if max_examples is not None else examples


def top_documents(description: str, articles: list[dict], n: int) -> list[str]:
    """The n articles best matching a short description by BM25 (LaMP-4's rule), formatted as documents."""
    corpus = [f"{a['headline']} {a['short_description']}" for a in articles]
    return [format_document(articles[j]["headline"], articles[j]["short_description"])
            for j in bm25_top(description, corpus, n)]


def authors_of(data: str | Path | Sequence[str | Path], split: str) -> dict[str, list[dict]]:
    """The articles of the `split` authors, by author."""
    return {a: rows for a, rows in read_articles(data).items() if split_of(a, FRACTIONS) == split}


def other_author(example: Example, articles: dict[str, list[dict]], n: int, seed: int = 0) -> tuple[str, list[str]]:
    """The personalization control's rule: ANOTHER author of `articles` (a seeded choice per example
    among those with at least n articles, never the example's own) and that author's BM25 top-n
    articles for the same query. Evaluation uses it as its control row; training (the user-contrast
    term) as the documents that should fit the query worse than the author's own."""
    choices = sorted(a for a, rows in articles.items() if len(rows) >= n and a != example.user_id)
    if not choices:
        raise DataError("the 'other author' rule needs a second author with enough articles")
    other = random.Random(f"{seed}:{example.example_id}").choice(choices)
    description = example.meta.get("description") or example.instruction
    return other, top_documents(description, articles[other], n)


def other_author_examples(examples: list[Example], articles: dict[str, list[dict]], n: int,
                          seed: int = 0) -> list[Example]:
    """The same examples with their documents replaced by another author's (`other_author`)."""
    out = []
    for e in examples:
        author, documents = other_author(e, articles, n, seed)
        out.append(replace(e, documents=documents, meta={**e.meta, "other_author": author}))
    return out


def with_other_author(examples: list[Example], articles: dict[str, list[dict]], n: int,
                      seed: int = 0) -> list[Example]:
    """The same examples, keeping their own documents, with another author's in
    meta["other_documents"] (`other_author`)."""
    out = []
    for e in examples:
        author, documents = other_author(e, articles, n, seed)
        out.append(replace(e, meta={**e.meta, "other_author": author, "other_documents": documents}))
    return out
