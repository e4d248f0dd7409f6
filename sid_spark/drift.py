"""Drift report of a daily append: how far the new items sit from what the generation's codebooks were trained
on, and whether it is time to retrain (a new generation).

The formulas are numpy over K-sized counts and a handful of totals; `spark_drift` is the one place that
aggregates a table into those counts and totals (each figure is one Spark aggregation, the driver gets rows in
the order of K, never of N).

Per level l (K_l codes, N items after the append, E = N / K_l):
    largest_vs_expected  = max_k n_k / E        smallest_vs_expected = min_k n_k / E
    new_largest_share    = max_k m_k / M        (m_k new items with code k, M new items; uniform is 1/K_l)
Collisions (on the L codebook codes, before any suffix):
    new_collision_rate   = #{new items whose SID some other item of the table also holds} / M
    published_collision_rate = the same over the published items among themselves
Quantisation error: mean ||x - x_hat||^2 of the new items against that of the published items present in the
input (error_ratio = new / published); the relative form divides by mean ||x||^2.
`retrain_recommended` is true when any configured threshold is crossed; `reasons` names which.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Dict, List, Optional

import numpy as np

if TYPE_CHECKING:  # the execution layer's model view; drift never builds one
    from .spark.encode import Quantizer

# Job keys (conf/encode.yaml or --set) of `sid-spark encode --existing`; null disables a threshold.
DRIFT_DEFAULTS = {
    "append_slack": 0.0,  # capacity of a balanced code after an append: ceil((1 + slack) * N / K)
    "drift_max_code_ratio": 1.5,  # largest code / (N/K) on a balanced level
    "drift_max_error_ratio": 1.25,  # new items' mean quantisation error / the published items'
    "drift_max_collision_increase": 0.10,  # new items' collision rate - the published items'
    "drift_max_reject_rate": 0.05,  # rejected rows / rows read
    "drift_max_unseen_fraction": 0.30,  # items the codebooks were not trained on (N - N_train) / N
}


def check_thresholds(values: dict) -> dict:
    from .config import ConfigError

    out = {}
    for key, default in DRIFT_DEFAULTS.items():
        v = values.get(key, default)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0):
            raise ConfigError(f"config key '{key}': must be a number >= 0 or null (got {v!r})")
        out[key] = None if v is None else float(v)
    return out


# ---- formulas (numpy) -------------------------------------------------------------------------------------------
def level_figures(old_counts: np.ndarray, new_counts: np.ndarray, balanced: bool, top: int = 5) -> dict:
    """Code sizes of one level after the append. old_counts, new_counts: (K,) int."""
    old = np.asarray(old_counts, np.int64)
    new = np.asarray(new_counts, np.int64)
    total = old + new
    k, n, m = len(total), int(total.sum()), int(new.sum())
    expected = n / k if k else 0.0
    order = np.lexsort((np.arange(k), -new))[:top]
    return {"codes": k, "balanced": bool(balanced), "items": n, "expected": expected,
            "largest": int(total.max()) if k else 0, "smallest": int(total.min()) if k else 0,
            "largest_vs_expected": float(total.max() / expected) if n else None,
            "smallest_vs_expected": float(total.min() / expected) if n else None,
            "new_items": m, "new_codes_used": int((new > 0).sum()),
            "new_largest_share": float(new.max() / m) if m else None,
            "new_largest_share_vs_uniform": float(new.max() / m * k) if m else None,
            "new_top_codes": [[int(c), int(new[c])] for c in order if new[c] > 0]}


def collision_rates(new_collided: int, n_new: int, old_collided: int, n_old: int) -> dict:
    return {"new_collision_rate": new_collided / n_new if n_new else None,
            "published_collision_rate": old_collided / n_old if n_old else None}


def error_figures(new_sq: float, new_norm: float, n_new: int, old_sq: float, old_norm: float, n_old: int) -> dict:
    """Mean squared quantisation error of new and published items, and their ratio."""
    new_mean = new_sq / n_new if n_new else None
    old_mean = old_sq / n_old if n_old else None
    return {"new_error": new_mean, "published_error": old_mean, "published_error_items": n_old,
            "new_rel_error": new_sq / new_norm if n_new and new_norm else None,
            "published_rel_error": old_sq / old_norm if n_old and old_norm else None,
            "error_ratio": new_mean / old_mean if new_mean is not None and old_mean else None}


def retrain_decision(report: dict, thresholds: dict) -> tuple:
    """(retrain_recommended, reasons): every configured threshold the report crosses."""
    reasons: List[str] = []

    def over(value, key, what):
        limit = thresholds.get(key)
        if limit is not None and value is not None and value > limit:
            reasons.append(f"{what} {value:.4g} > {key} {limit:g}")

    for i, lv in enumerate(report.get("levels", [])):
        if lv["balanced"]:
            over(lv["largest_vs_expected"], "drift_max_code_ratio", f"level {i + 1} largest code / (N/K)")
    over(report.get("error_ratio"), "drift_max_error_ratio", "new/published quantisation error")
    new_rate, old_rate = report.get("new_collision_rate"), report.get("published_collision_rate")
    if new_rate is not None:
        over(new_rate - (old_rate or 0.0), "drift_max_collision_increase", "collision rate increase")
    over(report.get("reject_rate"), "drift_max_reject_rate", "reject rate")
    over(report.get("unseen_fraction"), "drift_max_unseen_fraction", "fraction of items not trained on")
    return bool(reasons), reasons


def drift_report(old_counts: List[np.ndarray], new_counts: List[np.ndarray], balanced: List[bool],
                 collisions: dict, errors: dict, reject_reasons: Dict[str, int], items_read: int,
                 n_train: Optional[int], thresholds: dict) -> dict:
    n_total = int(np.asarray(old_counts[0]).sum() + np.asarray(new_counts[0]).sum()) if old_counts else 0
    rejected = int(sum(reject_reasons.values()))
    report = {"levels": [level_figures(o, m, b) for o, m, b in zip(old_counts, new_counts, balanced)],
              **collisions, **errors, "reject_reasons": dict(sorted(reject_reasons.items())),
              "items_rejected": rejected, "reject_rate": rejected / items_read if items_read else None,
              "items_trained_on": n_train,
              "unseen_fraction": max(0, n_total - n_train) / n_total if n_train is not None and n_total else None,
              "thresholds": dict(thresholds)}
    report["retrain_recommended"], report["reasons"] = retrain_decision(report, thresholds)
    return report


# ---- the Spark aggregation --------------------------------------------------------------------------------------
def spark_drift(model: Quantizer, existing, new_sids, new_valid, old_valid, rejects, old_counts: List[np.ndarray],
                items_read: int, thresholds: dict) -> dict:
    """existing: the published table (id, sid, ...); new_sids: (id, sid) of the appended items as encoded (before
    any suffix or reassignment); new_valid / old_valid: prepared rows (id, _vec, _id_hash) of the new items and of the
    input's items already published; rejects: (id, reason) of this append."""
    from pyspark.sql import functions as F

    from .spark.append import code_counts
    from .spark.dedup import ERR_FIRST, NORM, _distance_rows
    from .spark.prepare import HASH, VEC

    cfg = model.config
    id_col, sid_col = cfg.id_col, cfg.sid_col
    sizes = [int(c.shape[0]) for c in model.codebooks]
    new_counts = code_counts(new_sids, sid_col, sizes)
    n_new, n_old = int(new_counts[0].sum()), int(old_counts[0].sum())

    tagged = existing.select(sid_col, F.lit(0).alias("_new")).unionByName(
        new_sids.select(sid_col, F.lit(1).alias("_new")))
    groups = tagged.groupBy(sid_col).agg(F.count(F.lit(1)).alias("n"), F.sum("_new").alias("m"))
    row = groups.agg(F.sum(F.when(F.col("n") > 1, F.col("m")).otherwise(0)).alias("new_c"),  # driver-ok: 1 row
                     F.sum(F.when(F.col("n") - F.col("m") > 1, F.col("n") - F.col("m")).otherwise(0))
                     .alias("old_c")).first()
    collisions = collision_rates(int(row["new_c"] or 0), n_new, int(row["old_c"] or 0), n_old)

    codebooks = [np.ascontiguousarray(c, dtype=np.float32) for c in model.codebooks]
    items = (new_sids.select(id_col, sid_col).join(new_valid.select(id_col, VEC, HASH), on=id_col)
             .withColumn("_new", F.lit(1))
             .unionByName(existing.select(id_col, sid_col).join(old_valid.select(id_col, VEC, HASH), on=id_col)
                          .withColumn("_new", F.lit(0))))
    dist = _distance_rows(items.select(id_col, sid_col, HASH, VEC), codebooks, id_col, sid_col, model.dim)
    # _distance_rows keeps (id, sid, _id_hash): bring the tag back by id
    tags = items.select(id_col, "_new")
    per_tag = dist.join(tags, on=id_col).groupBy("_new").agg(
        F.count(F.lit(1)).alias("n"), F.sum(ERR_FIRST).alias("sq"), F.sum(NORM).alias("norm"))
    sums = {r["_new"]: r for r in per_tag.collect()}  # driver-ok: 2 rows

    def part(flag):
        r = sums.get(flag)
        return (0.0, 0.0, 0) if r is None else (float(r["sq"]), float(r["norm"]), int(r["n"]))

    (nsq, nnorm, nn), (osq, onorm, on) = part(1), part(0)
    errors = error_figures(nsq, nnorm, nn, osq, onorm, on)
    reasons = {r["reason"]: int(r["count"]) for r in rejects.groupBy("reason").count().collect()}  # driver-ok
    n_train = model.n_items
    balanced = [cfg.balance_for(level) == "exact" for level in range(model.levels)]
    return drift_report(old_counts, new_counts, balanced, collisions, errors, reasons, items_read,
                        int(n_train) if n_train is not None else None, thresholds)
