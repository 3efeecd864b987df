"""The in-prompt baseline, free of Beam: a user's top-n documents by BM25, as plain text.

Retrieval follows LaMP: BM25 (rank-bm25's BM25Okapi) over the user's own documents, with the
query's instruction as the search query. The chosen documents go before the instruction, in
the same layout as benchmarks/generation_cost.py, so costs measured there and here agree.
"""
from __future__ import annotations

import re
from typing import Callable, Iterable, Sequence

_WORD = re.compile(r"\w+")


def bm25_tokens(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class UserDocuments:
    """One user's documents, indexed once for all their queries."""

    def __init__(self, documents: Iterable[dict]):
        unique: dict[str, str] = {}
        for doc in sorted(documents, key=lambda d: d["doc_id"]):
            unique.setdefault(doc["doc_id"], doc["text"])  # the first of a repeated doc_id
        self.docs = list(unique.items())
        self.index = None
        if self.docs:
            from rank_bm25 import BM25Okapi
            # BM25Okapi divides by the mean document length: keep every token list non-empty.
            self.index = BM25Okapi([bm25_tokens(text) or [""] for _, text in self.docs])

    def top(self, query: str, n: int) -> list[str]:
        """Texts of the n best matches for `query`, best first; ties by doc_id (deterministic)."""
        if not self.docs or n <= 0:
            return []
        scores = self.index.get_scores(bm25_tokens(query))
        order = sorted(range(len(self.docs)), key=lambda i: (-float(scores[i]), self.docs[i][0]))
        return [self.docs[i][1] for i in order[:n]]


def in_prompt_instruction(documents: Sequence[str], instruction: str) -> str:
    """The documents as text, then the task."""
    listed = "\n".join(f"Document {i + 1}: {d}" for i, d in enumerate(documents))
    return f"{listed}\n{instruction}" if listed else instruction


def fit_documents(documents: Sequence[str], instruction: str, count_tokens: Callable[[str], int],
                  max_tokens: int) -> tuple[str, int]:
    """The instruction with as many of the (ranked) documents as fit in `max_tokens`.

    Lower-ranked documents are dropped whole rather than cut mid-text; if even the best one
    does not fit, it is kept and the generator's own limit keeps the prompt's end.
    Returns (instruction, documents used).
    """
    used = len(documents)
    text = in_prompt_instruction(documents, instruction)
    while used > 1 and count_tokens(text) > max_tokens:
        used -= 1
        text = in_prompt_instruction(documents[:used], instruction)
    return text, used
