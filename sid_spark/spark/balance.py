"""Exact balanced encoding of a whole catalog on Spark: in every balanced level every code holds floor(N/K) or
ceil(N/K) of the N encoded items.

Per balanced level (the driver holds only codebooks, prices, counts and capacities — K-sized):

  prices       learnt in training: dual ascent on every pass's per-code counts (sid_spark.kernels.balance),
               so that first choices are already near-balanced; what is left overflows.
  pass 1       candidate pass: each item's first choice under the prices and its regret (second - first cost).
  shuffle      a window per first-choice code, ordered by regret (desc), then the stable id hash: the first
               cap_k items keep code k; the rest (typically a few percent) overflow.
  rounds       over the overflow rows only: each picks its nearest code that still has room; a window per
               picked code keeps the nearest applicants up to the room left. Every round fills at least one
               code or places everyone; after `balance_repair_rounds` rounds the leftovers fill the remaining
               room in hash order (one small global sort).

Every decision is ordered by (value, stable id hash, id), so the codes do not depend on the partitioning.
"""
from __future__ import annotations

import logging
import time
from typing import List, Optional

import numpy as np
import pyarrow as pa
import torch
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from ..kernels import balance as bal
from ..progress import Progress, geometric_steps_left
# Each level and repair round builds on the previous ones: without a cut the logical plan grows with every round
# (its string alone exhausted the driver heap in a 3-level test). materialize: reliable inside a command.
from ..storage import materialize
from ..kernels import kmeans as km
from .prepare import HASH, VEC
from .runner import code_matrix, map_blocks

log = logging.getLogger("sid_spark.balance")

CODES = "_codes"
FIRST = "_first"
REGRET = "_regret"
CHOICE = "_choice"
COST = "_cost"
CODE = "_code"


def _prefix_codes(batch: pa.RecordBatch, level: int) -> torch.Tensor:
    if level == 0:
        return torch.empty((batch.num_rows, 0), dtype=torch.int64)
    return torch.from_numpy(code_matrix(batch.column(batch.schema.get_field_index(CODES)), level))


class _Level:
    """What the kernels of one level need, pickled to the executors with them."""

    def __init__(self, codebooks: List[np.ndarray], level: int, dim: int, block_rows: int, device: str):
        self.codebooks = [np.ascontiguousarray(c) for c in codebooks[: level + 1]]
        self.level, self.dim, self.block_rows, self.device = level, dim, block_rows, device

    def setup(self, dev: torch.device):
        return [torch.from_numpy(c).to(dev) for c in self.codebooks]

    def residual(self, cbs, x: torch.Tensor, batch: pa.RecordBatch) -> torch.Tensor:
        """x - sum_{l < level} c_l[s_l] from the codes already fixed for this row: (n, d) float32."""
        r = x.clone()
        codes = _prefix_codes(batch, self.level).to(x.device)
        for lvl in range(self.level):
            r -= cbs[lvl][codes[:, lvl]]
        return r

    def map(self, rows: DataFrame, schema: T.StructType, kernel) -> DataFrame:
        """map_blocks with kernel(codebooks, residual, batch) on this level's residuals."""
        return map_blocks(rows, schema, lambda cbs, x, batch: kernel(cbs, self.residual(cbs, x, batch), batch),
                          dim=self.dim, setup=self.setup, device=self.device)


def candidate_rows(rows: DataFrame, lv: _Level, prices: np.ndarray) -> DataFrame:
    """rows + first choice (int) and regret (double): cost of the second choice minus the first, under prices."""
    schema = T.StructType(rows.schema.fields + [T.StructField(FIRST, T.IntegerType()),
                                                T.StructField(REGRET, T.DoubleType())])
    p = torch.from_numpy(prices)

    def kernel(cbs, r, _batch):
        codes, cost = km.assign(r, cbs[-1], p.to(r.device), lv.block_rows, topk=2)
        return {FIRST: codes[:, 0], REGRET: (cost[:, 1] - cost[:, 0]).to(torch.float64)}

    return lv.map(rows, schema, kernel)


def nearest_free_rows(rows: DataFrame, lv: _Level, prices: np.ndarray, free: np.ndarray) -> DataFrame:
    """rows + the nearest code that still has room (int) and its cost (double)."""
    schema = T.StructType(rows.schema.fields + [T.StructField(CHOICE, T.IntegerType()),
                                                T.StructField(COST, T.DoubleType())])
    masked = torch.from_numpy(np.where(free <= 0, np.float32(np.inf), prices).astype(np.float32))

    def kernel(cbs, r, _batch):
        codes, cost = km.assign(r, cbs[-1], masked.to(r.device), lv.block_rows)
        return {CHOICE: codes, COST: cost.to(torch.float64)}

    return lv.map(rows, schema, kernel)


def _code_counts(df: DataFrame, col: str, k: int) -> np.ndarray:
    out = np.zeros(k, np.int64)
    for row in df.groupBy(col).count().collect():  # driver-ok: at most K rows
        out[row[0]] = row[1]
    return out


