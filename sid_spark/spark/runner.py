"""Per-partition functions over Arrow batches, and the driver-side combination of their K-sized results.

Every function here follows one pattern (spark-rapids-ml ``core.py``): the partition turns the vector column of
each Arrow batch into one float32 matrix, calls the kernels, and yields either encoded rows or one small blob of
per-code statistics; the driver only ever sees K-sized aggregates.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import numpy as np
import pyarrow as pa
import torch
from pyspark.sql import DataFrame
from pyspark.sql import types as T

from ..kernels import kmeans as km
from .device import configure_torch_for_task, task_device
from .prepare import VEC
from .vectors import arrow_matrix


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


def zero_copy_tensor(x: np.ndarray) -> torch.Tensor:
    """A torch view of Arrow's (read-only) values buffer; the kernels never write to their input."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(x)


def _batch_matrices(batches: Iterator[pa.RecordBatch], dim: int, dev: torch.device):
    for batch in batches:
        if batch.num_rows == 0:
            continue
        x = arrow_matrix(batch.column(batch.schema.get_field_index(VEC)), dim)
        yield batch, zero_copy_tensor(x).to(dev)


def level_stats(rows: DataFrame, state: QuantizerState, level_codebook: np.ndarray,
                level_prices: Optional[np.ndarray], dim: int) -> LevelStats:
    """One pass over `rows` (column _vec): residuals through the frozen levels of `state`, assignment of the
    residual to `level_codebook`, and per-code counts and sums combined by a tree reduction."""
    k = level_codebook.shape[0]

    def partition(batches):
        dev, stats_of = _task_stats(state, level_codebook, level_prices)
        acc = LevelStats.zeros(k, dim)
        for _, x in _batch_matrices(batches, dim, dev):
            acc = acc + stats_of(x)
        yield pa.RecordBatch.from_arrays([pa.array([acc.to_bytes()], pa.binary())], ["stats"])

    blobs = rows.select(VEC).mapInArrow(partition, T.StructType([T.StructField("stats", T.BinaryType())]))
    return combine_stats(blobs, LevelStats.zeros(k, dim))


def _task_stats(state: QuantizerState, level_codebook: np.ndarray, level_prices: Optional[np.ndarray]):
    """Inside a task: (device, x -> LevelStats of x) with the frozen levels and the level's codebook on the device."""
    configure_torch_for_task()
    dev = task_device(state.device)
    cbs, prs = state.tensors(dev)
    cb = km.as_tensor(level_codebook, dev)
    pr = None if level_prices is None else km.as_tensor(level_prices, dev)
    return dev, lambda x: matrix_stats(x.to(dev), cbs, prs, cb, pr, state.block_rows)


