"""Knowledge probe: can one document be read back out of a merge of several?

The paper's Figure 5 (PerLTQA) shows that merging hurts knowledge-intensive use: the more
documents are averaged, the less of any one survives. This probe measures that directly, with
the pretraining task's own format (training/tasks/pretraining.py): a group of `num_merged`
short documents, the i-th prefixed "Document i: ", is compressed and mean-merged; the query is
"What does document n contain?" and the answer is that document's text. The score is the
token-level perplexity of the answer.

The same target documents are asked for at every `num_merged` (the others in its group are
seeded distractors from the same pool, and the target's position is seeded), so the numbers
for 1, 2, 4, ... merged documents are paired. Cheap enough to run during training as a
leading indicator:

    from training.probes import news_documents, reconstruction_perplexity
    documents = news_documents(["news_category_v3_subset.jsonl", "news_category_v2_extra.jsonl"])
    reconstruction_perplexity(model, documents, num_merged=4, num_examples=64)["perplexity"]

`compression_spread` is the other leading indicator, logged at every validation by training.train: how
much different documents' compressions differ. A stage 1 whose learning rate was too high (session of
2026-12-07: lr 3e-3 at batch 8) collapsed to one vector for every document while its loss still fell.
"""
from __future__ import annotations

import logging
import math
import random
from typing import Sequence

import torch

from training.tasks import news
from training.tasks.base import Example
from training.tasks.pretraining import DOC_CHARS

DOC_PREFIX = "Document {}: "
QUERY = "What does document {} contain?"

log = logging.getLogger("training")


def reconstruction_examples(documents: Sequence[str], num_merged: int, num_examples: int | None = None,
                            seed: int = 0) -> list[Example]:
    """One example per target document (the first `num_examples` of `documents`): the target
    plus `num_merged - 1` seeded distractors from the other documents, in a seeded order."""
    docs = [d.strip() for d in documents if d and d.strip()]
    if num_merged < 1:
        raise ValueError("num_merged must be at least 1")
    if len(docs) < num_merged:
        raise ValueError(f"need at least {num_merged} documents to merge {num_merged}, got {len(docs)}")
    targets = range(len(docs) if num_examples is None else min(num_examples, len(docs)))
    examples = []
    for t in targets:
        # Seeded per target, so target t's group at m documents does not depend on num_examples.
        rng = random.Random(f"{seed}:{t}:{num_merged}")
        others = rng.sample([i for i in range(len(docs)) if i != t], num_merged - 1)
        position = rng.randrange(num_merged)
        group = others[:position] + [t] + others[position:]
        examples.append(Example(
            documents=[DOC_PREFIX.format(i + 1) + docs[j] for i, j in enumerate(group)],
            instruction=QUERY.format(position + 1),
            answer=docs[t],
            example_id=f"reconstruct-{t}-of-{num_merged}",
        ))
    return examples


def news_documents(data, split: str = "test", limit: int | None = None, seed: int = 0,
                   max_chars: int = DOC_CHARS) -> list[str]:
    """Held-out probe documents: the HuffPost short descriptions (≤150 characters) of the news
    task's `split` authors (test by default: never trained on), deduplicated, in a seeded order."""
    docs = sorted({r["short_description"].strip() for author, rows in news.read_articles(data).items()
                   if news.split_of(author, news.FRACTIONS) == split for r in rows
                   if 0 < len(r["short_description"].strip()) <= max_chars})
    random.Random(seed).shuffle(docs)
    return docs[:limit] if limit else docs


@torch.no_grad()
def reconstruction_perplexity(model, documents: Sequence[str], num_merged: int, num_examples: int | None = None,
                              seed: int = 0, batch_size: int = 16, reference: bool = False) -> dict:
    """Token-level perplexity of reconstructing one document from the mean of `num_merged` compressions.

    `documents`: short texts (≤150 characters, as in pretraining), held out of training.
    With `reference=True`, also the perplexity of the same answers with no soft prompt (the
    frozen backbone guessing from the query alone). The model's train/eval mode is restored.
    """
    examples = reconstruction_examples(documents, num_merged, num_examples, seed)
    was_training = model.training
    model.eval()
    nll = tokens = ref_nll = 0.0
    try:
        for start in range(0, len(examples), batch_size):
            batch = examples[start: start + batch_size]
            ins = [e.instruction for e in batch]
            ans = [e.answer for e in batch]
            # A compression read to reproduce its document: never after a checkpoint's task prompt.
            n, c = model.answer_nll(model.merge_documents([e.documents for e in batch]), ins, ans, task_prompt=False)
            nll += float(n.sum())
            tokens += float(c.sum())
            if reference:
                ref_nll += float(model.answer_nll([None] * len(batch), ins, ans)[0].sum())
    finally:
        model.train(was_training)
    out = {"num_merged": num_merged, "examples": len(examples), "answer_tokens": int(tokens),
           "perplexity": math.exp(nll / max(tokens, 1.0))}
    if reference:
        out["reference_perplexity"] = math.exp(ref_nll / max(tokens, 1.0))
    return out


# Below this spread the compressor is collapsing: every document compresses to nearly the same vector.
SPREAD_FLOOR = 0.05
SPREAD_DOCUMENTS = 16


def spread_documents(examples: Sequence) -> list[str]:
    """Up to SPREAD_DOCUMENTS distinct validation documents, in order (none for examples without any)."""
    return list(dict.fromkeys(d for e in examples for d in e.documents))[:SPREAD_DOCUMENTS]


def compression_spread(model, texts: list[str], step: int) -> float | None:
    """The model's compression spread over `texts` (None without either), with a warning on collapse."""
    spread = model.compression_spread(texts) if len(texts) > 1 else None
    if spread is not None and spread < SPREAD_FLOOR:
        log.warning("step %d: compression spread %.4f < %.2f: documents compress to nearly the same vector, so "
                    "profiles cannot differ between users; lower the learning rate (lr_lora)", step, spread, SPREAD_FLOOR)
    return spread
