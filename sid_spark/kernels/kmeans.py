"""Nearest-centroid assignment and k-means updates, in torch (CPU or CUDA).

Distances are GEMM-shaped, ``||x||^2 - 2 x C^T + ||c||^2`` (faiss ``distances.cpp``), computed in blocks of a
fixed number of rows: the last block is zero-padded so every row goes through the very same GEMM shape, which
keeps a row's code independent of how many rows shared its Arrow batch (and so of the partitioning).

Codebooks larger than ``code_tile`` codes are also cut into tiles of codes: a block's scores are computed one
(block_rows, code_tile) tile at a time and a running minimum (and second minimum, for the regret) is carried across
the tiles, so the score buffer stays block_rows x code_tile floats whatever K is (``task_memory_bytes`` states the
whole bound). Ties keep the lower code, as one untiled argmin does; K <= code_tile takes the untiled path unchanged.
"""
from __future__ import annotations

import functools
import threading
from contextlib import contextmanager
from typing import Optional, Sequence

import numpy as np
import torch

DEFAULT_BLOCK_ROWS = 4096
# Codes per score tile on CPU: 4096 x 2048 float32 scores are 32 MiB; codebooks up to this size are never tiled.
DEFAULT_CODE_TILE = 2048
# On CUDA (code_tile_for): the widest power-of-two tile up to MAX_CODE_TILE codes whose two score buffers take at
# most 1/CUDA_TILE_SHARE of the device's memory -- one GEMM per block up to K = 16,384 on a 40-80 GB device, where
# a CPU-sized tile would cut it into 8 small GEMMs, each with its own launch and top-k merge.
MAX_CODE_TILE = 16384
CUDA_TILE_SHARE = 32


def code_tile_for(device, block_rows: int = DEFAULT_BLOCK_ROWS, total_memory: Optional[int] = None) -> int:
    """Codes per score tile for `device`: DEFAULT_CODE_TILE on CPU; on CUDA sized from the device's memory (see
    CUDA_TILE_SHARE), never below DEFAULT_CODE_TILE. `total_memory` (bytes) overrides the device's own figure."""
    device = torch.device(device)
    if device.type != "cuda":
        return DEFAULT_CODE_TILE
    if total_memory is None:
        total_memory = torch.cuda.get_device_properties(device).total_memory
    tile = DEFAULT_CODE_TILE
    while tile * 2 <= MAX_CODE_TILE and 2 * 4 * block_rows * tile * 2 <= total_memory // CUDA_TILE_SHARE:
        tile *= 2
    return tile


def as_tensor(a, device: torch.device | str = "cpu", dtype=torch.float32) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a.to(device=device, dtype=dtype)
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32 if dtype == torch.float32 else None)).to(
        device=device, dtype=dtype)


# Row threads: a level trained in one task with fewer slots than cores (Beauty's balanced levels are one slot)
# gives each slot several torch threads, for the kernels whose every output depends on one row, or on one code's
# column, computed the same way whatever the thread count: the GEMMs, row reductions (max, sum, top-k, argmin),
# elementwise work and matrix-vector products (checked against one thread, tests/test_kernels.py). Not the whole-
# tensor sums (torch splits those among threads: a float32 sum of 50,000 values moves in its last bits), which stay
# on the caller's one thread. Per Python thread; 1 (nothing changed) unless row_threads() says otherwise.
_ROW_THREADS = threading.local()


@contextmanager
def row_threads(n: int):
    """Within this Python thread, the row-parallel kernels (distances, assign, residual_encode, the balanced top-2
    and Sinkhorn's sweeps) run on `n` torch threads."""
    before = getattr(_ROW_THREADS, "n", 1)
    set_row_threads(n)
    try:
        yield
    finally:
        _ROW_THREADS.n = before


def set_row_threads(n: int) -> None:
    """row_threads for the rest of this Python thread's life (a pool thread's initializer)."""
    _ROW_THREADS.n = max(1, int(n))


@contextmanager
def rows_parallel():
    """Around a row-parallel kernel: torch's thread count set to row_threads' for its duration."""
    n = getattr(_ROW_THREADS, "n", 1)
    if n <= 1:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def in_row_threads(fn):
    """A row-parallel kernel: runs within rows_parallel()."""
    @functools.wraps(fn)
    def kernel(*args, **kwargs):
        with rows_parallel():
            return fn(*args, **kwargs)
    return kernel


def _blocks(n: int, block_rows: int):
    for start in range(0, n, block_rows):
        yield start, min(start + block_rows, n)


