"""What the news evaluations score: the test authors' articles, the "other author" control, and
one planned row of a table (label, group, method, n, examples)."""
from __future__ import annotations

import random
from dataclasses import replace
from typing import NamedTuple

from training.tasks import DataError, Example
from training.tasks import news


class PlannedRow(NamedTuple):
    """A row to score: its label in the table, its group (own, other, text, ...), the scoring
    method (training.evaluate_task's, or a query-time merge rule), n documents, the examples."""
    label: str
    group: str
    method: str
    n: int
    examples: list[Example]


def test_articles(data) -> dict[str, list[dict]]:
    """Articles of the test-split authors (the news task's split)."""
    return {a: rows for a, rows in news.read_articles(data).items() if news.split_of(a, news.FRACTIONS) == "test"}


def other_author_examples(examples: list[Example], articles: dict[str, list[dict]], n: int,
                          seed: int = 0) -> list[Example]:
    """The same examples with documents from ANOTHER test author: BM25 top-n for the same
    query over that author's articles. The author is a seeded choice per example among the
    test authors with at least n articles, never the example's own author."""
    pool = sorted(a for a, rows in articles.items() if len(rows) >= n)
    out = []
    for e in examples:
        choices = [a for a in pool if a != e.user_id]
        if not choices:
            raise DataError("the 'other author' control needs a second test author with enough articles")
        other = random.Random(f"{seed}:{e.example_id}").choice(choices)
        description = e.meta.get("description") or e.instruction
        out.append(replace(e, documents=news.top_documents(description, articles[other], n),
                           meta={**e.meta, "other_author": other}))
    return out
