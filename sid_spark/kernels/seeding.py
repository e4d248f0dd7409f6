"""Sharded k-means++ seeding: the blocked D^2 sampling k-means++ (the blocked seeding of 2026-12-03), with the seeding
rows split into shards that never meet (on the executors, one task a shard) and only a round's candidates exchanged.

Every round, each shard first takes the centres the round before chose (one GEMM updates its rows' distance to
the nearest centre), then offers its best `c` candidates for the next centres; the merge keeps the best `c` of all
offers. A candidate's rank is (live first, then Efraimidis-Spirakis key log(u) / w, largest first, then global row
index): w is the row's squared distance to the nearest centre so far, so the round draws `c` rows without
replacement with probability proportional to w (D^2 sampling, as k-means|| oversamples; Bahmani et al. 2012),
and rows that already sit on a centre (w = 0) are taken, by their u, only when fewer than `c` rows have weight.
u comes from a counter-based hash of (key, round, global row index), not from a stream, so a row draws the same u
whatever shard holds it: the shards' offers and the merge depend on the rows alone, and the seeding is the same
for any number of shards up to the GEMM's rounding of a row's distance. Round 0 chooses the first centre uniformly
(the row of largest u). Pure numpy/torch, no Spark: `seed_sharded` runs the protocol in one process.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np
import torch

from . import kmeans as km

# Rounds of the blocked seeding (seed_sharded): after the first centre each draws ceil((k - 1) / SEED_ROUNDS)
# centres at once. On the executors every round is one Spark job (~0.35 s of scheduling and cached-block reads on
# local[2] besides its GEMM), so fewer rounds cost less and the flops do not change. Quality (single process, 2
# shards, rel. error after 10 Lloyd iterations, mean of three seeds): Beauty 12,101 x 384, K = 1,024: 64 rounds
# 0.2804, 16 rounds 0.2799, 8 rounds 0.2798, sequential k-means++ with one candidate 0.2817; K = 2,048: 0.2220,
# 0.2224, 0.2221 against 0.2221. Synthetic 200,000 x 256 at K = 8,192 (51,200 seeding rows, 3 Lloyd iterations
# over all rows): 0.2455 for 64, 32 and 16 rounds, 0.2455-0.2456 for 8 (2026-12-07). Before the executors, the
# driver's 64 rounds against sequential k-means++: synthetic 60,000 x 256, K = 2,048 0.2603 against 0.2616.
SEED_ROUNDS = 16


def seed_block(k: int, rounds: int = SEED_ROUNDS) -> int:
    """Centres the seeding draws per round (after the first)."""
    return max(1, -(-(k - 1) // rounds))


_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, elementwise on uint64."""
    z = z.copy()
    z ^= z >> np.uint64(30)
    z *= _M1
    z ^= z >> np.uint64(27)
    z *= _M2
    z ^= z >> np.uint64(31)
    return z


def seed_key(seed: int, level: int) -> int:
    """A 64-bit key for one level's seeding draws."""
    with np.errstate(over="ignore"):
        z = _mix(np.array([(int(seed) & 0xFFFFFFFFFFFFFFFF)], np.uint64) + _GOLDEN)
        return int(_mix(z ^ np.array([int(level) & 0xFFFFFFFF], np.uint64))[0])


def uniforms(key: int, round_: int, rows: np.ndarray) -> np.ndarray:
    """(n,) float64 in (0, 1): one uniform per global row index in `rows` for this round, from the key alone."""
    with np.errstate(over="ignore"):
        z = np.asarray(rows, np.uint64) * _GOLDEN
        z ^= _mix(np.array([key], np.uint64) + np.uint64(round_) * _M2)
        z = _mix(z + _GOLDEN)
    return ((z >> np.uint64(11)).astype(np.float64) + 0.5) / float(2 ** 53)


@dataclass
class Offer:
    """A shard's best candidates for a round: rank columns and the rows themselves, (c, d) float32."""
    live: np.ndarray  # (c,) bool: the row has weight (distance > 0)
    key: np.ndarray  # (c,) float64: log(u) / w for live rows, -u for the others (larger ranks first)
    index: np.ndarray  # (c,) int64 global row index
    rows: np.ndarray  # (c, d) float32

    @staticmethod
    def merge(offers: Sequence["Offer"], c: int) -> "Offer":
        """The best c of all offers (live first, larger key, smaller index): the same whatever the shards."""
        live = np.concatenate([o.live for o in offers])
        key = np.concatenate([o.key for o in offers])
        index = np.concatenate([o.index for o in offers])
        order = np.lexsort((index, -key, ~live))[:c]
        rows = np.concatenate([o.rows for o in offers])[order]
        return Offer(live[order], key[order], index[order], rows)


