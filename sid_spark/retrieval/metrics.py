"""Leave-one-out ranking metrics: each query has exactly one relevant item (its held-out next item).

    rank = target_rank(ranked, target)        # 0-based position of the target in each ranked list, -1 if absent
    recall_at_k(rank, 10), ndcg_at_k(rank, 10)

With one relevant item the ideal DCG is 1, so NDCG@k = 1 / log2(rank + 2) when rank < k, else 0 (Järvelin &
Kekäläinen 2002, as TIGER and P5 compute it); Recall@k is the hit rate at k.
"""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np


def target_rank(ranked: np.ndarray, target: np.ndarray) -> np.ndarray:
    """ranked: (n, k) item ids, best first (-1 = no item); target: (n,) -> (n,) int64 0-based rank, -1 if missing.

    Only the first occurrence counts, so a list that repeats the target is not rewarded twice."""
    ranked = np.asarray(ranked)
    target = np.asarray(target).reshape(-1, 1)
    if ranked.ndim != 2 or ranked.shape[0] != target.shape[0]:
        raise ValueError(f"ranked must be (n, k) with n = len(target); got {ranked.shape} and {target.shape[0]}")
    hit = (ranked == target) & (ranked >= 0) if ranked.size else np.zeros(ranked.shape, bool)
    first = np.argmax(hit, axis=1) if ranked.shape[1] else np.zeros(len(target), np.int64)
    return np.where(hit.any(axis=1), first, -1).astype(np.int64)


def recall_at_k(rank: np.ndarray, k: int) -> float:
    rank = np.asarray(rank)
    return float(((rank >= 0) & (rank < k)).mean()) if rank.size else 0.0


def ndcg_at_k(rank: np.ndarray, k: int) -> float:
    rank = np.asarray(rank)
    if not rank.size:
        return 0.0
    gain = np.where((rank >= 0) & (rank < k), 1.0 / np.log2(np.maximum(rank, 0) + 2.0), 0.0)
    return float(gain.mean())


def ranking_metrics(ranked: np.ndarray, target: np.ndarray, ks: Sequence[int] = (5, 10)) -> Dict[str, float]:
    """{"recall@5", "ndcg@5", "recall@10", "ndcg@10", ...} over the queries."""
    rank = target_rank(ranked, target)
    out: Dict[str, float] = {}
    for k in ks:
        out[f"recall@{k}"] = recall_at_k(rank, k)
        out[f"ndcg@{k}"] = ndcg_at_k(rank, k)
    return out
