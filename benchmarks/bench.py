"""Performance benchmark (issue 9): prints a table of figures and ratios; asserts nothing.

    python benchmarks/bench.py [--items 1000000] [--scale 1000000,2000000,4000000,8000000] [--skip-peers]

Sections, all in one run on the same seeded synthetic catalog:
  kernel  sgemm GFLOP/s at the assignment's shape, the limit it implies in items/s (2*L*K*D flops per item), and
          our assignment kernel's items/s, for D=128 and 384 (1 thread = one Spark task; and all cores);
  encode  Parquet in -> SIDs Parquet out on local[2], items/s and its ratio to 2 x the 1-thread kernel;
  train   3 x 256 on N x 128: our seconds and relative reconstruction error beside faiss residual k-means
          (faiss.Kmeans per level, niter 20), scikit-learn MiniBatchKMeans per level and pyspark.ml KMeans per
          level (on a 200,000-row subsample);
  scale   seconds per million items for train and encode, and the driver's peak RSS (python + JVM);
  gpu     the kernel on CUDA when a device is present (skipped otherwise).
Peers come from the `bench` extra (pip install -e '.[bench]'); the library never needs them.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from sid_spark.kernels import kmeans as km  # noqa: E402
from sid_spark.synthetic import numpy_catalog  # noqa: E402

L, K = 3, 256


def sgemm_gflops(d, k, threads, reps=20, device="cpu"):
    """The machine's best sgemm GFLOP/s at the assignment's shape (rows x d) @ (d x k), over block heights."""
    torch.set_num_threads(threads)
    best = 0.0
    b = torch.randn(d, k, device=device)
    for rows in (1024, 2048, 4096, 8192):
        a = torch.randn(rows, d, device=device)
        for _ in range(3):
            a @ b
        for _ in range(3):  # best of three timings: the figure is a ceiling, noise only lowers it
            sync(device)
            t = time.perf_counter()
            for _ in range(reps):
                a @ b
            sync(device)
            best = max(best, 2.0 * rows * d * k * reps / (time.perf_counter() - t) / 1e9)
    return best


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def best_rate(fn, n, device="cpu", repeat=3):
    """n / the best of `repeat` timings of fn() (items/s), the device synchronised around each; fn() runs once
    before, untimed (warm-up)."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t)
    return n / best


def kernel_ips(x, codebooks, threads, device="cpu", block_rows=km.DEFAULT_BLOCK_ROWS):
    """Items/s of the encode kernel (codes only, as the encode job calls it); best of three runs."""
    torch.set_num_threads(threads)
    xt = torch.from_numpy(x).to(device)
    cbs = [torch.from_numpy(c).to(device) for c in codebooks]
    return best_rate(lambda: km.residual_encode(xt, cbs, block_rows=block_rows, with_residual=False), len(x),
                     device)


def rel_error(x, codebooks):
    torch.set_num_threads(os.cpu_count() or 1)
    _, r = km.residual_encode(torch.from_numpy(x), [torch.from_numpy(np.asarray(c, np.float32)) for c in codebooks])
    return float((r.double() ** 2).sum() / (torch.from_numpy(x).double() ** 2).sum())


def residual_peer(x, fit_level):
    """Generic residual k-means driver for a peer: fit_level(r) -> (K, d) centroids."""
    r = x.copy()
    cbs = []
    t = time.perf_counter()
    for _ in range(L):
        c = np.asarray(fit_level(r), np.float32)
        codes, _ = km.assign(torch.from_numpy(r), torch.from_numpy(c))
        r = r - c[codes.numpy()]
        cbs.append(c)
    return time.perf_counter() - t, cbs


