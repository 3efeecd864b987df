"""What committing a run's files as one Delta version costs the launcher, at 1,000 files.

    python -m benchmarks.commit_cost --files 1000 --rows_per_file 4 --output /tmp/commit-cost

Writes `--files` Parquet files of profiles (K = 8, d = 576, as the bundled checkpoint makes: the sink's
work for those files is the reference, written the way pipelines.io's sink writes them, page checksums on)
into a table's run folder, then times the launcher's commit (pipelines.tables.commit_outputs: listing
the files, reading each footer for its statistics, one Delta transaction) in a child process, twice: the
first commit creates the table (version 0), the second adds version 1 over it (an overwrite, as a nightly
run does). Prints a markdown table. A real job also compresses the documents, so the sink's write time is a
lower bound of the job's: commit / write is an upper bound of the commit's share.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from schemas import Profile, arrow_schema, to_table

K, D = 8, 576
# The child: the launcher's commit, timed inside (no interpreter or Beam start-up in the figure).
CHILD = """
import json, sys, time
from pipelines.tables import Commit, commit_outputs, plan_output
from schemas import Profile, arrow_schema
table_path, run_id = sys.argv[1], sys.argv[2]
schema = arrow_schema(Profile, (8, 576), {"fingerprint": "bench"})
started = time.perf_counter()
table = plan_output("profiles", "--output", table_path, schema, run_id)
planned = time.perf_counter()
versions = commit_outputs([Commit(table, {"summary": {"run_id": run_id}})])
print(json.dumps({"plan_s": planned - started, "commit_s": time.perf_counter() - planned, "version": versions["profiles"]}))
"""


def write_files(folder: Path, files: int, rows: int, seed: int) -> float:
    """`files` Parquet files of `rows` profiles each; the seconds the writes took."""
    rng = np.random.default_rng(seed)
    schema = arrow_schema(Profile, (K, D), {"fingerprint": "bench"})
    folder.mkdir(parents=True)
    now = datetime.now(timezone.utc)
    started = time.perf_counter()
    for i in range(files):
        records = [Profile(user_id=f"user-{i:05d}-{r}", doc_count=4, soft_prompt=rng.normal(size=(K, D)),
                           soft_prompt_sum=rng.normal(size=(K, D)), doc_ids=["a", "b", "c", "d"],
                           model_fingerprint="bench", updated_at=now, recency_weight=4.0, recency_gross_weight=4.0)
                   for r in range(rows)]
        pq.write_table(to_table(records, schema), folder / f"profiles-{i:05d}-of-{files:05d}.parquet",
                       write_page_checksum=True)
    return time.perf_counter() - started


def commit(table: Path, run_id: str) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, str(table), run_id], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.commit_cost", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--rows_per_file", type=int, default=4)
    parser.add_argument("--output", default="/tmp/commer-commit-cost")
    args = parser.parse_args(argv)
    table = Path(args.output) / "profiles"
    shutil.rmtree(args.output, ignore_errors=True)
    rows = []
    for n, run_id in enumerate(("20260101T000000-00000000", "20260102T000000-00000001")):
        written = write_files(table / run_id, args.files, args.rows_per_file, seed=n)
        got = commit(table, run_id)
        rows.append((got["version"], written, got["plan_s"], got["commit_s"]))
    lines = ["| version | files | sink's write (s) | plan (s) | commit (s) | commit per file (ms) | commit / write |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {version} | {args.files} | {written:.2f} | {plan_s:.3f} | {commit_s:.2f} | "
              f"{1000 * commit_s / args.files:.2f} | {commit_s / written:.3f} |"
              for version, written, plan_s, commit_s in rows]
    shutil.rmtree(args.output, ignore_errors=True)
    print("\n".join(lines))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
