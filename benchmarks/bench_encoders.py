"""Fit seconds, encode rows/s and relative reconstruction error of every encoder on a synthetic catalog, in one
process (no Spark): the kernel-side cost behind `sid-spark compare`'s "train s" and "encode items/s".

    python benchmarks/bench_encoders.py --items 50000 --dim 128 --epochs 5 [--device cuda] [--threads 2]
"""
from __future__ import annotations

import argparse
import time

import torch

from sid_spark.compare import DEFAULT_SPECS
from sid_spark.encoders import ENCODERS, get_encoder
from sid_spark.synthetic import numpy_catalog


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=50_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--encoders", default=",".join(ENCODERS))
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    x = numpy_catalog(a.items, a.dim, seed=0)
    xt = torch.from_numpy(x).to(a.device)
    print(f"{a.items} x {a.dim} synthetic catalog, device={a.device}, torch threads={torch.get_num_threads()}")
    print(f"{'encoder':>8} {'tokens':>16} {'fit s':>8} {'encode rows/s':>14} {'rel err':>8} {'unique SIDs':>12}")
    for name in a.encoders.split(","):
        spec = {k: v for k, v in DEFAULT_SPECS[name].items()}
        if "epochs" in ENCODERS[name].Params.__dataclass_fields__:
            spec["epochs"] = a.epochs
        enc = get_encoder(name, **spec)
        t0 = time.perf_counter()
        enc.fit(xt, device=a.device)
        fit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        codes = enc.encode(xt)
        enc_s = time.perf_counter() - t0
        x_hat = enc.decode(codes)
        rel = float(((xt - x_hat).double() ** 2).sum() / (xt.double() ** 2).sum())
        uniq = len(torch.unique(codes, dim=0))
        print(f"{name:>8} {str(enc.token_sizes):>16} {fit_s:>8.1f} {a.items / enc_s:>14,.0f} {rel:>8.4f} "
              f"{uniq / a.items:>12.3f}")


if __name__ == "__main__":
    main()
