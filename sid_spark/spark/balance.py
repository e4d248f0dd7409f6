"""Exact balanced encoding of a whole catalog on Spark: in every balanced level every code holds floor(N/K) or
ceil(N/K) of the N encoded items.

The driver holds only codebooks, prices, counts and capacities (K-sized). The vectors are read once:

  chain pass   one pass over the vectors gives, for every level, the row's first choice under that level's prices
               and its regret (second - first cost), assuming every earlier level kept its first choice (the
               residual carried forward); greedy levels get their nearest code. Materialized as a narrow table
               (id, hash, two numbers per level) beside the vector table.
  per level    prices learnt in training (dual ascent on every pass's per-code counts, sid_spark.kernels.balance)
               make first choices near-balanced, so what is left overflows:
    ranking    a window per over-full first choice over (id, hash, first choice, regret) only, ordered by regret
               (desc), then the stable id hash: the first cap_k items keep code k; the rest (typically a few
               percent) overflow.
    repair     over the overflow rows only, read with their vectors: each picks its nearest code that still has
               room; a window per picked code keeps the nearest applicants up to the room left (in one task once
               few enough remain: kernels.balance.repair). Every round fills at least one code or places everyone;
               after `balance_repair_rounds` rounds the leftovers fill the remaining room in hash order.
    tails      the moved rows' chain columns for the later levels, computed again from their new code (in the
               same task as a one-task repair).
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
from ..storage import cache_with, materialize, materialize_with
from ..kernels import kmeans as km
from .prepare import HASH, VEC
from .runner import block_partition, code_matrix, map_blocks
from .vectors import pack_vectors

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


# Overflow tables up to this many rows are broadcast to the candidate table's tasks (ids and a code: a few MB).
BROADCAST_OVERFLOW = 2_000_000


def _maybe_broadcast(df: DataFrame, rows: int) -> DataFrame:
    return F.broadcast(df) if rows <= BROADCAST_OVERFLOW else df


def _caps_frame(spark, values: np.ndarray, col: str, only: Optional[np.ndarray] = None) -> DataFrame:
    """(code, _room) for every code, or for the codes where `only` is set: a broadcast K-row table."""
    keep = np.ones(len(values), bool) if only is None else only
    return F.broadcast(spark.createDataFrame([(int(i), int(values[i])) for i in np.nonzero(keep)[0]],
                                             T.StructType([T.StructField(col, T.IntegerType()),
                                                           T.StructField("_room", T.LongType())])))


def _f(level: int) -> str:
    return f"_first{level}"


def _g(level: int) -> str:
    return f"_regret{level}"


def _c(level: int) -> str:
    return f"_code{level}"


class _Chain:
    """The chain pass: from level `start` on, each balanced level's first choice under its prices and its regret,
    each greedy level's nearest code, every level assuming the earlier ones kept that choice (the residual carried
    forward with the arithmetic of _Level.residual, so a row's values equal what a pass over that level alone gives).
    One pass over the vectors computes it for every level; a level's repair moves only its overflow rows off their
    first choice, and only those rows' later levels are computed again (start = the next level)."""

    def __init__(self, model, start: int = 0):
        cfg = model.config
        self.levels = model.levels
        self.exact = self.exact_levels(model)
        self.codebooks = [np.ascontiguousarray(c) for c in model.codebooks]
        self.prices = [None if not e else np.zeros(c.shape[0], np.float32) if p is None else
                       np.asarray(p, np.float32) for c, p, e in zip(self.codebooks, model.prices, self.exact)]
        self.start, self.dim, self.block_rows, self.device = start, model.dim, cfg.block_rows, cfg.device

    @staticmethod
    def exact_levels(model) -> List[bool]:
        return [model.config.balance_for(lvl) == "exact" for lvl in range(model.levels)]

    def fields(self) -> list:
        out = []
        for lvl in range(self.start, self.levels):
            out += [T.StructField(_f(lvl), T.IntegerType()), T.StructField(_g(lvl), T.DoubleType())]
        return out

    def setup(self, dev):
        return ([torch.from_numpy(c).to(dev) for c in self.codebooks],
                [None if p is None else torch.from_numpy(p).to(dev) for p in self.prices])

    def kernel(self, ctx, x: torch.Tensor, batch: pa.RecordBatch) -> dict:
        cbs, prs = ctx
        r = x.clone()
        if self.start:
            codes = _prefix_codes(batch, self.start).to(x.device)
            for lvl in range(self.start):
                r -= cbs[lvl][codes[:, lvl]]
        return self.from_residual(ctx, r)

    def from_residual(self, ctx, r: torch.Tensor) -> dict:
        """The chain columns from the residual `r` left by the levels before `start` (r is consumed)."""
        cbs, prs = ctx
        out = {}
        for lvl in range(self.start, self.levels):
            if self.exact[lvl]:
                codes, cost = km.assign(r, cbs[lvl], prs[lvl], self.block_rows, topk=2)
                first = codes[:, 0]
                out[_g(lvl)] = (cost[:, 1] - cost[:, 0]).to(torch.float64)
            else:
                first = km.nearest(r, cbs[lvl], None, self.block_rows)
                out[_g(lvl)] = torch.zeros(len(r), dtype=torch.float64, device=r.device)
            out[_f(lvl)] = first
            if lvl + 1 < self.levels:
                r -= cbs[lvl][first]
        return out

    def partition(self, rows_schema: T.StructType, reason_col: Optional[str] = None, packed: bool = False) -> tuple:
        """(schema, partition function) adding this chain's columns to rows of `rows_schema` (with _vec; rows whose
        reason_col is set get nulls), for a caller that makes its own batches (the direct Parquet read).
        packed: _vec leaves as binary (vectors.pack_vectors; null for a rejected row), which the JVM takes in one
        copy per row, for the table the balanced levels cache and read their few rows from."""
        schema = T.StructType(rows_schema.fields + self.fields())
        inner = block_partition(schema, self.kernel, dim=self.dim, setup=self.setup, device=self.device,
                                reason_col=reason_col)
        if not packed:
            return schema, inner
        out_schema = T.StructType([T.StructField(VEC, T.BinaryType(), True) if f.name == VEC else f
                                   for f in schema.fields])
        dim = self.dim

        def partition(batches):
            for b in inner(batches):
                vec = b.column(b.schema.get_field_index(VEC))
                keep = vec.is_valid().to_numpy(zero_copy_only=False)
                if reason_col is not None:
                    keep &= b.column(b.schema.get_field_index(reason_col)).is_null().to_numpy(zero_copy_only=False)
                cols = [pack_vectors(vec, keep, dim) if name == VEC else b.column(i)
                        for i, name in enumerate(b.schema.names)]
                yield pa.RecordBatch.from_arrays(cols, names=b.schema.names)

        return out_schema, partition

    def map(self, rows: DataFrame, reason_col: Optional[str] = None, packed: bool = False) -> DataFrame:
        schema, fn = self.partition(rows.schema, reason_col, packed)
        return rows.mapInArrow(fn, schema)