def matrix_stats(x: torch.Tensor, cbs, prs, cb: torch.Tensor, pr: Optional[torch.Tensor],
                 block_rows: int) -> LevelStats:
    """Residuals of x through the frozen levels (cbs, prs), their nearest codes in cb (+ prices pr), and the
    per-code counts, float64 sums and squared error."""
    k = cb.shape[0]
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
    """level_stats over one mini-batch of a BatchedSample: a job on that batch's cached partitions only."""
    k = level_codebook.shape[0]

    def partition(arrays):
        _, stats_of = _task_stats(state, level_codebook, level_prices)
        acc = LevelStats.zeros(k, dim)
        for x in arrays:
            if len(x):
                acc = acc + stats_of(torch.from_numpy(x))
        yield acc.to_bytes()

    def add(a: bytes, b: bytes) -> bytes:
        return (LevelStats.from_bytes(a) + LevelStats.from_bytes(b)).to_bytes()

    # Summed on the executors, in slot order: one K x d blob reaches the driver whatever `slots` is. The fan-in
    # keeps a combining task within ~1 GiB of blobs (8 K d bytes each).
    fanout = int(max(2, min(64, (1 << 30) // max(1, 8 * k * (dim + 1)))))
    blob = batched.reduce(batch, partition, add, fanout)
    return LevelStats.zeros(k, dim) if blob is None else LevelStats.from_bytes(blob)


def combine_stats(blobs: DataFrame, empty: LevelStats, tree_above: int = 32) -> LevelStats:
    """Sum one K-sized blob per partition: collected directly for a few partitions, tree-reduced on the
    executors beyond `tree_above` so the driver never holds more than a handful of K x d blocks."""
    n_parts = blobs.rdd.getNumPartitions()
    if n_parts == 0:
        return empty
    if n_parts <= tree_above:
        total = empty
        for row in blobs.collect():  # driver-ok: one K-sized blob per partition, <= tree_above of them
            total = total + LevelStats.from_bytes(bytes(row[0]))
        return total
    return blobs.rdd.map(lambda r: LevelStats.from_bytes(bytes(r[0]))).treeReduce(lambda a, b: a + b, depth=2)


def encode_rows(rows: DataFrame, id_col: str, sid_col: str, state: QuantizerState, dim: int,
                extra: Optional[Callable] = None) -> DataFrame:
    """(id, _vec) rows -> (id, sid array<int>) with greedy (price-adjusted) residual assignment at every level."""
    id_field = rows.schema[id_col]
    out_schema = T.StructType([id_field, T.StructField(sid_col, T.ArrayType(T.IntegerType(), False), False)])
    n_levels = len(state.codebooks)

    def partition(batches):
        configure_torch_for_task()
        dev = task_device(state.device)
        cbs, prs = state.tensors(dev)
        for batch, x in _batch_matrices(batches, dim, dev):
            codes, _ = km.residual_encode(x, cbs, prs, state.block_rows, with_residual=False)
            flat = codes.to(torch.int32).cpu().numpy().reshape(-1)
            offsets = pa.array(np.arange(0, (x.shape[0] + 1) * n_levels, n_levels, dtype=np.int32))
            sid = pa.ListArray.from_arrays(offsets, pa.array(flat, pa.int32()))
            yield pa.RecordBatch.from_arrays([batch.column(batch.schema.get_field_index(id_col)), sid],
                                             names=[id_col, sid_col])

    return rows.select(id_col, VEC).mapInArrow(partition, out_schema)


def encode_checked_rows(rows: DataFrame, id_col: str, sid_col: str, reason_col: str, state: QuantizerState,
                        dim: int) -> DataFrame:
    """Rows (id, _vec, reason, ...) -> (id, sid, reason, ...): rows with a null reason get their greedy SID, the
    others a null SID; every column but _vec passes through. A rejected row's _vec must be null (or of length
    `dim`): only the valid rows' values are handed to the kernel, zero-copy when a batch has no rejects."""
    fields = [rows.schema[id_col], T.StructField(sid_col, T.ArrayType(T.IntegerType(), False), True)]
    fields += [f for f in rows.schema if f.name not in (id_col, VEC)]
    n_levels = len(state.codebooks)

    def partition(batches):
        configure_torch_for_task()
        dev = task_device(state.device)
        cbs, prs = state.tensors(dev)
        for batch in batches:
            if batch.num_rows == 0:
                continue
            names = batch.schema.names
            ok = batch.column(names.index(reason_col)).is_null().to_numpy(zero_copy_only=False)
            vec = batch.column(names.index(VEC))
            if not ok.all():
                vec = vec.filter(pa.array(ok))
            codes = np.empty((0, n_levels), np.int32)
            if len(vec):
                x = zero_copy_tensor(arrow_matrix(vec, dim)).to(dev)
                codes = km.residual_encode(x, cbs, prs, state.block_rows, with_residual=False)[0]
                codes = codes.to(torch.int32).cpu().numpy()
            offsets = np.zeros(batch.num_rows + 1, np.int32)
            np.cumsum(np.where(ok, n_levels, 0), out=offsets[1:])
            sid = pa.ListArray.from_arrays(pa.array(offsets), pa.array(codes.reshape(-1), pa.int32()),
                                           mask=pa.array(~ok))
            cols = [batch.column(names.index(id_col)), sid]
            cols += [batch.column(names.index(f.name)) for f in fields[2:]]
            yield pa.RecordBatch.from_arrays(cols, names=[f.name for f in fields])

    return rows.mapInArrow(partition, T.StructType(fields))
