"""Appending new items to a published SID table: the codebooks are frozen, published rows never change, and at
every balanced level the new items fill the codes toward the grown catalog's capacity.

Capacity rule, per balanced level l with K_l codes, when N_new items join a table of N_old:

    cap_l  = ceil((1 + append_slack) * (N_old + N_new) / K_l)
    room_k = max(0, cap_l - c_k)          c_k: published items whose level-l code is k

Code k takes at most room_k new items. The room always suffices: sum_k room_k >= K_l cap_l - N_old >= N_new.
With append_slack = 0 and a balanced published table (c_k <= ceil(N_old/K_l)) no code ever exceeds
ceil(N_total/K_l), and the room left over is K_l cap_l - N_total < K_l, so no code falls more than that below.
The new items are placed the way a full balanced encode places a catalog (sid_spark.spark.balance), only with
room_k instead of N/K: first choice under the model's prices (codes without room masked), the largest regrets
keep their place up to the room, the rest go in rounds to their nearest code with room left, leftovers fill
the remaining room in hash order. The driver holds K-sized counts only.
"""
from __future__ import annotations

import logging
import math
import time
from typing import List, Optional

import numpy as np
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from ..storage import materialize
from .balance import CHOICE, CODE, CODES, COST, FIRST, REGRET, _Level, candidate_rows, greedy_level, \
    nearest_free_rows, slot_fallback
from .encode import Quantizer
from .prepare import HASH, VEC

log = logging.getLogger("sid_spark.append")


def append_capacity(n_total: int, k: int, slack: float = 0.0) -> int:
    """Most items a code of a balanced level may hold after an append: ceil((1 + slack) * n_total / k)."""
    return int(math.ceil((1.0 + float(slack)) * n_total / k - 1e-9)) if n_total else 0


def code_counts(sids: DataFrame, sid_col: str, sizes: List[int]) -> List[np.ndarray]:
    """Per level, how many rows of `sids` hold each code: one aggregation, sum(K_l) rows to the driver."""
    out = [np.zeros(k, np.int64) for k in sizes]
    rows = (sids.select(F.posexplode(sid_col).alias("_lvl", "_c")).groupBy("_lvl", "_c").count()
            .collect())  # driver-ok: at most sum(K_l) rows
    for r in rows:
        out[r["_lvl"]][r["_c"]] = r["count"]
    return out


def _room_frame(spark, room: np.ndarray, col: str) -> DataFrame:
    return F.broadcast(spark.createDataFrame([(int(i), int(v)) for i, v in enumerate(room)],
                                             T.StructType([T.StructField(col, T.IntegerType()),
                                                           T.StructField("_room", T.LongType())])))


def _accepted_counts(ranked: DataFrame, col: str, k: int):
    acc = np.zeros(k, np.int64)
    waiting = 0
    for row in ranked.groupBy(col).agg(F.sum(F.col("_ok").cast("long")).alias("a"),
                                       F.count(F.lit(1)).alias("n")).collect():  # driver-ok: K rows
        acc[row[0]] = row["a"]
        waiting += row["n"] - row["a"]
    return acc, waiting


