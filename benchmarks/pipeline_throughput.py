"""The main job's compression throughput against the bare compress loop and the raw backbone
forward over the same documents, per batching mode, in one run (issues 6 and 12).

For each batching mode (`--modes`, comma separated):
    count:N    N documents per batch, length-sorted (the batching before issue 12)
    tokens:N   token-budget batches of up to N positions, padding counted (the job's default mode)
    packed:N   packed batches: each batch one sequence of up to N positions, no padding
it times the bare compress loop (ComMer.compress_token_ids / compress_packed in this process,
batches planned over all documents) and `pipelines.compress_users` on the same documents (a child
process, in-process FnApiRunner, the mode's flags). The job's time is its wall time minus the
fixed start-up (imports, model load, pipeline construction), measured by a one-document run of
the same job. The reference is the raw backbone decoder over the documents + K positions in
length-sorted count batches (the work a compression cannot avoid), measured before and after
the modes (the better reading is kept). With `--marginal` the job also runs on the first half of the
documents, and a further row per mode gives its marginal throughput, (N − N/2) ÷ (t(N) − t(N/2)): a
cost the one-document start-up run does not hold but that does not grow with the documents (the
first calls of each batch shape, the commit of a larger table) drops out of it, and what remains
is the job's per-document cost against the loop's. With `--rounds R` every mode runs R times, in a
rotated order, and keeps its best loop and job time: on a shared machine, load drift then
favours no mode.

Reports docs/s, document tokens/s, ratios (÷ the reference; job ÷ bare loop of the same mode),
padding efficiency, the number of batches and their mean fill of the token budget (the job's from its
run_summary.json: it should form the loop's batches, issue 27), FLOP utilisation (2 × non-embedding parameters × positions ÷ time ÷ a
matmul rate measured in this run) and on CUDA the peak GPU memory of the loop and of the job.

    python -m benchmarks.pipeline_throughput [--data PATH] [--documents 2000]
        [--modes count:16,tokens:1024,packed:512] [--rounds 1] [--marginal] [--device auto] [--dtype auto]
    # GPU: --device cuda --documents 8192 --modes count:1024,tokens:65536,packed:16384
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from benchmarks.common import DEFAULT_NEWS, matmul_flops_per_second, news_documents, print_table, run_measured, write_jsonl
from benchmarks.compression_forward import (compress_seconds, length_sorted_batches, non_embedding_parameters,
                                            peak_memory_mib, peak_memory_reset, raw_forward_seconds)
from commer import ComMer
from commer.defaults import default_checkpoint
from commer.packing import batch_cost, padding_efficiency, plan_batches
from commer.precision import resolve_device, resolve_dtype

# A budget no batch reaches: with --batch_size N the job then cuts count batches, as before issue 12.
UNLIMITED_TOKENS = 10 ** 9


def parse_modes(text: str) -> list[tuple[str, int]]:
    modes = []
    for item in filter(None, text.split(",")):
        kind, _, n = item.partition(":")
        if kind not in ("count", "tokens", "packed") or not n.isdigit() or int(n) <= 0:
            raise SystemExit(f"--modes: {item!r} is not count:N, tokens:N or packed:N")
        modes.append((kind, int(n)))
    return modes


def job_flags(kind: str, n: int) -> list[str]:
    """compress_users flags that batch as this mode does."""
    if kind == "count":
        return ["--batch_size", str(n), "--max_batch_tokens", str(UNLIMITED_TOKENS)]
    return ["--max_batch_tokens", str(n)] + (["--packed"] if kind == "packed" else [])


def loop_batches(kind: str, n: int, lengths: list[int], K: int) -> list[list[int]]:
    """The bare loop's batches for a mode: count batches as ComMer.compress cuts them, else plan_batches."""
    if kind == "count":
        return length_sorted_batches([[0] * length for length in lengths], n)
    return plan_batches(lengths, n, K, padded=kind == "tokens")


