"""Token-budget batching and the packed (padding-free) compression path (commer.packing)."""
import random

import pytest
import torch

from commer import packing
from commer.precision import default_dtype, resolve_dtype

K = 4  # the tiny config's num_compression_tokens
ATOL = 1e-5


def _documents(model, lengths, seed=0):
    rng = random.Random(seed)
    vocab = model.embed.weight.shape[0]
    return [[rng.randrange(3, vocab) for _ in range(n)] for n in lengths]


# ---- planning ------------------------------------------------------------------------------

@pytest.mark.parametrize("padded", [False, True])
def test_plan_respects_the_budget_and_loses_no_document(padded):
    rng = random.Random(1)
    lengths = [rng.randrange(0, 60) for _ in range(200)]
    budget = 160
    batches = packing.plan_batches(lengths, budget, K, padded=padded)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        costs = [lengths[i] + K for i in b]
        used = len(b) * max(costs) if padded else sum(costs)
        assert used <= budget
    # greedy in length order: no batch could have taken the next batch's first document
    for b, nxt in zip(batches, batches[1:]):
        costs = [lengths[i] + K for i in b + nxt[:1]]
        assert (len(costs) * max(costs) if padded else sum(costs)) > budget


@pytest.mark.parametrize("padded", [False, True])
def test_a_document_longer_than_the_budget_gets_a_batch_of_its_own(padded):
    lengths = [5, 500, 6, 7]
    batches = packing.plan_batches(lengths, 40, K, padded=padded)
    assert [1] in batches
    assert sorted(i for b in batches for i in b) == [0, 1, 2, 3]


def test_padded_plan_groups_similar_lengths():
    lengths = [50, 1, 49, 2, 48, 3]
    assert packing.plan_batches(lengths, 3 * (3 + K), K, padded=True)[0] == [1, 3, 5]


def test_plan_rejects_a_non_positive_budget():
    with pytest.raises(ValueError):
        packing.plan_batches([1, 2], 0, K)


def test_padding_efficiency():
    lengths = [1, 3]
    assert packing.padding_efficiency(lengths, [[0, 1]], K, packed=False) == pytest.approx((5 + 7) / 14)
    assert packing.padding_efficiency(lengths, [[0, 1]], K, packed=True) == 1.0


# ---- layout --------------------------------------------------------------------------------

def test_pack_layout():
    p = packing.pack([[7, 8], [], [9]], K=2, placeholder_id=0)
    assert p.ids.tolist() == [7, 8, 0, 0, 0, 0, 9, 0, 0]
    assert p.positions.tolist() == [0, 1, 2, 3, 0, 1, 0, 1, 2]
    assert p.slot.tolist() == [-1, -1, 0, 1, 0, 1, -1, 0, 1]
    assert p.segment.tolist() == [0, 0, 0, 0, 1, 1, 2, 2, 2]
    assert p.slots_at.tolist() == [[2, 3], [4, 5], [7, 8]]
    mask = packing.block_causal_mask(p.segment)[0, 0]
    assert mask[3].tolist() == [True] * 4 + [False] * 5       # doc 0's last slot sees doc 0 only
    assert mask[8].tolist() == [False] * 6 + [True] * 3       # doc 2 does not see docs 0 and 1
    assert not mask[0, 1]                                     # causal within a document


def test_attention_kwargs_by_implementation():
    p = packing.pack([[1, 2], [3]], K=1)
    sdpa = packing.attention_kwargs(p, "sdpa", torch.float32)
    assert sdpa["attention_mask"].dtype == torch.bool and sdpa["use_cache"] is False
    eager = packing.attention_kwargs(p, "eager", torch.bfloat16)["attention_mask"]
    assert eager.dtype == torch.bfloat16 and eager[0, 0, 0, 0] == 0 and eager[0, 0, 0, 1] < -1e30
    flash = packing.attention_kwargs(p, "flash_attention_2", torch.bfloat16)
    assert "attention_mask" not in flash and flash["position_ids"].tolist() == [[0, 1, 2, 0, 1]]


# ---- numerics on the tiny model ------------------------------------------------------------

LENGTHS = [3, 17, 1, 40, 0, 9, 64]


def test_packed_equals_padded(tiny_model):
    docs = _documents(tiny_model, LENGTHS)
    with torch.no_grad():
        padded = tiny_model.compress_token_ids(docs)
        packed = tiny_model.compress_packed(docs)
    assert packed.shape == padded.shape == (len(docs), K, tiny_model.hidden_size)
    assert packed.dtype == torch.float32
    torch.testing.assert_close(packed, padded, atol=ATOL, rtol=1e-4)


def test_packed_equals_padded_under_eager_attention(tiny_model):
    docs = _documents(tiny_model, LENGTHS)
    with torch.no_grad():
        padded = tiny_model.compress_token_ids(docs)
        tiny_model.body.config._attn_implementation = "eager"
        try:
            packed = tiny_model.compress_packed(docs)
        finally:
            tiny_model.body.config._attn_implementation = "sdpa"
    torch.testing.assert_close(packed, padded, atol=ATOL, rtol=1e-4)


