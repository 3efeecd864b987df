"""The ComMer model on a tiny random backbone loaded through the real loading path."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from commer import ComMer, ComMerConfig

DOCS = [
    "I love hiking in the mountains.",
    "Spicy food with friends, every single weekend, is the best part of my life and I write about it.",
    "Gardening.",
    "She wrote about travel, coffee, startups and football and music.",
]


def test_compression_shape_and_dtype(tiny_model):
    out = tiny_model.compress(DOCS)
    assert out.shape == (len(DOCS), 4, 64)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_batch_invariance(tiny_model):
    """A document compresses the same alone as in a batch with longer and shorter neighbours."""
    ids, _ = tiny_model.tokenize_documents(DOCS)
    assert len({len(x) for x in ids}) > 2, "test needs documents of different lengths"
    with torch.inference_mode():
        batched = tiny_model.compress_token_ids(ids)
        for i, doc_ids in enumerate(ids):
            alone = tiny_model.compress_token_ids([doc_ids])[0]
            torch.testing.assert_close(batched[i], alone, atol=1e-5, rtol=1e-5)
        reordered = tiny_model.compress_token_ids(ids[::-1]).flip(0)
    torch.testing.assert_close(batched, reordered, atol=1e-5, rtol=1e-5)


def test_different_documents_compress_differently(tiny_model):
    out = tiny_model.compress(DOCS[:2])
    assert (out[0] - out[1]).abs().max() > 1e-3


def test_long_documents_are_truncated_and_counted(tiny_model):
    long_doc = "word " * 500
    ids, truncated = tiny_model.tokenize_documents([long_doc, "short"])
    assert truncated == [True, False]
    assert len(ids[0]) == tiny_model.config.max_document_tokens
    # Anything past the limit cannot change the compression.
    a, b = tiny_model.compress([long_doc, long_doc + " extra tail"])
    torch.testing.assert_close(a, b)


def test_only_trainable_parameters_get_gradients(tiny_model):
    tiny_model.train()
    backbone_before = {n: p.detach().clone() for n, p in tiny_model.named_parameters() if "lora_" not in n
                       and n != "compression_embeddings"}
    trainable = [n for n, p in tiny_model.named_parameters() if p.requires_grad]
    assert "compression_embeddings" in trainable
    assert trainable and all(n == "compression_embeddings" or "lora_" in n for n in trainable)

    optimizer = torch.optim.AdamW([p for p in tiny_model.parameters() if p.requires_grad], lr=1e-2)
    emb_before = tiny_model.compression_embeddings.detach().clone()
    loss = tiny_model.loss([DOCS[:2], DOCS[2:]], ["what do I like?", "what do I do?"], ["hiking", "gardening"])
    loss.backward()
    assert tiny_model.compression_embeddings.grad is not None
    assert tiny_model.compression_embeddings.grad.abs().sum() > 0
    lora_grads = [p.grad for n, p in tiny_model.named_parameters() if "lora_" in n]
    assert any(g is not None and g.abs().sum() > 0 for g in lora_grads)
    optimizer.step()

    assert not torch.equal(tiny_model.compression_embeddings, emb_before)
    for name, param in tiny_model.named_parameters():
        if name in backbone_before:
            assert param.grad is None, name
            assert torch.equal(param, backbone_before[name]), f"backbone weight {name} changed"


def test_loss_scores_answer_tokens_only(tiny_model):
    """answer_nll equals cross-entropy of the answer tokens computed by the plain HF model."""
    soft = torch.randn(4, 64) * 0.02
    instruction, answer = "what do I like?", "hiking and food"
    nll, count = tiny_model.answer_nll([soft], [instruction], [answer])
    prompt, target = tiny_model.prompt_ids(instruction), tiny_model.answer_ids(answer)
    assert int(count[0]) == len(target)

    base = tiny_model.lm.get_base_model()
    with tiny_model.lm.disable_adapter(), torch.no_grad():
        token_embeds = base.get_input_embeddings()(torch.tensor([prompt + target]))
        embeds = torch.cat([soft[None].to(token_embeds.dtype), token_embeds], dim=1)
        logits = base(inputs_embeds=embeds).logits[0]
    start = 4 + len(prompt)
    expected = F.cross_entropy(logits[start - 1:-1], torch.tensor(target), reduction="sum")
    torch.testing.assert_close(nll[0].detach(), expected, atol=1e-4, rtol=1e-5)


def test_perplexity_is_batch_invariant_with_and_without_soft_prompts(tiny_model):
    soft = tiny_model.compress(DOCS[:2]).mean(0)
    batched = tiny_model.perplexity([soft, None, soft], ["q one", "a much longer question here", "x"],
                                    ["a", "b c d", "e"])
    alone = torch.cat([tiny_model.perplexity([soft], ["q one"], ["a"]),
                       tiny_model.perplexity([None], ["a much longer question here"], ["b c d"]),
                       tiny_model.perplexity([soft], ["x"], ["e"])])
    torch.testing.assert_close(batched, alone, rtol=1e-4, atol=1e-4)
    assert (batched > 1).all()


def test_generation_batched_matches_alone_and_supports_no_documents(tiny_model):
    soft = tiny_model.compress(DOCS).mean(0).numpy()
    instructions = ["Write about me", "A longer instruction with several more words"]
    batched = tiny_model.generate([soft, None], instructions, max_new_tokens=6)
    alone = [tiny_model.generate([soft], instructions[:1], max_new_tokens=6)[0],
             tiny_model.generate([None], instructions[1:], max_new_tokens=6)[0]]
    assert batched == alone


def test_greedy_generation_follows_the_argmax(tiny_model):
    """Our cached decoding loop agrees with a from-scratch forward at every step."""
    soft = tiny_model.compress(DOCS[:1])[0]
    out_ids = []
    prompt = tiny_model.prompt_ids("hello")
    base = tiny_model.lm.get_base_model()
    eos = tiny_model.tokenizer.eos_token_id
    with torch.no_grad(), tiny_model.lm.disable_adapter():
        for _ in range(5):
            embeds = torch.cat([soft[None], base.get_input_embeddings()(torch.tensor([prompt + out_ids]))], 1)
            nxt = int(base(inputs_embeds=embeds).logits[0, -1].argmax())
            if nxt == eos:
                break
            out_ids.append(nxt)
    expected = tiny_model.tokenizer.decode(out_ids, skip_special_tokens=True).strip()
    assert tiny_model.generate([soft], ["hello"], max_new_tokens=len(out_ids) or 1)[0] == expected


def test_sampling_is_seeded(tiny_model):
    a = tiny_model.generate([None], ["hi"], max_new_tokens=8, do_sample=True, temperature=1.5, seed=3)
    b = tiny_model.generate([None], ["hi"], max_new_tokens=8, do_sample=True, temperature=1.5, seed=3)
    assert a == b


def test_initialisation_is_seeded_and_leaves_global_rng_alone(tiny_backbone, commer_cache):
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = ComMer.from_backbone(tiny_backbone, ComMerConfig(num_compression_tokens=4, seed=5), cache=commer_cache)
    assert torch.equal(torch.rand(1), expected_next)
    b = ComMer.from_backbone(tiny_backbone, ComMerConfig(num_compression_tokens=4, seed=5), cache=commer_cache)
    c = ComMer.from_backbone(tiny_backbone, ComMerConfig(num_compression_tokens=4, seed=6), cache=commer_cache)
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    np.testing.assert_array_equal(a.compress(DOCS).numpy(), b.compress(DOCS).numpy())


@pytest.mark.integration
def test_default_backbone_compresses_and_generates_offline(default_model, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = default_model.compress(["I run every morning.", "Tea over coffee, always.", "I build furniture."])
    assert out.shape == (3, default_model.K, 576)
    text = default_model.generate([None], ["What is the capital of France?"], max_new_tokens=12)[0]
    assert text.strip(), "the default backbone produced an empty continuation"
    assert "Paris" in text


def test_grow_compression_tokens_keeps_the_trained_slots(tiny_model):
    """A larger K starts from a trained compressor: new slots repeat the old embeddings, and under
    the causal mask the first old-K slots still compress exactly as before."""
    with torch.no_grad():
        tiny_model.compression_embeddings.normal_()   # distinct slots, as after training
    docs = ["apple river mountain", "violin orange silver garden window"]
    before = tiny_model.compress(docs)
    tiny_model.grow_compression_tokens(10)
    after = tiny_model.compress(docs)
    assert tiny_model.K == tiny_model.config.num_compression_tokens == 10 and after.shape[1] == 10
    torch.testing.assert_close(after[:, :4], before, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(after[:, 4:8], before)   # same embeddings, later positions: new vectors
    torch.testing.assert_close(tiny_model.compression_embeddings[4:8], tiny_model.compression_embeddings[:4])
    tiny_model.grow_compression_tokens(10)   # already that size: nothing to do
    assert tiny_model.K == 10
    with pytest.raises(ValueError, match="cannot grow 10 compression tokens to 4"):
        tiny_model.grow_compression_tokens(4)
