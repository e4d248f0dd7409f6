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
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from ..errors import ArtifactError, InputError, SidSparkError
from ..storage import materialize
from ..kernels import dedup as kd
from .device import configure_torch_for_task
from .prepare import HASH, VEC, Prepared, prepare
from .vectors import arrow_matrix

log = logging.getLogger("sid_spark.dedup")

FINGERPRINTS = "_fingerprints"
VOCAB = "_vocab.json"
CHANGED_VECTOR = "changed_vector"
DEFAULT_ALTERNATIVES = 64
DEFAULT_MAX_ROUNDS = 100

FP = "_fp"
D0, D, NORM = "_d0", "_d", "_norm"
RANK, CODE, ALT_D, TARGET, OCC = "_rank", "_code", "_alt_d", "_t", "_occ"
MOVED, OVERFLOW = "_moved", "_overflow"
F_PLACED, F_MAX = "_f_placed", "_f_max"


def suffix_col_name(sid_col: str) -> str:
    return f"{sid_col}_suffix"


@dataclass
class DedupResult:
    sids: DataFrame  # id, sid, suffix (incremental: existing rows + new ones)
    detail: Optional[DataFrame]  # resolved items: id, sid, suffix, _moved, _overflow, _d0, _d, _norm
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
            F.sum(D0).alias("e0"), F.sum(D).alias("e1"), F.sum(NORM).alias("norm")).first()
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
def _sid_matrix(arr: pa.Array, levels: int) -> np.ndarray:
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    return arr.flatten().to_numpy(zero_copy_only=False).astype(np.int64).reshape(-1, levels)


def _distance_rows(items: DataFrame, codebooks, id_col: str, sid_col: str, dim: int) -> DataFrame:
    """(id, sid, _h, _vec) -> (id, sid, _h, _d0 = ||x - x_hat||^2, _norm = ||x||^2)."""
    keep = items.select(id_col, sid_col, HASH)
    schema = T.StructType(list(keep.schema.fields) + [T.StructField(D0, T.DoubleType(), False),
                                                       T.StructField(NORM, T.DoubleType(), False)])
    levels = len(codebooks)

    def partition(batches):
        for batch in batches:
            if batch.num_rows == 0:
                continue
            col = batch.schema.get_field_index
            x = arrow_matrix(batch.column(col(VEC)), dim)
            sid = _sid_matrix(batch.column(col(sid_col)), levels)
            d0 = kd.reconstruction_sq_error(x, sid, codebooks)
            norm = np.square(x.astype(np.float64)).sum(axis=1)
            yield pa.RecordBatch.from_arrays(
                [batch.column(col(id_col)), batch.column(col(sid_col)), batch.column(col(HASH)),
                 pa.array(d0, pa.float64()), pa.array(norm, pa.float64())], names=schema.names)

    return items.select(id_col, sid_col, HASH, VEC).mapInArrow(partition, schema)


def _alternative_rows(pending: DataFrame, codebooks, id_col: str, sid_col: str, dim: int, topk: int,
                      block_rows: int) -> DataFrame:
    """(id, sid, _h, _vec) -> one row per alternative: (id, _h, _rank, _t target sid, _alt_d), nearest first."""
    levels = len(codebooks)
    id_field = pending.schema[id_col]
    schema = T.StructType([id_field, pending.schema[sid_col], pending.schema[HASH],
                           T.StructField(RANK, T.IntegerType(), False), T.StructField(CODE, T.IntegerType(), False),
                           T.StructField(ALT_D, T.DoubleType(), False)])

    def partition(batches):
        configure_torch_for_task()
        for batch in batches:
            if batch.num_rows == 0:
                continue
            col = batch.schema.get_field_index
            x = arrow_matrix(batch.column(col(VEC)), dim)
            sid = _sid_matrix(batch.column(col(sid_col)), levels)
            codes, dist = kd.last_level_alternatives(x, sid, codebooks, topk, block_rows)
            n, m = codes.shape
            if m == 0:
                continue
            rep = pa.array(np.repeat(np.arange(n), m))
            yield pa.RecordBatch.from_arrays(
                [batch.column(col(id_col)).take(rep), batch.column(col(sid_col)).take(rep),
                 batch.column(col(HASH)).take(rep), pa.array(np.tile(np.arange(m, dtype=np.int32), n)),
                 pa.array(codes.reshape(-1).astype(np.int32)), pa.array(dist.reshape(-1))], names=schema.names)

    rows = pending.select(id_col, sid_col, HASH, VEC).mapInArrow(partition, schema)
    target = F.concat(F.slice(F.col(sid_col), 1, levels - 1), F.array(F.col(CODE)))
    return rows.select(id_col, HASH, RANK, target.alias(TARGET), ALT_D)


