"""Distillation from a teacher that reads the same documents as text (issue 23).

The student is ComMer: the documents reach the generator only as the mean of their compressions.
The teacher is the same frozen backbone with the documents *as text* in its prompt -- with a
task-tuned soft prompt before them (a prompt-tuning folder: training/prompt_tuning.py), or
without one ("text": the frozen backbone alone). Whatever the teacher's next-token distribution
says about this author that the student's does not is what the KL term asks the compressions to
carry (xRAG's self-distillation from a text-RAG teacher; PISCO).

    loss = CE(answer) + α · T² · Σ_answer tokens KL(teacher_T ‖ student_T)   (per answer token)

The teacher runs once per example, before training, and is cached on disk: at each answer
position its top-k log-probabilities at temperature T and the log of the mass left over. The KL is
then taken over those k + 1 outcomes (the k tokens and "any other token"), the exact KL of the two
distributions coarsened to the teacher's top k -- so a training step costs no teacher forward.

Cache folder (safetensors + JSON, no pickle):
    teacher.json         teacher, its identity, k, T, and per example (key = hash of documents,
                         instruction, answer) its first row and number of answer tokens
    teacher.safetensors  ids (N, k) int32, logp (N, k) float32, rest (N,) float32, answer (N,) int32
A cache is extended, not rebuilt, when a run needs examples it lacks; one made by another
teacher, k or T is refused.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file, save_file

from commer import ComMer
from training.prompt_tuning import MAX_PROMPT_TOKENS, PromptTuning, documents_as_text
from training.tasks.base import DataError, Example

log = logging.getLogger("training.distillation")

INDEX_FILE = "teacher.json"
TENSORS_FILE = "teacher.safetensors"
FROZEN_TEXT = "text"  # teacher = the frozen backbone with the documents as text, no soft prompt


def example_key(example: Example) -> str:
    """What the teacher's answer distribution depends on: documents, instruction, answer."""
    blob = json.dumps([list(example.documents), example.instruction, example.answer], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:24]


