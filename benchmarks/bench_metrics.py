"""Time `sid_spark.metrics.evaluate` on a synthetic catalog and print the figures (no asserts).

    python benchmarks/bench_metrics.py --items 200000 --dim 64 --levels 3 --k 256 --queries 2000

Prints seconds for the SID-only metrics (usage, prefixes, per-SID), reconstruction, and the blocked kNN pass
(queries x catalog GEMM + running top-k), so the cost of each part can be read separately.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from pyspark.sql import functions as F


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--levels", type=int, default=3)
    ap.add_argument("--k", type=int, default=256)
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--master", default="local[*]")
    a = ap.parse_args()

    from sid_spark.metrics import evaluate
    from sid_spark.spark.session import get_session
    from sid_spark.synthetic import synthetic_catalog

    spark = get_session(a.master, app_name="bench-metrics")
    spark.sparkContext.setLogLevel("ERROR")
    cat = synthetic_catalog(spark, a.items, a.dim, seed=1).cache()
    rng = np.random.default_rng(0)
    codebooks = [rng.standard_normal((a.k, a.dim)).astype(np.float32) * 0.1 for _ in range(a.levels)]
    # Random SIDs (drawn from a hash of the id): the metrics' cost does not depend on how good the codes are.
    sids = cat.select("item_id", F.array(*[(F.abs(F.xxhash64(F.lit(lvl), "item_id")) % a.k).cast("int")
                                           for lvl in range(a.levels)]).alias("sid")).cache()
    print(f"catalog {cat.count()} x {a.dim}, {a.levels} levels x {a.k} codes, master {a.master}")
    sids.count()
    for name, kwargs in (("sid-only", {}), ("+reconstruction", {"embeddings_df": cat, "codebooks": codebooks,
                                                                "knn_queries": 0}),
                         (f"+kNN recall ({a.queries} queries)", {"embeddings_df": cat, "knn_queries": a.queries})):
        t0 = time.time()
        m = evaluate(spark, sids, codebook_size=a.k, **kwargs)
        print(f"{name:>32}: {time.time() - t0:7.1f}s   collision_rate={m['collision_rate']:.4f}"
              + (f"  recall@10={m['knn_recall']['recall']['10']:.3f}" if m.get("knn_recall") else ""))
    spark.stop()


if __name__ == "__main__":
    main()
