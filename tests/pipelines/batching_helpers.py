"""The compress job's batching chain in plain Python, step for step as the Beam graph runs it (Tokenize's length
bucket → KeyBatches' sizes, plan_keys and batch_key → GroupByLength → SplitBatches), and what a list of batches
amounts to (count, fill, padding efficiency), for the tests that hold the job's batches against the bare loop's."""
from __future__ import annotations

from commer.packing import cost
from pipelines.batching import Batching, batch_key, batch_positions, length_bucket, plan_keys, split_batches


def job_batches(docs, batching: Batching, budget: int, width: int = 32, shards: int | None = None) -> list[list]:
    """Batches of TokenizedDocuments, in key order."""
    bucketed = [(length_bucket(len(doc.token_ids), width), doc) for doc in docs]
    sizes: dict[int, tuple[int, int]] = {}
    for bucket, doc in bucketed:
        documents, positions = sizes.get(bucket, (0, 0))
        sizes[bucket] = (documents + 1, positions + cost(len(doc.token_ids), batching.K))
    keys = plan_keys(sizes, budget, batching.max_batch_documents, shards)
    grouped: dict[str, list] = {}
    for bucket, doc in bucketed:
        grouped.setdefault(batch_key(doc.user_id, doc.doc_id, bucket, keys), []).append(doc)
    return [batch for key in sorted(grouped) for batch in split_batches((key, iter(grouped[key])), batching, budget)]


def measure(batches, K: int, budget: int) -> dict:
    """count, mean fill (positions ÷ budget) and padding efficiency (real ÷ processed positions) of padded batches."""
    processed = [batch_positions(batch, K, packed=False) for batch in batches]
    real = sum(cost(len(doc.token_ids), K) for batch in batches for doc in batch)
    return {"count": len(batches), "fill": sum(processed) / len(batches) / budget, "padding": real / sum(processed)}
