"""Residual k-means on the executors: per-code statistics for training and greedy (price-adjusted) encoding, as
kernels of the one runner (`runner.map_blocks` / `runner.aggregate_blocks`). The driver only ever sees K-sized
aggregates.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from pyspark.sql import DataFrame
from pyspark.sql import types as T

from ..kernels import kmeans as km
from .prepare import VEC
from .runner import aggregate_blocks, map_blocks, task_setup


@dataclass(frozen=True)
class QuantizerState:
    """What a partition needs to quantise: the codebooks (and prices) of the levels trained so far."""

    codebooks: tuple  # of (K, d) float32 numpy arrays
    prices: tuple  # of (K,) float32 numpy arrays or None, one per codebook
    block_rows: int = km.DEFAULT_BLOCK_ROWS
    device: str = "auto"

    def tensors(self, dev: torch.device):
        cbs = [km.as_tensor(c, dev) for c in self.codebooks]
        prs = [None if p is None else km.as_tensor(p, dev) for p in self.prices]
        return cbs, prs


@dataclass
class LevelStats:
    counts: np.ndarray  # (K,) int64
    sums: np.ndarray  # (K, d) float64
    sse: float  # sum of squared distances to the assigned centre (no prices)
    rows: int

    @staticmethod
    def zeros(k: int, dim: int) -> "LevelStats":
        return LevelStats(np.zeros(k, np.int64), np.zeros((k, dim), np.float64), 0.0, 0)

    def __add__(self, other: "LevelStats") -> "LevelStats":
        return LevelStats(self.counts + other.counts, self.sums + other.sums, self.sse + other.sse,
                          self.rows + other.rows)

    def to_bytes(self) -> bytes:
        """Sparse over codes: only the sums of codes with rows travel (a slot of m rows sends at most m of the
        K rows of sums: at K = 8,192 and many slots the dense blobs would dwarf the mini-batch itself)."""
        buf = io.BytesIO()
        live = np.flatnonzero(self.counts)
        np.savez(buf, counts=self.counts, live=live, sums=self.sums[live], sse=np.array([self.sse]),
                 rows=np.array([self.rows]), dim=np.array([self.sums.shape[1]]))
        return buf.getvalue()

    @staticmethod
    def from_bytes(blob: bytes) -> "LevelStats":
        z = np.load(io.BytesIO(blob))
        counts = z["counts"]
        sums = np.zeros((len(counts), int(z["dim"][0])), np.float64)
        sums[z["live"]] = z["sums"]
        return LevelStats(counts, sums, float(z["sse"][0]), int(z["rows"][0]))



def _stats_setup(state: QuantizerState, level_codebook: np.ndarray, level_prices: Optional[np.ndarray]):
    """setup(device) for the statistics kernels: the frozen levels and the level's codebook on the device."""
    def setup(dev):
        cbs, prs = state.tensors(dev)
        cb = km.as_tensor(level_codebook, dev)
        pr = None if level_prices is None else km.as_tensor(level_prices, dev)
        return cbs, prs, cb, pr
    return setup


def level_stats(rows: DataFrame, state: QuantizerState, level_codebook: np.ndarray,
                level_prices: Optional[np.ndarray], dim: int) -> LevelStats:
    """One pass over `rows` (column _vec): residuals through the frozen levels of `state`, assignment of the
    residual to `level_codebook`, and per-code counts and sums, one K-sized result at the driver."""
    k = level_codebook.shape[0]

    def kernel(ctx, x, _batch):
        cbs, prs, cb, pr = ctx
        return matrix_stats(x, cbs, prs, cb, pr, state.block_rows)

    return aggregate_blocks(rows.select(VEC), kernel, lambda: LevelStats.zeros(k, dim), dim=dim,
                            setup=_stats_setup(state, level_codebook, level_prices), device=state.device)


