"""Peak memory of the main job against the number of users (issue 6, item 4).

Synthetic users (one short document each, random words) on the tiny test backbone, so the
model is negligible and what grows is the job itself. Each size runs in a fresh child
process; peak RSS is reported with the output's size beside it, and as a ratio to the
smallest run.

    python -m benchmarks.memory_at_scale [--users 1000,10000,100000]
"""
from __future__ import annotations

import argparse
import random
import tempfile
from pathlib import Path

from benchmarks.common import print_table, run_measured, write_jsonl
from commer import ComMer, ComMerConfig
from commer.tiny import make_tiny_backbone

WORDS = ("alpha beta gamma delta river mountain coffee tea code music travel garden football market "
         "weather story light night morning city").split()


def synthetic_documents(users: int, seed: int = 0):
    rng = random.Random(seed)
    for u in range(users):
        yield {"user_id": f"user-{u:07d}", "doc_id": "d0", "text": " ".join(rng.choices(WORDS, k=12))}


def folder_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2 ** 20


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory_at_scale", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", default="1000,10000,100000")
    parser.add_argument("--job_args", default="", help="Extra flags for the job, space separated.")
    args = parser.parse_args(argv)


    rows, baseline = [], None
    with tempfile.TemporaryDirectory() as tmp:
        backbone = make_tiny_backbone(Path(tmp) / "tiny")
        checkpoint = str(Path(tmp) / "checkpoint")
        ComMer.from_backbone(str(backbone), ComMerConfig(num_compression_tokens=4, lora={"r": 8}),
                             cache=tmp).save_pretrained(checkpoint)
        for users in (int(u) for u in args.users.split(",")):
            corpus = write_jsonl(synthetic_documents(users), f"{tmp}/docs-{users}.jsonl")
            out = Path(tmp) / f"out-{users}"
            run = run_measured("pipelines.compress_users", [
                "--input", corpus, "--output", str(out), "--checkpoint", checkpoint, "--cache_dir", tmp,
                "--runner", "DirectRunner", *args.job_args.split()])
            baseline = baseline or run["peak_rss_mb"]
            rows.append([users, run["peak_rss_mb"], run["peak_rss_mb"] / baseline, folder_mb(out), run["wall_s"]])
    print("\nmain job on the tiny backbone, one document per user, DirectRunner")
    return print_table(["users", "peak RSS MB", "÷ smallest", "output MB", "wall s"], rows)


if __name__ == "__main__":
    main()
