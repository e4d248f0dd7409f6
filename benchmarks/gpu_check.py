"""The device check to run when a GPU is lent (one short script; prints, asserts nothing).

For K in {256, 8192} at d = 256: the kernels on CUDA against the CPU on the same rows (nearest code, the balanced
pass's top-2 and regret, a residual encode through 2 levels), then the CUDA throughput of the residual encode with
the device's score tile (kernels.kmeans.code_tile_for) and with the CPU's, and of the top-2.

    python benchmarks/gpu_check.py            # needs torch with CUDA; on a CPU-only machine it says so and stops
    python benchmarks/gpu_check.py --device cpu --rows 4096   # the same script on CPU, to check it runs
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))

from bench import best_rate  # noqa: E402
from sid_spark.kernels import kmeans as km  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--rows", type=int, default=262_144, help="rows of the throughput runs")
    ap.add_argument("--check-rows", type=int, default=20_000, help="rows compared with the CPU")
    ap.add_argument("--dim", type=int, default=256)
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device visible to torch: nothing to check")
        return
    dev = torch.device(args.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    print(f"# device check: {name}, torch {torch.__version__}, d = {args.dim}, "
          f"score tile {km.code_tile_for(dev)} codes (CPU: {km.DEFAULT_CODE_TILE})")
    g = torch.Generator().manual_seed(0)
    for k in (256, 8192):
        cbs = [torch.randn(k, args.dim, generator=g) for _ in range(2)]
        prices = torch.randn(k, generator=g) * 0.1
        x = torch.randn(args.check_rows, args.dim, generator=g)
        # correctness: the device against the CPU on the same rows
        c_cpu, d_cpu = km.assign(x, cbs[0], prices)
        c_dev, d_dev = km.assign(x.to(dev), cbs[0].to(dev), prices.to(dev))
        agree = float((c_dev.cpu() == c_cpu).double().mean())
        err = float((d_dev.cpu() - d_cpu).abs().max())
        (v_cpu, i_cpu), (v_dev, i_dev) = (km.assign(x, cbs[0], prices, topk=2),
                                          km.assign(x.to(dev), cbs[0].to(dev), prices.to(dev), topk=2))
        regret = float(((v_dev[:, 1] - v_dev[:, 0]).cpu() - (v_cpu[:, 1] - v_cpu[:, 0])).abs().max())
        top2 = float((i_dev.cpu() == i_cpu).all(1).double().mean())
        r_cpu = km.residual_encode(x, cbs)[0]
        r_dev = km.residual_encode(x.to(dev), [c.to(dev) for c in cbs])[0].cpu()
        chain = float((r_dev == r_cpu).all(1).double().mean())
        print(f"K={k}: nearest code equal to the CPU's for {agree:.4%} of {len(x):,} rows (max |dist| diff {err:.2e}); "
              f"top-2 equal {top2:.4%}, max regret diff {regret:.2e}; 2-level residual codes equal {chain:.4%}")
        # throughput on the device
        xb = torch.randn(args.rows, args.dim, device=dev)
        dcbs = [c.to(dev) for c in cbs]
        for tile in sorted({km.code_tile_for(dev), km.DEFAULT_CODE_TILE}, reverse=True):
            ips = best_rate(lambda: km.residual_encode(xb, dcbs, block_rows=65536 if dev.type == "cuda" else 4096,
                                                       with_residual=False, code_tile=tile), args.rows, dev)
            gflops = ips * 2 * 2 * k * args.dim / 1e9
            print(f"  residual encode, 2 levels, tile {tile}: {ips:,.0f} items/s ({gflops:,.0f} GFLOP/s)")
        ips = best_rate(lambda: km.assign(xb, dcbs[0], prices.to(dev), topk=2), args.rows, dev)
        print(f"  top-2 (the balanced pass), 1 level: {ips:,.0f} items/s")


if __name__ == "__main__":
    main()
