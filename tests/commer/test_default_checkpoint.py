"""The bundled trained default checkpoint: present, trained, its record complete, weights intact."""
import pytest

from commer.checkpoint import read_config
from commer.defaults import BUNDLED_CHECKPOINT, default_checkpoint


def test_bundled_checkpoint_is_trained_and_recorded():
    assert default_checkpoint() == str(BUNDLED_CHECKPOINT)
    config = read_config(str(BUNDLED_CHECKPOINT))
    assert config.trained and config.backbone == "default" and config.fingerprint
    stages = config.training["stages"]
    assert [s["task"] for s in stages] == ["pretrain", "news"]
    for stage in stages:
        assert stage["steps"] > 0 and stage["wall_time_s"] > 0
        assert stage["best_val_ppl"] < stage["initial_val_ppl"]
    size = sum(f.stat().st_size for f in BUNDLED_CHECKPOINT.rglob("*") if f.is_file())
    assert size < 8 * 2**20  # "a few MB": LoRA + compression embeddings only


@pytest.mark.integration
def test_bundled_checkpoint_loads_and_compresses():
    from commer import ComMer
    model = ComMer.from_pretrained(str(BUNDLED_CHECKPOINT))  # verifies the fingerprint
    out = model.compress(["Text: A storm hit the coast. Title: Storm Floods Roads", "Text: Stocks rose. Title: Rally"])
    assert out.shape == (2, model.K, model.hidden_size)
