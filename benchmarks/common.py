"""Shared benchmark helpers: timing, the machine's matmul rate, realistic documents, tables.

Every benchmark reports ratios against a reference measured in the same process, because
the machines are shared and absolute numbers drift from run to run.
"""
from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path

import torch

DEFAULT_NEWS = str(Path(__file__).resolve().parents[2] / "shared" / "data" / "huffpost" / "news_category_v3_subset.jsonl")


def best_of(fn, repeats: int = 3) -> float:
    """Fastest wall time of `repeats` calls (the least disturbed by other load)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_flops_per_second(dtype: torch.dtype = torch.float32, n: int = 1024, repeats: int = 5) -> float:
    """The machine's dense matmul rate (FLOP/s) for `dtype`: the ceiling for model FLOP utilisation."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        a @ b
    seconds = best_of(lambda: [a @ b for _ in range(4)], repeats) / 4
    return 2 * n ** 3 / seconds


def news_by_author(path: str = DEFAULT_NEWS) -> dict[str, list[dict]]:
    """HuffPost rows grouped by author, in file order (rows without an author skipped)."""
    groups: dict[str, list[dict]] = defaultdict(list)
    with open(path, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if row.get("authors", "").strip() and row.get("short_description", "").strip():
                groups[row["authors"]].append(row)
    return dict(groups)


def news_document(row: dict) -> str:
    """A LaMP-4-style profile document: the article's text and its title."""
    return f"Text: {row['short_description']} Title: {row['headline']}"


def news_instruction(row: dict) -> str:
    return f"Generate a headline for the following article: {row['short_description']}"


def print_table(headers: list[str], rows: list[list]) -> str:
    """Print (and return) a GitHub-markdown table."""
    def cell(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    text = "\n".join(lines)
    print(text)
    return text
