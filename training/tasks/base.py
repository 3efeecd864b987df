"""What every task shares: the example record, user-level splits, file reading.

Retrieval (BM25, LaMP's whitespace tokens) is commer.prompting.bm25_top.

A task turns a dataset in its published format into `Example`s of (documents, instruction,
answer). Splits are always by user, decided by a hash of the user key, so they are fixed
(independent of file order, seeds or which other users are present) and disjoint by user.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

# Paper appendix A.1: examples longer than this (documents + instruction + answer) are excluded.
MAX_EXAMPLE_CHARS = 2900
SPLITS = ("train", "val", "test")


class DataError(ValueError):
    """A data file is missing or malformed; the message names the file and the problem."""


@dataclass(frozen=True)
class Example:
    documents: list[str]
    instruction: str
    answer: str
    user_id: str = ""
    example_id: str = ""
    meta: dict = field(default_factory=dict, compare=False)

    def num_chars(self) -> int:
        return sum(len(d) for d in self.documents) + len(self.instruction) + len(self.answer)


# Example.meta key marking a reconstruction example (pretraining, or the auto-encoding mix): its soft
# prompt is read to reproduce a document, not for the task, so never after a checkpoint's task prompt.
AUTOENCODING = "autoencoding"


def reads_task_prompt(examples: Sequence[Example]) -> list[bool]:
    """Per example: whether its soft prompt is read for the task, after the model's task prompt if it has one."""
    return [not e.meta.get(AUTOENCODING, False) for e in examples]


def split_of(user_key: str, fractions: Sequence[float] = (0.8, 0.1, 0.1)) -> str:
    """'train' / 'val' / 'test' for a user, from sha256 of its key: fixed and order-free."""
    h = int(hashlib.sha256(user_key.encode("utf-8")).hexdigest()[:12], 16) / float(16 ** 12)
    edge = 0.0
    for name, frac in zip(SPLITS, fractions):
        edge += frac
        if h < edge:
            return name
    return SPLITS[-1]


def drop_long(examples: Iterable[Example], limit: int = MAX_EXAMPLE_CHARS) -> list[Example]:
    return [e for e in examples if e.num_chars() <= limit]


def require_file(path: str | Path, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: {what} file not found")
    if not p.is_file():
        raise DataError(f"{p}: {what} path is not a file")
    return p


def read_json(path: str | Path, what: str):
    p = require_file(path, what)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{p}: {what} file is not valid JSON ({exc.__class__.__name__} at "
                        f"line {getattr(exc, 'lineno', '?')})") from None


def read_jsonl(path: str | Path, what: str) -> list[dict]:
    p = require_file(path, what)
    rows = []
    with p.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise DataError(f"{p}: line {number} of the {what} file is not valid JSON") from None
            if not isinstance(row, dict):
                raise DataError(f"{p}: line {number} of the {what} file is not a JSON object")
            rows.append(row)
    return rows


def require_keys(record, keys: Sequence[str], path, where: str) -> None:
    if not isinstance(record, dict):
        raise DataError(f"{path}: {where} is not a JSON object")
    missing = [k for k in keys if k not in record]
    if missing:
        raise DataError(f"{path}: {where} lacks field(s) {missing}")
