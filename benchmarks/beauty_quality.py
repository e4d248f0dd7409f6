"""Quality on the real Amazon Beauty catalog (../shared/data/beauty, 12,101 x 384, MiniLM): prints figures.

    python benchmarks/beauty_quality.py [--levels 3] [--codes 256]

Relative reconstruction error sum||x - x_hat||^2 / sum||x||^2 of
  - a full-batch numpy residual k-means (k-means++ init, 25 Lloyd iterations per level) — the reference;
  - our pipeline with balance=none and balance=exact;
with per-level entropy (bits) and code-size range, and the collision rate of each.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from sid_spark.kernels import kmeans as km  # noqa: E402

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "beauty", "items_emb.parquet")


def numpy_residual_kmeans(x, levels, k, iters, seed):
    r = x.astype(np.float64).copy()
    codes = []
    cbs = []
    for level in range(levels):
        c = km.kmeans_pp(torch.from_numpy(r.astype(np.float32)), k, np.random.default_rng([seed, level])).double().numpy()
        for _ in range(iters):
            a = ((r ** 2).sum(1)[:, None] - 2 * r @ c.T + (c ** 2).sum(1)[None]).argmin(1)
            sums = np.zeros_like(c)
            np.add.at(sums, a, r)
            cnt = np.bincount(a, minlength=k)
            c[cnt > 0] = sums[cnt > 0] / cnt[cnt > 0, None]
        a = ((r ** 2).sum(1)[:, None] - 2 * r @ c.T + (c ** 2).sum(1)[None]).argmin(1)
        r = r - c[a]
        codes.append(a)
        cbs.append(c)
    return np.stack(codes, 1), (r ** 2).sum() / (x.astype(np.float64) ** 2).sum()


def describe(name, codes, x, codebooks, k):
    xhat = sum(codebooks[level][codes[:, level]] for level in range(codes.shape[1]))
    rel = float(((x - xhat) ** 2).sum() / (x ** 2).sum())
    parts = []
    for level in range(codes.shape[1]):
        c = np.bincount(codes[:, level], minlength=k)
        p = c[c > 0] / c.sum()
        parts.append(f"L{level + 1}: H={-(p * np.log2(p)).sum():.2f} bits, sizes {c.min()}..{c.max()}")
    uniq = len({tuple(r) for r in codes.tolist()})
    print(f"{name:28s} rel_err={rel:.4f}  collision_rate={1 - uniq / len(codes):.4f}  " + "; ".join(parts), flush=True)
    return rel


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--levels", type=int, default=3)
    ap.add_argument("--codes", type=int, default=256)
    ap.add_argument("--skip-reference", action="store_true")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--modes", default="none,exact", help="balance modes to run, comma-separated")
    ap.add_argument("--train-paths", default="auto",
                    help="spark.sid_spark.trainInOneTask values to fit with, comma-separated (auto: each level in "
                         "one task where the sample fits; false: one Spark job per iteration); the first one's "
                         "model is encoded, the others' codebooks are compared with it")
    args = ap.parse_args()
    table = pq.read_table(DATA)
    ids = table.column("item_id").to_numpy()
    x = np.asarray(table.column("embedding").combine_chunks().flatten().to_numpy(), np.float32).reshape(len(ids), -1)
    print(f"# Amazon Beauty: {x.shape[0]:,} items x {x.shape[1]}, L={args.levels}, K={args.codes}")
    ref_rel = None
    if not args.skip_reference:
        t = time.time()
        _, ref_rel = numpy_residual_kmeans(x, args.levels, args.codes, 25, args.seed)
        print(f"{'numpy full-batch Lloyd x25':28s} rel_err={ref_rel:.4f}  ({time.time() - t:.0f}s)", flush=True)

    from sid_spark import ResidualKMeansTokenizer
    from sid_spark.spark.session import get_session

    spark = get_session("local[2]", conf={"spark.sql.shuffle.partitions": "8"})
    spark.sparkContext.setLogLevel("ERROR")
    df = spark.read.parquet(DATA)
    rels = {}
    from sid_spark.spark.train import IN_TASK_CONF

    for balance in args.modes.split(","):
        first = None
        for path in args.train_paths.split(","):
            spark.conf.set(IN_TASK_CONF, path)
            t = time.time()
            model = ResidualKMeansTokenizer(levels=args.levels, codebookSize=args.codes, seed=args.seed,
                                            balance=balance).fit(df)
            fit_s = time.time() - t
            if first is not None:
                same = all(np.array_equal(a, b) for a, b in zip(model.codebooks, first.codebooks))
                print(f"  balance={balance} trainInOneTask={path}: fit {fit_s:.1f}s, codebooks "
                      f"{'identical to' if same else 'DIFFERENT from'} the first path's", flush=True)
                continue
            first = model
            rows = model.encode(df).sids.toPandas()  # benchmark only: 12k rows
            order = np.argsort(rows["item_id"].to_numpy())
            pos = np.searchsorted(ids[np.argsort(ids)], rows["item_id"].to_numpy()[order])
            codes = np.stack(rows["sid"].to_numpy()[order])
            xs = x[np.argsort(ids)][pos]
            rels[balance] = describe(f"sid_spark balance={balance} trainInOneTask={path} ({fit_s:.1f}s)", codes, xs,
                                     model.codebooks, args.codes)
        spark.conf.unset(IN_TASK_CONF)
    if "none" in rels and ref_rel:
        print(f"ratio none/reference = {rels['none'] / ref_rel:.3f} (target <= 1.03)", flush=True)
    if "none" in rels and "exact" in rels:
        print(f"ratio exact/none = {rels['exact'] / rels['none']:.3f} (target <= 1.10)", flush=True)
    spark.stop()


if __name__ == "__main__":
    main()
