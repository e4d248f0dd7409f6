"""Balanced-capacity assignment: per-code prices steer ``argmin_k ||x - c_k||^2 + p_k`` towards equal code sizes.

The capacity-constrained assignment (every code of a level holds N/K items, +-1) is an optimal-transport problem
between items and codes; its dual variables are one price per code. We get them in two steps:

1. ``sinkhorn_prices`` solves the entropic problem on an (m, K) distance matrix in the log domain with epsilon
   annealing (Cuturi 2013; Schmitzer 2019). Training runs it on the executors, one slot of the mini-batch per
   task with m bounded (sid_spark.spark.quantize.SlotPricing), and averages the slots' K-sized prices.
2. What prices cannot settle exactly (sampling noise, ties) the exact repair finishes (``exact_assign`` here for
   one process; ``sid_spark.spark.balance`` for Spark): inside every code the items that would lose most by
   moving (largest regret) keep their place up to capacity; the rest go, in rounds, to the nearest code that
   still has room, nearest applicants first.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from . import kmeans as km


def capacities(n: int, k: int, counts) -> np.ndarray:
    """Target size of each code: floor(n/k), plus one for the n mod k codes in most demand (ties: lower code)."""
    caps = np.full(k, n // k, dtype=np.int64)
    extra = n % k
    if extra:
        order = np.lexsort((np.arange(k), -np.asarray(counts, dtype=np.int64)))
        caps[order[:extra]] += 1
    return caps


def eps_schedule(scale: float, steps: int = 14, factor: float = 0.5) -> list:
    """Annealed entropic regularisation: scale/2, scale/4, ... scale/2^steps."""
    return [scale * factor ** i for i in range(1, steps + 1)]


# Bytes of the Sinkhorn kernel one block of a sweep reads (a few MiB: stays in cache between its two products).
SWEEP_BLOCK_BYTES = 4 << 20


def sweep_block_rows(k: int) -> int:
    return max(1, SWEEP_BLOCK_BYTES // (4 * k))


def sinkhorn_prices(dist: torch.Tensor, caps: torch.Tensor, iters_per_eps=20, coarse: bool = False,
                    dtype=torch.float32, omega: float = 1.0):
    """Prices p (K,) such that argmin_k dist_ik + p_k is (nearly) balanced to `caps` on these rows.

    dist: (m, K) squared distances, caps: (K,) target sizes summing to m (every row has mass 1). Entropic optimal
    transport by Sinkhorn with epsilon annealing, stabilised by absorption (Schmitzer 2019): at each epsilon the
    code potentials g are absorbed into the kernel M_ik = exp((f_i + g_k - D_ik) / eps), with f_i the row
    log-sum-exp (so M's rows sum to 1 and nothing underflows; their maximum is taken out before the
    exponential), then `iters_per_eps` scaling sweeps (an int, or one count per epsilon)
    v = b / M^T u, u = 1 / M v -- two matrix-vector products each -- and g += eps log v. The same iterates as
    log-domain Sinkhorn at one exponential per entry per epsilon instead of two per sweep (15-60x faster).
    `omega` > 1 over-relaxes the code scalings after each epsilon's first sweep, v <- v^(1 - omega) (b / M^T u)^omega
    (Thibault et al. 2017, "Overrelaxed Sinkhorn-Knopp"): at small epsilon, where plain sweeps crawl, 12 sweeps at
    1.8 leave the prices nearer the converged ones than 20 plain sweeps (see quantize.FINAL_OMEGA).
    `coarse` anneals 4x per step (7 steps) instead of 2x (14): same final epsilon, for the solves inside the
    training loop; always from the top (a warm start at small epsilon from the previous iteration's prices
    diverged on Beauty: a level-2 code of 4,937 items). Returns (prices float32 numpy, centred; final eps).
    Memory: one (m, K) matrix of `dtype` besides `dist`.
    """
    d = dist.to(dtype)
    m, k = d.shape
    scale = float(d.mean()) or 1.0
    g = torch.zeros(k, dtype=dtype, device=d.device)
    b = torch.as_tensor(caps, device=d.device).to(dtype)
    schedule = eps_schedule(scale, 7, 0.25) if coarse else eps_schedule(scale)
    kernel = torch.empty_like(d)
    # Rows in cache-sized blocks: a sweep's two products (u = 1 / M v, then M^T u) read each block once from
    # memory instead of the whole matrix twice; M^T u accumulates block after block in row order, as one product
    # over the whole matrix does (the same prices, bit for bit, on the cases tried).
    rows_per_block = sweep_block_rows(k)
    blocks = [slice(a, a + rows_per_block) for a in range(0, m, rows_per_block)]
    s = torch.zeros(k, dtype=dtype, device=d.device)
    with km.rows_parallel():  # the sweeps are row-parallel (see kernels.kmeans.row_threads); the scale above is not
        for step, eps in enumerate(schedule):
            for sweep in range(iters_per_eps if isinstance(iters_per_eps, int) else iters_per_eps[step]):
                s.zero_()
                for rows in blocks:
                    kr = kernel[rows]
                    if sweep == 0:  # the kernel, its rows' normalisation folded into the first scaling
                        torch.add(g.unsqueeze(0) / eps, d[rows], alpha=-1.0 / eps, out=kr)
                        # Exponents below -87 are clamped (exp: 1.6e-38, the smallest normal float32 is 1.2e-38):
                        # far down the row, whose maximum is exp(0) = 1, they would be subnormal or zero anyway, and
                        # an exponential that underflows takes a slow path (9 ns an entry against 0.3 here: 80% of a
                        # solve's time before). amax: the row maxima alone (max(1) also finds their indices: 28
                        # against 19 ms a kernel of 31,250 x 256).
                        kr.sub_(torch.amax(kr, 1, keepdim=True)).clamp_(min=-87.0).exp_()
                        s.addmv_(kr.T, 1.0 / kr.sum(1))
                    else:
                        s.addmv_(kr.T, 1.0 / (kr @ v).clamp_min(1e-30))
                step = (b / s.clamp_min(1e-30)).clamp_max(1e30)
                relax = sweep > 0 and omega != 1.0
                v = (v.pow(1.0 - omega) * step.pow(omega)).clamp(1e-30, 1e30) if relax else step
            g = g + eps * torch.log(v)
    del kernel
    p = -g.to(torch.float64)
    return (p - p.mean()).to(torch.float32).cpu().numpy(), schedule[-1]


def rank_within(groups: np.ndarray, keys: Sequence[np.ndarray], k: int) -> np.ndarray:
    """Rank (0-based) of each row inside its group, ordered by `keys` (last key most significant, as lexsort)."""
    order = np.lexsort((*keys, groups))
    sorted_groups = groups[order]
    starts = np.searchsorted(sorted_groups, np.arange(k))
    rank = np.empty(len(groups), dtype=np.int64)
    rank[order] = np.arange(len(groups)) - starts[sorted_groups]
    return rank


class PricedDistances:
    """dist + prices in float64, row block by row block: what ``dist.to(float64) + prices`` holds, without the
    (n, K) float64 matrix (8 n K bytes, and the page faults of allocating it: two thirds of an exact training
    step's assignment at 31,250 x 256). Indexing with rows gives those rows' costs, as repair() reads them."""

    def __init__(self, dist: torch.Tensor, prices: Optional[np.ndarray]):
        self.dist = dist
        self.shape = dist.shape
        self.prices = None if prices is None else torch.as_tensor(prices, dtype=torch.float64, device=dist.device)

    def __getitem__(self, rows) -> torch.Tensor:
        rows = torch.as_tensor(rows, device=self.dist.device) if isinstance(rows, np.ndarray) else rows
        costs = self.dist[rows].to(torch.float64)
        if self.prices is not None:
            costs += self.prices
        return costs


@km.in_row_threads
def top2(costs: PricedDistances, block_rows: int = 4096):
    """(first choice (n,) int64, regret (n,) float64: second-best cost minus best) of every row, block by block
    (torch.topk is row-wise: the same as on the whole matrix)."""
    n = costs.shape[0]
    first, regret = np.empty(n, np.int64), np.empty(n, np.float64)
    for start in range(0, n, block_rows):
        best = torch.topk(costs[slice(start, start + block_rows)], 2, dim=1, largest=False)
        first[start:start + block_rows] = best.indices[:, 0].cpu().numpy()
        regret[start:start + block_rows] = (best.values[:, 1] - best.values[:, 0]).cpu().numpy()
    return first, regret


def exact_assign(dist: torch.Tensor, prices: Optional[np.ndarray], tie: np.ndarray, caps: Optional[np.ndarray] = None,
                 max_rounds: int = 64):
    """Single-process exact balanced assignment (the same algorithm the Spark path runs, used on small data and
    as its reference). dist: (n, K); tie: (n,) int64 stable hashes. Returns (codes (n,) int64, rounds)."""
    adj = PricedDistances(dist, prices)
    codes, free = keep_first_choices(*top2(adj), tie, dist.shape[1], caps)
    return repair(adj, tie, free, max_rounds, codes)


def keep_first_choices(first: np.ndarray, regret: np.ndarray, tie: np.ndarray, k: int,
                       caps: Optional[np.ndarray] = None):
    """The first step of the exact assignment: inside every code the rows that would lose most by moving (largest
    regret, then tie, then row) keep their first choice up to the code's capacity (`caps`, or capacities() from
    the first choices). Returns (codes (n,) int64, -1 for the rows the repair places; free room per code)."""
    n = len(first)
    if caps is None:
        caps = capacities(n, k, np.bincount(first, minlength=k))
    rank = rank_within(first, (np.arange(n), tie, -regret), k)
    codes = np.where(rank < caps[first], first, -1)
    return codes, caps - np.bincount(first[codes >= 0], minlength=k)


def exact_assign_rows(r: torch.Tensor, cb: torch.Tensor, prices: Optional[np.ndarray], tie: np.ndarray,
                      block_rows: int = km.DEFAULT_BLOCK_ROWS, max_rounds: int = 64):
    """exact_assign of the rows `r` (n, d) to the codes `cb` (K, d) under `prices`, ranked as the balanced encode
    ranks them (sid_spark.spark.balance): first choices and regrets from km.assign's top-2 (one GEMM per block, the
    float32 costs never held as an (n, K) matrix), then the repair on the distances of only the rows that lose
    their first choice. The repair sees those rows in the same order as exact_assign's would (their positions keep
    their order), so only the first choices' arithmetic differs from exact_assign's dense float64 costs.
    Returns (codes (n,) int64, rounds, dist (n,) float64: each row's squared distance to its code, no price)."""
    k = cb.shape[0]
    p = None if prices is None else torch.as_tensor(prices, dtype=torch.float32, device=r.device)
    best, cost = km.assign(r, cb, p, block_rows, topk=2)
    first = best[:, 0].cpu().numpy()
    cost = cost.to(torch.float64).cpu().numpy()
    codes, free = keep_first_choices(first, cost[:, 1] - cost[:, 0], tie, k)
    dist = cost[:, 0] - (0.0 if prices is None else np.asarray(prices, np.float64)[first])
    moved = np.nonzero(codes < 0)[0]
    rounds = 0
    if len(moved):
        near = km.distances(r[torch.from_numpy(moved).to(r.device)], cb, block_rows=block_rows)
        codes[moved], rounds = repair(PricedDistances(near, prices), tie[moved], free, max_rounds)
        dist[moved] = near.gather(1, torch.from_numpy(codes[moved]).to(near.device).unsqueeze(1)).squeeze(1) \
            .to(torch.float64).cpu().numpy()
    return codes, rounds, dist


def repair(adj, tie: np.ndarray, free: np.ndarray, max_rounds: int = 64,
           codes: Optional[np.ndarray] = None):
    """The repair rounds: rows without a code (codes < 0; all rows when `codes` is None) go, round after round, to
    their nearest code (under adj = dist + prices) that still has room in `free`, nearest applicants first (cost,
    then `tie`, then row index); after `max_rounds` rounds the leftovers fill the remaining room in (tie, index)
    order. Ties between codes go to the lower code. `adj`: an (n, K) float64 tensor or PricedDistances (rows are
    read by index). The costs of the rows to place are read once, as float64; each round keeps the rows still
    without a code and masks the codes that filled up (a code never regains room), so a round costs one pass over
    what is left. Returns (codes (n,) int64, rounds)."""
    n, k = adj.shape
    codes = np.full(n, -1, np.int64) if codes is None else codes
    free = np.asarray(free, np.int64).copy()
    idx = np.nonzero(codes < 0)[0]
    rounds = 0
    if not len(idx):
        return codes, rounds
    a = np.ascontiguousarray(adj[idx].cpu().numpy(), dtype=np.float64)  # rows gathered by index: a copy of them
    full = free <= 0
    a[:, full] = np.inf
    while len(idx):
        if rounds >= max_rounds:  # global slot fallback: leftovers in hash order fill the remaining room
            order = idx[np.lexsort((idx, tie[idx]))]
            codes[order] = np.repeat(np.arange(k), np.maximum(free, 0))[: len(order)]
            break
        rounds += 1
        choice = np.argmin(a, axis=1)  # the first minimum: ties to the lower code
        cost = a[np.arange(len(idx)), choice]
        r = rank_within(choice, (idx, tie[idx], cost), k)
        ok = r < free[choice]
        codes[idx[ok]] = choice[ok]
        free -= np.bincount(choice[ok], minlength=k)
        left = ~ok
        idx, a = idx[left], a[left]
        filled = (free <= 0) & ~full
        if filled.any():
            a[:, filled] = np.inf
            full |= filled
    return codes, rounds
