"""A planned row of an evaluation table: what to score before it is scored."""
from __future__ import annotations

from typing import NamedTuple

from training.tasks import Example


class PlannedRow(NamedTuple):
    """A row to score: its label in the table, its group (own, other, text, ...), the scoring
    method (training.evaluate_task's, or a query-time merge rule), n documents, the examples."""
    label: str
    group: str
    method: str
    n: int
    examples: list[Example]
