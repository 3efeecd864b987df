"""ComMer: compress user documents into soft prompts and merge them for a frozen LLM."""
from commer.backbone import BackboneError, BackboneIdentity, load_backbone
from commer.checkpoint import CheckpointError
from commer.config import ComMerConfig, LoraSettings
from commer.merge import SumCount, concat_merge, mean_pool, merge_all
from commer.model import ComMer

__all__ = [
    "BackboneError", "BackboneIdentity", "CheckpointError", "ComMer", "ComMerConfig",
    "LoraSettings", "SumCount", "concat_merge", "load_backbone", "mean_pool", "merge_all",
]
