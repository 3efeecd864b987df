"""Query-time merge of only the relevant compressions (paper section 5.5, future work; issue 16).

Instead of one soft prompt per user (the mean of all their document compressions), pick the m
documents most relevant to the query and merge only those. The merge is still the paper's
mean over the same K soft-token positions, so the generator sees a K×d soft prompt exactly as
before; only the set of documents changes. Two ways to choose:

* `top_m_by_bm25`: lexical, over the documents' texts, with LaMP's rule (BM25Okapi over
  whitespace tokens) — the same rule the training tasks use to pick in-prompt documents, so
  "top-m compressions" and "top-m documents in the prompt" select the same documents.
* `top_m_by_similarity`: in embedding space, when texts are not kept (privacy) but the
  per-document compressions are: cosine similarity between the compression of the
  instruction and each stored compression.

Determinism: rankings break ties by position, so callers should pass a user's documents in
a canonical order — `order_by_doc_id` sorts them by doc_id, making the result independent of
read order or sharding. The merged soft prompt sums the chosen compressions in ascending
position order, so it does not depend on the ranking order either.
"""
from __future__ import annotations

from datetime import datetime
from typing import Optional, Sequence

import numpy as np

from commer.merge import merge_all
from commer.prompting import bm25_top
from commer.recency import recency_merge_all


def _as_numpy(x) -> np.ndarray:
    """numpy view of a numpy array or a torch tensor (any device), as float64."""
    if hasattr(x, "detach"):
        x = x.detach().to("cpu").double().numpy()
    return np.asarray(x, dtype=np.float64)


def _check_m(m: int) -> int:
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 0:
        raise ValueError(f"m must be a non-negative integer, got {m!r}")
    return int(m)


def order_by_doc_id(doc_ids: Sequence[str], compressions, texts: Optional[Sequence[str]] = None):
    """(doc_ids, compressions, texts) sorted by doc_id: the canonical order for tie-breaking."""
    if len(set(doc_ids)) != len(doc_ids):
        raise ValueError("doc_ids are not unique")
    order = sorted(range(len(doc_ids)), key=lambda i: doc_ids[i])
    arr = _as_numpy(compressions)
    if arr.shape[0] != len(doc_ids) or (texts is not None and len(texts) != len(doc_ids)):
        raise ValueError(f"{len(doc_ids)} doc_ids but {arr.shape[0]} compressions"
                         + ("" if texts is None else f" and {len(texts)} texts"))
    return ([doc_ids[i] for i in order], arr[order],
            None if texts is None else [texts[i] for i in order])


# ---- lexical -------------------------------------------------------------------------------
def top_m_by_bm25(instruction: str, texts: Sequence[str], m: int) -> list[int]:
    """Indices of the m documents whose texts best match the instruction, best first.

    A thin call to the project's BM25 rule, so it can be re-pointed in one place.
    m >= len(texts) returns every index (ranked); ties keep position order.
    """
    return bm25_top(instruction, list(texts), _check_m(m))


# ---- embedding space -----------------------------------------------------------------------
def cosine_similarities(query_compression, compressions) -> np.ndarray:
    """Cosine similarity (float64, shape (N,)) of the query's K×d compression with each of N.

    Choice: the K×d matrices are flattened to K·d vectors. The K soft tokens are positional —
    the merge itself averages token k with token k — so comparing slot by slot respects the
    alignment the mean relies on; averaging over K first would throw away which slot carries
    what, and let compressions with different content but similar averages tie. Cosine ignores
    scale (a compression and a multiple of it score the same). A zero vector scores 0.
    """
    q = _as_numpy(query_compression)
    c = _as_numpy(compressions)
    if c.ndim != 3 or q.shape != c.shape[1:]:
        raise ValueError(f"query compression {q.shape} does not match stored compressions {c.shape} (N, K, d)")
    if not (np.isfinite(q).all() and np.isfinite(c).all()):
        raise ValueError("non-finite values in the compressions")
    flat = c.reshape(c.shape[0], -1)
    qv = q.reshape(-1)
    norms = np.linalg.norm(flat, axis=1) * np.linalg.norm(qv)
    dots = flat @ qv
    out = np.zeros(c.shape[0], dtype=np.float64)
    np.divide(dots, norms, out=out, where=norms > 0)
    return out


def top_m_by_similarity(query_compression, compressions, m: int) -> list[int]:
    """Indices of the m stored compressions most similar to the query's, best first.

    Ties (equal scores) keep position order (stable sort). m >= N returns every index.
    """
    m = _check_m(m)
    scores = cosine_similarities(query_compression, compressions)
    order = np.argsort(-scores, kind="stable")
    return [int(i) for i in order[:m]]


# ---- merge ---------------------------------------------------------------------------------
def retrieved_soft_prompt(compressions, indices: Sequence[int],
                          created_at: Optional[Sequence[datetime]] = None,
                          half_life_days: Optional[float] = None) -> Optional[np.ndarray]:
    """Mean (float32, K×d) of the chosen compressions: the same K soft tokens as a full profile.

    Summed in float64 in ascending index order through commer.merge, so choosing every
    document gives exactly the user's plain-mean profile, and the result does not depend on
    the ranking order. With `half_life_days` (and the documents' effective `created_at`), the
    chosen ones are recency-weighted as in commer.recency. No index: None (not personalised).
    """
    c = _as_numpy(compressions)
    chosen = sorted(int(i) for i in indices)
    if len(set(chosen)) != len(chosen):
        raise ValueError("an index was chosen twice")
    if chosen and (chosen[0] < 0 or chosen[-1] >= c.shape[0]):
        raise ValueError(f"index out of range for {c.shape[0]} compressions")
    if half_life_days is None:
        return merge_all(c[i] for i in chosen).mean()
    if created_at is None or len(created_at) != c.shape[0]:
        raise ValueError("recency-weighted retrieval needs one created_at per compression")

    return recency_merge_all(((c[i], created_at[i]) for i in chosen), half_life_days).mean()