# ---- the resolver ----------------------------------------------------------------------------------------------
def resolve_collisions(items: DataFrame, model, mode: str, capacity: int = 1, fixed: Optional[DataFrame] = None,
                       alternatives: int = DEFAULT_ALTERNATIVES, max_rounds: int = DEFAULT_MAX_ROUNDS) -> DedupResult:
    """Give every row of `items` (id, sid, _h, _vec) a suffix so that (sid, suffix) is unique, also against the
    `fixed` rows (id, sid, suffix) of an existing table, which never change.

    mode "suffix": the suffix is the item's rank in its SID group by (||x - x_hat||^2, _h, id), after the
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

    in_group = Window.partitionBy(sid_col).orderBy(D0, HASH, id_col)
    ranked = with_fixed(base, sid_col).withColumn("_r", F.row_number().over(in_group) - 1)
    rounds = 0
    if mode == "suffix":
        detail = ranked.select(id_col, sid_col, (F.col(F_MAX) + 1 + F.col("_r")).cast("int").alias(sfx),
                               F.lit(False).alias(MOVED), F.lit(False).alias(OVERFLOW),
                               D0, F.col(D0).alias(D), NORM)
    else:
        ranked = ranked.withColumn("_placed", F.col(F_PLACED) + F.col("_r") < capacity).drop(F_PLACED, F_MAX)
        ranked = materialize(ranked)
        moved, rounds = _reassign_rounds(ranked, items, codebooks, model, capacity, fstats, alternatives,
                                         max_rounds)
        det = (ranked.join(moved, on=id_col, how="left")
               .withColumn(MOVED, F.col(TARGET).isNotNull())
               .withColumn(OVERFLOW, ~F.col("_placed") & F.col(TARGET).isNull())
               .withColumn(D, F.coalesce(F.col(ALT_D), F.col(D0)))
               .withColumn(sid_col, F.coalesce(F.col(TARGET), F.col(sid_col))))
        det = with_fixed(det, sid_col)
        by_sid = Window.partitionBy(sid_col, OVERFLOW).orderBy(D, HASH, id_col)
        rn = F.row_number().over(by_sid) - 1
        suffix = F.when(F.col(OVERFLOW), F.greatest(F.lit(capacity).cast("long"), F.col(F_MAX) + 1) + rn) \
            .otherwise(F.col(F_PLACED) + rn)
        detail = det.select(id_col, sid_col, suffix.cast("int").alias(sfx), MOVED, OVERFLOW, D0, D, NORM)
    detail = materialize(detail)
    return DedupResult(sids=detail.select(id_col, sid_col, sfx), detail=detail, mode=mode, capacity=capacity,
                       rounds=rounds, seconds=time.time() - t0, suffix_col=sfx)


def _reassign_rounds(ranked: DataFrame, items: DataFrame, codebooks, model, capacity: int,
                     fstats: Optional[DataFrame], alternatives: int, max_rounds: int):
    """-> (moved: id, _t, _alt_d for every item that found a new SID; rounds run)."""
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
    occ = occ.select(TARGET, (F.coalesce("_n", F.lit(0)) + F.coalesce(F_PLACED, F.lit(0))).alias(OCC))
    occ = materialize(occ.where(F.col(OCC) < capacity))
    alts = materialize(alts.join(occ.select(TARGET), on=TARGET, how="left_semi"))

    moved_parts = []
    rounds = 0
    nearest_free = Window.partitionBy(id_col).orderBy(RANK)
    nearest_proposer = Window.partitionBy(TARGET).orderBy(ALT_D, HASH, id_col)
    while rounds < max_rounds:
        proposals = (alts.join(occ, on=TARGET).withColumn("_c", F.row_number().over(nearest_free))
                     .where(F.col("_c") == 1))
        accepted = materialize(proposals.withColumn("_a", F.row_number().over(nearest_proposer))
                               .where(F.col("_a") <= capacity - F.col(OCC)).select(id_col, TARGET, ALT_D))
        n = accepted.count()  # driver-ok: one number per round
        if n == 0:
            break
        rounds += 1
        log.info("reassign round %d: %d items moved", rounds, n)
        moved_parts.append(accepted)
        got = accepted.groupBy(TARGET).agg(F.count(F.lit(1)).alias("_n"))
        occ = materialize(occ.join(got, on=TARGET, how="left")
                          .select(TARGET, (F.col(OCC) + F.coalesce("_n", F.lit(0))).alias(OCC))
                          .where(F.col(OCC) < capacity))
        alts = materialize(alts.join(accepted.select(id_col), on=id_col, how="left_anti")
                           .join(occ.select(TARGET), on=TARGET, how="left_semi"))
    if not moved_parts:
        spark = ranked.sparkSession
        schema = T.StructType([ranked.schema[id_col], T.StructField(TARGET, ranked.schema[sid_col].dataType),
                               T.StructField(ALT_D, T.DoubleType())])
        return spark.createDataFrame([], schema), rounds
    moved = moved_parts[0]
    for part in moved_parts[1:]:
        moved = moved.unionByName(part)
    return moved, rounds


# ---- entry points ----------------------------------------------------------------------------------------------
def check_same_model(manifest: Optional[dict], model, what: str) -> None:
    """Refuse a SID table written by another model artifact (its manifest records the model_id)."""
    if manifest is None:
        raise ArtifactError(f"{what} has no _manifest.json: cannot tell which model wrote it (refusing)")
    if manifest.get("model_id") != model.model_id:
        raise ArtifactError(f"{what} was written by model {manifest.get('model_id')!r}, not by this model "
                            f"{model.model_id!r}: its SIDs mean something else (refusing)")


def check_sid_shape(sids: DataFrame, model, *more):
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


def dedup_sids(sids: DataFrame, vectors: DataFrame, model, mode: Optional[str] = None,
               capacity: Optional[int] = None, alternatives: int = DEFAULT_ALTERNATIVES,
               max_rounds: int = DEFAULT_MAX_ROUNDS) -> DedupResult:
    """Deduplicate an encoded SID table. `vectors`: prepared rows (id, _vec, _h) — `prepare(df, cfg, dim).valid`.
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


