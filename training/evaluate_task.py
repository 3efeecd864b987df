"""Score a method on a task split: perplexity of the reference and ROUGE with greedy decoding.

    python -m training.evaluate_task --task news --data .../news_category_v3_subset.jsonl \
        --method commer --checkpoint commer/checkpoints/default --num_documents 1 2 4 8 \
        --max_examples 200 --output eval.json

Methods:
    commer          ComMer checkpoint: documents compressed, mean-merged, soft prompt + instruction
    none            no personalization: the instruction alone (frozen backbone)
    prompt_tuning   a trained prompt-tuning folder: soft prompt + documents as text + instruction
    commer_concat   ComMer with the compressions concatenated (n·K soft tokens) instead of averaged
    text            documents as text before the instruction, frozen backbone, no soft prompt
The same examples are scored at every number of documents: they are retrieved once at the
largest n (BM25 order, best first) and cut to the first n, and the 2,900-character filter is
applied at the largest n.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time

import torch
from tqdm import tqdm

from commer import ComMer
from commer.defaults import default_checkpoint
from commer.merge import concat_merge
from commer.metrics import rouge
from training.config import TrainConfig
from training.prompt_tuning import MAX_PROMPT_TOKENS, PromptTuning, documents_as_text
from training.tasks import DataError, Example, load_examples

log = logging.getLogger("training.evaluate")


def prompt_tokens(model, method: str, documents: list[str], instruction: str) -> int:
    """Tokens the generator's prompt holds: the cost the paper's Figure 3 puts on its x axis."""
    if method == "prompt_tuning":
        return model.soft_prompt.shape[0] + len(model.base.prompt_ids(documents_as_text(documents, instruction)))
    if method == "text":
        limit = max(model.config.max_prompt_tokens, MAX_PROMPT_TOKENS)
        return len(model.prompt_ids(documents_as_text(documents, instruction), limit))
    if method == "none":
        return len(model.prompt_ids(instruction))
    # n·K rows concatenated, or one mean soft prompt whatever n; none without documents
    soft = model.K * len(documents) if method == "commer_concat" else model.K if documents else 0
    soft += model.config.task_prompt_tokens  # the checkpoint's own task prompt, read before any (even empty) profile
    return soft + len(model.prompt_ids(instruction))


def rouge_scores(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean ROUGE-1/L F-measure, scored by the evaluate job's own function (with the Porter stemmer)."""
    scores = [rouge(p, r, use_stemmer=True) for p, r in zip(predictions, references)]
    n = max(len(scores), 1)
    return {"rouge1": sum(s["rouge1"] for s in scores) / n, "rougeL": sum(s["rougeL"] for s in scores) / n}


def soft_prompts(model, method: str, documents: list[list[str]]) -> list:
    """The generator's soft prompt per example: mean of the compressions (commer), their
    concatenation, n·K rows (commer_concat, the paper's Figure 7), or none. An example without
    documents gets, on a checkpoint with its own task prompt, an empty (0, d) profile, so that task
    prompt is read alone (generate --task_prompt=checkpoint); otherwise no soft prompt."""
    if method in ("none", "text"):
        return [None] * len(documents)
    if method == "commer_concat":
        flat = [d for docs in documents for d in docs]
        out = [None] * len(documents)
        if flat:
            compressions = model.compress_token_ids(model.tokenize_documents(flat)[0])
            out, at = [], 0
            for docs in documents:
                out.append(concat_merge(list(compressions[at: at + len(docs)])) if docs else None)
                at += len(docs)
    else:
        out = model.merge_documents(documents)
    if model.config.task_prompt_tokens:
        empty = torch.zeros(0, model.hidden_size, device=model.device)
        out = [p if p is not None else empty for p in out]
    return out


@torch.no_grad()
def score_examples(model, method: str, examples: list[Example], num_documents: int, batch_size: int = 16,
                   max_new_tokens: int = 24, generate: bool = True, progress=None) -> dict:
    """Per example: summed answer NLL, answer tokens, prompt tokens, and (if generate) the greedy answer.

    Methods: commer, commer_concat, none (instruction only), text (documents as text, frozen
    backbone, no soft prompt), prompt_tuning. `progress(done, total)` is called after each batch.
    """
    model.eval()
    out = {"nll": [], "tokens": [], "prompt_tokens": [], "documents": [], "predictions": []}
    started = time.time()
    for start in range(0, len(examples), batch_size):
        batch = examples[start: start + batch_size]
        docs = [e.documents[:num_documents] if method != "none" else [] for e in batch]
        ins = [e.instruction for e in batch]
        ans = [e.answer for e in batch]
        out["prompt_tokens"] += [prompt_tokens(model, method, d, x) for d, x in zip(docs, ins)]
        out["documents"] += [len(d) for d in docs]
        if method == "text":
            # Documents as text need the prompt-tuning prompt limit, not the checkpoint's (which
            # would cut the documents from the left).
            prompts = [documents_as_text(d, x) for d, x in zip(docs, ins)]
            limit = max(model.config.max_prompt_tokens, MAX_PROMPT_TOKENS)
            score_batch(model, [None] * len(batch), prompts, ans, generate, max_new_tokens, out, max_prompt_tokens=limit)
        else:  # prompt tuning takes the documents themselves where ComMer takes soft prompts
            score_batch(model, docs if method == "prompt_tuning" else soft_prompts(model, method, docs), ins, ans,
                        generate, max_new_tokens, out)
        if progress is not None:
            progress(min(start + batch_size, len(examples)), len(examples))
    out["seconds"] = round(time.time() - started, 1)
    return out


