"""Benchmark collision resolution on a synthetic catalog with planted collisions (default 1,000,000 items).

    python benchmarks/bench_dedup.py [--items 1000000] [--dim 64] [--dup-fraction 0.05] [--master local[*]]

Builds the catalog (a Zipf Gaussian mixture, plus `dup-fraction` of extra items: half exact copies, half
copies with 1e-4 noise), trains L=3 x K=256 on a 100k sample (balance=none), encodes, then runs `suffix` and
`reassign` and prints, for each: rounds, seconds, items moved, items suffixed, largest suffix, rel. error.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--dup-fraction", type=float, default=0.05)
    ap.add_argument("--levels", type=int, default=3)
    ap.add_argument("--codebook-size", type=int, default=256)
    ap.add_argument("--master", default="local[*]")
    ap.add_argument("--out", default="/tmp/sid_spark_bench_dedup")
    args = ap.parse_args()

    from pyspark.sql import functions as F

    from sid_spark import ResidualKMeansTokenizer
    from sid_spark.spark.dedup import dedup_sids
    from sid_spark.spark.prepare import prepare
    from sid_spark.spark.session import get_session
    from sid_spark.synthetic import synthetic_catalog

    spark = get_session(args.master, app_name="bench_dedup")
    spark.sparkContext.setLogLevel("ERROR")
    n_dup = int(args.items * args.dup_fraction)
    n_base = args.items - n_dup
    base = synthetic_catalog(spark, n_base, args.dim, seed=0)
    src = base.where(F.col("item_id") < n_dup).withColumn("item_id", F.col("item_id") + n_base)
    noisy = F.transform("embedding", lambda v, i: v + F.lit(1e-4) * F.sin(i + F.col("item_id")).cast("float"))
    dups = src.withColumn("embedding", F.when(F.col("item_id") % 2 == 0, F.col("embedding")).otherwise(noisy))
    t = time.time()
    base.unionByName(dups).write.mode("overwrite").parquet(f"{args.out}/catalog")
    print(f"catalog: {args.items} items ({n_dup} planted duplicates), d={args.dim}: {time.time() - t:.1f}s")
    df = spark.read.parquet(f"{args.out}/catalog")

    t = time.time()
    model = ResidualKMeansTokenizer(levels=args.levels, codebookSize=args.codebook_size, balance="none",
                                    sample_size=100_000, max_iter=10, seed=0).fit(df)
    print(f"train (100k sample): {time.time() - t:.1f}s")
    t = time.time()
    model.encode(df).sids.write.mode("overwrite").parquet(f"{args.out}/sids")
    sids = spark.read.parquet(f"{args.out}/sids")
    row = sids.agg(F.count(F.lit(1)).alias("n"), F.countDistinct("sid").alias("u")).first()
    print(f"encode: {time.time() - t:.1f}s; {row['n']} items, {row['u']} distinct SIDs "
          f"({row['n'] - row['u']} items collide)")

    vectors = prepare(df, model.config, dim=model.dim).valid
    for mode in ("suffix", "reassign"):
        t = time.time()
        res = dedup_sids(sids, vectors, model.quantizer(), mode)
        res.sids.write.mode("overwrite").parquet(f"{args.out}/{mode}")
        rep = res.report()
        secs = time.time() - t
        print(f"{mode:>8}: rounds {rep['rounds']}, {secs:.1f}s (resolve {rep['dedup_seconds']:.1f}s), "
              f"moved {rep['items_moved']}, suffixed {rep['items_suffixed']}, largest suffix "
              f"{rep['largest_suffix']}, rel. error {rep['rel_error_before']:.5f} -> {rep['rel_error_after']:.5f}")
        print(json.dumps({k: v for k, v in rep.items()}, default=str))
    spark.stop()


if __name__ == "__main__":
    main()