def _caps_frame(spark, values: np.ndarray, col: str) -> DataFrame:
    return F.broadcast(spark.createDataFrame([(int(i), int(v)) for i, v in enumerate(values)],
                                             T.StructType([T.StructField(col, T.IntegerType()),
                                                           T.StructField("_room", T.LongType())])))


def balance_level(rows: DataFrame, id_col: str, lv: _Level, prices: Optional[np.ndarray], n: int,
                  max_rounds: int, stats: dict) -> DataFrame:
    """rows (id, _id_hash, _vec, _codes) -> the same rows with this level's exactly balanced code appended to _codes."""
    spark = rows.sparkSession
    started = time.perf_counter()
    k = lv.codebooks[-1].shape[0]
    prices = np.zeros(k, np.float32) if prices is None else np.asarray(prices, np.float32)

    cand = materialize(candidate_rows(rows, lv, prices))
    counts = _code_counts(cand, FIRST, k)
    caps = bal.capacities(n, k, counts)
    by_code = Window.partitionBy(FIRST).orderBy(F.col(REGRET).desc(), F.col(HASH), F.col(id_col))
    ranked = cand.withColumn("_rank", F.row_number().over(by_code)).join(
        _caps_frame(spark, caps, FIRST), on=FIRST).withColumn("_ok", F.col("_rank") <= F.col("_room"))
    ranked = materialize(ranked)
    base_cols = [id_col, HASH, VEC, CODES]
    placed = [ranked.where(F.col("_ok")).select(*base_cols, F.col(FIRST).alias(CODE))]
    free = caps - np.minimum(counts, caps)
    n_over = int(np.clip(counts - caps, 0, None).sum())
    overflow = ranked.where(~F.col("_ok")).select(*base_cols)
    stats.setdefault("overflow", []).append(n_over)
    log.info("encode level %d (balanced): candidate pass and ranking done (%.0f s): %d of %d items overflow their "
             "first choice; up to %d repair rounds follow", lv.level + 1, time.perf_counter() - started, n_over, n,
             max_rounds if n_over else 0)
    progress = Progress(log, f"encode level {lv.level + 1} (balanced): repair round", max_rounds, early_stop=True)
    rounds = 0
    local = 0
    while n_over > 0 and rounds < max_rounds:
        if n_over <= local_repair_rows(k, lv.dim):
            # Few enough to place in one task: the same rounds (kernels.balance.repair), one job instead of many.
            placed.append(local_repair(overflow, id_col, lv, prices, free, max_rounds - rounds, base_cols))
            log.info("encode level %d (balanced): the %d items left go to one task (the rounds there, no more "
                     "distributed rounds)", lv.level + 1, n_over)
            local, n_over = n_over, 0
            break
        rounds += 1
        applied = nearest_free_rows(overflow, lv, prices, free)
        by_choice = Window.partitionBy(CHOICE).orderBy(F.col(COST), F.col(HASH), F.col(id_col))
        ranked = applied.withColumn("_rank", F.row_number().over(by_choice)).join(
            _caps_frame(spark, free, CHOICE), on=CHOICE).withColumn("_ok", F.col("_rank") <= F.col("_room"))
        ranked = materialize(ranked)
        # One job per round: the per-code acceptances (K rows) also tell how many items are still waiting.
        accepted_counts = np.zeros(k, np.int64)
        waiting, n_over = n_over, 0
        for row in ranked.groupBy(CHOICE).agg(F.sum(F.col("_ok").cast("long")).alias("a"),
                                              F.count(F.lit(1)).alias("n")).collect():  # driver-ok: K rows
            accepted_counts[row[0]] = row["a"]
            n_over += row["n"] - row["a"]
        placed.append(ranked.where(F.col("_ok")).select(*base_cols, F.col(CHOICE).alias(CODE)))
        free = free - accepted_counts
        overflow = ranked.where(~F.col("_ok")).select(*base_cols)
        progress.step(rounds, f"{n_over} items still without room", geometric_steps_left(waiting, n_over))
    if n_over > 0:
        placed.append(slot_fallback(overflow, free, base_cols, id_col))
    # full passes over the level's rows: the candidate pass and the window shuffle by code (the repair rounds
    # read only the overflow rows)
    stats.setdefault("passes", []).append(2)
    stats.setdefault("repair_rounds", []).append(rounds)
    stats.setdefault("fallback_items", []).append(int(n_over))
    stats.setdefault("local_repair_items", []).append(int(local))
    out = placed[0]
    for part in placed[1:]:
        out = out.unionByName(part)
    out = materialize(out.select(id_col, HASH, VEC, F.concat(CODES, F.array(F.col(CODE))).alias(CODES)))
    stats.setdefault("seconds", []).append(time.perf_counter() - started)
    return out


