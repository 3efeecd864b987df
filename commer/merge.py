"""Merging document compressions into one soft prompt: plain numpy/torch, no Beam.

The paper merges by mean pooling. We keep the mean as (sum, count) so that merging is
associative and incremental: adding or removing a document is one addition or subtraction,
and partial sums from different workers combine in any order. Sums are float64 so that
thousands of adds and removes stay within 1e-5 of a recompute.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class SumCount:
    """Running float64 sum of K×d compressions and how many were added. None sum = empty."""

    total: np.ndarray | None = None
    count: int = 0

    def add(self, compression: np.ndarray) -> "SumCount":
        """Add one K×d compression in place (returns self, for chaining)."""
        x = np.asarray(compression, dtype=np.float64)
        if self.total is None:
            self.total = x.copy()
        else:
            _check_shape(self.total, x)
            self.total += x
        self.count += 1
        return self

    def remove(self, compression: np.ndarray) -> "SumCount":
        """Subtract one previously added compression in place (exact deletion)."""
        if self.count <= 0 or self.total is None:
            raise ValueError("cannot remove a compression from an empty merge state")
        x = np.asarray(compression, dtype=np.float64)
        _check_shape(self.total, x)
        self.total -= x
        self.count -= 1
        if self.count == 0:
            self.total = None
        return self

    def merge(self, other: "SumCount") -> "SumCount":
        """Fold `other` into self in place; `other` is left untouched."""
        if other.total is None:
            return self
        if self.total is None:
            self.total = other.total.copy()
        else:
            _check_shape(self.total, other.total)
            self.total += other.total
        self.count += other.count
        return self

    def mean(self) -> np.ndarray | None:
        """The merged soft prompt (float32), or None for a user with no documents."""
        if self.total is None or self.count == 0:
            return None
        return (self.total / self.count).astype(np.float32)


def _check_shape(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"compression shapes differ: {a.shape} vs {b.shape}")


def merge_all(compressions) -> SumCount:
    """SumCount over an iterable of K×d compressions."""
    state = SumCount()
    for c in compressions:
        state.add(c)
    return state


def mean_pool(compressions: torch.Tensor, group: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Differentiable mean of (N, K, d) compressions per group id (N,), giving (G, K, d).

    Used in training, where each example's documents are compressed in one flat batch.
    Every group must have at least one member.
    """
    out = compressions.new_zeros((num_groups,) + tuple(compressions.shape[1:]))
    out = out.index_add(0, group, compressions)
    counts = torch.bincount(group, minlength=num_groups).to(compressions.dtype)
    if bool((counts == 0).any()):
        raise ValueError("mean_pool: a group has no compressions")
    return out / counts.view(-1, *([1] * (compressions.dim() - 1)))


def concat_merge(compressions: list[torch.Tensor]) -> torch.Tensor:
    """The paper's concatenation variant (section 5.5): (n·K, d) instead of (K, d)."""
    return torch.cat(list(compressions), dim=0)
