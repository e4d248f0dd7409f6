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
from .runner import aggregate_blocks, block_partition, map_blocks, task_setup


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
    price_sum: Optional[np.ndarray] = None  # (K,) float64: sum over slots of (slot's price rows) * (its prices)
    price_rows: int = 0

    @staticmethod
    def zeros(k: int, dim: int) -> "LevelStats":
        return LevelStats(np.zeros(k, np.int64), np.zeros((k, dim), np.float64), 0.0, 0)

    def __add__(self, other: "LevelStats") -> "LevelStats":
        if self.price_sum is None or other.price_sum is None:
            price_sum = self.price_sum if other.price_sum is None else other.price_sum
        else:
            price_sum = self.price_sum + other.price_sum
        return LevelStats(self.counts + other.counts, self.sums + other.sums, self.sse + other.sse,
                          self.rows + other.rows, price_sum, self.price_rows + other.price_rows)

    @property
    def prices(self) -> Optional[np.ndarray]:
        """The slots' prices averaged by their rows (float32, centred), or None without solved prices."""
        if self.price_sum is None or self.price_rows == 0:
            return None
        p = self.price_sum / self.price_rows
        return (p - p.mean()).astype(np.float32)

    def to_bytes(self) -> bytes:
        """Sparse over codes: only the sums of codes with rows travel (a slot of m rows sends at most m of the
        K rows of sums: at K = 8,192 and many slots the dense blobs would dwarf the mini-batch itself)."""
        buf = io.BytesIO()
        live = np.flatnonzero(self.counts)
        extra = {} if self.price_sum is None else {"price_sum": self.price_sum}
        np.savez(buf, counts=self.counts, live=live, sums=self.sums[live], sse=np.array([self.sse]),
                 rows=np.array([self.rows]), dim=np.array([self.sums.shape[1]]),
                 price_rows=np.array([self.price_rows]), **extra)
        return buf.getvalue()

    @staticmethod
    def add_bytes(a: bytes, b: bytes) -> bytes:
        """The sum of two to_bytes() blobs, as a blob: the `add` of BatchedSample.reduce."""
        return (LevelStats.from_bytes(a) + LevelStats.from_bytes(b)).to_bytes()

    @staticmethod
    def from_bytes(blob: bytes) -> "LevelStats":
        z = np.load(io.BytesIO(blob))
        counts = z["counts"]
        sums = np.zeros((len(counts), int(z["dim"][0])), np.float64)
        sums[z["live"]] = z["sums"]
        return LevelStats(counts, sums, float(z["sse"][0]), int(z["rows"][0]),
                          z["price_sum"] if "price_sum" in z.files else None, int(z["price_rows"][0]))


# Entries of one slot's Sinkhorn matrices (float32): at most 2^24 each, so a balanced level's pricing holds at most
# 3 x 64 MiB (the priced rows' residuals, their distances and the Sinkhorn kernel) whatever K, d and the slot's size.
SLOT_PRICE_ENTRIES = 1 << 24
# ... and at most this many rows per code: a slot's prices need a few dozen rows per code, and the solve's cost is
# linear in its rows (Beauty: rel. error the same with 23 rows per code per slot as with all of them).
SLOT_PRICE_ROWS_PER_CODE = 32
# Scaling sweeps per epsilon of the solves inside the training loop, and of the final solve, which over-relaxes
# its sweeps by FINAL_OMEGA (kernels.balance.sinkhorn_prices). The final solve is memory-bound (1M x 128 at
# K = 256: a 31,250 x 256 kernel a slot, 2.5 s of a balanced level's 6.8 s): 12 over-relaxed sweeps per epsilon
# instead of 20 plain ones. Against prices of 200 plain sweeps (200,000 synthetic rows priced on 31,250): rows on
# another code 0.99% (20 plain: 1.06%, 10 plain: 2.9%), largest column-marginal error 0.147 of a code's size
# (0.155, 0.262). The last 4 of its 14 epsilons take 4 sweeps: there the column-marginal error no longer moves
# (2.0e-2 of the rows from sweep 1 to 12 on a 1M level's slot), and the exact balanced assignment of a held-out
# slot under the prices costs the same (0.45708 against 0.45720; the priced slot itself 0.45186 against 0.45184),
# for 1.14 instead of 1.42 s; Beauty balanced rel. error 0.2615 / 0.2600 / 0.2618 for seeds 0 / 1 / 2 against
# 0.2615 / 0.2594 / 0.2614 (2026-12-07). Stopping the annealing earlier instead (10 epsilons) cost Beauty 0.2619.
TRAIN_SWEEPS = 10
FINAL_SWEEPS = (12,) * 10 + (4,) * 4
FINAL_OMEGA = 1.8