def mean_fill(kind: str, n: int, lengths: list[int], batches: list[list[int]], K: int) -> float | str:
    """Positions per batch ÷ the budget (none for count batches), as the job's run_summary.json counts it."""
    if kind == "count":
        return ""
    positions = sum(batch_cost([lengths[i] for i in b], K, padded=kind != "packed") for b in batches)
    return positions / len(batches) / n


def run_job(input_path: str, output: str, flags: list[str]) -> tuple[dict, dict]:
    # No --runner: the job's default, the in-process FnApiRunner (DirectRunner would first try to
    # download Prism).
    measured = run_measured("pipelines.compress_users", ["--input", input_path, "--output", output, *flags])
    summary = json.loads((Path(output) / "run_summary.json").read_text())
    return measured, summary


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pipeline_throughput", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=DEFAULT_NEWS, help="HuffPost news JSONL (see ../shared/data/README.md).")
    parser.add_argument("--checkpoint", default=None, help="ComMer checkpoint (default: the bundled one).")
    parser.add_argument("--documents", type=int, default=2000)
    parser.add_argument("--modes", default="count:16,tokens:1024,packed:512",
                        help="Comma list of count:N, tokens:N, packed:N (see above).")
    parser.add_argument("--batch_size", type=int, default=None,
                        help="Shorthand for --modes count:N (the reference's batch size is the first count mode's).")
    parser.add_argument("--rounds", type=int, default=1,
                        help="Rounds over all modes (rotated order); each mode keeps its best loop and job time.")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                        help="auto: bfloat16 on CUDA, float32 elsewhere (as the job).")
    parser.add_argument("--marginal", action="store_true",
                        help="Also run the job on the first half of the documents; a row per mode with its marginal "
                             "throughput (N - N/2) / (t(N) - t(N/2)), free of every fixed cost.")
    parser.add_argument("--loop_only", action="store_true",
                        help="Only the reference and the bare loop rows: no Beam job (a machine without apache-beam, "
                             "such as the GPU kit's, tools/gpu).")
    parser.add_argument("--output", default=None, help="Also write the table (markdown, with its heading line) here.")
    args = parser.parse_args(argv)
    modes = parse_modes(f"count:{args.batch_size}" if args.batch_size else args.modes)
    device = torch.device(resolve_device(args.device))
    dtype = resolve_dtype(args.dtype, device)
    common = ["--device", device.type, "--dtype", dtype] + (["--checkpoint", args.checkpoint] if args.checkpoint else [])

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

    # Per mode: the best loop and job time over the rounds; each round runs the modes in a rotated
    # order, so a neighbour's burst on the shared machine does not fall on the same mode every time.
    loop_best, job_best, half_best, runs, startups = {}, {}, {}, {}, []
    half = len(docs) // 2
    marginal = args.marginal and not args.loop_only and 0 < half < len(docs)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = write_jsonl(docs, f"{tmp}/docs.jsonl")
        half_corpus = write_jsonl(docs[:half], f"{tmp}/half.jsonl") if marginal else None
        for r in range(args.rounds):
            if not args.loop_only:
                startups.append(run_job(write_jsonl(docs[:1], f"{tmp}/one.jsonl"), f"{tmp}/one-{r}",
                                        common)[0]["wall_s"])
            for kind, size in modes[r % len(modes):] + modes[: r % len(modes)]:
                packed = kind == "packed"
                batches = loop_batches(kind, size, lengths, K)
                compress_seconds(model, ids, batches[:1], packed=packed)  # warm-up (new shapes)
                peak_memory_reset(device)
                loop, _ = compress_seconds(model, ids, batches, packed=packed)
                loop_memory = peak_memory_mib(device)
                mode = (kind, size)
                loop_best[mode] = min(loop_best.get(mode, float("inf")), loop)
                runs[mode] = (batches, loop_memory, None, None)
                if args.loop_only:
                    continue
                job, summary = run_job(corpus, f"{tmp}/out-{kind}-{size}-{r}", common + job_flags(kind, size))
                job_best[mode] = min(job_best.get(mode, float("inf")), job["wall_s"])
                runs[mode] = (batches, loop_memory, job, summary)
                if marginal:
                    halved, half_summary = run_job(half_corpus, f"{tmp}/half-{kind}-{size}-{r}",
                                                   common + job_flags(kind, size))
                    half_best[mode] = (min(half_best.get(mode, (float("inf"),))[0], halved["wall_s"]),
                                       half_summary)
    startup = min(startups) if startups else 0.0
    # what, batching, documents, document tokens, seconds, job ÷ loop, padding eff., batches, mean fill, GPU MiB
    measured = []
    for kind, size in modes:
        batches, loop_memory, job, summary = runs[(kind, size)]
        measured.append(["bare compress loop", f"{kind} {size}", n, tokens, loop_best[(kind, size)], "",
                         padding_efficiency(lengths, batches, K, kind == "packed"), len(batches),
                         mean_fill(kind, size, lengths, batches, K), loop_memory])
        if args.loop_only:
            continue
        job_seconds, job_n = job_best[(kind, size)] - startup, summary["documents_compressed"]
        loop = loop_best[(kind, size)]
        measured.append(["compress_users (FnApiRunner, minus start-up)", f"{kind} {size}", job_n,
                         summary["counters"]["tokens"], job_seconds, (job_n / job_seconds) / (n / loop),
                         summary["padding_efficiency"], summary["batches"]["count"],
                         summary["batches"]["mean_fill"] if kind != "count" else "", job.get("peak_gpu_mib", 0.0)])
        if marginal:
            half_seconds, half_summary = half_best[(kind, size)]
            more = job_n - half_summary["documents_compressed"]
            more_tokens = summary["counters"]["tokens"] - half_summary["counters"]["tokens"]
            seconds = job_best[(kind, size)] - half_seconds
            if seconds > 0:  # a noisy run can leave none: the row is then left out, said in the heading
                measured.append([f"compress_users, marginal ({half} → {n} documents)", f"{kind} {size}", more,
                                 more_tokens, seconds, (more / seconds) / (n / loop), "", "", "", ""])
    # The better of two readings of each ceiling (before and after the modes), so the machine's drift
    # during the run favours no mode.
    reference = min(reference, raw_forward_seconds(model, ids, reference_batches, K))
    rate = max(rate, matmul_flops_per_second(matmul_dtype, device=device.type))
    params = non_embedding_parameters(model)
    measured.insert(0, ["raw forward, documents + K (reference)", f"count {len(reference_batches[0])}", n, tokens,
                        reference, "", padding_efficiency(lengths, reference_batches, K, False), len(reference_batches),
                        "", ""])
    rows = [[what, batching, docs_n / sec, doc_tokens / sec, (docs_n / sec) / (n / reference), vs_loop, padding,
             batches, fill, 2 * params * (doc_tokens + K * docs_n) / sec / rate, memory]
            for what, batching, docs_n, doc_tokens, sec, vs_loop, padding, batches, fill, memory in measured]
    head = (f"{n} documents, {tokens / n:.1f} tokens/document (min {min(lengths)}, max {max(lengths)}), K={K}, "
            f"{dtype} on {device} ({torch.cuda.get_device_name(0) if device.type == 'cuda' else 'CPU'}), "
            f"threads={torch.get_num_threads()}, matmul {rate / 1e9:.0f} GFLOP/s; "
            + ("Beam job rows not run (--loop_only)" if args.loop_only else f"job start-up {startup:.1f} s (subtracted)")
            + (f"; marginal: jobs on {half} and {n} documents, each its best" if marginal else "")
            + (" (a mode without a marginal row: its two best times did not grow with the documents)"
               if marginal and sum(r[0].startswith("compress_users, marginal") for r in measured) < len(modes) else "")
            + f", best of {args.rounds} round(s)")
    print("\n" + head)
    headers = ["what", "batching", "docs/s", "doc tokens/s", "÷ reference docs/s", "job ÷ bare loop", "padding eff.",
               "batches", "mean fill", "FLOP util."]
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
