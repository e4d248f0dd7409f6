"""Generative retrieval on Amazon Beauty (../shared/data/beauty): SID tables from the existing CLI, then
`sid-spark retrieval` on all of them in one run (same leave-one-out split, same model budget), printing the table.

    python benchmarks/retrieval_beauty.py [--out /tmp/retrieval_beauty] [--epochs N] [--max-examples N]
                                          [--preset small] [--tables rkmeans,rkmeans_balanced,rqvae]

Tables (3 levels x 256 codes each): residual k-means unbalanced (balance=none) and balanced (the default exact),
each deduplicated with a suffix token (dedup=suffix, TIGER's scheme); RQ-VAE (its own encoder, no suffix: a SID
shared by several items returns them all). A table already built under --out is reused.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
DATA = os.path.join(ROOT, "..", "shared", "data", "beauty")
CLI = [os.path.join(os.path.dirname(sys.executable), "sid-spark")]


def run(args, log):
    t = time.time()
    print("+ sid-spark " + " ".join(args), flush=True)
    with open(log, "a") as f:
        subprocess.run(CLI + args, check=True, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    return time.time() - t


def build_tables(out, names, master, log):
    emb = os.path.join(DATA, "items_emb.parquet")
    recipes = {
        "rkmeans": (["train", "--input", emb, "--model", f"{out}/rkmeans_model", "--set", "balance=none"],
                    ["encode", "--input", emb, "--model", f"{out}/rkmeans_model", "--output", f"{out}/rkmeans",
                     "--set", "balance=none", "--set", "dedup=suffix"]),
        "rkmeans_balanced": (["train", "--input", emb, "--model", f"{out}/rkmeans_balanced_model"],
                             ["encode", "--input", emb, "--model", f"{out}/rkmeans_balanced_model",
                              "--output", f"{out}/rkmeans_balanced", "--set", "dedup=suffix"]),
        "rqvae": (["train-encoder", "--encoder", "rqvae", "--input", emb, "--model", f"{out}/rqvae_model"],
                  ["encode-encoder", "--model", f"{out}/rqvae_model", "--input", emb, "--output", f"{out}/rqvae"]),
    }
    seconds = {}
    for name in names:
        if os.path.exists(f"{out}/{name}/_manifest.json"):
            continue
        train, encode = recipes[name]
        seconds[name] = run(train + ["--master", master], log) + run(encode + ["--master", master], log)
    return seconds


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="/tmp/retrieval_beauty")
    ap.add_argument("--tables", default="rkmeans,rkmeans_balanced,rqvae")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--epochs", type=int, default=None, help="default: the preset's")
    ap.add_argument("--max-examples", type=int, default=None, help="default: the preset's (every example)")
    ap.add_argument("--torch-threads", type=int, default=1)
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--run-name", default="retrieval", help="output folder of the retrieval run under --out")
    ap.add_argument("--set", dest="extra", action="append", default=[], help="more retrieval keys, key=value")
    a = ap.parse_args()
    if not os.path.exists(os.path.join(DATA, "sequences.parquet")):
        sys.exit("../shared/data/beauty is absent")
    os.makedirs(a.out, exist_ok=True)
    names = [n.strip() for n in a.tables.split(",") if n.strip()]
    log = f"{a.out}/log.txt"
    print("SID tables built in (s):", build_tables(a.out, names, a.master, log), flush=True)
    sets = [f"preset={a.preset}", *([f"epochs={a.epochs}"] if a.epochs else []),
            *([f"max_examples={a.max_examples}"] if a.max_examples else []),
            f"torch_threads={a.torch_threads}", *a.extra]
    secs = run(["retrieval", "--sids", ",".join(f"{n}={a.out}/{n}" for n in names),
                "--interactions", os.path.join(DATA, "sequences.parquet"),
                "--embeddings", os.path.join(DATA, "items_emb.parquet"), "--output", f"{a.out}/{a.run_name}",
                "--master", a.master, *sum([["--set", s] for s in sets], [])], log)
    rows = json.load(open(f"{a.out}/{a.run_name}/retrieval.json"))
    print(open(f"{a.out}/{a.run_name}/retrieval.md").read())
    for r in rows:
        if r["kind"] == "generative":
            print(f"{r['name']}: {r['parameters']} parameters, {r['epochs']} epochs (best {r['best_epoch']}), "
                  f"{r['train_examples']} training examples, validation R@10 by epoch {r['val_recall@10']}, "
                  f"train {r['train_seconds']}s, test {r['test_seconds']}s, {r['sids']} SIDs")
    print(f"retrieval run: {secs:.0f}s; settings {sets}")


if __name__ == "__main__":
    main()