def price_rows(k: int, rows: int, dim: int = 1, final: bool = False) -> int:
    """Rows of a slot the Sinkhorn solve uses: all of them up to min(32 K, SLOT_PRICE_ENTRIES / max(K, d)) (8,192
    at K = 256; 2,048 at K = 8,192); the slot's first rows in hash order, so a sample of it. The final solve (once
    per level, its prices go into the model and steer the encode) takes up to the entries bound alone (65,536 rows
    at K = 256, d <= 256)."""
    per_code = rows if final else SLOT_PRICE_ROWS_PER_CODE * k
    return int(max(1, min(rows, per_code, SLOT_PRICE_ENTRIES // max(k, dim))))


@dataclass(frozen=True)
class SlotPricing:
    """Prices solved on the executors, inside a balanced level's statistics job (no extra pass, nothing m x K on
    the driver): every slot of the mini-batch runs stabilised Sinkhorn (kernels.balance.sinkhorn_prices) on the
    distances of its own rows (at most `price_rows`) to the current centres, towards equal code sizes, and sends
    the prices weighted by its rows with its counts and sums. The driver's prices are their K-sized average.

    `exact`: the slot's rows are assigned exactly balanced under those prices (exact_slot_stats), so each centre
    moves to the mean of a balanced cluster; `reuse`: no solve, the level prices given to the job are used (the
    exact steps between two solves, train.PRICE_EVERY). Without `exact` the rows are assigned greedily under the
    prices. The coarse schedule (7 epsilons, 4x apart, TRAIN_SWEEPS sweeps each); `final` runs the fine one (14
    halvings, FINAL_SWEEPS sweeps) on up to the entries bound of rows, for the prices stored in the model."""

    final: bool = False
    exact: bool = False  # assign the slot's rows exactly balanced under its prices (exact_slot_stats)
    reuse: bool = False  # exact steps: take the prices given to the job instead of solving

    def solve_dist(self, dist: torch.Tensor) -> np.ndarray:
        """Prices of the rows whose (m, K) distances to the centres are `dist`."""
        from ..kernels.balance import sinkhorn_prices

        m, k = dist.shape
        caps = torch.full((k,), m / k, dtype=torch.float32, device=dist.device)
        if self.final:
            return sinkhorn_prices(dist, caps, FINAL_SWEEPS, omega=FINAL_OMEGA)[0]
        return sinkhorn_prices(dist, caps, TRAIN_SWEEPS, coarse=True)[0]

    def solve(self, r: torch.Tensor, cb: torch.Tensor, block_rows: int) -> np.ndarray:
        return self.solve_dist(km.distances(r, cb, block_rows=block_rows))


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


def stats_blob_bytes(k: int, dim: int) -> int:
    """Upper bound on LevelStats.to_bytes() of K codes at dimension dim: dense sums, counts, live codes, prices and
    the npz container's headers."""
    return 8 * k * (dim + 3) + 4096


def slot_stats(arrays, dev: torch.device, cbs, prs, cb: torch.Tensor, pr: Optional[torch.Tensor], dim: int,
               block_rows: int, pricing: Optional[SlotPricing] = None) -> LevelStats:
    """One slot's statistics (the slot's (m, d) float32 arrays): counts, sums and error of its rows' residuals
    assigned to `cb` (+ prices `pr`). With `pricing` the slot first solves its own prices on its first
    price_rows() rows and assigns under them (`pr` unused); the result carries them weighted by those rows. What a
    task of batch_stats computes, and what a level trained in one task computes per slot (train.fit_level). With
    `pricing.reuse` the slot takes `pr` instead of solving (and sends no prices)."""
    k = cb.shape[0]
    acc = LevelStats.zeros(k, dim)
    for block in arrays:
        if not len(block):
            continue
        x = torch.from_numpy(block)
        if pricing is None:
            acc = acc + matrix_stats(x, cbs, prs, cb, pr, block_rows)
            continue
        if pricing.exact and len(x) * max(k, dim) <= SLOT_PRICE_ENTRIES:
            acc = acc + exact_slot_stats(x, dev, cbs, prs, cb, block_rows, pricing, pr)
            continue
        if pricing.reuse and pr is not None:
            acc = acc + matrix_stats(x, cbs, prs, cb, pr, block_rows)
            continue
        m = price_rows(k, len(x), dim, final=pricing.final)
        _, r = km.residual_encode(x[:m].to(dev), cbs, prs, block_rows)
        p = pricing.solve(r, cb, block_rows)
        del r
        st = matrix_stats(x, cbs, prs, cb, km.as_tensor(p, dev), block_rows)
        st.price_sum, st.price_rows = m * p.astype(np.float64), m
        acc = acc + st
    return acc


def exact_slot_stats(x: torch.Tensor, dev: torch.device, cbs, prs, cb: torch.Tensor, block_rows: int,
                     pricing: SlotPricing, pr: Optional[torch.Tensor] = None) -> LevelStats:
    """A slot's statistics under the exact balanced assignment of its rows (kernels.balance.exact_assign_rows: every
    code holds m/K +-1 of the slot's m rows; first choices and regrets as the balanced encode ranks them; ties by
    row position, i.e. hash order): what the balanced encode does to the whole catalog, on the slot. The prices:
    the slot's own solve on its first price_rows() rows (sent with the statistics), or `pr` with `pricing.reuse`.
    Holds the slot's residuals and, while it solves, the priced rows' distances and Sinkhorn kernel; the
    assignment reads block_rows rows of scores at a time and the distances of the rows its repair moves (float32,
    and their float64 costs and copy). Callers keep m max(K, d) within SLOT_PRICE_ENTRIES (E), so the step holds
    at most 24 E bytes, and a slot too large for that assigns under its prices as the loop does."""
    from ..kernels.balance import exact_assign_rows

    k = cb.shape[0]
    _, r = km.residual_encode(x.to(dev), cbs, prs, block_rows)
    if pricing.reuse and pr is not None:
        p, m = pr.cpu().numpy(), 0
    else:
        m = price_rows(k, len(x), x.shape[1], final=pricing.final)
        p = pricing.solve(r[:m], cb, block_rows)
    codes, _, dist = exact_assign_rows(r, cb, p, np.arange(len(x), dtype=np.int64), block_rows)
    # The error from the distances the assignment already has (a third of the step's time when recomputed from r).
    sse = float(dist.sum())
    counts, sums = km.partial_stats(r, torch.from_numpy(codes).to(r.device), k)
    st = LevelStats(counts.cpu().numpy(), sums.cpu().numpy(), sse, len(x))
    if m:
        st.price_sum, st.price_rows = m * p.astype(np.float64), m
    return st


def batch_stats(batched, batch: int, state: QuantizerState, level_codebook: np.ndarray,
                level_prices: Optional[np.ndarray], dim: int, pricing: Optional[SlotPricing] = None) -> LevelStats:
    """level_stats over one mini-batch of a BatchedSample (numpy blocks of its cached partitions, not Arrow
    batches): a job on that batch's partitions only, summed on the executors. With `pricing` every slot solves
    its own prices first and assigns under them (`level_prices` is then unused unless `pricing.reuse`); the result
    carries their average (`LevelStats.prices`)."""
    k = level_codebook.shape[0]
    setup = _stats_setup(state, level_codebook, level_prices)

    def partition(arrays):
        dev, (cbs, prs, cb, pr) = task_setup(state.device, setup)
        yield slot_stats(arrays, dev, cbs, prs, cb, pr, dim, state.block_rows, pricing).to_bytes()

    # Summed in slot order, on the executors unless the slots' blobs fit in batches.DIRECT_SUM_BYTES together: one
    # K x d blob reaches the driver whatever `slots` is. The fan-in keeps a combining task within ~1 GiB of blobs
    # (8 K d bytes each).
    fanout = int(max(2, min(64, (1 << 30) // max(1, 8 * k * (dim + 1)))))
    blob = batched.reduce(batch, partition, LevelStats.add_bytes, fanout, blob_bytes=stats_blob_bytes(k, dim))
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
    schema, partition = checked_rows_encoder(rows.schema, id_col, sid_col, reason_col, state, dim)
    return rows.mapInArrow(partition, schema)


def checked_rows_encoder(rows_schema: T.StructType, id_col: str, sid_col: str, reason_col: str, state: QuantizerState,
                         dim: int) -> tuple:
    """(output schema, partition function) of encode_checked_rows for rows of `rows_schema`: the direct Parquet
    read runs the same function on the batches it decodes itself."""
    fields = [rows_schema[id_col], T.StructField(sid_col, T.ArrayType(T.IntegerType(), False), True)]
    fields += [f for f in rows_schema if f.name not in (id_col, VEC)]
    schema = T.StructType(fields)

    def kernel(ctx, x, _batch):
        cbs, prs = ctx
        return {sid_col: km.residual_encode(x, cbs, prs, state.block_rows, with_residual=False)[0]}

    return schema, block_partition(schema, kernel, dim=dim, setup=state.tensors, device=state.device,
                                   reason_col=reason_col)
