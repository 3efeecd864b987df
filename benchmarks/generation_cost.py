"""Generation cost: ComMer's K soft tokens against the user's documents as plain text.

For n = 1, 2, 4, 8, 16 documents per user it measures, on the same queries and the same
frozen backbone, the prompt tokens per query and the prefill and generation wall time per
query, for ComMer (merged soft prompt + instruction; the compressions are precomputed by
the nightly job, so they are not part of the query's cost) and for the in-prompt baseline
(documents as text + instruction). Prefill = generate(max_new_tokens=1).

    python -m benchmarks.generation_cost [--data PATH] [--queries 8] [--new_tokens 16]
"""
from __future__ import annotations

import argparse

import torch

from benchmarks.common import DEFAULT_NEWS, best_of, news_by_author, news_document, news_instruction, print_table
from commer import ComMer
from commer.prompting import in_prompt_instruction  # the generate job's own baseline prompt
from commer.defaults import default_checkpoint


def load_model(checkpoint: str | None, backbone: str | None) -> ComMer:
    return ComMer.from_pretrained(checkpoint or default_checkpoint(), backbone=backbone)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.generation_cost", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=DEFAULT_NEWS, help="HuffPost news JSONL (see ../shared/data/README.md).")
    parser.add_argument("--checkpoint", default=None, help="ComMer checkpoint (default: the bundled one).")
    parser.add_argument("--backbone", default=None, help="Backbone override (default: the checkpoint's).")
    parser.add_argument("--queries", type=int, default=8, help="Queries (one per author), generated as one batch.")
    parser.add_argument("--new_tokens", type=int, default=16, help="Tokens generated per query.")
    parser.add_argument("--docs", default="1,2,4,8,16", help="Documents per user to compare.")
    parser.add_argument("--repeats", type=int, default=3, help="Timing repeats (best is kept).")
    args = parser.parse_args(argv)

    counts = [int(x) for x in args.docs.split(",")]
    model = load_model(args.checkpoint, args.backbone)
    # The baseline's prompt must not be cut to the checkpoint's instruction limit, or it would
    # look cheaper than it is; ComMer's prompts are far below either limit.
    model.config.max_prompt_tokens = 1 << 16
    authors = [rows for rows in news_by_author(args.data).values() if len(rows) > max(counts)][: args.queries]
    if len(authors) < args.queries:
        raise SystemExit(f"--data has only {len(authors)} authors with more than {max(counts)} articles")
    instructions = [news_instruction(rows[0]) for rows in authors]

    table = []
    for n in counts:
        documents = [[news_document(r) for r in rows[1: n + 1]] for rows in authors]
        soft = [model.compress(docs).mean(0) for docs in documents]
        text = [in_prompt_instruction(docs, x) for docs, x in zip(documents, instructions)]
        commer_tokens = sum(model.K + len(model.prompt_ids(x)) for x in instructions) / len(authors)
        text_tokens = sum(len(model.prompt_ids(x)) for x in text) / len(authors)

        def run(prompts, instr, new_tokens):
            return lambda: model.generate(prompts, instr, max_new_tokens=new_tokens)

        per_query = 1 / len(authors)
        commer_prefill = best_of(run(soft, instructions, 1), args.repeats) * per_query
        text_prefill = best_of(run([None] * len(text), text, 1), args.repeats) * per_query
        commer_total = best_of(run(soft, instructions, args.new_tokens), 1) * per_query
        text_total = best_of(run([None] * len(text), text, args.new_tokens), 1) * per_query
        table.append([n, round(commer_tokens, 1), round(text_tokens, 1), text_tokens / commer_tokens,
                      commer_prefill * 1e3, text_prefill * 1e3, text_prefill / commer_prefill,
                      commer_total * 1e3, text_total * 1e3, text_total / commer_total])

    print(f"\nGeneration cost per query, batch of {len(authors)} queries, {args.new_tokens} new tokens, "
          f"K={model.K}, threads={torch.get_num_threads()}")
    return print_table(
        ["docs", "ComMer prompt tok", "in-prompt tok", "token ratio", "ComMer prefill ms", "in-prompt prefill ms",
         "prefill speed-up", "ComMer gen ms", "in-prompt gen ms", "gen speed-up"], table)


if __name__ == "__main__":
    main()