def chained_rows(rows: DataFrame, model, reason_col: Optional[str] = None) -> DataFrame:
    """rows (with _vec) + the chain columns of every level: what encode_balanced(..., chained=True) takes."""
    return _Chain(model).map(rows, reason_col)


def _prefix(s: DataFrame, id_col: str, level: int) -> DataFrame:
    """(id, _codes): the final codes of the levels before `level`, as the kernels' prefix column."""
    codes = F.array(*[F.col(_c(lvl)) for lvl in range(level)]) if level else F.array()
    return s.select(id_col, codes.cast(T.ArrayType(T.IntegerType())).alias(CODES))


def _next_exact(exact: List[bool], level: int) -> Optional[int]:
    return next((lvl for lvl in range(level + 1, len(exact)) if exact[lvl]), None)


def _cut_counting(df: DataFrame, level: Optional[int], k: int, cached: Optional[list] = None) -> tuple:
    """(df materialized, the per-code counts of its _first<level>) in one job; df as it is, None without a level.
    cached: a list given by a caller that unpersists its tables after its writes; df is then persisted (and added
    to it) instead of checkpointed: its lineage (the cached table before, a broadcast join) recomputes a lost
    executor's partitions cheaply, and a reliable checkpoint would write every row once more."""
    if level is None:
        return df, None
    if cached is not None:
        df, counts = cache_with(df, lambda rows: _code_counts(rows, _f(level), k))
        cached.append(df)
        return df, counts
    return materialize_with(df, lambda cut: _code_counts(cut, _f(level), k))