# Overflow rows the repair places in one task once that few remain: their distances to every code (float64 with the
# prices, plus a float32 copy) stay within ~3 x 2^24 x 8 bytes (400 MB): 65,536 rows at K = 256, 2,048 at K = 8,192.
LOCAL_REPAIR_ENTRIES = 1 << 24


def local_repair_rows(k: int, dim: int) -> int:
    return LOCAL_REPAIR_ENTRIES // max(k, dim)


def local_repair(overflow: DataFrame, id_col: str, lv: "_Level", prices: np.ndarray, free: np.ndarray,
                 max_rounds: int, cols) -> DataFrame:
    """The overflow rows (at most local_repair_rows of them) placed by the repair rounds in one task: the rows are
    ordered by (id hash, id), so the result does not depend on how they arrived; applicants are ranked by (cost,
    id hash, id) as in the distributed rounds, and the same slot fallback follows `max_rounds` rounds. Returns
    `cols` + _code for every overflow row."""
    schema = T.StructType([overflow.schema[id_col], T.StructField(CODE, T.IntegerType(), False)])
    adj_prices = torch.from_numpy(np.asarray(prices, np.float64))
    room = np.asarray(free, np.int64)

    def setup(dev):
        return lv.setup(dev), []

    def kernel(ctx, x, batch):
        cbs, store = ctx
        store.append((lv.residual(cbs, x, batch).cpu(), batch.column(batch.schema.get_field_index(id_col)),
                      batch.column(batch.schema.get_field_index(HASH)).to_numpy()))
        return None

    def finish(ctx):
        cbs, store = ctx
        if not store:
            return None
        r = torch.cat([s[0] for s in store])
        ids = pa.concat_arrays([s[1] for s in store])
        hashes = np.concatenate([s[2] for s in store])
        order = np.lexsort((np.arange(len(hashes)), ids.to_numpy(zero_copy_only=False), hashes))
        adj = km.distances(r[torch.from_numpy(order)], cbs[-1].cpu(), block_rows=lv.block_rows).to(torch.float64)
        codes, _ = bal.repair(adj + adj_prices, hashes[order], room, max_rounds)
        return {id_col: ids.take(pa.array(order)), CODE: codes}

    placed = map_blocks(overflow.repartition(1), schema, kernel, dim=lv.dim, setup=setup, device=lv.device,
                        finish=finish)
    return overflow.select(*cols).join(placed, on=id_col)


def slot_fallback(overflow: DataFrame, free: np.ndarray, cols, id_col: str) -> DataFrame:
    """Global slot fallback of the repair: the rows still without room, in hash order, fill the remaining room
    (free, K-sized) code by code. Only the few leftovers of the last repair round come here."""
    bounds = np.cumsum(np.maximum(free, 0))
    slot = F.row_number().over(Window.orderBy(F.col(HASH), F.col(id_col))) - 1
    code_of_slot = None
    for code in np.nonzero(free > 0)[0]:
        cond = F.col("_slot") < F.lit(int(bounds[code]))
        code_of_slot = F.when(cond, F.lit(int(code))) if code_of_slot is None else \
            code_of_slot.when(cond, F.lit(int(code)))
    return overflow.withColumn("_slot", slot).select(*cols, code_of_slot.alias(CODE))


def greedy_level(rows: DataFrame, lv: _Level) -> DataFrame:
    """Unbalanced level inside a balanced encode: nearest centroid, appended to _codes."""
    def kernel(cbs, r, batch):
        codes = km.nearest(r, cbs[-1], None, lv.block_rows)
        return {CODES: torch.cat([_prefix_codes(batch, lv.level), codes.cpu().unsqueeze(1)], 1)}

    return materialize(lv.map(rows, rows.schema, kernel))


def encode_balanced(valid: DataFrame, model, stats: Optional[dict] = None) -> DataFrame:
    """(id, sid) for every row of `valid` (id, _vec, _id_hash), with exact capacities at every balanced level.
    model: an `encode.Quantizer` (reach it through `encode.encode_valid`)."""
    stats = {} if stats is None else stats
    cfg = model.config
    id_col = cfg.id_col
    rows = materialize(valid.select(id_col, HASH, VEC, F.array().cast(T.ArrayType(T.IntegerType())).alias(CODES)))
    n = rows.count()
    k = max(int(c.shape[0]) for c in model.codebooks)
    if n < k:
        from ..errors import InputError

        raise InputError(f"N < K: {n} valid items cannot fill codebook_size={k} codes with balance=exact")
    for level in range(model.levels):
        lv = _Level(model.codebooks, level, model.dim, cfg.block_rows, cfg.device)
        if cfg.balance_for(level) == "exact":
            nxt = balance_level(rows, id_col, lv, model.prices[level], n, cfg.balance_repair_rounds, stats)
        else:
            nxt = greedy_level(rows, lv)
        rows = nxt
    stats["n_items"] = n
    return rows.select(id_col, F.col(CODES).alias(cfg.sid_col))