def test_batch_invariance(tiny_model):
    """A document's packed compression is the same alone, first, in the middle and last."""
    docs = _documents(tiny_model, LENGTHS, seed=3)
    target = docs[1]
    with torch.no_grad():
        alone = tiny_model.compress_packed([target])[0]
        for batch, at in [([target] + docs[2:], 0), (docs[2:4] + [target] + docs[4:], 2), (docs[2:] + [target], 5)]:
            torch.testing.assert_close(tiny_model.compress_packed(batch)[at], alone, atol=ATOL, rtol=1e-4)


def test_documents_in_a_pack_do_not_see_each_other(tiny_model):
    """Changing one document changes its own compression and no other's."""
    docs = _documents(tiny_model, [12, 12, 12])
    changed = [docs[0], [t + 1 for t in docs[1]], docs[2]]
    with torch.no_grad():
        a, b = tiny_model.compress_packed(docs), tiny_model.compress_packed(changed)
    torch.testing.assert_close(a[0], b[0], atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(a[2], b[2], atol=ATOL, rtol=1e-4)
    assert (a[1] - b[1]).abs().max() > 1e-3


def test_gradients_flow_through_the_packed_path(tiny_model):
    """One backward pass through the packed path gives the padded path's gradients."""
    docs = _documents(tiny_model, [5, 20, 11])
    names, trainable = zip(*[(n, p) for n, p in tiny_model.named_parameters() if p.requires_grad])
    weights = torch.randn(len(docs), K, tiny_model.hidden_size, generator=torch.Generator().manual_seed(0))

    def gradients(step):
        tiny_model.zero_grad()
        (step(docs) * weights).sum().backward()
        return [p.grad.clone() for p in trainable]

    packed, padded = gradients(tiny_model.compress_packed), gradients(tiny_model.compress_token_ids)
    assert tiny_model.compression_embeddings.grad.abs().sum() > 0
    # LoRA's B starts at zero, so only B (not A) gets a gradient on the first step
    assert all(g.abs().sum() > 0 for n, g in zip(names, packed) if "lora_B" in n)
    assert sum("lora_B" in n for n in names) > 0
    for g_packed, g_padded in zip(packed, padded):
        torch.testing.assert_close(g_packed, g_padded, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("max_batch_tokens,packed", [(None, False), (60, False), (60, True), (1, True)])
def test_compress_batching_modes_agree(tiny_model, max_batch_tokens, packed):
    texts = ["The quick brown fox jumps over the lazy dog.", "", "coffee",
             "I love hiking in the mountains and cooking spicy food with friends."] * 3
    reference = tiny_model.compress(texts, batch_size=len(texts))
    out = tiny_model.compress(texts, batch_size=2, max_batch_tokens=max_batch_tokens, packed=packed)
    torch.testing.assert_close(out, reference, atol=ATOL, rtol=1e-4)


def test_compress_packed_needs_a_budget(tiny_model):
    with pytest.raises(ValueError):
        tiny_model.compress(["a"], packed=True)


# ---- dtype default -------------------------------------------------------------------------

def test_default_dtype_by_device():
    assert default_dtype("cpu") == "float32"
    assert default_dtype(torch.device("cuda", 0)) == "bfloat16"  # no GPU needed to decide
    assert resolve_dtype(None, "cuda") == "bfloat16"
    assert resolve_dtype("auto", "cpu") == "float32"
    assert resolve_dtype("float32", "cuda") == "float32"  # a flag overrides the default
    with pytest.raises(ValueError):
        resolve_dtype("float16", "cpu")


# ---- the real backbone ---------------------------------------------------------------------

@pytest.mark.integration
def test_packed_equals_padded_on_the_default_backbone(default_model):
    texts = ["Text: Markets rallied as rates fell. Title: Stocks up", "Title: short",
             "Text: I love hiking in the mountains and cooking spicy food with friends on weekends. Title: Hiking"]
    ids, _ = default_model.tokenize_documents(texts)
    with torch.no_grad():
        padded = default_model.compress_token_ids(ids)
        packed = default_model.compress_packed(ids)
        alone = default_model.compress_packed(ids[2:])
    scale = padded.abs().max()
    torch.testing.assert_close(packed, padded, atol=2e-5 * scale, rtol=1e-4)
    torch.testing.assert_close(alone[0], packed[2], atol=2e-5 * scale, rtol=1e-4)


@pytest.mark.integration  # slow, not the real backbone: FlexAttention compiles on CPU (~1 min)
def test_packed_equals_padded_under_flex_attention(tiny_model):
    """FlexAttention gets no dense mask: transformers finds the documents from the position ids
    restarting at 0 (the path flash-attention varlen kernels use too) and builds a block mask."""
    pytest.importorskip("torch.nn.attention.flex_attention")
    docs = _documents(tiny_model, LENGTHS)
    with torch.no_grad():
        padded = tiny_model.compress_token_ids(docs)
        tiny_model.body.config._attn_implementation = "flex_attention"
        try:
            packed = tiny_model.compress_packed(docs)
        finally:
            tiny_model.body.config._attn_implementation = "sdpa"
    torch.testing.assert_close(packed, padded, atol=ATOL, rtol=1e-4)
