"""Length bucketing and token-budget batches: documents of similar token length share a batch, so
padding stays small, and a batch holds up to N positions, not N documents.

Compression pads every row to the longest document in its batch, so a batch mixing a
10-token and a 250-token document wastes ~96% of the first row. Documents are grouped into keys
(one GroupByKey value: what one worker plans and compresses), and within a key batches are planned
by commer.packing.plan_batches over the documents sorted by length: a document costs its tokens + K
positions, a padded batch rows × its longest row, a packed one the sum.

The keys are planned from the data (plan_keys): every key ends in a partly filled batch, and a key
with few documents spread over many lengths pads more (neighbours in the sort differ by more
tokens), so a key should hold many batches; but a key is also the unit of parallelism, so a large
job needs many keys. Keyed by (length bucket, one of 8 hash shards), 400 news documents became 14
keys, 32 batches of mean fill 0.75 and padding efficiency 0.938, against the bare loop's 24
batches, 0.953 and 0.985 over the same documents (issue 27). Sized from the documents' counted
positions, a key holds ½–1 × KEY_BATCHES batches' worth: a small job is one key and forms the
loop's batches (those 400: the same 24); a large one gets one key per up to KEY_BATCHES batches, so
it spreads over as many workers as it has work for, at the cost of one partly filled batch per key
(2,000 of those documents: 3 keys, 111 batches against the loop's 109). Plain Python, no Beam.
"""
from __future__ import annotations

import math
import zlib
from typing import Optional, Sequence

from pydantic import BaseModel, Field

from commer.packing import batch_cost, cost, plan_batches

# A key is cut into batches a window at a time: up to this many batches' worth of positions are
# sorted by length and planned together (bounded memory, near-equal neighbours).
SORT_WINDOW_BATCHES = 64
# The batches' worth of documents a key is sized to (at most; at least half): enough that its one partly
# filled batch costs little (≤ 1 in 24–48) and that its documents sit densely in the length sort; below
# the sort window, because a key is a hash shard, ~1/sqrt(documents) off its mean size, and a key that
# still fits one window is planned as one sorted pass.
KEY_BATCHES = SORT_WINDOW_BATCHES * 3 // 4
# Positions per batch (tokens + K per document, padding counted) when --max_batch_tokens is not
# given, by the worker's device. CPU: 1,024 ≈ 19 documents of the sample's length, the work of the
# 16-document batches used before; on 2 cores a larger batch does not raise the matmul rate, and a
# budget of 1,728 measured 1.05–1.12× count batches (benchmarks/RESULTS.md §6). CUDA: 65,536 ≈ 1,200
# HuffPost documents, the scale of the best count batch measured on an H100 (1,024 documents,
# issue 12), with the padding that count batches wasted now bounded by the budget.
DEFAULT_BATCH_TOKENS = {"cpu": 1024, "cuda": 65536}


def length_bucket(num_tokens: int, width: int) -> int:
    """Bucket index: tokens 1..width → 0, width+1..2·width → 1, ..."""
    if width <= 0:
        raise ValueError("bucket width must be positive")
    return max(num_tokens - 1, 0) // width


def plan_keys(sizes: dict[int, tuple[int, int]], budget: int, max_batch_documents: Optional[int] = None,
              shards: Optional[int] = None) -> dict[int, tuple[int, int]]:
    """Length bucket → (group, shards): a bucket's documents go to one of `shards` keys of its group.

    `sizes`: each bucket's (documents, positions), positions as `cost` counts them (tokens + K). A bucket
    is worth max(positions ÷ budget, documents ÷ max_batch_documents) batches. Adjacent buckets join one
    group until it is worth KEY_BATCHES batches (a last group worth less joins the one before); a group is
    split into ceil(worth ÷ KEY_BATCHES) hash shards, so each key holds ½–1 × KEY_BATCHES batches' worth.
    Grouping across buckets costs no padding: a key's documents are sorted by length before batching.
    With `shards` given (--batch_shards), every bucket is its own group of that many keys (as before issue 27).
    A function of the sizes alone: reruns over the same documents form the same keys.
    """
    if shards:
        return {bucket: (bucket, shards) for bucket in sizes}
    groups: list[tuple[list[int], float]] = []  # (buckets, batches' worth), each worth ≥ KEY_BATCHES
    members: list[int] = []
    total = 0.0
    for bucket in sorted(sizes):
        documents, positions = sizes[bucket]
        members.append(bucket)
        total += max(positions / budget, documents / max_batch_documents if max_batch_documents else 0.0)
        if total >= KEY_BATCHES:
            groups.append((members, total))
            members, total = [], 0.0
    if members and groups:  # a last group worth less than KEY_BATCHES joins the one before
        before, worth = groups.pop()
        members, total = before + members, worth + total
    if members:
        groups.append((members, total))
    return {bucket: (min(members), max(1, math.ceil(total / KEY_BATCHES))) for members, total in groups
            for bucket in members}


