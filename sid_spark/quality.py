"""The short quality summary `demo` printed first; kept importable, now computed by sid_spark.metrics."""
from __future__ import annotations

import math

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from .metrics import formulas as fm
from .metrics.spark_metrics import _code_counts, _reconstruction


def level_summary(sids: DataFrame, sid_col: str, levels: int, k: int) -> list[dict]:
    """Per level: codes used, utilization, entropy in bits, largest and smallest code (K-sized aggregates only)."""
    counts = _code_counts(sids, sid_col, levels, k)
    return [{"level": level + 1, **fm.level_metrics(c, k)} for level, c in enumerate(counts)]


def collision_rate(sids: DataFrame, sid_col: str) -> float:
    row = sids.agg(F.count(F.lit(1)).alias("n"), F.countDistinct(sid_col).alias("u")).first()  # driver-ok: one row
    return 1.0 - row["u"] / row["n"] if row["n"] else 0.0


def reconstruction_error(sids: DataFrame, vectors: DataFrame, id_col: str, sid_col: str, codebooks, dim: int) -> float:
    """Relative reconstruction error sum ||x - x_hat||^2 / sum ||x||^2 over the items of `sids`.
    `vectors` has (id_col, _vec array<float>)."""
    rel = _reconstruction(sids, vectors, id_col, sid_col, codebooks, dim)
    return rel[-1] if rel else math.nan
