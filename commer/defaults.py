"""The checkpoint jobs use when none is named.

The package ships a trained checkpoint in commer/checkpoints/default/. If that folder is
absent (a development tree before training), a seeded untrained checkpoint on the default
backbone is created once in the cache and used instead; its config says trained=false, and
every job that uses it says so.
"""
from __future__ import annotations

from pathlib import Path

from commer.backbone import cache_dir, publish_atomically
from commer.checkpoint import CONFIG_FILE
from commer.config import ComMerConfig
from commer.model import ComMer

BUNDLED_CHECKPOINT = Path(__file__).parent / "checkpoints" / "default"
UNTRAINED_SEED = 0


def default_checkpoint(cache: str | None = None) -> str:
    """Path of the bundled trained checkpoint, or of the cached seeded untrained one."""
    if (BUNDLED_CHECKPOINT / CONFIG_FILE).exists():
        return str(BUNDLED_CHECKPOINT)
    return str(untrained_checkpoint(cache))


def untrained_checkpoint(cache: str | None = None, seed: int = UNTRAINED_SEED) -> Path:
    """A freshly initialised checkpoint on the default backbone, created once per cache."""
    target = cache_dir(cache) / "checkpoints" / f"untrained-default-seed{seed}"
    if not (target / CONFIG_FILE).exists():
        model = ComMer.from_backbone("default", ComMerConfig(seed=seed), cache=cache)
        publish_atomically(target, lambda tmp: model.save_pretrained(str(tmp)), CONFIG_FILE)
    return target