def fingerprints(valid: DataFrame, id_col: str) -> DataFrame:
    """(id, _fp): a 64-bit hash of each prepared vector, kept beside a SID table to detect changed vectors."""
    return valid.select(id_col, F.xxhash64(VEC).alias(FP))


@dataclass
class IncrementalResult:
    result: DedupResult  # .sids is the complete table (existing + new)
    rejects: DataFrame  # new input's rejects + ids already present with a different vector
    fingerprints: DataFrame
    changed_checked: bool
    new_sids: Optional[DataFrame] = None  # (id, sid) of the new items as encoded, before dedup
    new_valid: Optional[DataFrame] = None  # prepared rows of the new items
    old_valid: Optional[DataFrame] = None  # prepared rows of the input's items already in the table
    old_counts: Optional[list] = None  # per level, (K,) code counts of the existing table
    n_old: int = 0
    n_new: int = 0
    stats: dict = field(default_factory=dict)


def encode_incremental(model, new_df: DataFrame, existing: DataFrame, existing_manifest: Optional[dict],
                       existing_fingerprints: Optional[DataFrame] = None,
                       alternatives: int = DEFAULT_ALTERNATIVES,
                       max_rounds: int = DEFAULT_MAX_ROUNDS, append_slack: float = 0.0) -> IncrementalResult:
    """Encode the ids of `new_df` that `existing` lacks; existing rows are returned unchanged, new SIDs are unique
    against them under the model's dedup mode. Ids present in both with another vector (by fingerprint) are
    reported as rejects with reason 'changed_vector' and keep their existing SID.

    Balanced levels place the new items by the append capacity rule (sid_spark.spark.append): any number of new
    items, none included (then the table comes back as it was)."""
    from .append import code_counts, encode_append

    cfg = model.config
    id_col, sid_col, sfx = cfg.id_col, cfg.sid_col, suffix_col_name(cfg.sid_col)
    check_same_model(existing_manifest, model, "the existing SID table")
    mode, capacity = cfg.dedup, cfg.sid_capacity
    old_mode = existing_manifest.get("dedup", "none")
    if old_mode != mode:
        raise SidSparkError(f"the existing SID table was written with dedup={old_mode!r}; this run has "
                            f"dedup={mode!r} (set --set dedup={old_mode} to extend it)")
    if mode == "reassign" and int(existing_manifest.get("sid_capacity", capacity)) != capacity:
        raise SidSparkError(f"the existing SID table was written with sid_capacity="
                            f"{existing_manifest.get('sid_capacity')}; this run has {capacity}")
    if (sfx in existing.columns) != (mode != "none"):
        raise InputError(f"the existing SID table's columns {existing.columns} do not match dedup={mode!r}")
    check_sid_shape(existing, model)
    old_counts = code_counts(existing, sid_col, [int(c.shape[0]) for c in model.codebooks])
    n_old = int(old_counts[0].sum())

    prepared = prepare(new_df, cfg, dim=model.dim)
    ex_ids = existing.select(id_col)
    new_only = materialize(prepared.valid.join(ex_ids, on=id_col, how="left_anti"))
    old_valid = prepared.valid.join(ex_ids, on=id_col, how="left_semi")
    n_new = new_only.count()
    changed_checked = existing_fingerprints is not None
    rejects = prepared.rejects
    if changed_checked:
        overlap = fingerprints(old_valid, id_col)
        old_fp = existing_fingerprints.select(id_col, F.col(FP).alias("_old"))
        changed = overlap.join(old_fp, on=id_col).where(F.col(FP) != F.col("_old"))
        rejects = rejects.unionByName(changed.select(id_col, F.lit(CHANGED_VECTOR).alias("reason")))
    else:
        log.warning("the existing SID table has no %s: ids already present are not checked for changed vectors",
                    FINGERPRINTS)

    stats: dict = {}
    if any(cfg.balance_for(level) == "exact" for level in range(model.levels)):
        encoded = encode_append(model, new_only, old_counts, n_old, n_new, append_slack, stats)
    else:
        encoded = model.encode_prepared(Prepared(new_only, prepared.rejects.limit(0), model.dim)).sids
        encoded = materialize(encoded)
    id_type = existing.schema[id_col].dataType
    if mode == "none" or n_new == 0:
        res = DedupResult(sids=encoded, detail=None, mode=mode, capacity=capacity)
        if mode != "none":
            res.sids = encoded.withColumn(sfx, F.lit(None).cast("int"))
    else:
        items = encoded.join(new_only, on=id_col)
        res = resolve_collisions(items, model, mode, capacity, fixed=existing.select(id_col, sid_col, sfx),
                                 alternatives=alternatives, max_rounds=max_rounds)
    new_rows = res.sids.select([F.col(f.name).cast(f.dataType) if f.name in (id_col, sfx) else F.col(f.name)
                                for f in existing.schema.fields])
    res.sids = existing.unionByName(new_rows)
    new_fp = fingerprints(new_only, id_col).withColumn(id_col, F.col(id_col).cast(id_type))
    fps = new_fp if existing_fingerprints is None else existing_fingerprints.select(id_col, FP).unionByName(new_fp)
    return IncrementalResult(res, rejects, fps, changed_checked, new_sids=encoded, new_valid=new_only,
                             old_valid=old_valid, old_counts=old_counts, n_old=n_old, n_new=n_new, stats=stats)


