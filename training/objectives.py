"""What a ComMer training step minimises (issue 23): the answer's cross-entropy, plus terms that
make the merged soft prompt carry *this* user rather than only the task.

    loss = [ Σ CE(answer | own documents)
             + α · Σ T²·KL(teacher_T ‖ student_T)                 distillation (training/distillation.py)
             + β · Σ n_e · max(0, m − (NLL_other − NLL_own)_e) ]   user contrast
           / answer tokens of the effective batch

CE alone lets the model meet the loss with a task prior: eight task-trained soft tokens that
never see a document did 98% of what ComMer did. The distillation term asks the student, per
answer token, for the distribution of a teacher that reads the same documents as text. The
contrast term scores the same query with another training author's documents (the evaluation's
control rule, training/tasks/news.py `other_author`; n_e answer tokens, NLLs per token) and asks
the own documents to fit better by a margin of m nats per token. Examples without a teacher entry
or other-author documents (the auto-encoding mix) contribute their cross-entropy only.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from training.distillation import TeacherCache, distillation_kl, example_key
from training.tasks.base import DataError, Example, reads_task_prompt


class Objective:
    """The loss of one micro-batch, token-weighted over the whole effective batch."""

    def __init__(self, distill_weight: float = 0.0, teacher: TeacherCache | None = None,
                 contrast_weight: float = 0.0, contrast_margin: float = 0.1):
        if distill_weight and teacher is None:
            raise ValueError("distill_weight > 0 needs a teacher cache")
        self.distill_weight, self.teacher = distill_weight, teacher
        self.contrast_weight, self.contrast_margin = contrast_weight, contrast_margin

    def __call__(self, model, examples: list[Example], total_tokens: float) -> tuple[torch.Tensor, dict]:
        """(loss to backpropagate, its parts as floats summed over the micro-batch)."""
        rows = model.answer_logits(model.merge_documents([e.documents for e in examples]),
                                   [e.instruction for e in examples], [e.answer for e in examples],
                                   task_prompt=reads_task_prompt(examples))
        nll = torch.stack([F.cross_entropy(logits, target, reduction="sum") for logits, target in rows])
        count = torch.tensor([float(len(t)) for _, t in rows], device=nll.device)
        loss = nll.sum()
        parts = {"ce": float(nll.detach().sum())}
        if self.distill_weight:
            kl = self._distillation(examples, rows)
            loss = loss + self.distill_weight * kl
            parts["kl"] = float(kl.detach())
        if self.contrast_weight:
            hinge, gap = self._contrast(model, examples, nll, count)
            loss = loss + self.contrast_weight * hinge
            parts["contrast"], parts["gap"] = float(hinge.detach()), gap
        return loss / total_tokens, parts

    def _distillation(self, examples: list[Example], rows) -> torch.Tensor:
        total = rows[0][0].new_zeros(())
        for example, (logits, target) in zip(examples, rows):
            cached = self.teacher.get(example_key(example))
            if cached is None:
                continue  # not a task example (the auto-encoding mix has no teacher)
            if not torch.equal(cached[3].long(), target.cpu()):
                raise DataError("the teacher cache's answer tokens differ from the student's for example "
                                f"{example.example_id!r}: it was made with another tokenizer or answer limit")
            total = total + distillation_kl(logits, cached, self.teacher.temperature)
        return total

    def _contrast(self, model, examples: list[Example], nll: torch.Tensor, count: torch.Tensor):
        """Σ_e n_e · hinge_e over the examples with other-author documents, and the mean per-token gap."""
        chosen = [i for i, e in enumerate(examples) if e.meta.get("other_documents")]
        if not chosen:
            return nll.new_zeros(()), None
        other_nll, _ = model.answer_nll(model.merge_documents([examples[i].meta["other_documents"] for i in chosen]),
                                        [examples[i].instruction for i in chosen], [examples[i].answer for i in chosen])
        n = count[chosen]
        gap = other_nll / n - nll[chosen] / n  # nats per token the own documents fit better by
        hinge = (n * torch.relu(self.contrast_margin - gap)).sum()
        return hinge, float(gap.detach().mean())
