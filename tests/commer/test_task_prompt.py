"""Issue 23 item 4: the task prompt (prompt tuning without documents) is one folder format that
commer reads without training/, checked against the model's backbone, usable as a soft prompt."""
import pytest
import torch

from commer.defaults import default_checkpoint, default_task_prompt, task_prompt
from commer.task_prompt import TaskPromptError, load_task_prompt, save_task_prompt


def test_round_trip_and_backbone_check(tiny_model, tmp_path):
    soft = torch.randn(3, tiny_model.hidden_size)
    save_task_prompt(tmp_path / "tp", soft, "tiny", tiny_model.identity.content_hash, training={"steps": 5})
    loaded = load_task_prompt(tmp_path / "tp")
    assert torch.equal(loaded.soft_prompt, soft) and loaded.meta["training"] == {"steps": 5}
    loaded.check_backbone(tiny_model.identity.content_hash, tiny_model.hidden_size)
    with pytest.raises(TaskPromptError, match="trained on backbone"):
        loaded.check_backbone("f" * 64, tiny_model.hidden_size)
    with pytest.raises(TaskPromptError, match=r"has width \d+, the model 7"):
        load_task_prompt(tmp_path / "tp").check_backbone(tiny_model.identity.content_hash, 7)
    with pytest.raises(TaskPromptError, match="not a task-prompt folder"):
        load_task_prompt(tmp_path)
    # The generator takes it where it takes a profile's soft prompt.
    assert len(tiny_model.generate([loaded.soft_prompt], ["hello"], max_new_tokens=2)) == 1


def test_bundled_task_prompt_fits_the_default_checkpoint():
    from commer.checkpoint import read_config
    config = read_config(default_checkpoint())
    bundled = default_task_prompt()
    bundled.check_backbone(config.backbone_hash, config.hidden_size)
    assert task_prompt().shape == (bundled.meta["num_tokens"], config.hidden_size)
    assert bundled.meta["training"]  # how it was trained travels with it
