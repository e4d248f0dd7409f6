"""Distances a collision resolver needs, as pure numpy/torch over one batch of items.

An item with SID (s_1..s_L) is reconstructed as x_hat = sum_l c_l[s_l]. Its alternatives under the same prefix
are the other codes of the last codebook, ranked by ||r - c_L[k]||^2 where r = x - sum_{l<L} c_l[s_l] is the
residual entering the last level, recomputed from the *stored* prefix (which may come from the balanced encoder,
so a greedy re-encode would be wrong).

Exact distances are computed in float64 as sums of squared differences: elementwise work plus a reduction over
each row's own contiguous values, so a row's distance never depends on which rows shared its batch.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np
import torch

from . import kmeans as km

# Elements of the (rows, m, d) float64 difference tensor materialised at once (~32 MB).
_EXACT_BLOCK_ELEMS = 4_000_000


def prefix_residual(x: np.ndarray, sid: np.ndarray, codebooks: Sequence[np.ndarray]) -> np.ndarray:
    """r = x - sum_{l < L-1} codebooks[l][sid[:, l]]: (n, d) float32, subtracted level by level in the encoder's
    order. x: (n, d) float32, sid: (n, L) integer codes, codebooks: L arrays (K, d) float32."""
    r = np.array(x, dtype=np.float32, copy=True)
    for level in range(len(codebooks) - 1):
        r -= codebooks[level][sid[:, level]]
    return r


def sq_dist_to_codes(r: np.ndarray, codebook: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """||r_i - codebook[codes[i, j]]||^2 in float64. r: (n, d), codes: (n, m) -> (n, m)."""
    n, m = codes.shape
    d = r.shape[1]
    out = np.empty((n, m), np.float64)
    cb64 = codebook.astype(np.float64)
    step = max(1, _EXACT_BLOCK_ELEMS // max(1, m * d))
    for start in range(0, n, step):
        stop = min(n, start + step)
        diff = r[start:stop, None, :].astype(np.float64) - cb64[codes[start:stop]]
        out[start:stop] = np.square(diff).sum(axis=-1)
    return out


def reconstruction_sq_error(x: np.ndarray, sid: np.ndarray, codebooks: Sequence[np.ndarray]) -> np.ndarray:
    """||x - x_hat||^2 per row (float64), computed as ||r - c_L[s_L]||^2 with r the prefix residual."""
    r = prefix_residual(x, sid, codebooks)
    return sq_dist_to_codes(r, codebooks[-1], sid[:, -1:].astype(np.int64))[:, 0]


def last_level_alternatives(x: np.ndarray, sid: np.ndarray, codebooks: Sequence[np.ndarray], topk: int,
                            block_rows: int = km.DEFAULT_BLOCK_ROWS) -> Tuple[np.ndarray, np.ndarray]:
    """The `m = min(topk, K-1)` nearest last-level codes other than the item's own, under its stored prefix.

    Candidates come from one GEMM-shaped top-(m+1) per block (kernels.kmeans.assign); the item's own code is
    dropped (or, when it is not among them, the farthest candidate), and the rest are re-ranked by their exact
    float64 distance, ties to the lower code. Returns (codes (n, m) int64, sq_dist (n, m) float64), nearest first.
    """
    cb = codebooks[-1]
    k = cb.shape[0]
    m = min(int(topk), k - 1)
    n = x.shape[0]
    if n == 0 or m <= 0:
        return np.empty((n, max(m, 0)), np.int64), np.empty((n, max(m, 0)), np.float64)
    r = prefix_residual(x, sid, codebooks)
    cand, _ = km.assign(torch.from_numpy(r), torch.from_numpy(np.ascontiguousarray(cb)), block_rows=block_rows,
                        topk=m + 1)
    cand = cand.cpu().numpy().reshape(n, m + 1)
    own = sid[:, -1].astype(np.int64)
    drop = cand == own[:, None]
    drop[~drop.any(axis=1), m] = True
    codes = cand[~drop].reshape(n, m)
    dist = sq_dist_to_codes(r, cb, codes)
    order = np.lexsort((codes, dist), axis=-1)
    return np.take_along_axis(codes, order, axis=1), np.take_along_axis(dist, order, axis=1)