def peak_rss_mb():
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = 0.0
    try:
        import psutil

        kids = sum(p.memory_info().rss for p in psutil.Process().children(recursive=True)) / 2 ** 20
    except Exception:
        pass
    return own, kids


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--scale", default="1000000,2000000,4000000,8000000")
    ap.add_argument("--skip-peers", action="store_true")
    ap.add_argument("--skip-spark-ml", action="store_true", help="peers without pyspark.ml KMeans (minutes at 1M)")
    ap.add_argument("--exact", action="store_true",
                    help="also train and encode with balance=exact (adds minutes)")
    ap.add_argument("--sections", default="kernel,encode,train,scale",
                    help="comma-separated subset of kernel,encode,train,scale (gpu runs with kernel)")
    args = ap.parse_args()
    sections = set(args.sections.split(","))
    n = args.items
    cores = os.cpu_count() or 1
    print(f"# sid_spark benchmark — {cores} cores, torch {torch.__version__}, L={L} K={K}, "
          f"block_rows={km.DEFAULT_BLOCK_ROWS}")

    kernel_1t = {}
    if "kernel" in sections:
        print("\n## kernel (residual assignment, 3 levels x 256 codes)")
        print(f"{'D':>4} {'threads':>7} {'sgemm GFLOP/s':>14} {'limit items/s':>14} {'ours items/s':>13} "
              f"{'% of limit':>10}")
        for d in (128, 384):
            x = numpy_catalog(200_000, d, seed=1)
            cbs = [x[np.random.default_rng(lv).choice(len(x), K, replace=False)] for lv in range(L)]
            for threads in sorted({1, cores}):
                g = sgemm_gflops(d, K, threads)
                limit = g * 1e9 / (2 * L * K * d)
                ips = kernel_ips(x, cbs, threads)
                if threads == 1:
                    kernel_1t[d] = ips
                print(f"{d:>4} {threads:>7} {g:>14.1f} {limit:>14,.0f} {ips:>13,.0f} {ips / limit:>10.1%}")
        if torch.cuda.is_available():
            print("\n## gpu")
            for d in (128, 384):
                x = numpy_catalog(1_000_000, d, seed=1)
                cbs = [x[np.random.default_rng(lv).choice(len(x), K, replace=False)] for lv in range(L)]
                g = sgemm_gflops(d, K, 1, device="cuda")
                limit = g * 1e9 / (2 * L * K * d)
                ips = kernel_ips(x, cbs, 1, "cuda", block_rows=65536)
                print(f"D={d}: sgemm {g:,.0f} GFLOP/s, limit {limit:,.0f} items/s, kernel (block 65536) "
                      f"{ips:,.0f} items/s = {ips / limit:.1%}")
        else:
            print("\n## gpu: no CUDA device here — skipped")
    if not sections & {"encode", "train", "scale"}:
        return
    if "encode" in sections and 128 not in kernel_1t:
        x = numpy_catalog(200_000, 128, seed=1)
        kernel_1t[128] = kernel_ips(x, [x[np.random.default_rng(lv).choice(len(x), K, replace=False)]
                                        for lv in range(L)], 1)

    from sid_spark import ResidualKMeansModel, ResidualKMeansTokenizer, TokenizerConfig
    from sid_spark.commands.encode import write_sids
    from sid_spark.spark.session import get_session
    from sid_spark.synthetic import synthetic_catalog

    spark = get_session("local[2]", app_name="sid_spark-bench",
                        conf={"spark.sql.shuffle.partitions": "8", "spark.driver.memory": "6g"})
    spark.sparkContext.setLogLevel("ERROR")
    work = tempfile.mkdtemp(prefix="sid_bench_")
    try:
        cat = os.path.join(work, f"catalog_{n}")
        synthetic_catalog(spark, n, 128, seed=0, partitions=8).write.parquet(cat)
        df = spark.read.parquet(cat)
        x = numpy_catalog(n, 128, seed=0)
        if "encode" in sections:
            print(f"\n## encode end to end (local[2], {n:,} x 128, Parquet -> SIDs + rejects + fingerprints Parquet)")
            cbs = [x[np.random.default_rng(lv).choice(n, K, replace=False)] * (0.5 ** lv) for lv in range(L)]
            model = ResidualKMeansModel(TokenizerConfig(levels=L, codebook_size=K, balance="none"), cbs)
            t = time.perf_counter()
            spark.read.parquet(cat).selectExpr("sum(size(embedding))").collect()
            scan = n / (time.perf_counter() - t)
            from sid_spark.spark.parquet_direct import DIRECT_READ_CONF

            runs = {}
            for run, mode in (("first run (cold JVM)", "auto"), ("second run", "auto"), ("JVM read", "false")):
                spark.conf.set(DIRECT_READ_CONF, mode)
                t = time.perf_counter()
                man = write_sids(spark, model, df, os.path.join(work, f"sids_{run[:5]}"))
                runs[run] = enc = n / (time.perf_counter() - t)
                print(f"balance=none, {run} ({man['vector_read']}): {enc:,.0f} items/s; kernel 2 x 1 thread = "
                      f"{2 * kernel_1t[128]:,.0f} items/s; ratio {enc / (2 * kernel_1t[128]):.1%} (target >= 50%)")
            spark.conf.unset(DIRECT_READ_CONF)
            greedy_ips = runs["second run"]
            t = time.perf_counter()
            df.mapInArrow(_count_batches, "c long").agg({"c": "sum"}).collect()
            arrow = n / (time.perf_counter() - t)
            t = time.perf_counter()
            direct_pass(spark, model, df, os.path.join(work, "encoded_only"))
            passed = n / (time.perf_counter() - t)
            print(f"ceilings on this machine: one Spark scan of the vectors (no Python) {scan:,.0f} items/s; "
                  f"the same rows handed to Python as Arrow batches and dropped {arrow:,.0f} items/s "
                  f"= {arrow / (2 * kernel_1t[128]):.1%} of the kernel")
            print(f"encode / Arrow hand-off ceiling: direct read {runs['second run'] / arrow:.1%}, JVM read "
                  f"{runs['JVM read'] / arrow:.1%} (target >= 80%)")
            print(f"profile of the direct encode: its one pass over the vectors (decode, check, hash, encode, write "
                  f"the narrow table) {passed:,.0f} items/s = {n / passed:.1f} s; the rest (structure check, "
                  f"duplicate count, SID/rejects/fingerprint tables, counts, commit) "
                  f"{n / runs['second run'] - n / passed:.1f} s")

        if "train" in sections:
            print(f"\n## train 3 x 256 on {n:,} x 128")
            print(f"{'tool':40s} {'seconds':>8} {'rel. error':>10}")
            from sid_spark.spark.train import IN_TASK_CONF

            def fit(balance, in_task="auto"):
                """(model, seconds) of one fit; in_task "false": one Spark job per iteration."""
                spark.conf.set(IN_TASK_CONF, in_task)
                try:
                    t = time.perf_counter()
                    model = ResidualKMeansTokenizer(levels=L, codebookSize=K, balance=balance).fit(df)
                    return model, time.perf_counter() - t
                finally:
                    spark.conf.unset(IN_TASK_CONF)

            def same(a, b):
                return "identical" if all(np.array_equal(u, v) for u, v in zip(a.codebooks, b.codebooks)) \
                    else "DIFFERENT"

            ours, ours_s = fit("none")
            ours_e = rel_error(x, ours.codebooks)
            print(f"{'sid_spark (balance=none, local[2])':40s} {ours_s:>8.1f} {ours_e:>10.4f}")
            jobs, jobs_s = fit("none", "false")
            print(f"{'  the same, one Spark job per iteration':40s} {jobs_s:>8.1f} "
                  f"{rel_error(x, jobs.codebooks):>10.4f}  (codebooks {same(jobs, ours)}; the row above: each "
                  f"level in one task where the cost model says so)")
            # warm: the first fit above also paid for the JVM's and the Python workers' first use
            warm_s = fit("none")[1]
            print(f"{'  the same, warm':40s} {warm_s:>8.1f}")
            ours_s = min(ours_s, warm_s)
            bal = None
            if args.exact:
                bal, bal_s = fit("exact")
                print(f"{'sid_spark (balance=exact, train only)':40s} {bal_s:>8.1f} "
                      f"{rel_error(x, bal.codebooks):>10.4f}  (greedy codes; exact sizes need the balanced encode)")
                bal_jobs, bal_jobs_s = fit("exact", "false")
                print(f"{'  the same, one Spark job per iteration':40s} {bal_jobs_s:>8.1f}  (codebooks "
                      f"{same(bal_jobs, bal)})")
                print(f"balanced / unbalanced training: {bal_s / ours_s:.2f}x as chosen (warm), "
                      f"{bal_jobs_s / jobs_s:.2f}x with one job per iteration (target <= 1.5)")
            if not args.skip_peers:
                _peers(spark, x, n, cores, ours_s, ours_e, spark_ml=not args.skip_spark_ml)
            if "encode" in sections and bal is not None:
                # The greedy encode of the same codebooks just before, in the same JVM: the encode section's greedy
                # runs came before any training, and a JVM that has trained runs the same jobs slower.
                t = time.perf_counter()
                write_sids(spark, ResidualKMeansModel(TokenizerConfig(levels=L, codebook_size=K, balance="none"),
                                                      bal.codebooks), df, os.path.join(work, "sids_greedy_after"))
                greedy_after = n / (time.perf_counter() - t)
                t = time.perf_counter()
                write_sids(spark, bal, df, os.path.join(work, "sids_exact"))
                enc = n / (time.perf_counter() - t)
                print(f"\nencode end to end, balance=exact (every code of every level holds N/K +-1): "
                      f"{enc:,.0f} items/s = {enc / (2 * kernel_1t[128]):.1%} of 2 x the 1-thread kernel; "
                      f"{enc / greedy_after:.2f}x the items/s of the greedy encode run just before it with the same "
                      f"codebooks ({greedy_after:,.0f}), {enc / greedy_ips:.2f}x the encode section's second run's "
                      f"(target >= 0.33)")

        if "scale" in sections:
            print("\n## scale (balance=none, 3 x 256, D=128)")
            print(f"{'N':>10} {'train s/M':>10} {'encode s/M':>11} {'driver RSS MB (py, jvm)':>24}")
            for size in [int(s) for s in args.scale.split(",") if s]:
                path = os.path.join(work, f"scale_{size}")
                synthetic_catalog(spark, size, 128, seed=0, partitions=max(8, size // 250_000)).write.parquet(path)
                sdf = spark.read.parquet(path)
                t = time.perf_counter()
                m = ResidualKMeansTokenizer(levels=L, codebookSize=K, balance="none").fit(sdf)
                tr = (time.perf_counter() - t) / (size / 1e6)
                t = time.perf_counter()
                write_sids(spark, m, sdf, os.path.join(work, f"sids_{size}"))
                en = (time.perf_counter() - t) / (size / 1e6)
                py, jvm = peak_rss_mb()
                print(f"{size:>10,} {tr:>10.1f} {en:>11.1f} {py:>12.0f}, {jvm:>9.0f}")
                shutil.rmtree(path, ignore_errors=True)
                shutil.rmtree(os.path.join(work, f"sids_{size}"), ignore_errors=True)
    finally:
        spark.stop()
        shutil.rmtree(work, ignore_errors=True)


def _peers(spark, x, n, cores, ours_s, ours_e, spark_ml=True):
    peers = {}
    torch.set_num_threads(cores)
    try:
        import faiss

        s, c = residual_peer(x, lambda r: _faiss(faiss, r))
        peers["faiss"] = (s, rel_error(x, c))
    except ImportError:
        print("faiss not installed (pip install -e '.[bench]')")
    try:
        from sklearn.cluster import MiniBatchKMeans

        s, c = residual_peer(x, lambda r: MiniBatchKMeans(K, batch_size=4096, n_init=1, max_iter=20,
                                                           random_state=0).fit(r).cluster_centers_)
        peers["sklearn MiniBatchKMeans"] = (s, rel_error(x, c))
    except ImportError:
        print("scikit-learn not installed (pip install -e '.[bench]')")
    if spark_ml:
        sub = x[:200_000]
        s, c = residual_peer(sub, lambda r: _spark_kmeans(spark, r))
        peers["pyspark.ml KMeans (200k, time x N/200k)"] = (s * n / len(sub), rel_error(x, c))
    for name, (s, e) in peers.items():
        print(f"{name:40s} {s:>8.1f} {e:>10.4f}")
    if "faiss" in peers:
        print(f"ratio rel. error ours/faiss = {ours_e / peers['faiss'][1]:.3f} (target <= 1.02)")
    if "sklearn MiniBatchKMeans" in peers:
        print(f"speed ours vs sklearn = {peers['sklearn MiniBatchKMeans'][0] / ours_s:.2f}x (target >= 1)")
    if spark_ml:
        print(f"speed ours vs pyspark.ml KMeans (scaled to {n:,}) = "
              f"{peers['pyspark.ml KMeans (200k, time x N/200k)'][0] / ours_s:.1f}x (target >= 10)")


def direct_pass(spark, model, df, path):
    """The direct read's one pass over the vectors alone (for the profile line)."""
    from sid_spark.spark.parquet_direct import direct_encoded, parquet_files

    q = model.quantizer()
    files = parquet_files(spark, df, q.config.id_col, q.config.vector_col)
    direct_encoded(spark, df, q, q.config.id_col, q.config.vector_col, files)(path)


def _count_batches(batches):
    import pyarrow as pa

    rows = sum(b.num_rows for b in batches)
    yield pa.RecordBatch.from_arrays([pa.array([rows], pa.int64())], ["c"])


def _faiss(faiss, r):
    km_ = faiss.Kmeans(r.shape[1], K, niter=20, seed=1, verbose=False)
    km_.train(np.ascontiguousarray(r, np.float32))
    return km_.centroids


def _spark_kmeans(spark, r):
    import pandas as pd
    from pyspark.ml.clustering import KMeans
    from pyspark.ml.functions import array_to_vector

    pdf = pd.DataFrame({"v": list(r.astype(np.float32))})
    df = spark.createDataFrame(pdf).select(array_to_vector("v").alias("features")).cache()
    df.count()
    model = KMeans(k=K, maxIter=20, seed=1, initMode="k-means||").fit(df)
    df.unpersist()
    return np.array(model.clusterCenters())


if __name__ == "__main__":
    main()
