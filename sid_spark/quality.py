"""A short quality summary of a SID table, as DataFrame aggregations (the full metrics live in sid_spark.metrics)."""
from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import torch
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from .kernels import kmeans as km
from .spark.prepare import VEC
from .spark.vectors import arrow_matrix


def level_summary(sids: DataFrame, sid_col: str, levels: int, k: int) -> list[dict]:
    """Per level: codes used, entropy in bits, largest and smallest code (K-sized aggregates only)."""
    exploded = sids.select(F.posexplode(sid_col).alias("level", "code"))
    counts = exploded.groupBy("level", "code").count().collect()  # driver-ok: at most L*K rows
    out = []
    for level in range(levels):
        c = np.array([r["count"] for r in counts if r["level"] == level], dtype=np.float64)
        p = c / c.sum()
        out.append({"level": level + 1, "codes_used": int(len(c)), "utilization": len(c) / k,
                    "entropy_bits": float(-(p * np.log2(p)).sum()), "max_code_size": int(c.max()),
                    "min_code_size": int(c.min()) if len(c) == k else 0})
    return out


def collision_rate(sids: DataFrame, sid_col: str) -> float:
    row = sids.agg(F.count(F.lit(1)).alias("n"), F.countDistinct(sid_col).alias("u")).first()  # driver-ok: one row
    return 1.0 - row["u"] / row["n"] if row["n"] else 0.0


def reconstruction_error(sids: DataFrame, vectors: DataFrame, id_col: str, sid_col: str, codebooks, dim: int) -> float:
    """Relative reconstruction error sum ||x - x_hat||^2 / sum ||x||^2 over the items of `sids`.
    `vectors` has (id_col, _vec array<float>)."""
    joined = vectors.join(sids, on=id_col).select(VEC, sid_col)
    levels = len(codebooks)

    def part(batches):
        cbs = [torch.from_numpy(c) for c in codebooks]
        err = norm = 0.0
        for b in batches:
            if b.num_rows == 0:
                continue
            x = torch.from_numpy(arrow_matrix(b.column(0), dim))
            codes = torch.from_numpy(b.column(1).flatten().to_numpy().astype(np.int64).reshape(-1, levels))
            err += float(((x - km.reconstruct(codes, cbs)) ** 2).sum(dtype=torch.float64))
            norm += float((x ** 2).sum(dtype=torch.float64))
        yield pa.RecordBatch.from_arrays([pa.array([err]), pa.array([norm])], names=["err", "norm"])

    schema = T.StructType([T.StructField("err", T.DoubleType()), T.StructField("norm", T.DoubleType())])
    row = joined.mapInArrow(part, schema).agg(F.sum("err").alias("e"), F.sum("norm").alias("n")).first()  # driver-ok
    return float(row["e"] / row["n"]) if row["n"] else math.nan
