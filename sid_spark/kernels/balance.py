"""Balanced-capacity assignment: per-code prices steer ``argmin_k ||x - c_k||^2 + p_k`` towards equal code sizes.

The capacity-constrained assignment (every code of a level holds N/K items, +-1) is an optimal-transport problem
between items and codes; its dual variables are one price per code. We get them in two steps, all on K-sized
state on the driver:

1. ``DualPrices``: dual ascent on the per-code counts of every training pass, warm-started across iterations
   (training); ``sinkhorn_prices`` solves the entropic problem on an in-memory (m, K) matrix in the log domain
   with epsilon annealing (Cuturi 2013; Schmitzer 2019) for single-process use and reference (its m x K matrix
   is why training no longer uses it: 27 GB at K = 8,192).
2. What prices cannot settle exactly (sampling noise, ties) the exact repair finishes (``exact_assign`` here for
   one process; ``sid_spark.spark.balance`` for Spark): inside every code the items that would lose most by
   moving (largest regret) keep their place up to capacity; the rest go, in rounds, to the nearest code that
   still has room, nearest applicants first.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch


def capacities(n: int, k: int, counts) -> np.ndarray:
    """Target size of each code: floor(n/k), plus one for the n mod k codes in most demand (ties: lower code)."""
    caps = np.full(k, n // k, dtype=np.int64)
    extra = n % k
    if extra:
        order = np.lexsort((np.arange(k), -np.asarray(counts, dtype=np.int64)))
        caps[order[:extra]] += 1
    return caps


def eps_schedule(scale: float, steps: int = 14, factor: float = 0.5) -> list:
    """Annealed entropic regularisation: scale/2, scale/4, ... scale/2^steps. Always from the top: a warm start
    at small epsilon from prices of other centroids converges far too slowly (measured: 6x the overflow)."""
    return [scale * factor ** i for i in range(1, steps + 1)]


def sinkhorn_prices(dist: torch.Tensor, caps: torch.Tensor, iters_per_eps: int = 20, coarse: bool = False):
    """Prices p (K,) such that argmin_k dist_ik + p_k is (nearly) balanced to `caps` on these rows.

    dist: (m, K) squared distances (float64), caps: (K,) target sizes summing to m. Log-domain Sinkhorn:
    f_i = -eps LSE_k((g_k - D_ik)/eps), g_k = eps log b_k - eps LSE_i((f_i - D_ik)/eps); prices are -g.
    `coarse` anneals 4x per step (7 steps) instead of 2x (14): same final epsilon, a third of the work, for the
    solves inside the training loop. Returns (prices float32 numpy, final eps).
    """
    d = dist.to(torch.float64)
    scale = float(d.mean()) or 1.0
    g = torch.zeros(d.shape[1], dtype=torch.float64, device=d.device)
    logb = torch.log(torch.as_tensor(caps, dtype=torch.float64, device=d.device).clamp_min(1e-12))
    schedule = eps_schedule(scale, 7, 0.25) if coarse else eps_schedule(scale)
    for eps in schedule:
        for _ in range(iters_per_eps):
            f = -eps * torch.logsumexp((g.unsqueeze(0) - d) / eps, 1)
            g = eps * logb - eps * torch.logsumexp((f.unsqueeze(1) - d) / eps, 0)
    p = -g
    return (p - p.mean()).to(torch.float32).cpu().numpy(), schedule[-1]


def rank_within(groups: np.ndarray, keys: Sequence[np.ndarray], k: int) -> np.ndarray:
    """Rank (0-based) of each row inside its group, ordered by `keys` (last key most significant, as lexsort)."""
    order = np.lexsort((*keys, groups))
    sorted_groups = groups[order]
    starts = np.searchsorted(sorted_groups, np.arange(k))
    rank = np.empty(len(groups), dtype=np.int64)
    rank[order] = np.arange(len(groups)) - starts[sorted_groups]
    return rank


def exact_assign(dist: torch.Tensor, prices: Optional[np.ndarray], tie: np.ndarray, caps: Optional[np.ndarray] = None,
                 max_rounds: int = 64):
    """Single-process exact balanced assignment (the same algorithm the Spark path runs, used on small data and
    as its reference). dist: (n, K); tie: (n,) int64 stable hashes. Returns (codes (n,) int64, rounds)."""
    n, k = dist.shape
    adj = dist.to(torch.float64) + (0 if prices is None else torch.as_tensor(prices, dtype=torch.float64))
    top2 = torch.topk(adj, 2, dim=1, largest=False)
    first = top2.indices[:, 0].cpu().numpy()
    regret = (top2.values[:, 1] - top2.values[:, 0]).cpu().numpy()
    if caps is None:
        caps = capacities(n, k, np.bincount(first, minlength=k))
    rank = rank_within(first, (np.arange(n), tie, -regret), k)
    codes = np.where(rank < caps[first], first, -1)
    free = caps - np.bincount(first[codes >= 0], minlength=k)
    rounds = 0
    while (codes < 0).any():
        idx = np.nonzero(codes < 0)[0]
        if rounds >= max_rounds:  # global slot fallback: leftovers in hash order fill the remaining room
            order = idx[np.lexsort((idx, tie[idx]))]
            codes[order] = np.repeat(np.arange(k), np.maximum(free, 0))[: len(order)]
            break
        rounds += 1
        a = adj[idx].clone()
        a[:, torch.from_numpy(free <= 0)] = float("inf")
        best = a.min(1)
        choice, cost = best.indices.cpu().numpy(), best.values.cpu().numpy()
        r = rank_within(choice, (idx, tie[idx], cost), k)
        ok = r < free[choice]
        codes[idx[ok]] = choice[ok]
        free -= np.bincount(choice[ok], minlength=k)
    return codes, rounds


class DualPrices:
    """Prices of one balanced level during training, by dual ascent on the per-code counts that every
    mini-batch pass returns anyway: p_k += step * mse * log((n_k + 1) / (n/K + 1)), centred, warm-started from
    one iteration to the next. K-sized state and O(K) work on the driver per iteration, no extra pass over the
    data: the executors' assignment under the current prices is the (sub)gradient of the transport dual.

    The step is relative to the level's mean squared error so it does not depend on the data's scale; 0.03 is
    the largest that stayed stable on Beauty (0.1 diverged), and the exact repair of the encode absorbs what
    the prices leave unbalanced."""

    def __init__(self, k: int, step: float = 0.03):
        self.k, self.step = k, step
        self.p = np.zeros(k, np.float64)

    def update(self, counts: np.ndarray, rows: int, mse: float) -> np.ndarray:
        target = rows / self.k
        self.p += self.step * mse * np.log((np.asarray(counts, np.float64) + 1.0) / (target + 1.0))
        self.p -= self.p.mean()
        return self.prices

    @property
    def prices(self) -> np.ndarray:
        return self.p.astype(np.float32)


class SinkhornBalancer:
    """Prices for one balanced level during training, solved on the driver's seeding sample each iteration, so
    the centres fit balanced clusters (Algorithm 1's semantics: a centre is the mean of its balanced cluster)."""

    def __init__(self, sample: torch.Tensor, block_rows: int = 4096):
        self.sample = sample
        self.block_rows = block_rows

    def prices(self, centroids: torch.Tensor, final: bool = False) -> np.ndarray:
        from .kmeans import distances

        d = distances(self.sample, centroids, block_rows=self.block_rows)
        m, k = d.shape
        caps = torch.full((k,), m / k, dtype=torch.float64)
        return sinkhorn_prices(d, caps, 20 if final else 8, coarse=not final)[0]
