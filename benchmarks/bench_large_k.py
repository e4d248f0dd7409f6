"""Large codebooks: train and encode seconds, driver peak memory, quality and code sizes vs K (prints only).

For each K in --ks and each balance mode a fresh driver process generates a synthetic catalog (n x d), trains
`levels` levels of K codes, encodes every item (balance=exact: exact floor/ceil(N/K) sizes) and reports

  train_s, encode_s        wall seconds of fit() and of the materialised encode
  py_peak_mb, jvm_peak_mb  peak resident memory (VmHWM) of the Python driver and of the Spark JVM
  task MB (train, encode)  the largest resident set of one Python worker (one executor task at a time) during
                           fit() and during the encode, sampled every 0.1 s (bench_driver_memory.WorkerPeak),
                           beside an idle worker's (torch and the kernels imported, nothing done) and
                           kernels.kmeans.task_memory_bytes, the bound on what a task's kernels allocate on top
  rel_err                  sum ||x - x_hat||^2 / sum ||x||^2, over every item (an executor-side sum)
  min/max per level        the smallest and largest code of each level

    .venv/bin/python benchmarks/bench_large_k.py --items 1000000 --ks 256 1024 4096 8192 --levels 2
    .venv/bin/python benchmarks/bench_large_k.py --items 100000 --ks 256 1024 --levels 2 --master local[2]

In local mode the JVM is driver and executor at once, so its peak includes the executors' work.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_driver_memory import WorkerPeak, jvm_pid, vm_hwm_mb  # noqa: E402


def rel_error(df, model, sids, dim: int) -> float:
    """sum ||x - x_hat||^2 / sum ||x||^2 over the catalog, summed on the executors (two doubles come back)."""
    import numpy as np
    import pyarrow as pa
    from pyspark.sql import types as T

    from sid_spark.spark.vectors import arrow_matrix

    cbs = [c.copy() for c in model.codebooks]
    joined = df.join(sids, "item_id").select("embedding", "sid")

    def part(batches):
        err = tot = 0.0
        for b in batches:
            if b.num_rows == 0:
                continue
            x = arrow_matrix(b.column(0), dim).astype(np.float64)
            codes = b.column(1).flatten().to_numpy().reshape(b.num_rows, -1)
            xhat = sum(cbs[level][codes[:, level]] for level in range(codes.shape[1]))
            err += float(((x - xhat) ** 2).sum())
            tot += float((x ** 2).sum())
        yield pa.RecordBatch.from_arrays([pa.array([err]), pa.array([tot])], ["e", "t"])

    schema = T.StructType([T.StructField("e", T.DoubleType()), T.StructField("t", T.DoubleType())])
    row = joined.mapInArrow(part, schema).groupBy().sum("e", "t").collect()[0]
    return row[0] / row[1]


def worker_baseline(spark, workers) -> float:
    """The resident set of a Python worker that has imported what a task imports (torch, pyarrow, the kernels)
    and done nothing else: what WorkerPeak's figures include besides the task's own memory."""
    def part(batches):
        import torch  # noqa: F401

        import sid_spark.kernels.kmeans  # noqa: F401
        import sid_spark.spark.quantize  # noqa: F401

        for b in batches:
            yield b

    workers.take()
    spark.range(0, 4, numPartitions=2).mapInArrow(part, "id long").collect()
    time.sleep(0.5)
    return workers.take()


def task_bound_mb(args, k: int) -> float:
    """kernels.kmeans.task_memory_bytes for this run (every level, a balanced level's pricing entries), in MB."""
    from sid_spark.kernels import kmeans as km
    from sid_spark.spark.quantize import SLOT_PRICE_ENTRIES

    entries = SLOT_PRICE_ENTRIES if args.balance == "exact" else 0
    return round(km.task_memory_bytes([k] * args.levels, args.dim, price_entries=entries) / 2 ** 20, 1)


def one_run(args) -> dict:
    sys.path.insert(0, str(ROOT))
    import numpy as np
    from pyspark.sql import functions as F

    from sid_spark.spark.session import get_session
    from sid_spark.synthetic import synthetic_catalog
    from sid_spark.tokenizer import ResidualKMeansTokenizer

    spark = get_session(args.master, app_name="bench-large-k",
                        conf={"spark.driver.memory": args.driver_memory,
                              "spark.sql.shuffle.partitions": str(args.shuffle_partitions)})
    spark.sparkContext.setLogLevel("ERROR")
    jpid = jvm_pid(spark)
    work = Path(args.workdir)
    cat = work / f"catalog_{args.items[0]}_{args.dim}"
    if not cat.exists():
        synthetic_catalog(spark, args.items[0], args.dim, seed=0, partitions=max(2, args.items[0] // 250_000)) \
            .write.mode("overwrite").parquet(str(cat))
    df = spark.read.parquet(str(cat))
    k = args.ks[0]
    workers = WorkerPeak(jpid)
    idle_worker_mb = worker_baseline(spark, workers)
    t0 = time.time()
    model = ResidualKMeansTokenizer(levels=args.levels, codebook_size=k, balance=args.balance, seed=1,
                                    max_iter=args.max_iter, sample_size=args.sample_size,
                                    init_factor=args.init_factor).fit(df)
    train_s = time.time() - t0
    task_train = workers.take()
    t0 = time.time()
    sids = model.encode(df).sids
    sids.write.mode("overwrite").parquet(str(work / "sids"))
    encode_s = time.time() - t0
    task_encode = workers.take()
    workers.stop()
    sids = spark.read.parquet(str(work / "sids"))
    sizes = []
    for level in range(args.levels):
        counts = [r[1] for r in sids.groupBy(F.col("sid")[level]).count().collect()]  # K rows
        sizes.append((min(counts) if len(counts) == k else 0, max(counts)))
    out = {"items": args.items[0], "dim": args.dim, "levels": args.levels, "k": k, "balance": args.balance,
           "train_s": round(train_s, 1), "encode_s": round(encode_s, 1),
           "py_peak_mb": round(vm_hwm_mb(), 1), "jvm_peak_mb": round(vm_hwm_mb(jpid), 1),
           "idle_worker_mb": idle_worker_mb, "task_train_mb": task_train, "task_encode_mb": task_encode,
           "task_bound_mb": task_bound_mb(args, k),
           "rel_err": round(rel_error(df, model, sids, args.dim), 4), "sizes": sizes}
    spark.stop()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, nargs="+", default=[1_000_000])
    ap.add_argument("--ks", type=int, nargs="+", default=[256, 1024, 4096, 8192])
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--levels", type=int, default=2)
    ap.add_argument("--modes", default="exact,none")
    ap.add_argument("--max-iter", type=int, default=10)
    ap.add_argument("--sample-size", type=int, default=1_000_000)
    ap.add_argument("--init-factor", type=int, default=50)
    ap.add_argument("--master", default="local[*]")
    ap.add_argument("--driver-memory", default="6g")
    ap.add_argument("--shuffle-partitions", type=int, default=8)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--balance", default="exact", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(one_run(args)), flush=True)
        return
    work = args.workdir or tempfile.mkdtemp(prefix="bench_large_k_")
    print("| K | balance | train s | encode s | py peak MB | JVM peak MB "
          "| task MB train, encode (idle worker; bound) | rel err | min..max per level |")
    print("|---|---|---|---|---|---|---|---|---|")
    for k in args.ks:
        for mode in args.modes.split(","):
            cmd = [sys.executable, __file__, "--child", "--items", str(args.items[0]), "--ks", str(k),
                   "--dim", str(args.dim), "--levels", str(args.levels), "--balance", mode,
                   "--max-iter", str(args.max_iter), "--sample-size", str(args.sample_size),
                   "--init-factor", str(args.init_factor), "--master", args.master,
                   "--driver-memory", args.driver_memory, "--shuffle-partitions", str(args.shuffle_partitions),
                   "--workdir", work]
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ})
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                print(f"| {k} | {mode} | failed: {proc.stderr.strip().splitlines()[-1:] } |", flush=True)
                continue
            r = json.loads(line[7:])
            sizes = ", ".join(f"{a}..{b}" for a, b in r["sizes"])
            print(f"| {k} | {mode} | {r['train_s']} | {r['encode_s']} | {r['py_peak_mb']} | {r['jvm_peak_mb']} | "
                  f"{r['task_train_mb']}, {r['task_encode_mb']} ({r['idle_worker_mb']}; {r['task_bound_mb']}) | "
                  f"{r['rel_err']} | {sizes} |", flush=True)


if __name__ == "__main__":
    main()
