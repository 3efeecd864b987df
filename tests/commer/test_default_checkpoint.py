"""The bundled trained default checkpoint: present, trained, its record complete, weights intact."""
import pytest

from commer.checkpoint import TASK_PROMPT_FILE, read_config
from commer.defaults import BUNDLED_CHECKPOINT, default_checkpoint


def test_bundled_checkpoint_is_trained_and_recorded():
    assert default_checkpoint() == str(BUNDLED_CHECKPOINT)
    config = read_config(str(BUNDLED_CHECKPOINT))
    assert config.trained and config.backbone == "default" and config.fingerprint
    stages = config.training["stages"]
    # Auto-encoding first (an earlier run's stage 1 may have been continued), then the news task (issue 23:
    # continued with the objectives that make a profile carry its user).
    tasks = [s["task"] for s in stages]
    assert tasks[0] == "pretrain" and tasks[-1] == "news" and tasks == sorted(tasks, key=lambda t: t == "news")
    last = stages[-1]["config"]
    assert last["distill_weight"] > 0 and last["contrast_weight"] > 0 and last["autoencoding_ratio"] > 0
    # Since session 9 it reads its own task prompt, started from the bundled prompt-tuning baseline (issue 23).
    assert config.task_prompt_tokens == 8 and (BUNDLED_CHECKPOINT / TASK_PROMPT_FILE).exists()
    assert any(s["config"].get("init_task_prompt") for s in stages)
    assert config.training["recipe"]["plan"]["hardware"] and config.training["shipped"]["weights_dtype"] == "bfloat16"
    for stage in stages:
        assert stage["steps"] > 0 and stage["wall_time_s"] > 0
        assert stage["best_val_ppl"] < stage["initial_val_ppl"]
    size = sum(f.stat().st_size for f in BUNDLED_CHECKPOINT.rglob("*") if f.is_file())
    # Trained at LoRA r=32 on every projection, shrunk to r=4 by truncated SVD (training.shrink),
    # stored in bfloat16: 2.5 MiB. The record says what the shrink kept and what it measured.
    assert size < 4 * 2**20
    shrunk = config.training["shrunk"]
    assert shrunk["to_rank"] == config.lora.r < shrunk["from_rank"] and 0 < shrunk["energy_kept_mean"] <= 1


@pytest.mark.integration
def test_bundled_checkpoint_loads_and_compresses():
    from commer import ComMer
    model = ComMer.from_pretrained(str(BUNDLED_CHECKPOINT))  # verifies the fingerprint
    out = model.compress(["Text: A storm hit the coast. Title: Storm Floods Roads", "Text: Stocks rose. Title: Rally"])
    assert out.shape == (2, model.K, model.hidden_size)