class Shard:
    """One shard's seeding rows x: (n, d) float32 with global row indices start .. start + n - 1, and their
    distance to the nearest centre chosen so far. Working set besides x: 4 n c (one round's distance block) +
    8 n 4 bytes."""

    def __init__(self, x: torch.Tensor, start: int):
        self.x = x.to(torch.float32)
        self.start = int(start)
        self.index = np.arange(self.start, self.start + len(self.x), dtype=np.int64)
        self.closest = np.full(len(self.x), np.inf)
        self.taken = np.zeros(len(self.x), dtype=bool)

    def take(self, chosen: Optional[Offer]) -> None:
        """The centres the merge chose last round: every row's distance to the nearest centre is updated (one
        (n, c) block of kmeans.distances), and the chosen rows this shard holds are marked taken."""
        if chosen is None or not len(chosen.index):
            return
        mine = (chosen.index >= self.start) & (chosen.index < self.start + len(self.x))
        self.taken[chosen.index[mine] - self.start] = True
        if not len(self.x):
            return
        cb = torch.from_numpy(np.ascontiguousarray(chosen.rows)).to(self.x.device)
        d = km.distances(self.x, cb).clamp_min_(0).min(1).values
        np.minimum(self.closest, d.cpu().numpy().astype(np.float64), out=self.closest)
        self.closest[self.taken] = 0.0  # a centre's own distance, whatever the rounding

    def offer(self, key: int, round_: int, c: int) -> Offer:
        """This shard's best c candidates for the round (rows not taken yet)."""
        u = uniforms(key, round_, self.index)
        free = ~self.taken
        live = free & (self.closest > 0)
        w = np.where(np.isinf(self.closest), 1.0, self.closest)  # round 0: no centre yet, every row alike
        with np.errstate(divide="ignore", invalid="ignore"):
            rank = np.where(live, np.log(u) / w, -u)
        pick = _best(np.flatnonzero(live), rank, c)
        if len(pick) < c:  # fewer live rows than the round takes: the rest by u among the free ones
            pick = np.concatenate([pick, _best(np.flatnonzero(free & ~live), rank, c - len(pick))])
        order = pick[np.lexsort((self.index[pick], -rank[pick], ~live[pick]))]
        return Offer(live[order], rank[order], self.index[order], self.x[torch.from_numpy(order)].cpu().numpy())


def _best(idx: np.ndarray, rank: np.ndarray, c: int) -> np.ndarray:
    """The c entries of idx (ascending) with the largest rank, ties to the smaller index, in O(len(idx))."""
    if len(idx) <= c:
        return idx
    score = rank[idx]
    t = np.partition(score, len(score) - c)[len(score) - c]  # the c-th largest
    above, tied = idx[score > t], idx[score == t]
    return np.concatenate([above, tied[: c - len(above)]])


def rounds_plan(k: int, rounds: int = SEED_ROUNDS) -> List[int]:
    """Centres chosen per round: 1 (the first, uniform), then seed_block(k) until k."""
    plan, done, block = [1], 1, seed_block(k, rounds)
    while done < k:
        plan.append(min(block, k - done))
        done += plan[-1]
    return plan


def seed_sharded(shards: Sequence[Shard], k: int, key: int, rounds: int = SEED_ROUNDS) -> np.ndarray:
    """The whole protocol in one process: (k, d) float32 centres, rows of the shards."""
    chosen, centres = None, []
    for r, c in enumerate(rounds_plan(k, rounds)):
        offers = []
        for shard in shards:
            shard.take(chosen)
            offers.append(shard.offer(key, r, c))
        chosen = Offer.merge(offers, c)
        centres.append(chosen.rows)
    return np.concatenate(centres)[:k]


def kmeans_pp_sharded(x: torch.Tensor, k: int, key: int, shards: int = 1, rounds: int = SEED_ROUNDS) -> torch.Tensor:
    """seed_sharded over x: (m, d) cut into `shards` shards of consecutive rows; (k, d) float32 rows of x."""
    m = x.shape[0]
    if m < k:
        raise ValueError(f"k-means++ needs at least {k} rows, got {m}")
    bounds = np.linspace(0, m, shards + 1).round().astype(np.int64)
    parts = [Shard(x[bounds[s]:bounds[s + 1]], int(bounds[s])) for s in range(shards)]
    return torch.from_numpy(seed_sharded(parts, k, key, rounds))