def _padded(x: torch.Tensor, start: int, stop: int, block_rows: int) -> torch.Tensor:
    block = x[start:stop]
    if stop - start == block_rows:
        return block
    pad = torch.zeros((block_rows - (stop - start), x.shape[1]), dtype=x.dtype, device=x.device)
    return torch.cat([block, pad])


def distances(x: torch.Tensor, centroids: torch.Tensor, prices: Optional[torch.Tensor] = None,
              block_rows: int = DEFAULT_BLOCK_ROWS) -> torch.Tensor:
    """(n, K) squared distances (plus per-code price) of every row to every centroid. Use on small n only."""
    out = torch.empty((x.shape[0], centroids.shape[0]), dtype=torch.float32, device=x.device)
    c_sq = (centroids * centroids).sum(1)
    with rows_parallel():
        for start, stop in _blocks(x.shape[0], block_rows):
            xb = _padded(x, start, stop, block_rows)
            d = torch.addmm(c_sq.unsqueeze(0), xb, centroids.T, alpha=-2.0)
            d += (xb * xb).sum(1, keepdim=True)
            if prices is not None:
                d += prices.unsqueeze(0)
            out[start:stop] = d[: stop - start]
    return out


def _argmin_rows(d: torch.Tensor) -> torch.Tensor:
    """Column of each row's minimum; ties go to the lower index (torch and numpy both return the first).

    On CPU this is numpy's argmin, which is SIMD-vectorised along a contiguous row: torch's index-returning CPU
    reductions (min/argmin over dim=1) cost about 4x as much, as much as a third of the GEMM at K=256, D=128.
    """
    if d.device.type == "cpu":
        return torch.from_numpy(np.argmin(d.numpy(), axis=1))
    return torch.argmin(d, dim=1)


def _bias(centroids: torch.Tensor, prices: Optional[torch.Tensor]) -> torch.Tensor:
    """(1, K) term added to -2 x C^T: ||c||^2 (+ price). ||x||^2 is constant per row, so argmin never needs it."""
    c_sq = (centroids * centroids).sum(1)
    if prices is not None:
        c_sq = c_sq + prices
    return c_sq.unsqueeze(0)


def _tiles(k: int, code_tile: int):
    """[(lo, hi)] code ranges of width code_tile (one range when k <= code_tile)."""
    return [(lo, min(lo + code_tile, k)) for lo in range(0, k, code_tile)]


