"""Core benchmark (prints figures; asserts nothing).

    python benchmarks/bench_core.py [--items 1000000] [--dim 128] [--levels 3] [--codes 256] [--skip-train]

1. raw torch assignment kernel, items/s (L levels x K codes at dimension D), 1 thread and all threads;
2. `encode` end to end on local[2]: Parquet in -> SIDs Parquet out, items/s and its ratio to the kernel;
3. training time (balance=none and balance=exact), with per-level balanced-encode passes and code sizes.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from sid_spark.kernels import kmeans as km  # noqa: E402
from sid_spark.synthetic import numpy_catalog  # noqa: E402


def kernel_items_per_s(x: np.ndarray, codebooks, threads: int, block_rows: int = 4096) -> float:
    torch.set_num_threads(threads)
    xt = torch.from_numpy(x)
    cbs = [torch.from_numpy(c) for c in codebooks]
    km.residual_encode(xt[:block_rows], cbs)  # warm-up
    t = time.perf_counter()
    km.residual_encode(xt, cbs, block_rows=block_rows)
    return len(x) / (time.perf_counter() - t)


def sgemm_gflops(d: int, k: int, threads: int, rows: int = 4096, reps: int = 20) -> float:
    torch.set_num_threads(threads)
    a = torch.randn(rows, d)
    b = torch.randn(d, k)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2.0 * rows * d * k * reps / (time.perf_counter() - t) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--levels", type=int, default=3)
    ap.add_argument("--codes", type=int, default=256)
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    n, d, L, k = args.items, args.dim, args.levels, args.codes
    cores = os.cpu_count() or 1
    print(f"# sid_spark core benchmark: N={n:,} D={d} L={L} K={k}, {cores} cores, torch {torch.__version__}")

    x = numpy_catalog(min(n, 1_000_000), d, seed=0)
    rng = np.random.default_rng(0)
    codebooks = [x[rng.choice(len(x), k, replace=False)] * (0.5 ** l) for l in range(L)]
    for threads in sorted({1, cores}):
        g = sgemm_gflops(d, k, threads)
        limit = g * 1e9 / (2 * L * k * d)
        ips = kernel_items_per_s(x, codebooks, threads)
        print(f"kernel  threads={threads}: sgemm {g:8.1f} GFLOP/s -> limit {limit:12,.0f} items/s; "
              f"assignment {ips:12,.0f} items/s ({ips / limit:5.1%} of limit)")
    torch.set_num_threads(1)
    kernel_1t = kernel_items_per_s(x, codebooks, 1)
    del x

    from sid_spark import ResidualKMeansModel, ResidualKMeansTokenizer, TokenizerConfig
    from sid_spark.spark.session import get_session
    from sid_spark.synthetic import synthetic_catalog

    spark = get_session("local[2]", app_name="sid_spark-bench",
                        conf={"spark.sql.shuffle.partitions": "8", "spark.driver.memory": "6g"})
    spark.sparkContext.setLogLevel("ERROR")
    work = args.workdir or tempfile.mkdtemp(prefix="sid_bench_")
    try:
        cat = os.path.join(work, "catalog")
        t = time.perf_counter()
        synthetic_catalog(spark, n, d, seed=0, partitions=8).write.mode("overwrite").parquet(cat)
        print(f"catalog: {n:,} x {d} written in {time.perf_counter() - t:.1f}s")
        df = spark.read.parquet(cat)

        cfg = TokenizerConfig(levels=L, codebook_size=k, balance="none")
        model = ResidualKMeansModel(cfg, codebooks)
        from sid_spark.commands.encode import write_sids

        t = time.perf_counter()
        write_sids(spark, model, df, os.path.join(work, "sids_greedy"))
        secs = time.perf_counter() - t
        e2e = n / secs
        print(f"encode  local[2] (balance=none): {secs:7.1f}s  {e2e:12,.0f} items/s; ratio to 2 x 1-thread kernel "
              f"{e2e / (2 * kernel_1t):5.1%}")

        if not args.skip_train:
            for balance in ("none", "exact"):
                tok = ResidualKMeansTokenizer(levels=L, codebookSize=k, balance=balance)
                t = time.perf_counter()
                m = tok.fit(df)
                train_s = time.perf_counter() - t
                iters = len(m.summary["history"])
                print(f"train   balance={balance:5s}: {train_s:7.1f}s ({iters} mini-batch passes over "
                      f"{m.summary['n_sample']:,} sampled rows)")
                if balance == "exact":
                    stats: dict = {}
                    from sid_spark.spark.balance import encode_balanced
                    from sid_spark.spark.prepare import prepare

                    t = time.perf_counter()
                    sids = encode_balanced(prepare(df, m.config, dim=m.dim).valid, m, m.config, stats)
                    out = os.path.join(work, "sids_balanced")
                    sids.write.mode("overwrite").parquet(out)
                    secs = time.perf_counter() - t
                    print(f"encode  balance=exact: {secs:7.1f}s  {n / secs:12,.0f} items/s")
                    from pyspark.sql import functions as F

                    bal = spark.read.parquet(out)
                    for level in range(L):
                        c = bal.groupBy(F.col("sid")[level]).count().agg(F.max("count"), F.min("count")).first()
                        print(f"  level {level + 1}: passes {stats['passes'][level]} "
                              f"(price {stats['price_passes'][level]}, candidate 1, repair rounds "
                              f"{stats['repair_rounds'][level]}), {stats['seconds'][level]:.1f}s, overflow "
                              f"{stats['overflow'][level]:,}, fallback {stats['fallback_items'][level]}, "
                              f"largest {c[0]:,} smallest {c[1]:,}")
    finally:
        spark.stop()
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
