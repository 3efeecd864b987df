"""A checkpoint's own task prompt (config.task_prompt_tokens > 0): read before every profile for the task,
never for reconstruction or without a profile; saved, reloaded and fingerprinted with the weights."""
import pytest
import torch

from commer import ComMer
from commer.checkpoint import TASK_PROMPT_FILE, CheckpointError

INSTRUCTIONS = ["Generate a headline for: rivers rise", "Generate a headline for: a quiet market"]
ANSWERS = ["Rivers rise", "Markets calm"]


def _with_task_prompt(model: ComMer, P: int = 3, seed: int = 1) -> torch.Tensor:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tp = torch.randn(P, model.hidden_size) * model.embed.weight.std()
    model.attach_task_prompt(tp)
    return tp


def test_a_profile_is_read_after_the_task_prompt_a_reconstruction_and_none_are_not(tiny_model):
    profiles = tiny_model.merge_documents([["Text: rain on the river"], ["Text: stocks and bonds"]])
    before, _ = tiny_model.answer_nll(profiles, INSTRUCTIONS, ANSWERS)
    none_before, _ = tiny_model.answer_nll([None, None], INSTRUCTIONS, ANSWERS)
    tp = _with_task_prompt(tiny_model)
    with torch.no_grad():
        after, _ = tiny_model.answer_nll(profiles, INSTRUCTIONS, ANSWERS)
        # Read for the task: exactly [task prompt, profile] as one soft prompt without the flag.
        joined, _ = tiny_model.answer_nll([torch.cat([tp, p]) for p in profiles], INSTRUCTIONS, ANSWERS,
                                          task_prompt=False)
        reconstruction, _ = tiny_model.answer_nll(profiles, INSTRUCTIONS, ANSWERS, task_prompt=False)
        mixed, _ = tiny_model.answer_nll(profiles, INSTRUCTIONS, ANSWERS, task_prompt=[True, False])
        none_after, _ = tiny_model.answer_nll([None, None], INSTRUCTIONS, ANSWERS)
        # A user without documents answered by the task prompt alone: an empty profile.
        cold, _ = tiny_model.answer_nll([torch.zeros(0, tiny_model.hidden_size)] * 2, INSTRUCTIONS, ANSWERS)
        alone, count = tiny_model.answer_nll([tp, tp], INSTRUCTIONS, ANSWERS, task_prompt=False)
    assert not torch.allclose(after, before.detach(), atol=1e-4)
    torch.testing.assert_close(after, joined, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(reconstruction, before.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mixed, torch.stack([after[0], before.detach()[1]]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(none_after, none_before, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(cold, alone, atol=1e-5, rtol=1e-5)
    generated = tiny_model.generate([torch.zeros(0, tiny_model.hidden_size)], INSTRUCTIONS[:1], max_new_tokens=4)
    assert generated == tiny_model.generate([tp], INSTRUCTIONS[:1], max_new_tokens=4, task_prompt=False)
    ppl = tiny_model.perplexity([tp, tp], INSTRUCTIONS, ANSWERS, task_prompt=False)
    torch.testing.assert_close(ppl, torch.exp(alone / count), atol=1e-4, rtol=1e-4)
    assert tiny_model.config.task_prompt_tokens == 3
    assert "task_prompt" in tiny_model.trainable_parameters()


def test_the_task_prompt_is_saved_reloaded_and_fingerprinted(tiny_model, tmp_path, commer_cache):
    tiny_model.save_pretrained(str(tmp_path / "plain"))
    plain = tiny_model.fingerprint()
    assert not (tmp_path / "plain" / TASK_PROMPT_FILE).exists()
    tp = _with_task_prompt(tiny_model)
    assert tiny_model.fingerprint() != plain
    tiny_model.save_pretrained(str(tmp_path / "own"))
    loaded = ComMer.from_pretrained(str(tmp_path / "own"), cache=commer_cache)
    torch.testing.assert_close(loaded.task_prompt.data, tp)
    assert loaded.fingerprint() == tiny_model.fingerprint()
    # Another task prompt is another model: the fingerprint says so, and a missing file is refused.
    _with_task_prompt(loaded, seed=2)
    assert loaded.fingerprint() != tiny_model.fingerprint()
    (tmp_path / "own" / TASK_PROMPT_FILE).unlink()
    with pytest.raises(CheckpointError, match="task prompt"):
        ComMer.from_pretrained(str(tmp_path / "own"), cache=commer_cache)
    assert ComMer.from_pretrained(str(tmp_path / "plain"), cache=commer_cache).task_prompt is None


def test_attach_refuses_a_prompt_of_another_width(tiny_model):
    with pytest.raises(ValueError, match="task prompt"):
        tiny_model.attach_task_prompt(torch.zeros(4, tiny_model.hidden_size + 1))


def test_a_fresh_task_prompt_starts_at_token_embeddings_and_changes_nothing_else(tiny_backbone, commer_cache):
    from commer import ComMerConfig
    from conftest import TINY_CONFIG
    plain = ComMer.from_backbone(tiny_backbone, ComMerConfig(**TINY_CONFIG), cache=commer_cache)
    own = ComMer.from_backbone(tiny_backbone, ComMerConfig(**TINY_CONFIG, task_prompt_tokens=2), cache=commer_cache)
    torch.testing.assert_close(own.compression_embeddings, plain.compression_embeddings)
    vocab = own.embed.weight.float()
    # Each row is a row of the embedding table (never zeros, which a shrink or a rebuild once left).
    assert all(bool((vocab - row).abs().sum(1).min() < 1e-6) for row in own.task_prompt.detach())

