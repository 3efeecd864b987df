"""The main job's compression throughput against the raw backbone forward (issue 6, item 1).

Runs `pipelines.compress_users` (DirectRunner, default checkpoint) in a child process over
N HuffPost documents (user = author), and a one-document run of the same job to measure the
fixed start-up (imports, model load, pipeline construction). The job's throughput is
N / (wall − start-up). The reference is the raw backbone decoder in this process over the
same documents, length-sorted, in batches of the same size, with and without the K extra
positions a compression needs.

    python -m benchmarks.pipeline_throughput [--data PATH] [--documents 2000] [--batch_size 16]
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from benchmarks.common import DEFAULT_NEWS, matmul_flops_per_second, news_documents, print_table, run_measured, write_jsonl
from benchmarks.compression_forward import length_sorted_batches, non_embedding_parameters, raw_forward_seconds
from commer import ComMer
from commer.defaults import default_checkpoint


def run_job(input_path: str, output: str, extra: list[str]) -> tuple[dict, dict]:
    measured = run_measured("pipelines.compress_users", ["--input", input_path, "--output", output,
                                                         "--runner", "DirectRunner", *extra])
    summary = json.loads((Path(output) / "run_summary.json").read_text())
    return measured, summary


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=DEFAULT_NEWS, help="HuffPost news JSONL (see ../shared/data/README.md).")
    parser.add_argument("--documents", type=int, default=2000)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--job_args", default="", help="Extra flags for the job, space separated.")
    args = parser.parse_args(argv)


    docs = news_documents(args.data, args.documents)
    extra = ["--batch_size", str(args.batch_size), *args.job_args.split()]
    with tempfile.TemporaryDirectory() as tmp:
        corpus = write_jsonl(docs, f"{tmp}/docs.jsonl")
        one = write_jsonl(docs[:1], f"{tmp}/one.jsonl")
        startup, _ = run_job(one, f"{tmp}/out-one", extra)
        job, summary = run_job(corpus, f"{tmp}/out", extra)

    model = ComMer.from_pretrained(default_checkpoint())
    ids, _ = model.tokenize_documents([d["text"] for d in docs])
    batches = length_sorted_batches(ids, args.batch_size)
    raw_forward_seconds(model, ids, batches[:2], model.K)  # warm-up
    raw_docs = raw_forward_seconds(model, ids, batches, 0)
    raw_k = raw_forward_seconds(model, ids, batches, model.K)
    rate = matmul_flops_per_second()
    params = non_embedding_parameters(model)

    n, tokens = len(docs), sum(map(len, ids))
    job_seconds = job["wall_s"] - startup["wall_s"]
    processed = summary.get("processed_positions")
    padding = (tokens + model.K * n) / processed if processed else float("nan")
    positions = tokens + model.K * n
    rows = [
        # what, seconds, positions it processes, padding efficiency
        ["raw forward, documents (sorted)", raw_docs, tokens, ""],
        ["raw forward, documents + K (sorted)", raw_k, positions, ""],
        ["compress_users (DirectRunner, minus start-up)", job_seconds, positions, padding],
    ]
    print(f"\n{n} documents, {tokens / n:.1f} tokens/document, K={model.K}, batch {args.batch_size}, "
          f"threads={torch.get_num_threads()}, matmul {rate / 1e9:.0f} GFLOP/s; job wall {job['wall_s']:.1f} s, "
          f"start-up {startup['wall_s']:.1f} s; job's own figure {summary.get('documents_per_second')} docs/s")
    table = print_table(
        ["what", "docs/s", "doc tokens/s", "job throughput ÷ this", "padding eff.", "FLOP util."],
        [[name, n / sec, tokens / sec, sec / job_seconds, pad, 2 * params * work / sec / rate]
         for name, sec, work, pad in rows])
    return table


if __name__ == "__main__":
    main()