def place_level(rows: DataFrame, id_col: str, lv: _Level, prices: Optional[np.ndarray], room: np.ndarray,
                max_rounds: int, stats: dict) -> DataFrame:
    """rows (id, _id_hash, _vec, _codes) -> the same rows with this level's code appended, code k taking at most
    room[k] of them (sum(room) >= rows)."""
    spark = rows.sparkSession
    k = lv.codebooks[-1].shape[0]
    base = np.zeros(k, np.float32) if prices is None else np.asarray(prices, np.float32)
    free = np.asarray(room, np.int64).copy()
    # A code without room is no first choice: its would-be items go straight to their nearest code with room.
    masked = np.where(free > 0, base, np.float32(np.inf)).astype(np.float32)
    cand = materialize(candidate_rows(rows, lv, masked))
    by_code = Window.partitionBy(FIRST).orderBy(F.col(REGRET).desc(), F.col(HASH), F.col(id_col))
    ranked = materialize(cand.withColumn("_rank", F.row_number().over(by_code))
                          .join(_room_frame(spark, free, FIRST), on=FIRST)
                          .withColumn("_ok", F.col("_rank") <= F.col("_room")))
    cols = [id_col, HASH, VEC, CODES]
    placed = [ranked.where(F.col("_ok")).select(*cols, F.col(FIRST).alias(CODE))]
    acc, n_over = _accepted_counts(ranked, FIRST, k)
    free = free - acc
    overflow = ranked.where(~F.col("_ok")).select(*cols)
    first_overflow = n_over
    rounds = 0
    while n_over > 0 and rounds < max_rounds:
        rounds += 1
        applied = nearest_free_rows(overflow, lv, base, free)
        by_choice = Window.partitionBy(CHOICE).orderBy(F.col(COST), F.col(HASH), F.col(id_col))
        ranked = materialize(applied.withColumn("_rank", F.row_number().over(by_choice))
                              .join(_room_frame(spark, free, CHOICE), on=CHOICE)
                              .withColumn("_ok", F.col("_rank") <= F.col("_room")))
        acc, n_over = _accepted_counts(ranked, CHOICE, k)
        placed.append(ranked.where(F.col("_ok")).select(*cols, F.col(CHOICE).alias(CODE)))
        free = free - acc
        overflow = ranked.where(~F.col("_ok")).select(*cols)
    if n_over > 0:  # leftovers, in hash order, fill the remaining room code by code
        placed.append(slot_fallback(overflow, free, cols, id_col))
    stats.setdefault("overflow", []).append(int(first_overflow))
    stats.setdefault("repair_rounds", []).append(rounds)
    stats.setdefault("fallback_items", []).append(int(n_over))
    out = placed[0]
    for part in placed[1:]:
        out = out.unionByName(part)
    return materialize(out.select(id_col, HASH, VEC, F.concat(CODES, F.array(F.col(CODE))).alias(CODES)))


def encode_append(model: Quantizer, new_valid: DataFrame, old_counts: List[np.ndarray], n_old: int, n_new: int,
                  slack: float = 0.0, stats: Optional[dict] = None) -> DataFrame:
    """(id, sid) for the prepared new rows (id, _vec, _id_hash): balanced levels by the capacity rule above against
    the published table's per-level code counts `old_counts`, greedy levels by nearest code."""
    stats = {} if stats is None else stats
    cfg = model.config
    id_col = cfg.id_col
    schema = T.StructType([new_valid.schema[id_col],
                           T.StructField(cfg.sid_col, T.ArrayType(T.IntegerType()), True)])
    if n_new == 0:
        return new_valid.sparkSession.createDataFrame([], schema)
    t0 = time.perf_counter()
    rows = materialize(new_valid.select(id_col, HASH, VEC,
                                         F.array().cast(T.ArrayType(T.IntegerType())).alias(CODES)))
    n_total = n_old + n_new
    for level in range(model.levels):
        lv = _Level(model.codebooks, level, model.dim, cfg.block_rows, cfg.device)
        if cfg.balance_for(level) == "exact":
            k = int(model.codebooks[level].shape[0])
            cap = append_capacity(n_total, k, slack)
            room = np.maximum(cap - old_counts[level], 0)
            stats.setdefault("capacity", []).append(cap)
            rows = place_level(rows, id_col, lv, model.prices[level], room, cfg.balance_repair_rounds, stats)
        else:
            stats.setdefault("capacity", []).append(None)
            rows = greedy_level(rows, lv)
    stats["append_seconds"] = time.perf_counter() - t0
    log.info("appended %d items to %d (capacity per balanced level %s)", n_new, n_old, stats["capacity"])
    return rows.select(id_col, F.col(CODES).alias(cfg.sid_col))
