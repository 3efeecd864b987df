"""What training asks of a model, whichever kind it is: ComMer (compression embeddings + LoRA)
or the prompt-tuning baseline (training.prompt_tuning). Both implement it, so the training loop
(training.train) never asks which kind it holds; only `build_model` chooses one, from the config.
"""
from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class Trainable(Protocol):
    def documents_nll(self, documents: Sequence[Sequence[str]], instructions: Sequence[str],
                      answers: Sequence[str], task_prompt: bool | Sequence[bool] = True
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-example summed NLL of the answer tokens and their count, given each example's documents
        (`task_prompt`, per example: read for the task -- False for a reconstruction example)."""

    def trainable_parameters(self) -> dict[str, list[nn.Parameter]]:
        """The weights training updates, by group name (each group has its own learning rate)."""

    def answer_ids(self, answer: str) -> list[int]:
        """The answer's target token ids (their count weighs the loss)."""

    def compression_spread(self, texts: Sequence[str]) -> float | None:
        """How much the compressions of `texts` differ (near 0: collapsed); None for a model without any."""

    def training_stages(self) -> list[dict]:
        """The recorded stages that trained these weights so far (a new stage is appended)."""

    def save_pretrained(self, path: str, training: dict | None = None) -> None:
        """Write a loadable folder; `training` is the record of how the weights were trained."""
