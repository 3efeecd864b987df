"""Documents as text in the prompt: BM25 retrieval and the in-prompt layout. No Beam.

Retrieval follows LaMP: BM25 (rank-bm25's BM25Okapi) over one user's documents with the
query as the search query, and LaMP's tokenization: `str.split()` on whitespace, case kept
(LaMP's retriever does `x.split()` on corpus and query). That one rule serves the training
tasks (LaMP, news), the generate job's in-prompt baseline and the benchmarks, so retrieval
in training and in production picks the same documents. Ties keep corpus order.

The chosen documents go before the instruction (`in_prompt_instruction`), the layout the
generate job's baseline, the benchmarks and the prompt-tuning baseline's costs all share.
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

from rank_bm25 import BM25Okapi


def bm25_tokens(text: str) -> list[str]:
    """LaMP's BM25 tokens: whitespace-separated words, as written."""
    return text.split()


def bm25_top(query: str, corpus: Sequence[str], n: int) -> list[int]:
    """Indices of the n best corpus entries for the query (BM25Okapi), best first.

    Ties keep corpus order (stable sort), so results are deterministic.
    """
    if n <= 0 or not corpus:
        return []
    # BM25Okapi divides by the mean document length: keep every token list non-empty.
    tokenized = [bm25_tokens(c) or [""] for c in corpus]
    scores = BM25Okapi(tokenized).get_scores(bm25_tokens(query))
    order = sorted(range(len(corpus)), key=lambda i: -float(scores[i]))
    return order[:n]


class UserDocuments:
    """One user's documents ({doc_id, text}), indexed once for all their queries."""

    def __init__(self, documents: Iterable[dict]):
        unique: dict[str, str] = {}
        for doc in sorted(documents, key=lambda d: d["doc_id"]):
            unique.setdefault(doc["doc_id"], doc["text"])  # the first of a repeated doc_id
        self.docs = list(unique.items())  # sorted by doc_id: ties go to the smaller doc_id
        self.index = BM25Okapi([bm25_tokens(text) or [""] for _, text in self.docs]) if self.docs else None

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
