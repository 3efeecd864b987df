"""A task prompt: P soft tokens trained for a task with no documents (prompt tuning, Lester et al.).

It is what a profile is compared against -- eight task-trained soft tokens that never see a
document -- and what a user with no profile is answered with: the generator reads it exactly as
it reads a profile's soft prompt (P×d before the instruction, adapter off), so a cold-start user
gets the task's style instead of no prompt at all.

One folder format for every soft prompt trained by prompt tuning (training/prompt_tuning.py
writes it, with or without documents as text):
    prompt_tuning.json       backbone reference and content hash, P, token limits, training record
    soft_prompt.safetensors  soft_prompt: (P, d) float32
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

CONFIG_FILE = "prompt_tuning.json"
WEIGHTS_FILE = "soft_prompt.safetensors"


class TaskPromptError(ValueError):
    """A task-prompt folder that cannot be read or does not fit the model; the message says which."""


@dataclass
class TaskPrompt:
    soft_prompt: torch.Tensor          # (P, d) float32
    backbone: str                      # the backbone reference it was trained on
    backbone_hash: str | None          # that backbone's content hash (commer.backbone identity)
    meta: dict = field(default_factory=dict)  # the rest of prompt_tuning.json (P, limits, training record)

    def check_backbone(self, backbone_hash: str, hidden_size: int) -> None:
        """Refuse a model on another backbone: its embedding space is not the one this prompt lives in."""
        if self.backbone_hash and self.backbone_hash != backbone_hash:
            raise TaskPromptError(f"the task prompt was trained on backbone {self.backbone_hash[:12]}, the model's is "
                                  f"{backbone_hash[:12]}: train one on this backbone (training.train --method "
                                  "prompt_tuning --num_documents 0)")
        if self.soft_prompt.shape[-1] != hidden_size:
            raise TaskPromptError(f"the task prompt has width {self.soft_prompt.shape[-1]}, the model {hidden_size}")


def save_task_prompt(path: str | Path, soft_prompt: torch.Tensor, backbone: str, backbone_hash: str,
                     **meta) -> None:
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({"soft_prompt": soft_prompt.detach().float().cpu().contiguous()}, str(folder / WEIGHTS_FILE))
    (folder / CONFIG_FILE).write_text(json.dumps({
        "method": "prompt_tuning", "backbone": backbone, "backbone_hash": backbone_hash,
        "num_tokens": int(soft_prompt.shape[0]), **meta}, indent=2))


def load_task_prompt(path: str | Path) -> TaskPrompt:
    folder = Path(path)
    if not (folder / CONFIG_FILE).is_file() or not (folder / WEIGHTS_FILE).is_file():
        raise TaskPromptError(f"{folder}: not a task-prompt folder (needs {CONFIG_FILE} and {WEIGHTS_FILE})")
    meta = json.loads((folder / CONFIG_FILE).read_text())
    soft = load_file(str(folder / WEIGHTS_FILE))["soft_prompt"].float()
    return TaskPrompt(soft, meta.pop("backbone", "default"), meta.pop("backbone_hash", None), meta)
