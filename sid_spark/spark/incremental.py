"""Incremental encoding: the ids of a new catalog snapshot that a published SID table lacks get SIDs, the table's
rows never change (a published SID never moves), and the new SIDs are unique against the published ones under
the table's dedup mode. Balanced levels place the new items by the append capacity rule (sid_spark.spark.append).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Optional

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from ..errors import InputError, SidSparkError
from ..storage import materialize
from .dedup import (DEFAULT_ALTERNATIVES, DEFAULT_MAX_ROUNDS, DedupResult, check_same_model, check_sid_shape,
                    resolve_collisions)
from .encode import Quantizer, encode_valid
from .prepare import prepare
from .sid_table import CHANGED_VECTOR, FINGERPRINTS, FP, fingerprints, suffix_col_name

log = logging.getLogger("sid_spark.dedup")


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


def encode_incremental(model: Quantizer, new_df: DataFrame, existing: DataFrame, existing_manifest: Optional[dict],
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
    if model.balanced:
        encoded = encode_append(model, new_only, old_counts, n_old, n_new, append_slack, stats)
    else:
        encoded = materialize(encode_valid(new_only, model))
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