def batch_key(user_id: str, doc_id: str, bucket: int, keys: dict[int, tuple[int, int]]) -> str:
    """The GroupByKey key of a document of this length bucket under `keys` (plan_keys): its group and a
    shard by a stable hash of its ids (not random), so reruns form the same batches."""
    group, shards = keys[bucket]
    shard = zlib.crc32(f"{user_id}\x00{doc_id}".encode("utf-8", "surrogatepass")) % shards
    return f"{group}:{shard}"


def padding_fraction(batch: Sequence[Sequence[int]]) -> float:
    """Share of padded positions in a right-padded batch (for metrics and tests)."""
    if not batch:
        return 0.0
    width = max(len(x) for x in batch)
    return 1.0 - sum(len(x) for x in batch) / (width * len(batch)) if width else 0.0


class Batching(BaseModel):
    """How the compress step cuts a length bucket into model calls (travels with the pipeline)."""

    K: int = Field(gt=0, description="Compression slots per document: a document costs its tokens + K positions.")
    max_batch_tokens: Optional[int] = Field(None, gt=0, description="Positions per batch (padded batches count "
                                            "rows × longest row; packed ones the sum). None: DEFAULT_BATCH_TOKENS "
                                            "of the worker's device.")
    packed: bool = Field(False, description="Each batch is one packed sequence (commer.packing): no padding.")
    max_batch_documents: Optional[int] = Field(None, gt=0, description="At most this many documents per batch "
                                               "(--batch_size); None: the token budget alone decides.")
    device: str = Field("auto", description="--device: picks the default budget on the worker.")

    @classmethod
    def from_flags(cls, flags, K: int) -> "Batching":
        """From compress_users' flags (pipelines.options.add_batching_flags)."""
        return cls(K=K, max_batch_tokens=flags.max_batch_tokens, packed=flags.packed,
                   max_batch_documents=flags.batch_size, device=flags.device)

    def budget(self, device: str) -> int:
        """The token budget a worker whose model runs on `device` ('cpu' or 'cuda') batches with."""
        return self.max_batch_tokens or DEFAULT_BATCH_TOKENS[device]


def split_batches(element, batching: Batching, budget: int, window_batches: int = SORT_WINDOW_BATCHES):
    """A key's TokenizedDocuments → batches of at most `budget` positions (commer.packing.plan_batches).

    A key spans many lengths, so batches cut in arrival order would pad every row up to the longest
    in the batch. Planning windows of `window_batches` batches' worth (positions, or documents under
    a document cap) sorted by length makes neighbours nearly equal (padding ~1 token per row) while
    memory stays bounded by one window: the grouped values are iterated lazily (on Dataflow they
    stream from shuffle), so a large key never sits in memory at once. Keys planned by plan_keys
    fit one window, so the whole key is planned at once. A document longer than the budget is a
    batch of its own.

    A plain GroupByKey upstream, not GroupIntoBatches: the latter's processing-time timer pushes
    the DirectRunner onto its legacy engine.
    """
    _, docs = element
    window: list = []
    positions = 0
    cap = batching.max_batch_documents
    for doc in docs:
        window.append(doc)
        positions += cost(len(doc.token_ids), batching.K)
        if positions >= budget * window_batches or (cap and len(window) >= cap * window_batches):
            yield from _planned_batches(window, batching, budget)
            window, positions = [], 0
    yield from _planned_batches(window, batching, budget)


def _planned_batches(docs: list, batching: Batching, budget: int):
    if not docs:
        return
    docs.sort(key=lambda d: (len(d.token_ids), d.user_id, d.doc_id))  # a total order: reruns form the same batches
    cap = batching.max_batch_documents
    for planned in plan_batches([len(doc.token_ids) for doc in docs], budget, batching.K, padded=not batching.packed):
        for start in range(0, len(planned), cap or len(planned)):
            yield [docs[i] for i in planned[start: start + (cap or len(planned))]]


def batch_positions(batch, K: int, packed: bool) -> int:
    """Positions a batch of TokenizedDocuments costs the model: Σ (tokens + K) packed, rows × the
    longest row padded (what the budget bounds)."""
    return batch_cost([len(doc.token_ids) for doc in batch], K, padded=not packed)


# The batches' distributions (SplitBatches updates one value of each per batch; run_summary.json's "batches").
BATCH_DISTRIBUTIONS = ("batch_documents", "batch_positions", "batch_fill_permille")


def batch_report(distributions: dict[str, dict]) -> dict:
    """run_summary.json's "batches" from the BATCH_DISTRIBUTIONS (count, sum, min, max each): how many model
    calls, their documents and positions, and their mean fill (positions ÷ budget)."""
    documents, positions, fill = (distributions.get(name) for name in BATCH_DISTRIBUTIONS)
    if not documents:
        return {"count": 0}

    def spread(d: dict) -> dict:
        return {"mean": round(d["sum"] / d["count"], 2), "min": d["min"], "max": d["max"]}

    return {"count": documents["count"], "documents": spread(documents), "positions": spread(positions),
            "mean_fill": round(fill["sum"] / fill["count"] / 1000, 4)}


def padding_tokens(batch, packed: bool) -> int:
    """Padding tokens a batch of TokenizedDocuments costs the model: none when packed."""
    if packed:
        return 0
    return len(batch) * max(len(doc.token_ids) for doc in batch) - sum(len(doc.token_ids) for doc in batch)