class Teacher:
    """The backbone reading the documents as text, behind a task-tuned soft prompt or none."""

    def __init__(self, reference: str, backbone: str = "default", cache: str | None = None, device: str = "cpu"):
        self.reference = reference
        if reference == FROZEN_TEXT:
            self.prompt_tuning = None
            self.base = ComMer.from_backbone(backbone, cache=cache).to(device)
            soft = "none"
        else:
            self.prompt_tuning = PromptTuning.from_pretrained(reference, cache=cache).to(device)
            self.base = self.prompt_tuning.base
            soft = hashlib.sha256(self.prompt_tuning.soft_prompt.detach().float().cpu().numpy().tobytes()).hexdigest()[:16]
        self.base.eval()
        # What the cached numbers depend on: the backbone's content, the soft prompt, the prompt layout.
        self.identity = {"backbone_hash": self.base.identity.content_hash, "soft_prompt": soft,
                         "prompt_template": self.base.config.prompt_template}

    @torch.no_grad()
    def answer_logits(self, examples: Sequence[Example]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        prompts = [documents_as_text(e.documents, e.instruction) for e in examples]
        soft = [self.prompt_tuning.soft_prompt if self.prompt_tuning is not None else None] * len(examples)
        return self.base.answer_logits(soft, prompts, [e.answer for e in examples], MAX_PROMPT_TOKENS)


def top_k_targets(logits: torch.Tensor, k: int, temperature: float) -> tuple[torch.Tensor, ...]:
    """(ids (T, k), log-probs (T, k), log of the remaining mass (T,)) of softmax(logits / T)."""
    logp = torch.log_softmax(_wide(logits) / temperature, dim=-1)
    top, ids = logp.topk(min(k, logp.shape[-1]), dim=-1)
    return ids, top, _log_rest(top)


def _log_rest(top_logp: torch.Tensor) -> torch.Tensor:
    """log(1 − Σ exp(top_logp)), kept finite when the top k hold (almost) all the mass."""
    covered = torch.logsumexp(top_logp, dim=-1).clamp(max=-1e-7)
    return torch.log(-torch.expm1(covered)).clamp(min=-60.0)


class TeacherCache:
    """The teacher's top-k answer distributions per example, in memory; `save`/`load` to a folder."""

    def __init__(self, teacher: dict, k: int, temperature: float):
        self.teacher, self.k, self.temperature = teacher, k, temperature
        self.rows: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def __contains__(self, key: str) -> bool:
        return key in self.rows

    def __len__(self) -> int:
        return len(self.rows)

    def get(self, key: str):
        """(ids, logp, rest, answer) of one example, or None when it was not cached."""
        return self.rows.get(key)

    def add(self, teacher: Teacher, examples: Sequence[Example], batch_size: int = 8, progress=None) -> int:
        """Run the teacher on the examples not cached yet; returns how many were added."""
        missing, seen = [], set()
        for e in examples:
            key = example_key(e)
            if key not in self.rows and key not in seen:
                seen.add(key)
                missing.append((key, e))
        for start in range(0, len(missing), batch_size):
            chunk = missing[start: start + batch_size]
            for (key, _), (logits, answer) in zip(chunk, teacher.answer_logits([e for _, e in chunk])):
                ids, logp, rest = top_k_targets(logits, self.k, self.temperature)
                self.rows[key] = (ids.int().cpu(), logp.cpu(), rest.cpu(), answer.int().cpu())
            if progress is not None:
                progress(min(start + batch_size, len(missing)), len(missing))
        return len(missing)

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        keys = sorted(self.rows)
        index, at = {}, 0
        for key in keys:
            index[key] = [at, len(self.rows[key][3])]
            at += len(self.rows[key][3])
        k = self.k
        empty = (torch.zeros((0, k), dtype=torch.int32), torch.zeros((0, k)), torch.zeros(0), torch.zeros(0, dtype=torch.int32))
        parts = [torch.cat([self.rows[key][i] for key in keys]) if keys else empty[i] for i in range(4)]
        # Written next to their final names, then moved: a kill never leaves a half-written cache.
        save_file({"ids": parts[0].contiguous(), "logp": parts[1].contiguous(), "rest": parts[2].contiguous(),
                   "answer": parts[3].contiguous()}, str(folder / (TENSORS_FILE + ".tmp")))
        (folder / (INDEX_FILE + ".tmp")).write_text(json.dumps(
            {"teacher": self.teacher, "k": self.k, "temperature": self.temperature, "examples": index}))
        os.replace(folder / (TENSORS_FILE + ".tmp"), folder / TENSORS_FILE)
        os.replace(folder / (INDEX_FILE + ".tmp"), folder / INDEX_FILE)

    @classmethod
    def load(cls, folder: str | Path) -> "TeacherCache":
        folder = Path(folder)
        meta = json.loads((folder / INDEX_FILE).read_text())
        tensors = load_file(str(folder / TENSORS_FILE))
        cache = cls(meta["teacher"], meta["k"], meta["temperature"])
        for key, (at, n) in meta["examples"].items():
            cache.rows[key] = tuple(tensors[name][at: at + n] for name in ("ids", "logp", "rest", "answer"))
        return cache


def prepare_cache(folder: str | Path, teacher_reference: str, examples: Sequence[Example], k: int,
                  temperature: float, backbone: str = "default", cache_dir: str | None = None,
                  device: str = "cpu", batch_size: int = 8) -> TeacherCache:
    """The cache in `folder` covering `examples`: loaded, extended with the teacher where examples are
    missing (then saved), or made. A cache of another teacher, k or temperature is an error."""
    folder = Path(folder)
    exists = (folder / INDEX_FILE).exists()
    cache = TeacherCache.load(folder) if exists else None
    if cache is not None and (cache.k, cache.temperature) != (k, temperature):
        raise DataError(f"{folder}: teacher cache holds top-{cache.k} at temperature {cache.temperature}, "
                        f"this run asks for top-{k} at {temperature}: use another distill_cache folder")
    if cache is not None and cache.teacher.get("reference") != teacher_reference:
        raise DataError(f"{folder}: teacher cache was made by {cache.teacher.get('reference')!r}, this run's "
                        f"teacher is {teacher_reference!r}: use another distill_cache folder")
    if cache is not None and all(example_key(e) in cache for e in examples):
        return cache
    teacher = Teacher(teacher_reference, backbone, cache_dir, device)
    described = {"reference": teacher_reference, **teacher.identity}
    if cache is None:
        cache = TeacherCache(described, k, temperature)
    elif cache.teacher != described:
        raise DataError(f"{folder}: teacher cache was made by a different {teacher_reference!r} (its soft prompt "
                        "or backbone changed): use another distill_cache folder")
    log.info("teacher %s: scoring %d examples (top-%d, T=%g) into %s", teacher_reference,
             sum(example_key(e) not in cache for e in examples), k, temperature, folder)
    added = cache.add(teacher, examples, batch_size, progress=_progress_log())
    log.info("teacher cache: %d examples added, %d in all", added, len(cache))
    cache.save(folder)
    return cache


def distillation_kl(student_logits: torch.Tensor, target: tuple, temperature: float) -> torch.Tensor:
    """Σ over answer tokens of KL(teacher ‖ student), both at temperature T, over the teacher's top k
    and the rest; times T² so its gradient keeps its scale as T changes (Hinton et al.)."""
    ids, t_logp, t_rest, _ = target
    ids = ids.to(student_logits.device).long()
    t_logp, t_rest = (t.to(student_logits.device, _wide(student_logits).dtype) for t in (t_logp, t_rest))
    s_all = torch.log_softmax(_wide(student_logits) / temperature, dim=-1)
    s_top = s_all.gather(-1, ids)
    s_rest = _log_rest(s_top)
    kl = (t_logp.exp() * (t_logp - s_top)).sum(-1) + t_rest.exp() * (t_rest - s_rest)
    return kl.sum() * temperature ** 2


def _wide(x: torch.Tensor) -> torch.Tensor:
    """float32 for half-precision logits (a softmax over 49k entries needs it); float64 stays."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _progress_log():
    state = {"last": -1}

    def report(done: int, total: int) -> None:
        tenth = math.floor(10 * done / max(total, 1))
        if tenth != state["last"]:
            state["last"] = tenth
            log.info("teacher: %d / %d examples", done, total)
    return report
