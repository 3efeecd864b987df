"""Query-time merge rows of the evaluation with controls (issue 16, part 1).

Per example, a soft prompt merged from only the author's most relevant stored compressions,
chosen exactly as `pipelines.generate --merge=retrieved` chooses them (commer.retrieval):

    ComMer retrieved top-M (bm25)   BM25 between the example's instruction and the documents' text
    ComMer similarity top-M         cosine between the instruction's compression and each stored one
    ComMer merge=all                the mean of every candidate: the profile a user would have
    text retrieved top-M (bm25)     the in-prompt baseline with the SAME documents as the bm25 row:
                                    their text before the instruction, frozen backbone

Candidate pool (what the product stores for the author): ALL of the author's other articles,
formatted as the news task's documents, each compressed once per author. Not the n=16 BM25
documents of the own-16 row: that pool is already BM25-chosen for the query, so re-ranking it by
BM25 would mostly reproduce "ComMer own M". The own-M rows choose by LaMP-4's rule (the short
description against "headline description"); these rows by the product's (the instruction
against the stored document text); each row reports how many of its documents the own-M row
also used. The soft prompt is K tokens whatever M, so the generation cost is ComMer's.
"""
from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Callable, Optional

import numpy as np
import torch

from commer.retrieval import order_by_doc_id, retrieved_soft_prompt, top_m_by_bm25, top_m_by_similarity
from training.evaluate_task import prompt_tokens, score_batch, score_examples
from training.evaluation.rows import PlannedRow
from training.tasks import DataError, Example
from training.tasks import news

log = logging.getLogger(__name__)

RULES = {"retrieved_bm25": "bm25", "retrieved_similarity": "similarity", "merge_all": "all",
         "text_retrieved_bm25": "bm25"}
POOL_NOTE = ("candidates = ALL of the author's other articles (each compressed once), ranked as "
             "`pipelines.generate --merge=retrieved` ranks them: BM25 between the instruction and the stored "
             "document text, or cosine between the instruction's compression and each stored compression")


def article_id(author: str, index: int, article: dict) -> str:
    """An article's doc_id: its link, else author#index — the news task's example_id rule."""
    return article.get("link") or f"{author}#{index}"


class AuthorPools:
    """Each author's articles as the product stores them (doc_id, document text, K×d compression),
    compressed on first use and kept for every example of that author."""

    def __init__(self, model, articles: dict[str, list[dict]], batch_size: int = 16):
        self.model, self.articles, self.batch_size = model, articles, batch_size
        self.pools: dict[str, tuple[list[str], np.ndarray, list[str]]] = {}
        self.seconds = 0.0
        self.compressed = 0

    def _author(self, author: str):
        if author not in self.pools:
            rows = self.articles.get(author)
            if not rows:
                raise DataError(f"author {author!r} of an example has no articles in --data")
            started = time.time()
            log.info("candidate pool: compressing an author's %d articles (once per author)", len(rows))
            ids = [article_id(author, j, a) for j, a in enumerate(rows)]
            texts = [news.format_document(a["headline"], a["short_description"]) for a in rows]
            with torch.no_grad():
                comps = self.model.compress(texts, batch_size=self.batch_size).numpy().astype(np.float64)
            self.pools[author] = order_by_doc_id(ids, comps, texts)
            self.seconds += time.time() - started
            self.compressed += len(rows)
        return self.pools[author]

    def candidates(self, example: Example) -> tuple[np.ndarray, list[str]]:
        """(compressions, texts) of the author's articles other than the example's own, in doc_id order."""
        ids, comps, texts = self._author(example.user_id)
        keep = [i for i, d in enumerate(ids) if d != example.example_id]
        if len(keep) != len(ids) - 1:
            raise DataError(f"example {example.example_id!r}: its article is not among its author's articles")
        return comps[keep], [texts[i] for i in keep]


def choose(rule: str, m: int, instruction: str, comps: np.ndarray, texts: list[str],
           query_compression: Optional[np.ndarray]) -> list[int]:
    if rule == "all":
        return list(range(len(texts)))
    if rule == "bm25":
        return top_m_by_bm25(instruction, texts, m)
    return top_m_by_similarity(query_compression, comps, m)


