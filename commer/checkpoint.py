"""Checkpoint folders (local or remote) and the fingerprint that names an embedding space.

A checkpoint folder holds:
    commer_config.json                  ComMerConfig (pydantic), fingerprint included
    compression_embeddings.safetensors  the K trainable input embeddings
    adapter/                            the LoRA adapter, as peft saves it
No pickle anywhere: safetensors and JSON only.
"""
from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

import torch
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file

from commer import storage
from commer.backbone import cache_dir, load_backbone
from commer.config import ComMerConfig

CONFIG_FILE = "commer_config.json"
EMBEDDINGS_FILE = "compression_embeddings.safetensors"
ADAPTER_DIR = "adapter"
ADAPTER_WEIGHTS = "adapter_model.safetensors"

# Config fields that change what a document compresses to (or how a soft prompt is read).
_FINGERPRINTED_FIELDS = ("num_compression_tokens", "max_document_tokens", "prompt_template", "lora")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used as asked; the message says why and what to do."""


def trainable_state(model) -> dict[str, torch.Tensor]:
    """The weights a checkpoint owns: compression embeddings and LoRA, float32, on CPU."""
    state = {"compression_embeddings": model.compression_embeddings}
    state.update({f"lora.{k}": v for k, v in get_peft_model_state_dict(model.lm).items()})
    return {k: v.detach().float().cpu().contiguous() for k, v in state.items()}


def compute_fingerprint(model) -> str:
    """sha256 of the backbone's content hash, the compression-relevant config, and the weights.

    Two models that can compress a document differently never share a fingerprint, so
    profiles from different embedding spaces are never merged.
    """
    digest = hashlib.sha256()
    digest.update(model.identity.content_hash.encode())
    config = model.config.model_dump(include=set(_FINGERPRINTED_FIELDS))
    digest.update(json.dumps(config, sort_keys=True).encode())
    for name, tensor in sorted(trainable_state(model).items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()[:32]


def save_checkpoint(model, path: str) -> None:
    """Write a checkpoint folder at `path` (local or remote)."""
    if storage.is_remote(path):
        with tempfile.TemporaryDirectory() as tmp:
            _save_local(model, Path(tmp))
            storage.upload_dir(tmp, path)
    else:
        _save_local(model, Path(path))


def _save_local(model, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    config = model.config.model_copy(update={"fingerprint": compute_fingerprint(model)})
    (folder / CONFIG_FILE).write_text(config.model_dump_json(indent=2))
    save_file({"compression_embeddings": model.compression_embeddings.detach().float().cpu().contiguous()},
              str(folder / EMBEDDINGS_FILE))
    model.lm.save_pretrained(str(folder / ADAPTER_DIR))


def read_config(path: str) -> ComMerConfig:
    """The config of a checkpoint (local or remote), without loading any weights."""
    fs, root = storage.filesystem(path)
    config_path = f"{root.rstrip('/')}/{CONFIG_FILE}"
    if not fs.exists(config_path):
        raise CheckpointError(f"{path} is not a ComMer checkpoint: {CONFIG_FILE} is missing")
    with fs.open(config_path, "r") as f:
        return ComMerConfig.model_validate_json(f.read())


def load_checkpoint(path: str, backbone: str | None = None, dtype: str = "float32", cache: str | None = None):
    """Rebuild a ComMer from a checkpoint folder; `backbone` overrides the recorded reference."""
    from commer.model import ComMer

    config = read_config(path)
    local = storage.local_copy(path, cache_dir(cache) / "checkpoints")
    lm, tokenizer, identity = load_backbone(backbone or config.backbone, dtype=dtype, cache=cache)
    if config.backbone_hash and identity.content_hash != config.backbone_hash:
        raise CheckpointError(
            f"checkpoint {path} was trained on backbone {config.backbone_name} "
            f"(sha256 {config.backbone_hash[:12]}), but the backbone given is {identity.describe()}; "
            "pass the backbone the checkpoint was trained on"
        )
    model = ComMer(lm, tokenizer, identity, config)

    embeddings = load_file(str(local / EMBEDDINGS_FILE))["compression_embeddings"]
    if embeddings.shape != model.compression_embeddings.shape:
        raise CheckpointError(f"{path}: compression embeddings have shape {tuple(embeddings.shape)}, "
                              f"config says {tuple(model.compression_embeddings.shape)}")
    model.compression_embeddings.data.copy_(embeddings)
    adapter = load_file(str(local / ADAPTER_DIR / ADAPTER_WEIGHTS))
    result = set_peft_model_state_dict(model.lm, adapter)
    if getattr(result, "unexpected_keys", None):
        raise CheckpointError(f"{path}: adapter has weights the config does not describe: {result.unexpected_keys[:3]}")

    if config.fingerprint and compute_fingerprint(model) != config.fingerprint:
        raise CheckpointError(f"{path}: weights do not match the recorded fingerprint {config.fingerprint}; "
                              "the checkpoint is corrupt or was edited by hand")
    model.eval()
    return model