def balance_level(t: DataFrame, s: DataFrame, id_col: str, model, level: int, n: int, stats: dict,
                  counts: np.ndarray, cached: Optional[list] = None) -> tuple:
    """One balanced level over the narrow table `s` (id, _id_hash, final codes of the earlier levels, chain columns
    of this and the later levels) whose first choices at this level are `counts` (K-sized); `t` (id, _id_hash,
    _vec) gives the vectors of the few rows the repair needs.
    Returns (`s` with this level's exactly balanced code (_code<level>) and the later levels' chain columns updated
    for the rows the repair moved, materialized when a balanced level follows; that level's first-choice counts,
    from the same job, or None)."""
    spark = s.sparkSession
    started = time.perf_counter()
    cfg = model.config
    lv = _Level(model.codebooks, level, model.dim, cfg.block_rows, cfg.device)
    max_rounds = cfg.balance_repair_rounds
    k = lv.codebooks[-1].shape[0]
    prices = model.prices[level]
    prices = np.zeros(k, np.float32) if prices is None else np.asarray(prices, np.float32)
    first = _f(level)
    caps = bal.capacities(n, k, counts)
    base_cols = [id_col, HASH, VEC, CODES]
    free = caps - np.minimum(counts, caps)
    n_over = n_overflow = int(np.clip(counts - caps, 0, None).sum())
    stats.setdefault("overflow", []).append(n_over)
    repaired: List[DataFrame] = []
    prefix = overflow = None
    if n_over:
        # The ranking shuffles (id, hash, first choice, regret) only: the first cap_k of each first choice keep it,
        # and only the overflow rows (typically a few percent) are read with their vectors, for the repair.
        by_code = Window.partitionBy(first).orderBy(F.col(_g(level)).desc(), F.col(HASH), F.col(id_col))
        # Only the codes chosen first by more items than they hold are ranked (the join keeps their rows only).
        prefix = materialize(_prefix(
            s.select(id_col, HASH, first, _g(level), *[_c(lvl) for lvl in range(level)])
            .join(_caps_frame(spark, caps, first, only=counts > caps), on=first)
            .withColumn("_rank", F.row_number().over(by_code)).where(F.col("_rank") > F.col("_room")),
            id_col, level))
        overflow = t.select(id_col, HASH, VEC).join(_maybe_broadcast(prefix, n_over), on=id_col).select(*base_cols)
    log.info("encode level %d (balanced): ranking done (%.0f s): %d of %d items overflow their first choice; up to "
             "%d repair rounds follow", level + 1, time.perf_counter() - started, n_over, n,
             max_rounds if n_over else 0)
    progress = Progress(log, f"encode level {level + 1} (balanced): repair round", max_rounds, early_stop=True)
    rounds = 0
    local = 0
    later = [c for lvl in range(level + 1, model.levels) for c in (_f(lvl), _g(lvl))]
    tail = _Chain(model, level + 1) if later else None
    with_tails = False
    while n_over > 0 and rounds < max_rounds:
        if n_over <= local_repair_rows(k, lv.dim):
            # Few enough to place in one task: the same rounds (kernels.balance.repair), one job instead of many;
            # placed at once, the rows' later levels come from the same task.
            with_tails = rounds == 0
            repaired.append(local_repair(overflow, id_col, lv, prices, free, max_rounds - rounds,
                                         tail if with_tails else None))
            log.info("encode level %d (balanced): the %d items left go to one task (the rounds there, no more "
                     "distributed rounds)", level + 1, n_over)
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
        repaired.append(ranked.where(F.col("_ok")).select(id_col, F.col(CHOICE).alias(CODE)))
        free = free - accepted_counts
        overflow = ranked.where(~F.col("_ok")).select(*base_cols)
        progress.step(rounds, f"{n_over} items still without room", geometric_steps_left(waiting, n_over))
    if n_over > 0:
        repaired.append(slot_fallback(overflow, free, [id_col], id_col))
    stats.setdefault("repair_rounds", []).append(rounds)
    stats.setdefault("fallback_items", []).append(int(n_over))
    stats.setdefault("local_repair_items", []).append(int(local))
    code = F.col(first)
    cols = [F.col(c) for c in later]
    if repaired:
        fixed = repaired[0]
        for part in repaired[1:]:
            fixed = fixed.unionByName(part)
        # Every overflow row has exactly one repaired code, never its first choice (that code is full); every other
        # row keeps its first choice, and its chain columns of the later levels. Joins with the overflow are
        # broadcast ones while it is small.
        if later and not with_tails:
            fixed = materialize(fixed)  # read twice below
            moved = prefix.join(fixed, on=id_col).select(
                id_col, F.concat(CODES, F.array(F.col(CODE))).alias(CODES))
            rows = t.select(id_col, VEC).join(_maybe_broadcast(moved, n_overflow), on=id_col)
            fixed = materialize(fixed.join(tail.map(rows).select(id_col, *later), on=id_col))
        fixed = fixed.select(id_col, CODE, *[F.col(c).alias("_new" + c) for c in later])
        s = s.join(_maybe_broadcast(fixed, n_overflow), on=id_col, how="left")
        code = F.coalesce(F.col(CODE), F.col(first))
        cols = [F.coalesce(F.col("_new" + c), F.col(c)).alias(c) for c in later]
    done = [F.col(_c(lvl)) for lvl in range(level)]
    out = s.select(id_col, HASH, *done, code.alias(_c(level)), *cols)
    # The next balanced level reads it several times, starting with its first-choice counts (the job that computes
    # it); after the last one, it goes to its one writer.
    nxt = _next_exact(_Chain.exact_levels(model), level)
    out, nxt_counts = _cut_counting(out, nxt, 0 if nxt is None else int(model.codebooks[nxt].shape[0]), cached)
    stats.setdefault("seconds", []).append(time.perf_counter() - started)
    return out, nxt_counts


