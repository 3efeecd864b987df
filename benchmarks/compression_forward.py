"""Compression throughput of the model against the raw backbone forward over the same text.

Reference (same process, same length-sorted batches, inference mode, no framework): the
backbone's decoder stack over (a) the documents' tokens alone and (b) the documents plus K
extra positions — (b) is the work a compression cannot avoid, so it is the real ceiling.
Reports documents/s, tokens/s, padding efficiency (real / processed positions) and FLOP
utilisation (2 × non-embedding parameters × positions / time, against a matmul rate
measured in the same run), for float32 and optionally bfloat16 (with the compressions'
deviation from float32).

Batching modes compared in the same run (each against the same raw-forward reference):
count batches (`--batch_size` documents, length-sorted: today's ComMer.compress), token-budget
padded batches (`--max_batch_tokens`: up to N processed positions, padding included) and packed
batches (`--packed_tokens`: documents concatenated into one N-position sequence with a
block-diagonal causal mask, commer.packing), with each mode's deviation from the count-batched
compressions. On CUDA it also reports peak GPU memory per mode; `--dtypes auto` (the default)
is bfloat16 on CUDA and float32 elsewhere (commer.precision).

Timing is interleaved, because the machine is shared and its speed drifts within a run: the
documents are sorted by length and cut into chunks of `--chunk_documents`; every mode runs on
chunk 1, then every mode on chunk 2, ... (mode order rotating), for `--rounds` rounds, and a
mode's time is the sum over chunks of its best round. So all modes see the same load, and each
plans its batches within a chunk (its last batch in a chunk may be short).

    python -m benchmarks.compression_forward [--data PATH] [--documents 512] [--dtypes float32,bfloat16]
        [--max_batch_tokens 1728] [--packed_tokens 512,1024] [--rounds 2] [--chunk_documents 128]
"""
from __future__ import annotations

import argparse
import time

import torch

from benchmarks.common import DEFAULT_NEWS, matmul_flops_per_second, news_by_author, news_document, print_table
from commer import ComMer
from commer.defaults import default_checkpoint
from commer.packing import plan_batches
from commer.precision import resolve_dtype


def length_sorted_batches(token_ids: list[list[int]], batch_size: int) -> list[list[int]]:
    order = sorted(range(len(token_ids)), key=lambda i: len(token_ids[i]))
    return [order[i: i + batch_size] for i in range(0, len(order), batch_size)]


def padding_efficiency(token_ids, batches, extra: int) -> float:
    real = sum(len(token_ids[i]) + extra for b in batches for i in b)
    processed = sum(len(b) * (max(len(token_ids[i]) for i in b) + extra) for b in batches)
    return real / processed


@torch.inference_mode()
def raw_forward_seconds(model: ComMer, token_ids, batches, extra: int) -> float:
    """The bare decoder over each batch (right-padded, causal), with `extra` positions added."""
    body = model.lm.get_base_model().base_model
    pad = model.tokenizer.pad_token_id
    start = time.perf_counter()
    for batch in batches:
        width = max(len(token_ids[i]) for i in batch) + extra
        ids = torch.full((len(batch), width), pad)
        for row, i in enumerate(batch):
            ids[row, : len(token_ids[i])] = torch.tensor(token_ids[i])
        body(input_ids=ids.to(model.device))
    synchronize(model.device)
    return time.perf_counter() - start


@torch.inference_mode()
def compress_seconds(model: ComMer, token_ids, batches, packed: bool = False) -> tuple[float, torch.Tensor]:
    step = model.compress_packed if packed else model.compress_token_ids
    out = torch.empty(len(token_ids), model.K, model.hidden_size)
    start = time.perf_counter()
    for batch in batches:
        out[batch] = step([token_ids[i] for i in batch]).cpu()
    synchronize(model.device)
    return time.perf_counter() - start, out


def peak_memory_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda" else 0.0


