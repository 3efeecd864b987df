"""Token-budget batching and padding-free packing for the compressor (pure torch, no Beam).

Token-budget batching: a batch holds up to N positions, not N documents, so a batch of short
documents is as large (in work) as a batch of long ones. A document costs its tokens + K slots.

    plan_batches(lengths, max_batch_tokens, K)               # packed: Σ (length + K) ≤ N
    plan_batches(lengths, max_batch_tokens, K, padded=True)  # padded: count × max(length + K) ≤ N

Packing: a batch's documents are concatenated into ONE sequence, each followed by its K
compression slots, with no padding anywhere:

    [doc 0 tokens, K slots, doc 1 tokens, K slots, ...]
    position ids   0 … L0+K-1,  0 … L1+K-1, ...            (restart at 0 per document)
    attention      block-diagonal causal: a position sees only earlier positions of its own document

so each document's K slot states are exactly what it gets alone (or in a padded row, where
it sits at positions 0 … L+K-1 too), within float rounding. Under 'sdpa' and 'eager' the
block-diagonal mask is passed explicitly as a 4D mask, which transformers uses as given.
Under 'flash_attention_2/3' and 'flex_attention' no mask is passed: transformers detects
packed documents from the position ids restarting at 0 and runs a variable-length kernel
(cu_seqlens) or a block-sparse FlexAttention mask, so attention costs Σ L² rather than
(Σ L)² — that is the GPU path. It only does so without a KV cache, hence use_cache=False.
Tested on CPU: 'sdpa', 'eager' and 'flex_attention' (tiny model) equal the padded path;
flash-attention kernels need a GPU and are not tested yet.

On CPU, SDPA with a dense mask computes attention over the whole packed sequence (masked
entries included), so keep CPU packs modest (a few hundred to ~1000 tokens): the attention
work per position grows with the pack's length. See benchmarks/RESULTS.md for measurements.

Everything here is differentiable (training may use the packed path).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

# transformers' attention implementations that read packed documents from the position ids
# (a variable-length kernel or a block mask) instead of needing a dense 4D mask.
_POSITION_ID_PACKING = ("flash_attention_2", "flash_attention_3", "flex_attention")


def cost(length: int, K: int) -> int:
    """Positions one document occupies: its tokens and its K compression slots."""
    return int(length) + K


def plan_batches(lengths: Sequence[int], max_batch_tokens: int, K: int, padded: bool = False) -> list[list[int]]:
    """Group document indices into batches of at most `max_batch_tokens` positions.

    Documents are taken in order of length (ties in input order), so padded batches hold
    documents of similar length. `padded=False` (packing) counts Σ (length + K); `padded=True`
    counts rows × the longest row, the positions a right-padded batch really processes.
    A document that alone exceeds the budget gets a batch of its own (it is never dropped or
    cut). Every index appears exactly once.
    """
    if max_batch_tokens <= 0:
        raise ValueError(f"max_batch_tokens must be positive, got {max_batch_tokens}")
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    used = 0  # packed: Σ cost; padded: the longest cost so far (ascending order: the last one)
    for i in order:
        c = cost(lengths[i], K)
        if padded:
            fits = (len(current) + 1) * max(used, c) <= max_batch_tokens
        else:
            fits = used + c <= max_batch_tokens
        if current and not fits:
            batches.append(current)
            current, used = [], 0
        current.append(i)
        used = max(used, c) if padded else used + c
    if current:
        batches.append(current)
    return batches


def batch_cost(lengths: Sequence[int], K: int, padded: bool) -> int:
    """Positions one batch of documents of these lengths costs the model (what a budget bounds): Σ (length + K)
    packed, rows × the longest row padded."""
    costs = [cost(length, K) for length in lengths]
    return len(costs) * max(costs) if padded else sum(costs)


def padding_efficiency(lengths: Sequence[int], batches: Sequence[Sequence[int]], K: int, packed: bool) -> float:
    """Real positions ÷ processed positions (1.0 for packed batches: no position is padding)."""
    real = sum(cost(lengths[i], K) for b in batches for i in b)
    if packed:
        return 1.0
    processed = sum(batch_cost([lengths[i] for i in b], K, padded=True) for b in batches)
    return real / processed


@dataclass
class Packed:
    """One packed sequence of documents with their compression slots (all tensors on one device).

    ids:        (T,) token ids; slot positions hold a placeholder id (their embeddings are replaced)
    positions:  (T,) position ids, restarting at 0 for each document
    slot:       (T,) which compression slot (0 … K-1) a position is, -1 for document tokens
    segment:    (T,) which document (0 … n-1) a position belongs to
    slots_at:   (n, K) index in the sequence of each document's K slots
    """
    ids: torch.Tensor
    positions: torch.Tensor
    slot: torch.Tensor
    segment: torch.Tensor
    slots_at: torch.Tensor

    def __len__(self) -> int:
        return int(self.ids.shape[0])


def pack(documents: Sequence[Sequence[int]], K: int, placeholder_id: int = 0,
         device: torch.device | str = "cpu") -> Packed:
    """Lay `documents` (token id lists) out as [doc 0, K slots, doc 1, K slots, ...]."""
    if not documents:
        raise ValueError("nothing to pack")
    lengths = torch.tensor([len(d) for d in documents], dtype=torch.long)
    costs = lengths + K
    starts = torch.cumsum(costs, 0) - costs
    total = int(costs.sum())
    segment = torch.repeat_interleave(torch.arange(len(documents)), costs)
    positions = torch.arange(total) - starts[segment]
    slot = positions - lengths[segment]
    slot = torch.where(slot >= 0, slot, torch.full_like(slot, -1))
    ids = torch.full((total,), placeholder_id, dtype=torch.long)
    tokens = [t for d in documents for t in d]
    if tokens:
        ids[slot < 0] = torch.as_tensor(tokens, dtype=torch.long)
    slots_at = (starts + lengths)[:, None] + torch.arange(K)[None, :]
    return Packed(*(t.to(device) for t in (ids, positions, slot, segment, slots_at)))


def block_causal_mask(segment: torch.Tensor) -> torch.Tensor:
    """(1, 1, T, T) boolean mask, True where query q may attend to key k: same document, k ≤ q.

    Documents are contiguous, so "earlier in the same document" is "earlier in the sequence"."""
    index = torch.arange(segment.shape[0], device=segment.device)
    mask = (segment[:, None] == segment[None, :]) & (index[None, :] <= index[:, None])
    return mask[None, None]


def attention_kwargs(packed: Packed, attn_implementation: str, dtype: torch.dtype) -> dict:
    """What the decoder needs besides the embeddings to keep packed documents apart."""
    # No KV cache: it is wasted work here, and transformers only looks for packed documents in
    # the position ids when there is none.
    kwargs = {"position_ids": packed.positions[None], "use_cache": False}
    if attn_implementation in _POSITION_ID_PACKING:
        return kwargs  # transformers derives the documents' boundaries from the position ids
    mask = block_causal_mask(packed.segment)
    if attn_implementation != "sdpa":
        # eager (and anything else that adds the mask to the scores) wants an additive float mask
        mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
    kwargs["attention_mask"] = mask
    return kwargs


def compress_packed(model, documents: Sequence[Sequence[int]]) -> torch.Tensor:
    """(n, K, d) float32 compressions of tokenized documents, packed into one sequence.

    Equal to `model.compress_token_ids(documents)` within float tolerance; differentiable.
    `model` is a commer.model.ComMer (its embedding, compression embeddings and decoder body).
    """
    K = model.K
    packed = pack(documents, K, placeholder_id=model.tokenizer.pad_token_id or 0, device=model.device)
    embeds = model.embed(packed.ids)
    compression = model.compression_embeddings.to(embeds.dtype)[packed.slot.clamp(min=0)]
    embeds = torch.where((packed.slot >= 0)[:, None], compression, embeds)
    impl = getattr(model.body.config, "_attn_implementation", "sdpa")
    hidden = model.body(inputs_embeds=embeds[None], **attention_kwargs(packed, impl, embeds.dtype)).last_hidden_state[0]
    return hidden[packed.slots_at].float()