# Overflow rows the repair places in one task once that few remain: their distances to every code (float32) and the
# float64 costs of the rows a repair round moves, with its copy, stay within ~3 x 2^24 x 8 bytes (400 MB): 65,536
# rows at K = 256, 2,048 at K = 8,192.
LOCAL_REPAIR_ENTRIES = 1 << 24


def local_repair_rows(k: int, dim: int) -> int:
    return LOCAL_REPAIR_ENTRIES // max(k, dim)


def local_repair(overflow: DataFrame, id_col: str, lv: "_Level", prices: np.ndarray, free: np.ndarray,
                 max_rounds: int, tail: Optional[_Chain] = None) -> DataFrame:
    """The overflow rows (at most local_repair_rows of them) placed by the repair rounds in one task: the rows are
    ordered by (id hash, id), so the result does not depend on how they arrived; applicants are ranked by (cost,
    id hash, id) as in the distributed rounds, and the same slot fallback follows `max_rounds` rounds. Returns
    (id, _code) for every overflow row, plus `tail`'s chain columns (the later levels from the placed code's
    residual) when given."""
    fields = [overflow.schema[id_col], T.StructField(CODE, T.IntegerType(), False)]
    schema = T.StructType(fields + (tail.fields() if tail is not None else []))
    level_prices = np.asarray(prices, np.float64)
    room = np.asarray(free, np.int64)

    def setup(dev):
        return lv.setup(dev), [], (tail.setup(dev) if tail is not None else None)

    def kernel(ctx, x, batch):
        cbs, store, _ = ctx
        store.append((lv.residual(cbs, x, batch).cpu(), batch.column(batch.schema.get_field_index(id_col)),
                      batch.column(batch.schema.get_field_index(HASH)).to_numpy()))
        return None

    def finish(ctx):
        cbs, store, tail_ctx = ctx
        if not store:
            return None
        r = torch.cat([s[0] for s in store])
        ids = pa.concat_arrays([s[1] for s in store])
        hashes = np.concatenate([s[2] for s in store])
        order = np.lexsort((np.arange(len(hashes)), ids.to_numpy(zero_copy_only=False), hashes))
        r = r[torch.from_numpy(order)]
        # The float64 costs of the rows each round moves, not the dense (rows, K) matrix (twice, before).
        costs = bal.PricedDistances(km.distances(r, cbs[-1].cpu(), block_rows=lv.block_rows), level_prices)
        codes, _ = bal.repair(costs, hashes[order], room, max_rounds)
        out = {id_col: ids.take(pa.array(order)), CODE: codes}
        if tail is not None:
            r -= cbs[-1].cpu()[torch.as_tensor(np.asarray(codes, np.int64))]
            out.update({k: v.cpu() for k, v in tail.from_residual(tail_ctx, r.to(cbs[-1].device)).items()})
        return out

    return map_blocks(overflow.repartition(1), schema, kernel, dim=lv.dim, setup=setup, device=lv.device,
                      finish=finish)


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


