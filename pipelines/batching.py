"""Length bucketing: documents of similar token length share a batch, so padding stays small.

Compression pads every row to the longest document in its batch, so a batch mixing a
10-token and a 250-token document wastes ~96% of the first row. Keying documents by
(length bucket, shard) before batching bounds the padding per row by the bucket width,
and the shard spreads each bucket over several workers. Plain Python, no Beam.
"""
from __future__ import annotations

import zlib
from typing import Sequence


def length_bucket(num_tokens: int, width: int) -> int:
    """Bucket index: tokens 1..width → 0, width+1..2·width → 1, ..."""
    if width <= 0:
        raise ValueError("bucket width must be positive")
    return max(num_tokens - 1, 0) // width


def batch_key(user_id: str, doc_id: str, num_tokens: int, width: int, shards: int) -> str:
    """Key for GroupIntoBatches: same bucket → same batches; the shard is stable (not random)
    so reruns form the same batches."""
    shard = zlib.crc32(f"{user_id}\x00{doc_id}".encode("utf-8", "surrogatepass")) % max(shards, 1)
    return f"{length_bucket(num_tokens, width)}:{shard}"


def padding_fraction(batch: Sequence[Sequence[int]]) -> float:
    """Share of padded positions in a right-padded batch (for metrics and tests)."""
    if not batch:
        return 0.0
    width = max(len(x) for x in batch)
    return 1.0 - sum(len(x) for x in batch) / (width * len(batch)) if width else 0.0
