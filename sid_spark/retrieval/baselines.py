"""Non-generative baselines scored on the same test users: popularity and embedding kNN (last item -> its most
similar items by cosine, the item itself excluded). Ties break by item id so the lists are deterministic."""
from __future__ import annotations

import numpy as np


def popularity_ranking(items: np.ndarray, counts: np.ndarray, k: int) -> np.ndarray:
    """(k,) item ids by count descending, then id ascending."""
    items, counts = np.asarray(items, np.int64), np.asarray(counts, np.int64)
    order = np.lexsort((items, -counts))
    return items[order[:k]]


def embedding_knn(query_items: np.ndarray, item_ids: np.ndarray, embeddings: np.ndarray, k: int,
                  block: int = 4096) -> np.ndarray:
    """query_items: (n,) -> (n, k) most cosine-similar catalog items, best first (-1 for a query item that is not
    in the catalog). embeddings: (m, d) rows of item_ids. One GEMM per block of queries."""
    item_ids = np.asarray(item_ids, np.int64)
    order = np.argsort(item_ids, kind="stable")
    ids_sorted = item_ids[order]
    e = np.asarray(embeddings, np.float32)[order]
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    q = np.asarray(query_items, np.int64)
    pos = np.clip(np.searchsorted(ids_sorted, q), 0, len(ids_sorted) - 1)
    known = ids_sorted[pos] == q
    out = np.full((len(q), k), -1, np.int64)
    kk = min(k, len(ids_sorted) - 1)
    if kk <= 0:
        return out
    for s in range(0, len(q), block):
        p = pos[s:s + block]
        sim = e[p] @ e.T  # (b, m)
        sim[np.arange(len(p)), p] = -np.inf  # never recommend the query item itself
        # columns are in id order: sorting the top-k columns then a stable sort by similarity breaks ties by id
        part = np.sort(np.argpartition(-sim, kk - 1, axis=1)[:, :kk], axis=1)
        vals = np.take_along_axis(sim, part, axis=1)
        o = np.argsort(-vals, axis=1, kind="stable")
        top = np.take_along_axis(part, o, axis=1)
        out[s:s + block, :kk] = np.where(known[s:s + block, None], ids_sorted[top], -1)
    return out
