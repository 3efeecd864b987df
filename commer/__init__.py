"""ComMer: compress user documents into soft prompts and merge them for a frozen LLM.

The names below load on first use (PEP 562), so `import commer.config` or a program's `--help`
does not pay for torch and transformers.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.2.0"  # the package; checkpoint and table formats have their own versions (CHANGELOG.md)

_EXPORTS = {
    "BackboneError": "commer.backbone", "BackboneIdentity": "commer.backbone", "load_backbone": "commer.backbone",
    "CheckpointError": "commer.checkpoint", "ComMerConfig": "commer.config", "LoraSettings": "commer.config",
    "SumCount": "commer.merge", "concat_merge": "commer.merge", "mean_pool": "commer.merge",
    "merge_all": "commer.merge", "ComMer": "commer.model",
}
__all__ = sorted(_EXPORTS) + ["__version__"]

if TYPE_CHECKING:
    from commer.backbone import BackboneError, BackboneIdentity, load_backbone
    from commer.checkpoint import CheckpointError
    from commer.config import ComMerConfig, LoraSettings
    from commer.merge import SumCount, concat_merge, mean_pool, merge_all
    from commer.model import ComMer


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'commer' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