def score_batch(model, prompts: list, instructions: list[str], answers: list[str], generate: bool,
                max_new_tokens: int, out: dict, **limits) -> None:
    """One batch: answer NLL, answer token counts and (if `generate`) greedy answers, appended to `out`.
    `prompts` is what the model puts before the instruction (soft prompts; prompt tuning: documents)."""
    nll, count = model.answer_nll(prompts, instructions, answers, **limits)
    if generate:
        out["predictions"] += model.generate(prompts, instructions, max_new_tokens=max_new_tokens, **limits)
    out["nll"] += nll.float().cpu().tolist()
    out["tokens"] += count.cpu().tolist()


def evaluate(model, method: str, examples: list[Example], num_documents: int, batch_size: int = 16,
             max_new_tokens: int = 24, generate: bool = True, progress: bool = True) -> dict:
    """Perplexity (token-level and mean per example) and ROUGE-1/L of greedy answers (a bar on stderr)."""
    bar = tqdm(total=len(examples), desc=f"evaluate {method} n={num_documents}", unit="example",
               dynamic_ncols=True, disable=not progress)
    scored = score_examples(model, method, examples, num_documents, batch_size, max_new_tokens, generate,
                            progress=lambda done, total: bar.update(done - bar.n))
    bar.close()
    nll, tokens = scored["nll"], scored["tokens"]
    per_example = [math.exp(a / b) for a, b in zip(nll, tokens)]
    result = {
        "method": method, "num_documents": num_documents if method != "none" else 0, "examples": len(examples),
        "perplexity": math.exp(sum(nll) / max(sum(tokens), 1.0)),
        "mean_example_perplexity": sum(per_example) / max(len(per_example), 1),
        "mean_prompt_tokens": sum(scored["prompt_tokens"]) / max(len(examples), 1),
        "seconds": scored["seconds"],
    }
    if generate:
        result.update(rouge_scores(scored["predictions"], [e.answer for e in examples]))
    return result


def load_model(method: str, checkpoint: str | None, cache: str | None):
    if method == "prompt_tuning":
        if not checkpoint:
            raise DataError("--method prompt_tuning needs --checkpoint (a prompt-tuning run's final/ folder)")
        return PromptTuning.from_pretrained(checkpoint, cache=cache)
    return ComMer.from_pretrained(checkpoint or default_checkpoint(cache), cache=cache)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.evaluate_task", description=__doc__.split("\n")[0])
    p.add_argument("--task", required=True, choices=["pretrain", "news", "lamp4", "lamp7", "perltqa"])
    p.add_argument("--data", nargs="+", required=True, help="Data file(s), as for training.train.")
    p.add_argument("--data_outputs", default=None, help="LaMP outputs JSON / PerLTQA QA JSON.")
    p.add_argument("--val_data", nargs="*", default=[], help="LaMP: dev questions JSON (used as the test split).")
    p.add_argument("--val_outputs", default=None, help="LaMP: dev outputs JSON.")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--method", default="commer", choices=["commer", "commer_concat", "none", "text", "prompt_tuning"])
    p.add_argument("--checkpoint", default=None, help="ComMer checkpoint (default: the bundled default) "
                                                      "or prompt-tuning folder.")
    p.add_argument("--num_documents", nargs="+", type=int, default=[4], help="Documents per example (several allowed).")
    p.add_argument("--max_examples", type=int, default=200, help="Seeded sample of this many examples.")
    p.add_argument("--max_examples_per_user", type=int, default=None, help="news: cap per author before sampling.")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--max_new_tokens", type=int, default=24)
    p.add_argument("--no_generate", action="store_true", help="Perplexity only (skip greedy decoding/ROUGE).")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num_threads", type=int, default=0)
    p.add_argument("--cache_dir", default=None)
    p.add_argument("--label", default=None, help="Name of this row in the output (default: the method).")
    p.add_argument("--output", default=None, help="Append result rows (JSON lines) to this file.")
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.num_threads or max(1, os.cpu_count() or 1))
    most = max(args.num_documents)
    config = TrainConfig(task=args.task, data=args.data, data_outputs=args.data_outputs, val_data=args.val_data,
                         val_outputs=args.val_outputs, num_documents=most, seed=args.seed,
                         max_examples_per_user=args.max_examples_per_user)
    try:
        examples = load_examples(config, args.split, args.max_examples)
        if not examples:
            raise DataError(f"{args.data}: no {args.split} examples for task {args.task!r}")
        model = load_model(args.method, args.checkpoint, args.cache_dir)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rows = []
    for n in ([0] if args.method == "none" else args.num_documents):
        row = evaluate(model, args.method, examples, n, args.batch_size, args.max_new_tokens, not args.no_generate)
        row["label"] = args.label or args.method
        row["checkpoint"] = args.checkpoint
        if args.method != "prompt_tuning":
            row["trained"] = bool(model.config.trained)
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.output:
            with open(args.output, "a") as f:
                f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
