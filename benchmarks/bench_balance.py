"""Balanced-capacity benchmark (issue 3): prints, per level, the passes over the data, the seconds, the overflow
repaired and the largest and smallest code size. Asserts nothing.

    python benchmarks/bench_balance.py [--items 1000000] [--dim 128] [--levels 3] [--codes 256]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--levels", type=int, default=3)
    ap.add_argument("--codes", type=int, default=256)
    args = ap.parse_args()
    from pyspark.sql import functions as F

    from sid_spark import ResidualKMeansTokenizer
    from sid_spark.spark.balance import encode_balanced
    from sid_spark.spark.prepare import prepare
    from sid_spark.spark.session import get_session
    from sid_spark.synthetic import synthetic_catalog

    spark = get_session("local[2]", conf={"spark.sql.shuffle.partitions": "8", "spark.driver.memory": "6g"})
    spark.sparkContext.setLogLevel("ERROR")
    work = tempfile.mkdtemp(prefix="sid_bal_")
    try:
        cat = os.path.join(work, "catalog")
        synthetic_catalog(spark, args.items, args.dim, seed=0, partitions=8).write.parquet(cat)
        df = spark.read.parquet(cat)
        t = time.perf_counter()
        model = ResidualKMeansTokenizer(levels=args.levels, codebookSize=args.codes, balance="exact").fit(df)
        print(f"# balanced training {args.levels} x {args.codes} on {args.items:,} x {args.dim}: "
              f"{time.perf_counter() - t:.1f}s")
        stats: dict = {}
        t = time.perf_counter()
        out = os.path.join(work, "sids")
        encode_balanced(prepare(df, model.config, dim=model.dim).valid, model.quantizer(), stats) \
            .write.parquet(out)
        total = time.perf_counter() - t
        sids = spark.read.parquet(out)
        print(f"# balanced encode: {total:.1f}s in all, {args.items / total:,.0f} items/s; "
              f"target sizes {args.items // args.codes}..{-(-args.items // args.codes)}")
        print(f"{'level':>5} {'full passes':>11} {'repair rounds':>13} {'overflow':>9} {'fallback':>8} "
              f"{'seconds':>8} {'largest':>8} {'smallest':>8}")
        for level in range(args.levels):
            c = sids.groupBy(F.col("sid")[level]).count().agg(F.max("count"), F.min("count")).first()
            print(f"{level + 1:>5} {stats['passes'][level]:>11} {stats['repair_rounds'][level]:>13} "
                  f"{stats['overflow'][level]:>9,} {stats['fallback_items'][level]:>8,} "
                  f"{stats['seconds'][level]:>8.1f} {c[0]:>8,} {c[1]:>8,}")
    finally:
        spark.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
