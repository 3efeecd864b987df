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
from training.tasks.news import INSTRUCTION, format_document

DEFAULT_NEWS = str(Path(__file__).resolve().parents[2] / "shared" / "data" / "huffpost" / "news_category_v3_subset.jsonl")


def best_of(fn, repeats: int = 3) -> float:
    """Fastest wall time of `repeats` calls (the least disturbed by other load)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_flops_per_second(dtype: torch.dtype = torch.float32, n: int = 2048, repeats: int = 7,
                            device: str = "cpu") -> float:
    """The machine's dense matmul rate (FLOP/s) for `dtype`: the ceiling for model FLOP utilisation.

    Square n×n products, the best of several timings: on a shared VM a short single timing
    catches a neighbour's burst and understates the ceiling (it once read 178 GFLOP/s for a
    model that itself ran at 220), which would overstate utilisation."""
    if device != "cpu":
        n *= 4  # a GPU needs a much larger product to reach its rate
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)

    def product():
        a @ b
        if device != "cpu":
            torch.cuda.synchronize()
    for _ in range(2):
        product()
    seconds = best_of(product, repeats)
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
    """A LaMP-4-style profile document, formatted as the news task formats it for training."""
    return format_document(row["headline"], row["short_description"])


def news_instruction(row: dict) -> str:
    return INSTRUCTION.format(row["short_description"].strip())


def print_table(headers: list[str], rows: list[list]) -> str:
    """Print (and return) a GitHub-markdown table."""
    def cell(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    text = "\n".join(lines)
    print(text)
    return text


def run_measured(module: str, args: list[str], env: dict | None = None) -> dict:
    """Run a job module in a fresh child process; its wall time, peak RSS and output."""
    import os
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "benchmarks.measured", module, *args],
                          capture_output=True, text=True, env={**os.environ, **(env or {})})
    lines = [l for l in proc.stderr.splitlines() if l.startswith("MEASURED ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{module} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return {**json.loads(lines[-1][len("MEASURED "):]), "stdout": proc.stdout, "stderr": proc.stderr}


def write_jsonl(rows, path) -> str:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return str(path)


def news_documents(path: str = DEFAULT_NEWS, limit: int | None = None) -> list[dict]:
    """HuffPost rows as ComMer input documents: user = author, doc_id = article link."""
    docs = [{"user_id": author, "doc_id": r["link"], "text": news_document(r)}
            for author, rows in news_by_author(path).items() for r in rows]
    return docs[:limit] if limit else docs
