"""Checkpoint folders (local or remote) and the fingerprint that names an embedding space.

A checkpoint folder holds:
    commer_config.json                  ComMerConfig (pydantic), fingerprint included
    compression_embeddings.safetensors  the K trainable input embeddings
    adapter/                            the LoRA adapter, as peft saves it
    task_prompt.safetensors             the checkpoint's own task prompt (P, d), only when P > 0
No pickle anywhere: safetensors and JSON only. This module reads and writes those files and
computes hashes; `ComMer.from_pretrained` builds the model from what it reads here.
"""
from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import get_peft_model_state_dict
from safetensors.torch import load_file, save_file

from commer import storage
from commer.backbone import (
    BackboneIdentity, backbone_identity, cache_dir, legacy_identity_hash, resolve_backbone,
)
from commer.config import CONFIG_FORMAT_VERSION, ComMerConfig

CONFIG_FILE = "commer_config.json"
EMBEDDINGS_FILE = "compression_embeddings.safetensors"
ADAPTER_DIR = "adapter"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
TASK_PROMPT_FILE = "task_prompt.safetensors"
# Checkpoints written before this config format recorded the backbone's v1 identity (a hash of
# config.json and weight files as stored, transformers_version included).
_LEGACY_IDENTITY_FORMAT = 1

# Config fields that change what a document compresses to (or how a soft prompt is read).
_FINGERPRINTED_FIELDS = ("num_compression_tokens", "max_document_tokens", "prompt_template", "lora")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used as asked; the message says why and what to do."""


@dataclass
class CheckpointWeights:
    """The trained weights of a checkpoint folder, as stored."""

    compression_embeddings: torch.Tensor
    adapter: dict[str, torch.Tensor]
    task_prompt: torch.Tensor | None = None


def trainable_state(model) -> dict[str, torch.Tensor]:
    """The weights a checkpoint owns: compression embeddings, LoRA and a task prompt if it has one, float32,
    on CPU. (Without a task prompt the names are what they always were: older fingerprints still hold.)"""
    state = {"compression_embeddings": model.compression_embeddings}
    if model.task_prompt is not None:
        state["task_prompt"] = model.task_prompt
    state.update({f"lora.{k}": v for k, v in get_peft_model_state_dict(model.lm).items()})
    return {k: v.detach().float().cpu().contiguous() for k, v in state.items()}


def compute_fingerprint(model) -> str:
    """sha256 of the backbone's identity, the compression-relevant config, and the weights.

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


# ---- writing ---------------------------------------------------------------------------

def save_checkpoint(model, path: str, weights_dtype: str = "float32") -> None:
    """Write a checkpoint folder at `path` (local or remote).

    `weights_dtype="bfloat16"` stores the trained weights at half the size (for a checkpoint shipped
    in the package). It first rounds the model's own trainable weights to bfloat16 values, so the
    fingerprint, the saved files and the model in memory agree, and a reload computes exactly what
    this model now computes.
    """
    if weights_dtype not in ("float32", "bfloat16"):
        raise CheckpointError(f"weights_dtype {weights_dtype!r}: use float32 or bfloat16")
    if weights_dtype == "bfloat16":
        with torch.no_grad():
            for tensor in _trainable_parameters(model):
                tensor.copy_(tensor.to(torch.bfloat16).to(tensor.dtype))
    if storage.is_remote(path):
        with tempfile.TemporaryDirectory() as tmp:
            _save_local(model, Path(tmp), weights_dtype)
            storage.upload_dir(tmp, path)
    else:
        _save_local(model, Path(path), weights_dtype)


def _trainable_parameters(model) -> list[torch.Tensor]:
    own = [model.compression_embeddings] + ([model.task_prompt] if model.task_prompt is not None else [])
    return own + [p for n, p in model.lm.named_parameters() if "lora_" in n]