# ---- writing a SID table ------------------------------------------------------------------------------------
def count_written(table: DataFrame, rejects: DataFrame, id_col: str, existing_ids: Optional[DataFrame],
                  valid_ids: DataFrame) -> dict:
    """Items encoded and already present, counted from a written SID table (one aggregation): encoded = rows
    whose id is not in `existing_ids` (the table extended; None: nothing); already present = rows from the
    existing table whose id is among the input's `valid_ids` and not rejected as changed_vector."""
    old = (existing_ids.select(id_col).distinct().withColumn("_old", F.lit(True)) if existing_ids is not None
           else None)
    inp = valid_ids.select(id_col).distinct().withColumn("_in", F.lit(True))
    changed = (rejects.where(F.col("reason") == CHANGED_VECTOR).select(id_col).distinct()
               .withColumn("_changed", F.lit(True)))
    rows = table.select(id_col)
    if old is None:
        rows = rows.withColumn("_old", F.lit(None).cast("boolean"))
    else:
        rows = rows.join(old, on=id_col, how="left")
    rows = rows.join(inp, on=id_col, how="left").join(changed, on=id_col, how="left")
    is_old = F.coalesce(F.col("_old"), F.lit(False))
    present = is_old & F.coalesce(F.col("_in"), F.lit(False)) & F.col("_changed").isNull()
    row = rows.agg(F.sum((~is_old).cast("long")).alias("new"),  # driver-ok: one row
                   F.sum(present.cast("long")).alias("present")).first()
    return {"items_encoded": int(row["new"] or 0), "items_already_present": int(row["present"] or 0)}


