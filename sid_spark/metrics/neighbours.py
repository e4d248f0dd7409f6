"""Blocked top-k neighbour search over one partition's items, in torch (no Spark).

Two rankings of the catalog for every query item q, both excluding q itself:
- "embedding": by cosine similarity cos(q, x);
- "sid": by the length of the SID prefix x shares with q (longer first), ties broken by cos(q, x).

Keys are float64: embedding key = cos, SID key = 4 * prefix_len + cos (cos lies in [-1, 1], so the prefix
length always dominates and the float32 similarity is kept exactly). Items with equal keys are ordered by the
stable item hash: the key carries -1e-13 * hash/2^64, far below float32's resolution of a similarity near its
top ranks. Blocks are zero-padded to fixed shapes (as in kernels/kmeans.py) so every (item, query) pair goes
through the same GEMM whatever the partitioning.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

EMBEDDING, SID = 0, 1
RANKINGS = {EMBEDDING: "embedding", SID: "sid"}
TIE_EPS = 1e-13
PREFIX_WEIGHT = 4.0


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (a zero row stays zero): cosine similarity becomes a dot product."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norm, 1e-12)).astype(np.float32)


def hash_fraction(hashes: np.ndarray) -> np.ndarray:
    """Signed 64-bit item hashes -> [0, 1) (the unsigned value / 2^64): a smaller hash wins a tie."""
    return np.asarray(hashes, dtype=np.int64).view(np.uint64).astype(np.float64) / 2.0 ** 64


def prefix_length(x_codes: torch.Tensor, q_codes: torch.Tensor) -> torch.Tensor:
    """(n, L) x (m, L) codes -> (n, m) length of the common prefix (0..L); one loop over levels, not items."""
    run = torch.ones((x_codes.shape[0], q_codes.shape[0]), dtype=torch.bool, device=x_codes.device)
    out = torch.zeros(run.shape, dtype=torch.int64, device=x_codes.device)
    for level in range(x_codes.shape[1]):
        run &= x_codes[:, level:level + 1] == q_codes[:, level].unsqueeze(0)
        out += run
    return out


class NeighbourSearch:
    """Running top-k of both rankings for a fixed block of queries, fed one matrix of catalog items at a time.

    q: (m, d) float32 unit rows, q_ids: (m,) int64, q_codes: (m, L) int64 SIDs of the queries.
    """

    def __init__(self, q: np.ndarray, q_ids: np.ndarray, q_codes: np.ndarray, k: int, block_rows: int = 4096,
                 query_tile: int = 1024, device: Optional[torch.device] = None):
        self.device = device or torch.device("cpu")
        self.k, self.block_rows, self.query_tile = int(k), int(block_rows), int(query_tile)
        self.m = len(q_ids)
        self.q = torch.from_numpy(np.ascontiguousarray(q, np.float32)).to(self.device)
        self.q_ids = torch.from_numpy(np.asarray(q_ids, np.int64)).to(self.device)
        self.q_codes = torch.from_numpy(np.asarray(q_codes, np.int64)).to(self.device)
        shape = (2, self.k, self.m)
        self.keys = torch.full(shape, -np.inf, dtype=torch.float64, device=self.device)
        self.ids = torch.full(shape, -1, dtype=torch.int64, device=self.device)

    def add(self, x: np.ndarray, ids: np.ndarray, hashes: np.ndarray, codes: np.ndarray) -> None:
        """x: (n, d) float32 unit rows, ids: (n,) int64, hashes: (n,) int64 item hashes, codes: (n, L) SIDs."""
        n = len(ids)
        dev = self.device
        x = torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(dev)
        ids_t = torch.from_numpy(np.asarray(ids, np.int64)).to(dev)
        tie = torch.from_numpy(hash_fraction(hashes) * TIE_EPS).to(dev)
        codes_t = torch.from_numpy(np.asarray(codes, np.int64)).to(dev)
        for start in range(0, n, self.block_rows):
            stop = min(start + self.block_rows, n)
            xb = _pad_rows(x[start:stop], self.block_rows)
            for qs in range(0, self.m, self.query_tile):
                qe = min(qs + self.query_tile, self.m)
                sim = (xb @ _pad_rows(self.q[qs:qe], self.query_tile).T)[: stop - start, : qe - qs]
                sim = sim.to(torch.float64) - tie[start:stop].unsqueeze(1)
                not_self = ids_t[start:stop].unsqueeze(1) != self.q_ids[qs:qe].unsqueeze(0)
                emb = torch.where(not_self, sim, torch.full_like(sim, -np.inf))
                plen = prefix_length(codes_t[start:stop], self.q_codes[qs:qe]).to(torch.float64)
                sid = torch.where(not_self, PREFIX_WEIGHT * plen + sim, torch.full_like(sim, -np.inf))
                block_ids = ids_t[start:stop].unsqueeze(1).expand(-1, qe - qs)
                for r, key in ((EMBEDDING, emb), (SID, sid)):
                    self._merge(r, qs, qe, key, block_ids)

    def _merge(self, r: int, qs: int, qe: int, key: torch.Tensor, block_ids: torch.Tensor) -> None:
        keys = torch.cat([self.keys[r, :, qs:qe], key])
        ids = torch.cat([self.ids[r, :, qs:qe], block_ids])
        top, idx = torch.topk(keys, self.k, dim=0, largest=True, sorted=False)
        self.keys[r, :, qs:qe] = top
        self.ids[r, :, qs:qe] = torch.gather(ids, 0, idx)

    def result(self):
        """Flat arrays (ranking, query id, item id, key) of every retained candidate (finite key)."""
        keys = self.keys.cpu()
        live = torch.isfinite(keys)
        r, _, j = torch.nonzero(live, as_tuple=True)
        return (r.numpy().astype(np.int8), self.q_ids.cpu()[j].numpy(), self.ids.cpu()[live].numpy(),
                keys[live].numpy())


def _pad_rows(a: torch.Tensor, rows: int) -> torch.Tensor:
    if a.shape[0] == rows:
        return a
    pad = torch.zeros((rows - a.shape[0], a.shape[1]), dtype=a.dtype, device=a.device)
    return torch.cat([a, pad])


def brute_force_ranks(x: np.ndarray, ids: np.ndarray, hashes: np.ndarray, codes: np.ndarray, q_id: int):
    """Reference (tests, tiny catalogs): the full embedding and SID orderings of the catalog for query `q_id`,
    as lists of item ids, computed one query at a time in float64."""
    xn = normalise(x).astype(np.float64)
    pos = int(np.nonzero(np.asarray(ids) == q_id)[0][0])
    sim = xn @ xn[pos]
    plen = np.zeros(len(ids), np.int64)
    run = np.ones(len(ids), bool)
    for level in range(codes.shape[1]):
        run &= codes[:, level] == codes[pos, level]
        plen += run
    others = np.array([i for i in range(len(ids)) if i != pos])
    h = hash_fraction(hashes)
    emb = others[np.lexsort((h[others], -sim[others]))]
    sid = others[np.lexsort((h[others], -sim[others], -plen[others]))]
    return [int(ids[i]) for i in emb], [int(ids[i]) for i in sid]