def encode_balanced(valid: DataFrame, model, stats: Optional[dict] = None, chained: bool = False,
                    n: Optional[int] = None, narrow: bool = False, cached: Optional[list] = None) -> DataFrame:
    """(id, sid) for every row of `valid` (id, _vec, _id_hash), with exact capacities at every balanced level.
    model: an `encode.Quantizer` (reach it through `encode.encode_valid`).

    chained: `valid` already holds the chain columns (chained_rows) and reads a materialized table (the encode
    command computes them in its one read of the input); else one pass over the vectors computes and materializes
    them here. n: the number of rows of `valid`, when the caller has counted them. narrow (with chained): `valid` is
    a filter and projection of a cached table (no shuffle in its lineage), so the first level reads its columns
    from that cache, with no cut of its own. cached (with chained): a list that gets the narrow per-level tables,
    persisted instead of checkpointed; the caller unpersists them once it has written the result.

    Full passes over the vectors: that one. Per balanced level: a ranking over (id, hash, first choice, regret) and,
    for the overflow rows only, the repair and their later levels' chain columns."""
    stats = {} if stats is None else stats
    cfg = model.config
    id_col = cfg.id_col
    chain = _Chain(model)
    t = valid if chained else materialize(chain.map(valid.select(id_col, HASH, VEC), packed=True))
    chain_cols = [f.name for f in chain.fields()]
    first = _next_exact(chain.exact, -1)
    k0 = 0 if first is None else int(model.codebooks[first].shape[0])
    s = t.select(id_col, HASH, *chain_cols)
    if chained and narrow:
        counts = None if first is None else _code_counts(s, _f(first), k0)
    else:
        s, counts = _cut_counting(s, first, k0, cached if chained else None)
    if n is None:
        n = s.count() if counts is None else int(counts.sum())
    stats["n_items"] = n
    stats["passes"] = [1] + [0] * (model.levels - 1)
    for level in range(model.levels):
        k = int(model.codebooks[level].shape[0])
        if chain.exact[level] and n < k:
            from ..errors import InputError

            raise InputError(f"N < K: {n} valid items cannot fill codebook_size={k} codes with balance=exact")
    for level in range(model.levels):
        if chain.exact[level]:
            s, counts = balance_level(t, s, id_col, model, level, n, stats, counts, cached if chained else None)
        else:
            s = s.withColumnRenamed(_f(level), _c(level)).drop(_g(level))
    return s.select(id_col, F.array(*[F.col(_c(lvl)) for lvl in range(model.levels)]).alias(cfg.sid_col))