def matrix_stats(x: torch.Tensor, cbs, prs, cb: torch.Tensor, pr: Optional[torch.Tensor],
                 block_rows: int) -> LevelStats:
    """Residuals of x through the frozen levels (cbs, prs), their nearest codes in cb (+ prices pr), and the
    per-code counts, float64 sums and squared error."""
    k = cb.shape[0]
    x = x.to(cb.device)
    counts = torch.zeros(k, dtype=torch.int64, device=x.device)
    sums = torch.zeros((k, x.shape[1]), dtype=torch.float64, device=x.device)
    sse = 0.0
    # block_rows rows at a time, so that the temporaries stay within km.task_memory_bytes whatever the slot's size;
    # the kernels block by block_rows anyway, so every row's code is the one a single call would give.
    for start in range(0, x.shape[0], block_rows):
        xc = x[start:start + block_rows]
        _, r = km.residual_encode(xc, cbs, prs, block_rows)
        codes = km.nearest(r, cb, pr, block_rows)
        counts += torch.bincount(codes, minlength=k)
        sums.index_add_(0, codes, r.to(torch.float64))
        sse += float(((r - cb[codes]) ** 2).sum(dtype=torch.float64))
    return LevelStats(counts.cpu().numpy(), sums.cpu().numpy(), sse, x.shape[0])


def batch_stats(batched, batch: int, state: QuantizerState, level_codebook: np.ndarray,
                level_prices: Optional[np.ndarray], dim: int) -> LevelStats:
    """level_stats over one mini-batch of a BatchedSample (numpy blocks of its cached partitions, not Arrow
    batches): a job on that batch's partitions only, summed on the executors."""
    k = level_codebook.shape[0]
    setup = _stats_setup(state, level_codebook, level_prices)

    def partition(arrays):
        _, (cbs, prs, cb, pr) = task_setup(state.device, setup)
        acc = LevelStats.zeros(k, dim)
        for x in arrays:
            if len(x):
                acc = acc + matrix_stats(torch.from_numpy(x), cbs, prs, cb, pr, state.block_rows)
        yield acc.to_bytes()

    def add(a: bytes, b: bytes) -> bytes:
        return (LevelStats.from_bytes(a) + LevelStats.from_bytes(b)).to_bytes()

    # Summed on the executors, in slot order: one K x d blob reaches the driver whatever `slots` is. The fan-in
    # keeps a combining task within ~1 GiB of blobs (8 K d bytes each).
    fanout = int(max(2, min(64, (1 << 30) // max(1, 8 * k * (dim + 1)))))
    blob = batched.reduce(batch, partition, add, fanout)
    return LevelStats.zeros(k, dim) if blob is None else LevelStats.from_bytes(blob)


def encode_rows(rows: DataFrame, id_col: str, sid_col: str, state: QuantizerState, dim: int) -> DataFrame:
    """(id, _vec) rows -> (id, sid array<int>) with greedy (price-adjusted) residual assignment at every level."""
    schema = T.StructType([rows.schema[id_col], T.StructField(sid_col, T.ArrayType(T.IntegerType(), False), False)])

    def kernel(ctx, x, _batch):
        cbs, prs = ctx
        return {sid_col: km.residual_encode(x, cbs, prs, state.block_rows, with_residual=False)[0]}

    return map_blocks(rows.select(id_col, VEC), schema, kernel, dim=dim, setup=state.tensors, device=state.device)


def encode_checked_rows(rows: DataFrame, id_col: str, sid_col: str, reason_col: str, state: QuantizerState,
                        dim: int) -> DataFrame:
    """Rows (id, _vec, reason, ...) -> (id, sid, reason, ...): rows with a null reason get their greedy SID, the
    others a null SID; every column but _vec passes through. A rejected row's _vec must be null (or of length
    `dim`): only the valid rows' values are handed to the kernel, zero-copy when a batch has no rejects."""
    fields = [rows.schema[id_col], T.StructField(sid_col, T.ArrayType(T.IntegerType(), False), True)]
    fields += [f for f in rows.schema if f.name not in (id_col, VEC)]

    def kernel(ctx, x, _batch):
        cbs, prs = ctx
        return {sid_col: km.residual_encode(x, cbs, prs, state.block_rows, with_residual=False)[0]}

    return map_blocks(rows, T.StructType(fields), kernel, dim=dim, setup=state.tensors, device=state.device,
                      reason_col=reason_col)
