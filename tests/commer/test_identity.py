"""Backbone identity, explicit special tokens and the compression-embedding scale (issue 10).

Identity hashes what determines the computation (tensors, math config, tokenizer), never
version labels; the end of an answer and BOS are read from the tokenizer explicitly; new
compression slots start at the scale of real input embeddings.
"""
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from commer import CheckpointError, ComMer, ComMerConfig
from commer.backbone import hash_backbone, hash_model_folder
from commer.checkpoint import CONFIG_FILE
from commer.tiny import make_tiny_gemma_backbone
from tests.conftest import TINY_CONFIG


@pytest.fixture
def backbone_copy(tiny_backbone, tmp_path):
    return shutil.copytree(tiny_backbone, tmp_path / "copy")


@pytest.fixture(scope="module")
def tiny_gemma(tmp_path_factory) -> str:
    return str(make_tiny_gemma_backbone(tmp_path_factory.mktemp("tiny-gemma")))


def _edit_json(path, **changes):
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data, indent=2))


def test_identity_survives_a_transformers_version_bump(backbone_copy):
    before = hash_backbone(backbone_copy)
    _edit_json(backbone_copy / "config.json", transformers_version="5.17.0", _name_or_path="elsewhere",
               dtype="bfloat16", use_cache=False)
    assert hash_backbone(backbone_copy) == before
    # The v1 rule hashed config.json whole: exactly the defect this replaces.
    assert hash_model_folder(backbone_copy) != before


def test_identity_changes_with_one_weight(backbone_copy):
    before = hash_backbone(backbone_copy)
    path = backbone_copy / "model.safetensors"
    tensors = load_file(str(path))
    name = sorted(tensors)[0]
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] += 1e-3
    save_file(tensors, str(path), metadata={"format": "pt"})
    assert hash_backbone(backbone_copy) != before


def test_identity_changes_with_one_rope_value(backbone_copy):
    before = hash_backbone(backbone_copy)
    config = json.loads((backbone_copy / "config.json").read_text())
    rope = config.get("rope_parameters") or {"rope_theta": config.get("rope_theta", 10000.0)}
    rope = dict(rope, rope_theta=float(rope["rope_theta"]) * 2)
    key = "rope_parameters" if "rope_parameters" in config else "rope_theta"
    _edit_json(backbone_copy / "config.json", **({key: rope} if key == "rope_parameters" else {key: rope["rope_theta"]}))
    assert hash_backbone(backbone_copy) != before


def test_identity_changes_with_one_special_token(backbone_copy):
    before = hash_backbone(backbone_copy)
    _edit_json(backbone_copy / "tokenizer_config.json", eos_token="<|im_start|>")
    assert hash_backbone(backbone_copy) != before


def test_v1_checkpoints_still_load_with_their_fingerprint(tiny_backbone, commer_cache, tmp_path):
    """A checkpoint written before identity v2 (config format 1, v1 hash) loads unchanged."""
    model = ComMer.from_backbone(tiny_backbone, ComMerConfig(**TINY_CONFIG), cache=commer_cache)
    legacy = hash_model_folder(Path(tiny_backbone).resolve())
    model.identity = type(model.identity)(model.identity.name, legacy)
    model.config = model.config.model_copy(update={"format_version": 1, "backbone_hash": legacy})
    model.save_pretrained(str(tmp_path / "v1"))
    loaded = ComMer.from_pretrained(str(tmp_path / "v1"), cache=commer_cache)
    assert loaded.fingerprint() == model.fingerprint()

    _edit_json(tmp_path / "v1" / CONFIG_FILE, backbone_hash="0" * 64)
    with pytest.raises(CheckpointError, match="commer.init"):
        ComMer.from_pretrained(str(tmp_path / "v1"), cache=commer_cache)


def test_a_different_backbone_is_refused_before_loading(tiny_checkpoint, tiny_gemma, commer_cache):
    with pytest.raises(CheckpointError, match="--backbone given"):
        ComMer.from_pretrained(tiny_checkpoint, backbone=tiny_gemma, cache=commer_cache)


def test_tiny_model_special_tokens(tiny_model):
    tok = tiny_model.tokenizer
    assert tiny_model.end_of_answer_id == tok.convert_tokens_to_ids("<|im_end|>")
    assert tiny_model.bos_id is None
    assert tiny_model.answer_ids("hello")[-1] == tok.convert_tokens_to_ids("<|im_end|>")


def test_gemma_style_special_tokens(tiny_gemma, commer_cache):
    model = ComMer.from_backbone(tiny_gemma, ComMerConfig(**TINY_CONFIG), cache=commer_cache)
    tok = model.tokenizer
    bos, end_of_turn = tok.convert_tokens_to_ids("<bos>"), tok.convert_tokens_to_ids("<end_of_turn>")
    assert model.bos_id == bos
    assert model.end_of_answer_id == end_of_turn != tok.eos_token_id
    assert model.answer_ids("hello")[-1] == end_of_turn
    assert set(model.stop_ids) == {end_of_turn, tok.eos_token_id}
    # Documents start with BOS; the generator's row opens with BOS, before the soft prompt.
    ids, _ = model.tokenize_documents(["the quick fox"])
    assert ids[0][0] == bos and bos not in ids[0][1:]
    prompt = model.prompt_ids("hello")
    assert bos not in prompt and prompt[0] == tok.convert_tokens_to_ids("<start_of_turn>")
    soft = torch.zeros(model.K, model.hidden_size)
    embeds, mask, _ = model._generator_batch([soft], [prompt])
    assert torch.allclose(embeds[0, 0], model.embed(torch.tensor([bos]))[0])
    assert embeds.shape[1] == 1 + model.K + len(prompt)
    # Without personalization the row is exactly what the plain model reads: <bos> + template.
    with model.lm.disable_adapter(), torch.no_grad():
        text = tok.apply_chat_template([{"role": "user", "content": "hello"}], tokenize=False,
                                       add_generation_prompt=True)
        plain_ids = tok(text, add_special_tokens=False)["input_ids"]
        assert plain_ids == [bos] + prompt


def test_compression_embeddings_start_at_the_scale_the_backbone_computes(tiny_gemma, commer_cache):
    """Gemma 3 multiplies token embeddings by sqrt(d) inside its embedding module."""
    model = ComMer.from_backbone(tiny_gemma, ComMerConfig(**TINY_CONFIG), cache=commer_cache)
    with torch.no_grad():
        real = model.embed(torch.arange(5, 100)).norm(dim=-1).mean()
        raw = model.embed.weight[5:100].norm(dim=-1).mean()
    ours = model.compression_embeddings.norm(dim=-1).mean()
    assert real / raw > 4  # the multiplier is there (sqrt(64) = 8)
    assert 0.5 < float(ours / real) < 2.0


def test_gemma_style_backbone_runs_end_to_end(tiny_gemma, commer_cache, tmp_path):
    model = ComMer.from_backbone(tiny_gemma, ComMerConfig(**TINY_CONFIG), cache=commer_cache)
    compressions = model.compress(["the quick fox", "a lazy dog"])
    out = model.generate([compressions.mean(0), None], ["hello", "hi"], max_new_tokens=4)
    assert len(out) == 2
    model.save_pretrained(str(tmp_path / "ckpt"))
    again = ComMer.from_pretrained(str(tmp_path / "ckpt"), cache=commer_cache)
    assert torch.allclose(again.compress(["the quick fox"]), compressions[:1], atol=1e-5)