def synchronize(device: torch.device) -> None:
    """GPU kernels run asynchronously: wait for them before reading the clock."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def non_embedding_parameters(model: ComMer) -> int:
    body = model.lm.get_base_model().base_model
    embedding = body.get_input_embeddings().weight.numel()
    return sum(p.numel() for p in body.parameters()) - embedding


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compression_forward", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=DEFAULT_NEWS, help="HuffPost news JSONL (see ../shared/data/README.md).")
    parser.add_argument("--checkpoint", default=None, help="ComMer checkpoint (default: the bundled one).")
    parser.add_argument("--documents", type=int, default=512, help="Documents to compress.")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--dtypes", default="auto",
                        help="Comma list of float32,bfloat16,auto (auto: bfloat16 on CUDA, float32 elsewhere).")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the GPU measurement, item 5).")
    parser.add_argument("--max_batch_tokens", default="",
                        help="Comma list of token budgets for padded token-budget batches (padding counted).")
    parser.add_argument("--packed_tokens", default="",
                        help="Comma list of packed-sequence lengths for packed batches (commer.packing).")
    parser.add_argument("--rounds", type=int, default=1, help="Interleaved rounds; each mode keeps its best per chunk.")
    parser.add_argument("--chunk_documents", type=int, default=128, help="Documents per interleaving chunk.")
    args = parser.parse_args(argv)
    budgets = [int(x) for x in args.max_batch_tokens.split(",") if x]
    packs = [int(x) for x in args.packed_tokens.split(",") if x]

    rows = [r for group in news_by_author(args.data).values() for r in group][: args.documents]
    texts = [news_document(r) for r in rows]
    table, reference = [], None
    device = torch.device(args.device)
    for dtype in [resolve_dtype(d, device) for d in args.dtypes.split(",")]:
        model = ComMer.from_pretrained(args.checkpoint or default_checkpoint(), dtype=dtype).to(device)
        ids, _ = model.tokenize_documents(texts)
        lengths = list(map(len, ids))
        n_tokens = sum(lengths)
        params = non_embedding_parameters(model)
        matmul_dtype = torch.float32 if dtype == "float32" else torch.bfloat16
        rate = matmul_flops_per_second(matmul_dtype, device=args.device)

        def count_batches(chunk):
            return [chunk[i: i + args.batch_size] for i in range(0, len(chunk), args.batch_size)]

        def budget_batches(n, padded):
            return lambda chunk: [[chunk[i] for i in b] for b in
                                  plan_batches([lengths[i] for i in chunk], n, model.K, padded=padded)]

        # name → (plan a chunk into batches, what runs a batch list, packed, K positions counted)
        modes = {
            "raw forward, documents": (count_batches, lambda b: raw_forward_seconds(model, ids, b, 0), False, False),
            "raw forward, documents + K": (count_batches, lambda b: raw_forward_seconds(model, ids, b, model.K),
                                           False, True),
            "ComMer.compress": (count_batches, lambda b: compress_seconds(model, ids, b), False, True),
        }
        for n in budgets:
            modes[f"token budget {n}, padded"] = (budget_batches(n, True), lambda b: compress_seconds(model, ids, b),
                                                  False, True)
        for n in packs:
            modes[f"token budget {n}, packed"] = (budget_batches(n, False),
                                                  lambda b: compress_seconds(model, ids, b, packed=True), True, True)
        seconds, outputs, plans, memory = interleaved(modes, sorted(range(len(ids)), key=lambda i: (lengths[i], i)),
                                                      args.chunk_documents, args.rounds, model, device)
        rate = max(rate, matmul_flops_per_second(matmul_dtype, device=args.device))  # the ceiling: the better of two readings
        out = outputs["ComMer.compress"]
        deviation = ""
        if reference is None:
            reference = out
        else:
            deviation = f"{((out - reference).norm() / reference.norm()).item():.2e}"
        raw_k = seconds["raw forward, documents + K"]
        for name, (_, _, packed, with_k) in modes.items():
            t = seconds[name]
            work = n_tokens + (model.K * len(ids) if with_k else 0)
            mode_out = outputs.get(name)
            row = [dtype, name, len(ids) / t, n_tokens / t, raw_k / t,
                   1.0 if packed else padding_efficiency(ids, plans[name], model.K if with_k else 0),
                   2 * params * work / t / rate, deviation if name == "ComMer.compress" else "",
                   f"{max_relative_deviation(mode_out, out):.1e}"
                   if mode_out is not None and name != "ComMer.compress" else ""]
            if device.type == "cuda":
                row.append(f"{memory[name]:.0f}")
            table.append(row)
        print(f"{dtype}: matmul rate {rate / 1e9:.0f} GFLOP/s, {n_tokens / len(ids):.1f} tokens/document "
              f"(min {min(lengths)}, max {max(lengths)}), K={model.K}, {torch.get_num_threads()} threads, "
              f"device {device}, {args.rounds} round(s) of {-(-len(ids) // args.chunk_documents)} chunk(s)")
    headers = ["dtype", "what", "docs/s", "doc tokens/s", "vs raw docs+K", "padding eff.",
               "FLOP util.", "rel. dev. vs fp32", "max dev. vs count batches"]
    if device.type == "cuda":
        headers.append("peak GPU MiB")
    return print_table(headers, table)


def interleaved(modes: dict, order: list[int], chunk_documents: int, rounds: int, model: ComMer,
                device: torch.device):
    """Run every mode on each length-ordered chunk in turn, `rounds` times; per mode: the sum over
    chunks of its best time, its compressions (None for raw forwards), all its batches, and its
    peak GPU memory (MiB, CUDA only)."""
    chunks = [order[i: i + chunk_documents] for i in range(0, len(order), chunk_documents)]
    names = list(modes)
    best = {name: [float("inf")] * len(chunks) for name in names}
    outputs = {name: torch.empty(len(order), model.K, model.hidden_size) for name in names}
    plans = {name: [] for name in names}
    memory = {}
    for name in names:  # warm-up: one small batch per mode (new shapes, lazy initialisation)
        plan, run, _, _ = modes[name]
        run(plan(chunks[0])[:1])
    for r in range(rounds):
        for c, chunk in enumerate(chunks):
            for k in range(len(names)):
                name = names[(k + c + r) % len(names)]
                plan, run, _, _ = modes[name]
                batches = plan(chunk)
                peak_memory_reset(device)
                result = run(batches)
                memory[name] = max(memory.get(name, 0.0), peak_memory_mib(device))
                t, out = result if isinstance(result, tuple) else (result, None)
                best[name][c] = min(best[name][c], t)
                if r == 0:
                    plans[name] += batches
                    if out is None:
                        outputs[name] = None
                    else:
                        outputs[name][[i for b in batches for i in b]] = out[[i for b in batches for i in b]]
    return {name: sum(best[name]) for name in names}, outputs, plans, memory


def max_relative_deviation(out: torch.Tensor, reference: torch.Tensor) -> float:
    """The worst document's ‖out − reference‖ ÷ ‖reference‖ (same dtype: batching/packing only)."""
    diff = (out - reference).flatten(1).norm(dim=1)
    return (diff / reference.flatten(1).norm(dim=1)).max().item()


if __name__ == "__main__":
    main()