class _Scorer:
    """Scores of one block against one codebook, tile by tile, into buffers allocated once per codebook."""

    def __init__(self, centroids: torch.Tensor, bias: torch.Tensor, block_rows: int, code_tile: int):
        self.cb, self.bias = centroids, bias
        self.tiles = _tiles(centroids.shape[0], code_tile)
        widths = sorted({hi - lo for lo, hi in self.tiles})
        self.buffers = {w: torch.empty((block_rows, w), dtype=torch.float32, device=centroids.device)
                        for w in widths}

    def tile(self, xb: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        out = self.buffers[hi - lo]
        if len(self.tiles) == 1:
            return torch.addmm(self.bias, xb, self.cb.T, alpha=-2.0, out=out)
        return torch.addmm(self.bias[:, lo:hi], xb, self.cb[lo:hi].T, alpha=-2.0, out=out)

    def argmin(self, xb: torch.Tensor):
        """(idx (block_rows,) int64, score (block_rows,) float32 or None when untiled) of each row's best code."""
        if len(self.tiles) == 1:
            return _argmin_rows(self.tile(xb, 0, self.cb.shape[0])), None
        best_i = best_v = None
        for lo, hi in self.tiles:
            scores = self.tile(xb, lo, hi)
            idx = _argmin_rows(scores)
            val = scores.gather(1, idx.unsqueeze(1)).squeeze(1)
            idx = idx + lo
            if best_i is None:
                best_i, best_v = idx, val.clone()
            else:  # strict: on a tie the earlier tile (the lower code) stays
                better = val < best_v
                best_i = torch.where(better, idx, best_i)
                best_v = torch.where(better, val, best_v)
        return best_i, best_v

    def topk(self, xb: torch.Tensor, m: int, topk: int):
        """(values (m, topk), idx (m, topk)) ascending: the tiles' top-k merged into a running top-k. With topk 2
        (the balanced pass's first choice and regret) exactly equal scores go to the lower code first."""
        run_v = run_i = None
        for lo, hi in self.tiles:
            scores = self.tile(xb, lo, hi)[:m]
            if topk == 2:
                v, i = _top2_rows(scores)
            else:
                v, i = torch.topk(scores, min(topk, hi - lo), dim=1, largest=False, sorted=True)
            i = i + lo
            if run_v is not None:  # running entries first: among equal values the lower code comes first
                v, i = torch.cat([run_v, v], 1), torch.cat([run_i, i], 1)
                if topk == 2:  # a stable sort keeps that order among equal values
                    v, pos = torch.sort(v, dim=1, stable=True)
                    v, pos = v[:, :topk], pos[:, :topk]
                else:
                    v, pos = torch.topk(v, topk, dim=1, largest=False, sorted=True)
                i = i.gather(1, pos)
            run_v, run_i = v, i
        return run_v, run_i


def _top2_rows(scores: torch.Tensor):
    """(values (m, 2), idx (m, 2)) of each row's two smallest scores, ascending, the lower code first among equal
    ones (one column: that one). Two row argmins, the first minimum masked in between, so `scores` is overwritten.
    On CPU numpy's SIMD argmin (_argmin_rows): the top-2 then costs about what the GEMM does, where torch.topk cost
    two thirds more than the GEMM (31,250 x 256, d = 128: 56 against 33 ms an assignment of the rows)."""
    first = _argmin_rows(scores)
    v0 = scores.gather(1, first.unsqueeze(1))
    if scores.shape[1] == 1:
        return v0, first.unsqueeze(1)
    scores.scatter_(1, first.unsqueeze(1), float("inf"))
    second = _argmin_rows(scores)
    v1 = scores.gather(1, second.unsqueeze(1))
    return torch.cat([v0, v1], 1), torch.stack([first, second], 1)


@in_row_threads
@torch.no_grad()
def assign(x: torch.Tensor, centroids: torch.Tensor, prices: Optional[torch.Tensor] = None,
           block_rows: int = DEFAULT_BLOCK_ROWS, topk: int = 1, with_dist: bool = True,
           code_tile: Optional[int] = None):
    """Nearest code of every row, by ``||x - c||^2 + price``.

    x: (n, d) float32, centroids: (K, d) float32, prices: (K,) or None.
    Returns (codes (n,) int64, dist (n,) float32) for topk == 1, else ((n, topk), (n, topk)) sorted ascending;
    dist is None when with_dist is False (it costs a pass over x for ||x||^2).
    Ties: with topk 1 and 2 the lower code index wins (see _argmin_rows, _top2_rows). With topk > 2 the order
    among exactly equal scores is torch.topk's, which is deterministic for a row but not always the lower code first
    (rounded test scores show it; a 1M x 128 catalog had 4 such rows at level 1).
    Scores are computed in tiles of code_tile codes when K is larger (exact: the running top-k is merged); by
    default the tile is sized for the device (code_tile_for).
    """
    n, d = x.shape
    code_tile = code_tile or code_tile_for(centroids.device, block_rows)
    scorer = _Scorer(centroids, _bias(centroids, prices), block_rows, code_tile)
    shape = (n,) if topk == 1 else (n, topk)
    codes = torch.empty(shape, dtype=torch.int64, device=x.device)
    dist = torch.empty(shape, dtype=torch.float32, device=x.device) if with_dist else None
    # Every block is copied into one buffer: one GEMM shape and one memory alignment for every row (BLAS may
    # pick its code path by alignment); the last block is zero-padded.
    xb = torch.zeros((block_rows, d), dtype=x.dtype, device=x.device)
    for start, stop in _blocks(n, block_rows):
        m = stop - start
        xb[:m] = x[start:stop]
        if m < block_rows:
            xb[m:] = 0
        if topk == 1:
            idx, best = scorer.argmin(xb)
            idx = idx[:m]
            codes[start:stop] = idx
            if with_dist:
                if best is None:
                    best = scorer.buffers[centroids.shape[0]][:m].gather(1, idx.unsqueeze(1)).squeeze(1)
                else:
                    best = best[:m]
                dist[start:stop] = best + (xb[:m] * xb[:m]).sum(1)
        else:
            best, idx = scorer.topk(xb, m, topk)
            codes[start:stop] = idx
            if with_dist:
                dist[start:stop] = best + (xb[:m] * xb[:m]).sum(1, keepdim=True)
    return codes, dist


def nearest(x: torch.Tensor, centroids: torch.Tensor, prices: Optional[torch.Tensor] = None,
            block_rows: int = DEFAULT_BLOCK_ROWS, code_tile: Optional[int] = None) -> torch.Tensor:
    """(n,) int64 nearest code of every row, as assign() without the distances."""
    return assign(x, centroids, prices, block_rows, with_dist=False, code_tile=code_tile)[0]


@in_row_threads
@torch.no_grad()
def residual_encode(x: torch.Tensor, codebooks: Sequence[torch.Tensor],
                    prices: Optional[Sequence[Optional[torch.Tensor]]] = None,
                    block_rows: int = DEFAULT_BLOCK_ROWS, with_residual: bool = True,
                    code_tile: Optional[int] = None):
    """Greedy residual quantisation through every level.

    One block of rows goes through all levels while it sits in cache: per level one GEMM into a reused score
    buffer, a row argmin, and the chosen centroids gathered and subtracted in place. Each row's arithmetic is that
    of assign() on the level's residual, so a row's codes do not depend on its block (nor on the partitioning).
    Returns (codes (n, L) int64, residual (n, d) float32 left after the last level, or None when with_residual
    is False: encoding needs only the codes, and writing the residual out is a pass over n x d floats).
    """
    n, d = x.shape
    code_tile = code_tile or code_tile_for(x.device, block_rows)
    levels = []
    for level, cb in enumerate(codebooks):
        p = prices[level] if prices is not None else None
        levels.append((cb, _Scorer(cb, _bias(cb, p), block_rows, code_tile)))
    codes = torch.empty((n, len(levels)), dtype=torch.int64, device=x.device)
    r = torch.empty((n, d), dtype=x.dtype, device=x.device) if with_residual else None
    # One buffer for every block: one GEMM shape and one memory alignment for every row (BLAS may pick its code
    # path by alignment); the last block is zero-padded.
    rb = torch.zeros((block_rows, d), dtype=x.dtype, device=x.device)
    shift = torch.empty_like(rb)
    for start, stop in _blocks(n, block_rows):
        m = stop - start
        rb[:m] = x[start:stop]
        if m < block_rows:
            rb[m:] = 0
        for level, (cb, scorer) in enumerate(levels):
            idx = scorer.argmin(rb)[0]
            torch.index_select(cb, 0, idx, out=shift)
            rb -= shift
            codes[start:stop, level] = idx[:m]
        if with_residual:
            r[start:stop] = rb[:m]
    return codes, r


def task_memory_bytes(sizes: Sequence[int], dim: int, block_rows: int = DEFAULT_BLOCK_ROWS,
                      code_tile: int = DEFAULT_CODE_TILE, topk: int = 2, price_entries: int = 0) -> int:
    """Upper bound on the bytes a task's kernels allocate besides its input rows, for codebooks of `sizes` codes
    (every level so far, the one being trained included) of dimension `dim`:

      4 * sum(K_l) * (d + 1)                 codebooks and their ||c||^2 + price rows (float32)
    + 8 * max(K_l) * (d + 1)                 one level's statistics: float64 sums and int64 counts
    + 4 * b * d * 4 + 8 * b * d              block buffers: rows, gathered centres, residual, error term; float64 copy
    + 4 * b * min(max K, T) * 2              score tiles (a full tile and the last, narrower one)
    + 8 * b * (4 * topk + 4)                 running best / second best values and codes, merge buffers
    + 24 * E                                 a balanced level's training (spark.quantize.SlotPricing), E =
                                             price_entries (SLOT_PRICE_ENTRIES = 2^24 there): the priced rows'
                                             residuals, distances and Sinkhorn kernel (3 x 4 E), or in an exact
                                             step the slot's residuals (4 E), the distances of the rows the repair
                                             moves (4 E at most) and their float64 costs and copy (2 x 8 E; the
                                             first choices come from the block's score tiles)

    with b = block_rows and T = code_tile (DEFAULT_CODE_TILE on CPU; on CUDA code_tile_for(device), whose two
    score tiles stay within 1/CUDA_TILE_SHARE of the device's memory): linear in K and d, independent of the
    number of rows, and at K = 16,384, d = 4,096, 3 levels about 1.8 GB on CPU, of which 1.3 GB are the codebooks
    and one level's sums.
    """
    k_sum, k_max, b = int(sum(sizes)), int(max(sizes)), int(block_rows)
    return (4 * k_sum * (dim + 1) + 8 * k_max * (dim + 1) + 4 * b * dim * 4 + 8 * b * dim
            + 4 * b * min(k_max, code_tile) * 2 + 8 * b * (4 * topk + 4) + 24 * int(price_entries))


def reconstruct(codes: torch.Tensor, codebooks: Sequence[torch.Tensor]) -> torch.Tensor:
    """x_hat = sum over levels of c_l[s_l]; codes (n, L)."""
    out = torch.zeros((codes.shape[0], codebooks[0].shape[1]), dtype=torch.float32, device=codebooks[0].device)
    for level, cb in enumerate(codebooks):
        out += cb[codes[:, level]]
    return out


def partial_stats(r: torch.Tensor, codes: torch.Tensor, k: int):
    """Per-code counts (K,) int64, sums (K, d) float64 and the summed squared error term of rows `r`."""
    counts = torch.bincount(codes, minlength=k).to(torch.int64)
    sums = torch.zeros((k, r.shape[1]), dtype=torch.float64, device=r.device)
    sums.index_add_(0, codes, r.to(torch.float64))
    return counts, sums


def kmeans_pp(x: torch.Tensor, k: int, rng: np.random.Generator, trials: Optional[int] = None) -> torch.Tensor:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii 2007; greedy variant as in scikit-learn).

    x: (m, d) float32 with m >= k. Returns (k, d) float32 centroids; draws come from `rng` (seeded by the caller).
    """
    m = x.shape[0]
    if m < k:
        raise ValueError(f"k-means++ needs at least {k} rows, got {m}")
    trials = trials or 2 + int(np.log(k))
    x64 = x.to(torch.float64)
    x_sq = (x64 * x64).sum(1)
    centers = torch.empty((k, x.shape[1]), dtype=torch.float64, device=x.device)
    first = int(rng.integers(m))
    centers[0] = x64[first]
    closest = (x_sq - 2 * x64 @ centers[0] + x_sq[first]).clamp_min_(0)
    for i in range(1, k):
        total = float(closest.sum())
        if total <= 0:  # every row already sits on a centre: take distinct rows in order
            cand = torch.tensor([int(rng.integers(m))], device=x.device)
        else:
            cum = torch.cumsum(closest, 0)
            u = torch.as_tensor(rng.random(trials) * total, dtype=torch.float64, device=x.device)
            cand = torch.searchsorted(cum, u).clamp_(max=m - 1)
        cand_d = (x_sq.unsqueeze(0) - 2 * x64[cand] @ x64.T + x_sq[cand].unsqueeze(1)).clamp_min_(0)
        cand_d = torch.minimum(cand_d, closest.unsqueeze(0))
        best = int(torch.argmin(cand_d.sum(1)))
        centers[i] = x64[cand[best]]
        closest = cand_d[best]
    return centers.to(torch.float32)


def lloyd_update(centroids: torch.Tensor, counts: torch.Tensor, sums: torch.Tensor) -> torch.Tensor:
    """Centre = mean of its cluster; a code with no rows keeps its centre (split_empty repairs it)."""
    out = centroids.clone().to(torch.float64)
    live = counts > 0
    out[live] = sums[live] / counts[live].unsqueeze(1).to(torch.float64)
    return out.to(torch.float32)


def sculley_update(centroids: torch.Tensor, seen: torch.Tensor, counts: torch.Tensor,
                   sums: torch.Tensor):
    """Mini-batch k-means step with per-centre learning rate 1/v_k (Sculley 2010), batched over the mini-batch:
    c_k <- c_k + (sum_k - n_k c_k) / v_k with v_k the running count. Returns (centroids, seen)."""
    seen = seen + counts
    c = centroids.to(torch.float64)
    live = counts > 0
    step = (sums[live] - counts[live].unsqueeze(1).to(torch.float64) * c[live]) / seen[live].unsqueeze(1)
    c = c.clone()
    c[live] += step
    return c.to(torch.float32), seen


def split_empty(centroids: torch.Tensor, counts: torch.Tensor, eps: float = 1e-4):
    """Re-seed every empty code by splitting the largest cluster (faiss ``split_clusters``).

    The big centre c becomes c(1+eps) and c(1-eps) elementwise-perturbed in opposite directions; counts are
    halved between the two so a second empty code splits another cluster. Returns (centroids, counts, n_split).
    """
    c = centroids.clone()
    n = counts.clone().to(torch.float64)
    empty = torch.nonzero(n == 0).flatten().tolist()
    for dead in empty:
        big = int(torch.argmax(n))
        if n[big] <= 1:
            break
        sign = torch.ones_like(c[big])
        sign[1::2] = -1
        delta = eps * sign * (c[big].abs() + eps)
        c[dead] = c[big] + delta
        c[big] = c[big] - delta
        n[dead] = n[big] / 2
        n[big] -= n[dead]
    return c, n, len(empty)


def centroid_shift(old: torch.Tensor, new: torch.Tensor) -> float:
    """Relative squared shift ||new - old||_F^2 / ||old||_F^2 (the stopping criterion)."""
    denom = float((old.double() ** 2).sum()) or 1.0
    return float(((new.double() - old.double()) ** 2).sum()) / denom