def _save_local(model, folder: Path, weights_dtype: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    dtype = getattr(torch, weights_dtype)
    config = model.config.model_copy(update={"fingerprint": compute_fingerprint(model)})
    (folder / CONFIG_FILE).write_text(config.model_dump_json(indent=2))
    save_file({"compression_embeddings": model.compression_embeddings.detach().cpu().to(dtype).contiguous()},
              str(folder / EMBEDDINGS_FILE))
    if model.task_prompt is not None:
        save_file({"task_prompt": model.task_prompt.detach().cpu().to(dtype).contiguous()},
                  str(folder / TASK_PROMPT_FILE))
    model.lm.save_pretrained(str(folder / ADAPTER_DIR))
    if weights_dtype != "float32":
        # peft writes the adapter in the parameters' dtype; loading casts back to float32 exactly.
        adapter = folder / ADAPTER_DIR / ADAPTER_WEIGHTS
        save_file({k: v.to(dtype).contiguous() for k, v in load_file(str(adapter)).items()}, str(adapter))


# ---- reading ---------------------------------------------------------------------------

def read_config(path: str) -> ComMerConfig:
    """The config of a checkpoint (local or remote), without loading any weights."""
    fs, root = storage.filesystem(path)
    config_path = f"{root.rstrip('/')}/{CONFIG_FILE}"
    try:
        exists = fs.exists(config_path)
    except Exception as exc:  # a remote filesystem without credentials or network
        raise CheckpointError(f"checkpoint {path} cannot be read ({exc.__class__.__name__}: {exc})") from None
    if not exists:
        raise CheckpointError(f"{path} is not a ComMer checkpoint: {CONFIG_FILE} is missing")
    with fs.open(config_path, "r") as f:
        return ComMerConfig.model_validate_json(f.read())


def read_weights(path: str, cache: str | None = None) -> CheckpointWeights:
    """The compression embeddings, LoRA adapter weights and task prompt (if any) of a checkpoint folder."""
    local = storage.local_copy(path, cache_dir(cache) / "checkpoints")
    embeddings = load_file(str(local / EMBEDDINGS_FILE))["compression_embeddings"]
    adapter = load_file(str(local / ADAPTER_DIR / ADAPTER_WEIGHTS))
    task = local / TASK_PROMPT_FILE
    return CheckpointWeights(embeddings, adapter, load_file(str(task))["task_prompt"] if task.is_file() else None)


def backbone_for(path: str, config: ComMerConfig, backbone: str | None = None,
                 cache: str | None = None) -> tuple[Path, BackboneIdentity]:
    """The backbone folder a checkpoint runs on, checked against the identity it recorded.

    Cheap (no model weights loaded into a model), so jobs call it before building a pipeline.
    Checkpoints written before identity v2 are accepted when the backbone's v1 hash matches
    what they recorded; their identity then stays the v1 hash, so their fingerprint -- and
    every profile made with it -- is unchanged.
    """
    folder = resolve_backbone(backbone or config.backbone, cache)
    identity = backbone_identity(folder)
    if not config.backbone_hash:
        return folder, identity
    if config.format_version <= _LEGACY_IDENTITY_FORMAT:
        legacy = legacy_identity_hash(folder)
        if legacy == config.backbone_hash:
            return folder, BackboneIdentity(identity.name, legacy)
        given = BackboneIdentity(identity.name, legacy)
    else:
        given = identity
    if given.content_hash != config.backbone_hash:
        flag = "the --backbone given" if backbone else f"its recorded backbone {config.backbone!r}"
        raise CheckpointError(
            f"checkpoint {path} was trained on backbone {config.backbone_name} "
            f"(sha256 {config.backbone_hash[:12]}), but {flag} is {given.describe()}; pass the backbone "
            "the checkpoint was trained on, or make a checkpoint for this backbone with "
            "`python -m commer.init --backbone PATH --output CKPT` (untrained) and train it"
        )
    return folder, identity


def check_fingerprint(model, path: str, recorded: str) -> None:
    if recorded and compute_fingerprint(model) != recorded:
        raise CheckpointError(f"{path}: weights do not match the recorded fingerprint {recorded}; "
                              "the checkpoint is corrupt or was edited by hand")


def is_current_format(config: ComMerConfig) -> bool:
    return config.format_version >= CONFIG_FORMAT_VERSION
