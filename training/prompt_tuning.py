"""Prompt-tuning baseline (Lester et al., 2021), as the paper uses it:

    concat(soft_prompt, embed(concat(doc_1, ..., doc_n, x)))

A trainable soft prompt of P embeddings is put before the documents (as plain text) and the
instruction; the backbone is frozen. It reuses ComMer's generator path (`answer_nll`,
`generate`) with the adapter off, so both methods are scored by the same code.

Saved as a folder in commer.task_prompt's format: prompt_tuning.json (backbone reference/hash, P,
token limits) and soft_prompt.safetensors. No pickle. One trained without documents is a task
prompt: `commer.task_prompt.load_task_prompt` reads it for the jobs.
"""
from __future__ import annotations

import hashlib
import json
from typing import Sequence

import torch
from torch import nn

from commer import ComMer, ComMerConfig
from commer.task_prompt import load_task_prompt, save_task_prompt
# Documents as text need room: the generator prompt holds them all.
MAX_PROMPT_TOKENS = 2048


def documents_as_text(documents: Sequence[str], instruction: str) -> str:
    if not documents:
        return instruction
    return "\n".join(documents) + "\n\n" + instruction


def folder_fingerprint(path: str) -> str:
    """sha256 of what a saved soft prompt computes with: backbone hash, limits and the soft prompt itself
    (not the training record), so a copied or moved folder keeps its fingerprint."""
    saved = load_task_prompt(path)
    what = {"backbone_hash": saved.backbone_hash, "num_tokens": saved.meta.get("num_tokens"),
            "max_answer_tokens": saved.meta.get("max_answer_tokens")}
    digest = hashlib.sha256(json.dumps(what, sort_keys=True).encode())
    digest.update(saved.soft_prompt.numpy().tobytes())
    return digest.hexdigest()[:32]


class PromptTuning(nn.Module):
    def __init__(self, base: ComMer, num_tokens: int, seed: int = 0):
        super().__init__()
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            vocab = base.embed.weight
            rows = torch.randint(0, vocab.shape[0], (num_tokens,))
            self.soft_prompt = nn.Parameter(vocab[rows].detach().float().clone())
        self.seed = seed
        self.stages: list[dict] = []  # the recorded training stages of a loaded soft prompt

    @classmethod
    def from_backbone(cls, backbone: str, num_tokens: int, seed: int = 0, dtype: str = "float32",
                      cache: str | None = None, max_answer_tokens: int = 64) -> "PromptTuning":
        # The ComMer wrapper only lends its generator path; a rank-1 adapter keeps it light
        # and is never enabled.
        config = ComMerConfig(num_compression_tokens=1, max_prompt_tokens=MAX_PROMPT_TOKENS,
                              max_answer_tokens=max_answer_tokens, lora={"r": 1, "alpha": 1, "dropout": 0.0})
        return cls(ComMer.from_backbone(backbone, config, dtype=dtype, cache=cache), num_tokens, seed)

    @classmethod
    def from_pretrained(cls, path: str, dtype: str = "float32", cache: str | None = None) -> "PromptTuning":
        saved = load_task_prompt(path)
        model = cls.from_backbone(saved.backbone, saved.soft_prompt.shape[0], saved.meta.get("seed", 0), dtype, cache,
                                  saved.meta.get("max_answer_tokens", 64))
        if saved.backbone_hash and model.base.identity.content_hash != saved.backbone_hash:
            raise ValueError(f"{path}: soft prompt was trained on another backbone")
        model.soft_prompt.data.copy_(saved.soft_prompt)
        model.stages = list((saved.meta.get("training") or {}).get("stages", []))
        model.eval()
        return model

    def save_pretrained(self, path: str, training: dict | None = None) -> None:
        save_task_prompt(path, self.soft_prompt, self.base.config.backbone, self.base.identity.content_hash,
                         seed=self.seed, max_answer_tokens=self.base.config.max_answer_tokens,
                         training=training or {})

    def answer_nll(self, documents, instructions, answers):
        prompts = [documents_as_text(d, x) for d, x in zip(documents, instructions)]
        return self.base.answer_nll([self.soft_prompt] * len(prompts), prompts, answers)

    def loss(self, documents, instructions, answers) -> torch.Tensor:
        nll, count = self.answer_nll(documents, instructions, answers)
        return nll.sum() / count.sum()

    # ---- what training asks of a model (training.trainable.Trainable) ----------------------

    def documents_nll(self, documents, instructions, answers, task_prompt=True):
        """answer_nll given each example's documents (as text, after the soft prompt). `task_prompt` is
        ComMer's (whether to read its own task prompt); here the soft prompt is the task prompt."""
        return self.answer_nll(documents, instructions, answers)

    def trainable_parameters(self) -> dict[str, list[nn.Parameter]]:
        return {"soft_prompt": [self.soft_prompt]}

    def answer_ids(self, answer: str) -> list[int]:
        return self.base.answer_ids(answer)

    def training_stages(self) -> list[dict]:
        return list(self.stages)

    def compression_spread(self, texts) -> None:
        """None: a task prompt compresses no document (see ComMer.compression_spread)."""
        return None

    @torch.inference_mode()
    def generate(self, documents, instructions, max_new_tokens: int = 32) -> list[str]:
        prompts = [documents_as_text(d, x) for d, x in zip(documents, instructions)]
        return self.base.generate([self.soft_prompt.detach()] * len(prompts), prompts, max_new_tokens=max_new_tokens)