def check_accounting(out: dict) -> None:
    """items read = encoded + rejected + already present, each counted from the data written."""
    read, enc, rej, present = (out[k] for k in ("items_read", "items_encoded", "items_rejected",
                                                "items_already_present"))
    if read != enc + rej + present:
        raise SidSparkError(f"accounting mismatch: read {read} items, but the table written holds {enc} encoded "
                            f"+ {rej} rejected + {present} already present = {enc + rej + present}; nothing "
                            f"committed")


def write_sid_table(spark: SparkSession, output: str, model, sids: DataFrame, manifest: dict,
                    rejects: Optional[DataFrame] = None, fps: Optional[DataFrame] = None,
                    files: Optional[dict] = None, accounting: Optional[tuple] = None) -> dict:
    """Commit `sids` (+ _rejects, _fingerprints, _vocab.json, `files` {name: text}) atomically with a manifest
    written last. A table with a suffix column is checked unique on (sid, suffix) before it is committed.

    `accounting` (existing_ids or None, the input's valid ids), with `rejects` and manifest["items_read"]: the
    manifest's items encoded and already present are counted from the table written, and a table where
    read != encoded + rejected + already present is not committed (SidSparkError)."""
    from ..vocab import Vocabulary
    from .io import REJECTS, commit_output, write_text

    cfg = model.config
    sfx = suffix_col_name(cfg.sid_col)
    has_suffix = sfx in sids.columns

    def write(staging: str) -> dict:
        sids.write.parquet(staging)
        if rejects is not None:
            rejects.write.parquet(f"{staging}/{REJECTS}")
        if fps is not None:
            fps.write.parquet(f"{staging}/{FINGERPRINTS}")
        back = spark.read.parquet(staging)
        key = [cfg.sid_col, sfx] if has_suffix else [cfg.sid_col]
        row = back.agg(F.count(F.lit(1)).alias("n"), F.countDistinct(*key).alias("u"),  # driver-ok: one row
                       F.countDistinct(cfg.id_col).alias("ids"),
                       (F.max(sfx) if has_suffix else F.lit(None)).alias("largest")).first()
        if row["ids"] != row["n"]:
            raise SidSparkError(f"SID table would hold {row['n'] - row['ids']} repeated ids")
        if has_suffix and row["u"] != row["n"]:
            raise SidSparkError(f"internal error: {row['n'] - row['u']} SIDs are not unique after dedup")
        largest = int(row["largest"]) if row["largest"] is not None else None
        vocab = Vocabulary(model.levels, int(model.codebooks[0].shape[0]),
                           suffix_size=(largest + 1) if has_suffix else 0)
        write_text(spark, f"{staging}/{VOCAB}", vocab.to_json())
        for name, text in (files or {}).items():
            write_text(spark, f"{staging}/{name}", text)
        out = {"kind": "sids", "model_id": model.model_id, "levels": model.levels,
               "codebook_size": int(model.codebooks[0].shape[0]), "id_col": cfg.id_col, "sid_col": cfg.sid_col,
               "suffix_col": sfx if has_suffix else None, "dedup": manifest.get("dedup", "none"),
               "sid_capacity": cfg.sid_capacity, "items": int(row["n"]), "unique_sids": int(row["u"]),
               "largest_suffix_in_table": largest, "vocab": VOCAB, "vocab_size": vocab.size,
               "fingerprints": FINGERPRINTS if fps is not None else None}
        out.update(manifest)
        if rejects is not None:
            written_rejects = spark.read.parquet(f"{staging}/{REJECTS}")
            out["items_rejected"] = written_rejects.count()
            if accounting is not None and "items_read" in out:
                existing_ids, valid_ids = accounting
                out.update(count_written(back, written_rejects, cfg.id_col, existing_ids, valid_ids))
                check_accounting(out)
        return out

    return commit_output(spark, output, write)
