"""Nightly refresh cost against a full recompute (issue 6, item 2).

Corpus: N HuffPost documents (user = author). For p in 1% and 5%: the job runs on the other
(100 − p)% to make yesterday's profiles, then a refresh gets only the p% new documents with
--previous_profiles. The full recompute runs on all N. Fixed start-up (imports, model load,
reading and rewriting carried-over profiles) is the refresh with one already-merged
document, and is reported separately; the ratio compares the remaining, variable cost.

    python -m benchmarks.refresh_cost [--data PATH] [--documents 2000]
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from benchmarks.common import DEFAULT_NEWS, news_documents, print_table, run_measured, write_jsonl


def job(input_path: str, output: str, *extra: str) -> dict:
    measured = run_measured("pipelines.compress_users", ["--input", input_path, "--output", output,
                                                         "--runner", "DirectRunner", *extra])
    measured["summary"] = json.loads((Path(output) / "run_summary.json").read_text())
    return measured


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.refresh_cost", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=DEFAULT_NEWS, help="HuffPost news JSONL (see ../shared/data/README.md).")
    parser.add_argument("--documents", type=int, default=2000)
    parser.add_argument("--fractions", default="0.01,0.05")
    args = parser.parse_args(argv)

    docs = news_documents(args.data, args.documents)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        full = job(write_jsonl(docs, f"{tmp}/all.jsonl"), f"{tmp}/full")
        for fraction in (float(f) for f in args.fractions.split(",")):
            # Every 1/fraction-th document is "new tonight": spread over users like real traffic.
            step = round(1 / fraction)
            new = docs[::step]
            old = [d for i, d in enumerate(docs) if i % step]
            base = job(write_jsonl(old, f"{tmp}/old-{step}.jsonl"), f"{tmp}/base-{step}")
            previous = f"{tmp}/base-{step}/profiles"
            refresh = job(write_jsonl(new, f"{tmp}/new-{step}.jsonl"), f"{tmp}/refresh-{step}",
                          "--previous_profiles", previous)
            fixed = job(write_jsonl(old[:1], f"{tmp}/noop-{step}.jsonl"), f"{tmp}/noop-{step}",
                        "--previous_profiles", previous)
            variable = refresh["wall_s"] - fixed["wall_s"]
            full_variable = full["wall_s"] - fixed["wall_s"]
            rows.append([f"{fraction:.0%}", len(new), refresh["summary"]["documents_compressed"],
                         refresh["wall_s"], fixed["wall_s"], full["wall_s"], variable / full_variable,
                         refresh["wall_s"] / full["wall_s"]])
    print(f"\n{len(docs)} documents; wall seconds per run (child process, DirectRunner)")
    return print_table(["new", "new docs", "compressed", "refresh s", "fixed start-up s", "full recompute s",
                        "variable cost ÷ full (target ≤ 5% at 1%)", "wall ÷ full"], rows)


if __name__ == "__main__":
    main()