class RetrievedScorer:
    """score_examples' signature and result (training.evaluate_task), for the query-time merge methods."""

    def __init__(self, pools: AuthorPools):
        self.pools = pools

    @torch.no_grad()
    def __call__(self, model, method: str, examples: list[Example], m: int, batch_size: int = 16,
                 max_new_tokens: int = 24, generate: bool = True, progress: Optional[Callable] = None) -> dict:
        rule = RULES[method]
        if method == "text_retrieved_bm25":
            return self._as_text(model, examples, m, batch_size, max_new_tokens, generate, progress)
        model.eval()
        out = {"nll": [], "tokens": [], "prompt_tokens": [], "documents": [], "predictions": [], "overlap": []}
        started, pool_seconds = time.time(), self.pools.seconds
        for start in range(0, len(examples), batch_size):
            batch = examples[start: start + batch_size]
            ins, ans = [e.instruction for e in batch], [e.answer for e in batch]
            queries = model.compress(ins, batch_size=len(ins)).numpy() if rule == "similarity" else [None] * len(ins)
            soft = []
            for e, q in zip(batch, queries):
                comps, texts = self.pools.candidates(e)
                chosen = choose(rule, m, e.instruction, comps, texts, q)
                soft.append(retrieved_soft_prompt(comps, chosen))
                docs = [texts[i] for i in chosen]
                out["documents"].append(len(docs))
                out["prompt_tokens"].append(prompt_tokens(model, "commer", docs, e.instruction))
                own = set(e.documents[:len(docs)])  # own M's documents (fewer when M exceeds the largest own n)
                out["overlap"].append(sum(d in own for d in docs) / len(docs) if docs else 0.0)
            score_batch(model, soft, ins, ans, generate, max_new_tokens, out)
            if progress is not None:
                progress(min(start + batch_size, len(examples)), len(examples))
        # Compressing the authors' articles once is shared by every row: counted apart (pool_seconds).
        out["seconds"] = round(time.time() - started - (self.pools.seconds - pool_seconds), 1)
        return out

    def _as_text(self, model, examples: list[Example], m: int, batch_size: int, max_new_tokens: int,
                 generate: bool, progress: Optional[Callable]) -> dict:
        """The bm25 row's documents, given as text: each example re-built with them, scored as "text"."""
        chosen = []
        for e in examples:
            _, texts = self.pools.candidates(e)
            chosen.append(replace(e, documents=[texts[i] for i in choose("bm25", m, e.instruction, None, texts, None)]))
        out = score_examples(model, "text", chosen, m, batch_size, max_new_tokens, generate, progress)
        out["overlap"] = [sum(d in set(e.documents[:len(c.documents)]) for d in c.documents) / max(len(c.documents), 1)
                          for e, c in zip(examples, chosen)]
        return out


def plan_rows(args, examples: list[Example]) -> list[PlannedRow]:
    """The query-time merge rows the flags ask for (n is M)."""
    rows = [PlannedRow(f"ComMer retrieved top-{m} (bm25)", "retrieved", "retrieved_bm25", m, examples)
            for m in args.retrieved_top_m]
    rows += [PlannedRow(f"ComMer similarity top-{m}", "retrieved", "retrieved_similarity", m, examples)
             for m in args.similarity_top_m]
    if args.retrieved_top_m or args.similarity_top_m:
        rows.append(PlannedRow("ComMer merge=all", "retrieved", "merge_all", 0, examples))
    rows += [PlannedRow(f"text retrieved top-{m} (bm25)", "retrieved_text", "text_retrieved_bm25", m, examples)
             for m in args.retrieved_text_top_m]
    return rows


def pool_summary(pools: AuthorPools) -> dict:
    """What rows.jsonl records about the candidate pools (extras["retrieval"])."""
    return {"pool": POOL_NOTE, "articles_compressed": pools.compressed, "seconds": round(pools.seconds, 1)}


def notes(rows: list[dict], summary: Optional[dict]) -> list[str]:
    """Markdown lines under the table: the pool, the overlap with own M, the one-off compression cost."""
    retrieved = [r for r in rows if r["group"] == "retrieved"]
    if not retrieved:
        return []
    overlap = "; ".join(f"{r['label']}: {100 * r['overlap_with_own']:.0f}%" for r in retrieved
                        if "overlap_with_own" in r and r["method"] != "merge_all")
    text = f"**Query-time merge** (issue 16): {POOL_NOTE}. Documents also used by ComMer own M (same M): {overlap}."
    everything = next((r for r in retrieved if r["method"] == "merge_all"), None)
    if everything is not None:
        text += f" ComMer merge=all merges every candidate ({everything['mean_documents']:.1f} on average)."
    if summary and summary["articles_compressed"]:
        text += (f" Compressing the {summary['articles_compressed']} candidate articles took {summary['seconds']:.0f} s"
                 " (once; not in the rows' seconds).")
    return ["", text]
