"""Unique SIDs on Spark: suffix (TIGER) and capacity-bounded reassignment (FORGE), incremental encoding against an
existing SID table, and the atomic writer of deduplicated SID tables.

Every order is total and data-only — (distance, stable id hash, id) — so the result is the same whatever the
partitioning. Reassignment runs in rounds of window functions over checkpointed, shrinking tables: the driver
only learns one number per round (how many items moved). The checkpoints are `storage.materialize`'s: reliable
inside a command (`io.output_checkpoints`), so a lost executor costs a recomputation, not the job.

Suffix column: the L codebook codes stay in `sid` (so a SID always reconstructs through the codebooks) and the
disambiguating token goes in a separate int column `<sid_col>_suffix`; the unique key is (sid, suffix).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from ..errors import ArtifactError, InputError
from ..storage import materialize
from ..kernels import dedup as kd
from .encode import Quantizer
from .prepare import HASH, VEC
from .runner import Block, code_matrix, map_blocks
from .sid_table import suffix_col_name

log = logging.getLogger("sid_spark.dedup")

DEFAULT_ALTERNATIVES = 64
DEFAULT_MAX_ROUNDS = 100

# squared reconstruction error of the item under its first SID / its final SID, and ||x||^2
ERR_FIRST, ERR_FINAL, NORM = "_err_first", "_err_final", "_norm_sq"
# an alternative: its rank (nearest first), last-level code, the SID it targets, its squared error; and how many
# items a target SID already holds
RANK, CODE, ALT_ERR, TARGET, OCCUPIED = "_alt_rank", "_alt_code", "_alt_err", "_target_sid", "_occupied"
MOVED, OVERFLOW = "_moved", "_overflow"
F_PLACED, F_MAX = "_f_placed", "_f_max"


@dataclass
class DedupResult:
    sids: DataFrame  # id, sid, suffix (incremental: existing rows + new ones)
    detail: Optional[DataFrame]  # resolved items: id, sid, suffix, _moved, _overflow, and the errors
    mode: str
    capacity: int
    rounds: int = 0
    seconds: float = 0.0
    suffix_col: Optional[str] = None
    extra: dict = field(default_factory=dict)

    def report(self) -> dict:
        """One aggregation over the resolved items: moved / suffixed counts, largest suffix, rel. error."""
        out = {"dedup": self.mode, "sid_capacity": self.capacity, "rounds": self.rounds,
               "dedup_seconds": round(self.seconds, 3), **self.extra}
        if self.detail is None:
            return out
        s = self.suffix_col
        row = self.detail.agg(  # driver-ok: one row of totals
            F.count(F.lit(1)).alias("n"), F.sum(F.col(MOVED).cast("long")).alias("moved"),
            F.sum(F.col(OVERFLOW).cast("long")).alias("overflow"),
            F.sum((F.col(s) > 0).cast("long")).alias("suffixed"), F.max(s).alias("largest"),
            F.sum(ERR_FIRST).alias("e0"), F.sum(ERR_FINAL).alias("e1"), F.sum(NORM).alias("norm")).first()
        n = int(row["n"])
        norm = float(row["norm"] or 0.0)
        out.update({"items_resolved": n, "items_moved": int(row["moved"] or 0),
                    "items_unplaced": int(row["overflow"] or 0), "items_suffixed": int(row["suffixed"] or 0),
                    "largest_suffix": int(row["largest"]) if row["largest"] is not None else 0,
                    "rel_error_before": float(row["e0"]) / norm if norm else None,
                    "rel_error_after": float(row["e1"]) / norm if norm else None})
        out["fraction_moved"] = out["items_moved"] / n if n else 0.0
        out["fraction_suffixed"] = out["items_suffixed"] / n if n else 0.0
        return out


# ---- per-partition distance passes ---------------------------------------------------------------------------
def _distance_rows(items: DataFrame, codebooks, id_col: str, sid_col: str, dim: int) -> DataFrame:
    """(id, sid, _id_hash, _vec) -> (id, sid, _id_hash, _err_first = ||x - x_hat||^2, _norm_sq = ||x||^2)."""
    keep = items.select(id_col, sid_col, HASH)
    schema = T.StructType(list(keep.schema.fields) + [T.StructField(ERR_FIRST, T.DoubleType(), False),
                                                       T.StructField(NORM, T.DoubleType(), False)])
    levels = len(codebooks)

    def kernel(_ctx, x, batch):
        x = x.numpy()
        sid = code_matrix(batch.column(batch.schema.get_field_index(sid_col)), levels)
        return {ERR_FIRST: kd.reconstruction_sq_error(x, sid, codebooks),
                NORM: np.square(x.astype(np.float64)).sum(axis=1)}

    return map_blocks(items.select(id_col, sid_col, HASH, VEC), schema, kernel, dim=dim, device="cpu")


def _alternative_rows(pending: DataFrame, codebooks, id_col: str, sid_col: str, dim: int, topk: int,
                      block_rows: int) -> DataFrame:
    """(id, sid, hash, _vec) -> one row per alternative: (id, hash, rank, target SID, its error), nearest first."""
    levels = len(codebooks)
    schema = T.StructType([pending.schema[id_col], pending.schema[sid_col], pending.schema[HASH],
                           T.StructField(RANK, T.IntegerType(), False), T.StructField(CODE, T.IntegerType(), False),
                           T.StructField(ALT_ERR, T.DoubleType(), False)])

    def kernel(_ctx, x, batch):
        sid = code_matrix(batch.column(batch.schema.get_field_index(sid_col)), levels)
        codes, dist = kd.last_level_alternatives(x.numpy(), sid, codebooks, topk, block_rows)
        n, m = codes.shape
        if m == 0:
            return None
        return Block({RANK: np.tile(np.arange(m, dtype=np.int32), n), CODE: codes.reshape(-1),
                      ALT_ERR: dist.reshape(-1)}, rows=np.repeat(np.arange(n), m))

    rows = map_blocks(pending.select(id_col, sid_col, HASH, VEC), schema, kernel, dim=dim, device="cpu")
    target = F.concat(F.slice(F.col(sid_col), 1, levels - 1), F.array(F.col(CODE)))
    return rows.select(id_col, HASH, RANK, target.alias(TARGET), ALT_ERR)


# ---- the resolver ----------------------------------------------------------------------------------------------
def resolve_collisions(items: DataFrame, model: Quantizer, mode: str, capacity: int = 1,
                       fixed: Optional[DataFrame] = None,
                       alternatives: int = DEFAULT_ALTERNATIVES, max_rounds: int = DEFAULT_MAX_ROUNDS) -> DedupResult:
    """Give every row of `items` (id, sid, _id_hash, _vec) a suffix so that (sid, suffix) is unique, also against the
    `fixed` rows (id, sid, suffix) of an existing table, which never change.

    mode "suffix": the suffix is the item's rank in its SID group by (||x - x_hat||^2, _id_hash, id), after the
    fixed rows of that group. mode "reassign": each SID keeps its `capacity` nearest items; the others move, in
    rounds, to their nearest alternative last-level code whose SID still has room (a SID with room takes its
    nearest proposers first); what cannot be placed keeps its SID with a suffix >= capacity.
    """
    if mode not in ("suffix", "reassign"):
        raise ValueError(f"dedup mode must be 'suffix' or 'reassign', got {mode!r}")
    t0 = time.time()
    cfg = model.config
    id_col, sid_col, sfx = cfg.id_col, cfg.sid_col, suffix_col_name(cfg.sid_col)
    codebooks = [np.ascontiguousarray(c, dtype=np.float32) for c in model.codebooks]
    base = materialize(_distance_rows(items, codebooks, id_col, sid_col, model.dim))

    fstats = None
    if fixed is not None:
        fstats = fixed.groupBy(sid_col).agg(
            F.sum((F.col(sfx) < capacity).cast("long")).alias(F_PLACED), F.max(sfx).cast("long").alias(F_MAX))

    def with_fixed(df: DataFrame, on: str) -> DataFrame:
        if fstats is None:
            return df.withColumn(F_PLACED, F.lit(0).cast("long")).withColumn(F_MAX, F.lit(-1).cast("long"))
        stats = fstats.withColumnRenamed(sid_col, on) if on != sid_col else fstats
        return (df.join(stats, on=on, how="left")
                .withColumn(F_PLACED, F.coalesce(F.col(F_PLACED), F.lit(0).cast("long")))
                .withColumn(F_MAX, F.coalesce(F.col(F_MAX), F.lit(-1).cast("long"))))

    in_group = Window.partitionBy(sid_col).orderBy(ERR_FIRST, HASH, id_col)
    ranked = with_fixed(base, sid_col).withColumn("_r", F.row_number().over(in_group) - 1)
    rounds = 0
    if mode == "suffix":
        detail = ranked.select(id_col, sid_col, (F.col(F_MAX) + 1 + F.col("_r")).cast("int").alias(sfx),
                               F.lit(False).alias(MOVED), F.lit(False).alias(OVERFLOW),
                               ERR_FIRST, F.col(ERR_FIRST).alias(ERR_FINAL), NORM)
    else:
        ranked = ranked.withColumn("_placed", F.col(F_PLACED) + F.col("_r") < capacity).drop(F_PLACED, F_MAX)
        ranked = materialize(ranked)
        moved, rounds = _reassign_rounds(ranked, items, codebooks, model, capacity, fstats, alternatives,
                                         max_rounds)
        det = (ranked.join(moved, on=id_col, how="left")
               .withColumn(MOVED, F.col(TARGET).isNotNull())
               .withColumn(OVERFLOW, ~F.col("_placed") & F.col(TARGET).isNull())
               .withColumn(ERR_FINAL, F.coalesce(F.col(ALT_ERR), F.col(ERR_FIRST)))
               .withColumn(sid_col, F.coalesce(F.col(TARGET), F.col(sid_col))))
        det = with_fixed(det, sid_col)
        by_sid = Window.partitionBy(sid_col, OVERFLOW).orderBy(ERR_FINAL, HASH, id_col)
        rn = F.row_number().over(by_sid) - 1
        suffix = F.when(F.col(OVERFLOW), F.greatest(F.lit(capacity).cast("long"), F.col(F_MAX) + 1) + rn) \
            .otherwise(F.col(F_PLACED) + rn)
        detail = det.select(id_col, sid_col, suffix.cast("int").alias(sfx), MOVED, OVERFLOW, ERR_FIRST, ERR_FINAL, NORM)
    detail = materialize(detail)
    return DedupResult(sids=detail.select(id_col, sid_col, sfx), detail=detail, mode=mode, capacity=capacity,
                       rounds=rounds, seconds=time.time() - t0, suffix_col=sfx)


def _reassign_rounds(ranked: DataFrame, items: DataFrame, codebooks, model: Quantizer, capacity: int,
                     fstats: Optional[DataFrame], alternatives: int, max_rounds: int):
    """-> (moved: id, target SID, its error for every item that found a new SID; rounds run)."""
    cfg = model.config
    id_col, sid_col = cfg.id_col, cfg.sid_col
    pending = ranked.where(~F.col("_placed")).select(id_col, sid_col, HASH)
    pending = pending.join(items.select(id_col, VEC), on=id_col)
    alts = materialize(_alternative_rows(pending, codebooks, id_col, sid_col, model.dim, alternatives,
                                         cfg.block_rows))

    # Occupancy of every SID an alternative points at: placed new items + placed fixed rows.
    occ = ranked.where(F.col("_placed")).groupBy(F.col(sid_col).alias(TARGET)).agg(F.count(F.lit(1)).alias("_n"))
    occ = alts.select(TARGET).distinct().join(occ, on=TARGET, how="left")
    if fstats is not None:
        occ = occ.join(fstats.select(F.col(sid_col).alias(TARGET), F.col(F_PLACED)), on=TARGET, how="left")
    else:
        occ = occ.withColumn(F_PLACED, F.lit(0).cast("long"))
    occ = occ.select(TARGET, (F.coalesce("_n", F.lit(0)) + F.coalesce(F_PLACED, F.lit(0))).alias(OCCUPIED))
    occ = materialize(occ.where(F.col(OCCUPIED) < capacity))
    alts = materialize(alts.join(occ.select(TARGET), on=TARGET, how="left_semi"))

    moved_parts = []
    rounds = 0
    nearest_free = Window.partitionBy(id_col).orderBy(RANK)
    nearest_proposer = Window.partitionBy(TARGET).orderBy(ALT_ERR, HASH, id_col)
    while rounds < max_rounds:
        proposals = (alts.join(occ, on=TARGET).withColumn("_c", F.row_number().over(nearest_free))
                     .where(F.col("_c") == 1))
        accepted = materialize(proposals.withColumn("_a", F.row_number().over(nearest_proposer))
                               .where(F.col("_a") <= capacity - F.col(OCCUPIED)).select(id_col, TARGET, ALT_ERR))
        n = accepted.count()  # driver-ok: one number per round
        if n == 0:
            break
        rounds += 1
        log.info("reassign round %d: %d items moved", rounds, n)
        moved_parts.append(accepted)
        got = accepted.groupBy(TARGET).agg(F.count(F.lit(1)).alias("_n"))
        occ = materialize(occ.join(got, on=TARGET, how="left")
                          .select(TARGET, (F.col(OCCUPIED) + F.coalesce("_n", F.lit(0))).alias(OCCUPIED))
                          .where(F.col(OCCUPIED) < capacity))
        alts = materialize(alts.join(accepted.select(id_col), on=id_col, how="left_anti")
                           .join(occ.select(TARGET), on=TARGET, how="left_semi"))
    if not moved_parts:
        spark = ranked.sparkSession
        schema = T.StructType([ranked.schema[id_col], T.StructField(TARGET, ranked.schema[sid_col].dataType),
                               T.StructField(ALT_ERR, T.DoubleType())])
        return spark.createDataFrame([], schema), rounds
    moved = moved_parts[0]
    for part in moved_parts[1:]:
        moved = moved.unionByName(part)
    return moved, rounds


# ---- entry points ----------------------------------------------------------------------------------------------
def check_same_model(manifest: Optional[dict], model: Quantizer, what: str) -> None:
    """Refuse a SID table written by another model artifact (its manifest records the model_id)."""
    if manifest is None:
        raise ArtifactError(f"{what} has no _manifest.json: cannot tell which model wrote it (refusing)")
    if manifest.get("model_id") != model.model_id:
        raise ArtifactError(f"{what} was written by model {manifest.get('model_id')!r}, not by this model "
                            f"{model.model_id!r}: its SIDs mean something else (refusing)")


def check_sid_shape(sids: DataFrame, model: Quantizer, *more):
    """One aggregation: every SID has `levels` codes in [0, K). Returns the row (n and `more` aggregates too)."""
    cfg = model.config
    k = int(model.codebooks[0].shape[0])
    row = sids.agg(F.count(F.lit(1)).alias("n"), F.min(F.size(cfg.sid_col)).alias("lo"),  # driver-ok: one row
                   F.max(F.size(cfg.sid_col)).alias("hi"), F.min(F.array_min(cfg.sid_col)).alias("cmin"),
                   F.max(F.array_max(cfg.sid_col)).alias("cmax"), *more).first()
    if row["lo"] is None:
        return row
    if row["lo"] != model.levels or row["hi"] != model.levels:
        raise InputError(f"SID column '{cfg.sid_col}' holds {row['lo']}..{row['hi']} codes; this model has "
                         f"{model.levels} levels")
    if row["cmin"] < 0 or row["cmax"] >= k:
        raise InputError(f"SID codes {row['cmin']}..{row['cmax']} fall outside [0, {k})")
    return row


def dedup_sids(sids: DataFrame, vectors: DataFrame, model: Quantizer, mode: Optional[str] = None,
               capacity: Optional[int] = None, alternatives: int = DEFAULT_ALTERNATIVES,
               max_rounds: int = DEFAULT_MAX_ROUNDS) -> DedupResult:
    """Deduplicate an encoded SID table. `vectors`: prepared rows (id, _vec, _id_hash), `prepare(df, cfg, dim).valid`.
    Every SID row needs its vector (they are joined by id)."""
    cfg = model.config
    mode = mode or cfg.dedup
    capacity = capacity or cfg.sid_capacity
    if suffix_col_name(cfg.sid_col) in sids.columns:
        raise InputError(f"the SID table already has a '{suffix_col_name(cfg.sid_col)}' column (deduplicated)")
    joined = sids.select(cfg.id_col, cfg.sid_col).join(vectors.select(cfg.id_col, VEC, HASH), on=cfg.id_col,
                                                       how="left")
    row = check_sid_shape(joined, model, F.count(VEC).alias("with_vec"))
    if row["n"] != row["with_vec"]:
        raise InputError(f"{row['n'] - row['with_vec']} of {row['n']} SID rows have no valid vector in the input")
    items = joined.where(F.col(VEC).isNotNull())
    if mode == "none":
        return DedupResult(sids=sids.select(cfg.id_col, cfg.sid_col), detail=None, mode=mode, capacity=capacity)
    return resolve_collisions(items, model, mode, capacity, alternatives=alternatives, max_rounds=max_rounds)
