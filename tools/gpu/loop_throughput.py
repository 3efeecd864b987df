"""benchmarks.pipeline_throughput without its Beam job: the bare compress loop per batching mode
against the raw backbone forward, same documents, same modes and rounds, same table columns less
the job rows.

The GPU machine has no apache-beam, and Beam with its needs (~37 MB of wheels) would cost another
device call of carried files, so the kit measures what needs no Beam: the loop rows and the
reference (see tools/gpu/README.md). Functions are the benchmark's own, imported, so the numbers
are comparable with its loop rows.
    python tools/gpu/loop_throughput.py --data news.jsonl --device cuda --documents 8192 --rounds 2 \
        --modes count:1024,tokens:16384,tokens:65536,packed:4096 [--output table.md]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from benchmarks.common import matmul_flops_per_second, news_documents, print_table
from benchmarks.compression_forward import (compress_seconds, length_sorted_batches, non_embedding_parameters,
                                            peak_memory_mib, peak_memory_reset, raw_forward_seconds)
from benchmarks.pipeline_throughput import loop_batches, parse_modes
from commer import ComMer
from commer.defaults import default_checkpoint
from commer.packing import padding_efficiency
from commer.precision import resolve_dtype


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="HuffPost news JSONL.")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--documents", type=int, default=2000)
    p.add_argument("--modes", default="count:16,tokens:1024,packed:512")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    p.add_argument("--output", default=None, help="Also write the table (markdown) here.")
    args = p.parse_args(argv)
    started = time.perf_counter()
    modes = parse_modes(args.modes)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    dtype = resolve_dtype(args.dtype, device)
    docs = news_documents(args.data, args.documents)
    model = ComMer.from_pretrained(args.checkpoint or default_checkpoint(), dtype=dtype).to(device)
    ids, _ = model.tokenize_documents([d["text"] for d in docs])
    lengths, K = list(map(len, ids)), model.K
    n, tokens = len(docs), sum(lengths)
    reference_batches = length_sorted_batches(ids, next((m for k, m in modes if k == "count"), 16))
    raw_forward_seconds(model, ids, reference_batches[:2], K)  # warm-up
    reference = raw_forward_seconds(model, ids, reference_batches, K)
    matmul_dtype = torch.float32 if dtype == "float32" else torch.bfloat16
    rate = matmul_flops_per_second(matmul_dtype, device=device.type)
    best, runs = {}, {}
    for r in range(args.rounds):  # rotated order, as the benchmark does
        for kind, size in modes[r % len(modes):] + modes[: r % len(modes)]:
            packed = kind == "packed"
            batches = loop_batches(kind, size, lengths, K)
            compress_seconds(model, ids, batches[:1], packed=packed)  # warm-up (new shapes)
            peak_memory_reset(device)
            loop, _ = compress_seconds(model, ids, batches, packed=packed)
            best[(kind, size)] = min(best.get((kind, size), float("inf")), loop)
            runs[(kind, size)] = (batches, peak_memory_mib(device))
    reference = min(reference, raw_forward_seconds(model, ids, reference_batches, K))
    rate = max(rate, matmul_flops_per_second(matmul_dtype, device=device.type))
    params = non_embedding_parameters(model)
    measured = [["raw forward, documents + K (reference)", f"count {len(reference_batches[0])}", reference,
                 padding_efficiency(lengths, reference_batches, K, False), ""]]
    for kind, size in modes:
        batches, memory = runs[(kind, size)]
        measured.append(["bare compress loop", f"{kind} {size}", best[(kind, size)],
                         padding_efficiency(lengths, batches, K, kind == "packed"), memory])
    rows = [[what, batching, n / sec, tokens / sec, (n / sec) / (n / reference), padding,
             2 * params * (tokens + K * n) / sec / rate, memory]
            for what, batching, sec, padding, memory in measured]
    head = (f"{n} documents, {tokens / n:.1f} tokens/document (min {min(lengths)}, max {max(lengths)}), K={K}, "
            f"{dtype} on {device} ({torch.cuda.get_device_name(0) if device.type == 'cuda' else 'CPU'}), "
            f"matmul {rate / 1e12:.1f} TFLOP/s; best of {args.rounds} round(s); Beam job rows not run "
            f"(no apache-beam on the GPU machine); {time.perf_counter() - started:.0f} s in all")
    print("\n" + head)
    headers = ["what", "batching", "docs/s", "doc tokens/s", "÷ reference docs/s", "padding eff.", "FLOP util."]
    if device.type == "cuda":
        headers.append("peak GPU MiB")
    else:
        rows = [row[:-1] for row in rows]
    table = print_table(headers, rows)
    if args.output:
        Path(args.output).write_text(head + "\n\n" + table + "\n")
    return table


if __name__ == "__main__":
    main()
