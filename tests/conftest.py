"""Shared fixtures: a tiny random backbone on disk, and ComMer models built on it.

Unit tests load the tiny backbone through the real loading path (commer.backbone). Tests
marked `integration` use the real embedded SmolLM2 backbone.
"""
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from commer import ComMer, ComMerConfig  # noqa: E402
from commer.tiny import make_tiny_backbone  # noqa: E402

TINY_CONFIG = dict(num_compression_tokens=4, max_document_tokens=64, lora={"r": 8, "alpha": 16, "dropout": 0.0})


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory) -> str:
    return str(make_tiny_backbone(tmp_path_factory.mktemp("tiny-backbone")))


@pytest.fixture(scope="session")
def commer_cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("commer-cache"))


@pytest.fixture
def tiny_model(tiny_backbone, commer_cache) -> ComMer:
    """A fresh, untrained ComMer on the tiny backbone (function scope: tests may train it)."""
    return ComMer.from_backbone(tiny_backbone, ComMerConfig(**TINY_CONFIG), cache=commer_cache)


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_backbone, commer_cache, tmp_path_factory) -> str:
    """A saved untrained checkpoint on the tiny backbone, for pipeline tests."""
    path = tmp_path_factory.mktemp("tiny-checkpoint")
    ComMer.from_backbone(tiny_backbone, ComMerConfig(**TINY_CONFIG), cache=commer_cache).save_pretrained(str(path))
    return str(path)


@pytest.fixture(scope="session")
def default_model() -> ComMer:
    """The real embedded backbone (converted once into the user's cache)."""
    return ComMer.from_backbone("default")
