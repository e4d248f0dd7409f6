"""The daily flow on Amazon Beauty (../shared/data/beauty), day by day, with the CLI a scheduler would run:
day 0 = the 80% of items with the lowest ids (train + encode with dedup=suffix into generation 1, published), days
1-4 = the next 5% each (cumulative inputs, `encode --existing` into the same table), then a rerun of day 4. Prints the
table of the issue: items added, codes' min/max per level against N/K, collision rates, error ratio, drift flag.

    python benchmarks/daily_beauty.py [--out /tmp/daily_beauty] [--master local[2]]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
DATA = os.path.join(ROOT, "..", "shared", "data", "beauty", "items_emb.parquet")
CLI = os.path.join(os.path.dirname(sys.executable), "sid-spark")


def run(args, log) -> float:
    t = time.time()
    print("+ sid-spark " + " ".join(args), flush=True)
    with open(log, "a") as f:
        subprocess.run([CLI, *args], check=True, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    return time.time() - t


def split_days(out: str) -> list:
    t = pq.read_table(DATA)
    ids = np.sort(t.column("item_id").to_numpy())
    paths = []
    for d, frac in enumerate((0.8, 0.85, 0.9, 0.95, 1.0)):
        cut = int(ids[int(round(len(ids) * frac)) - 1])
        paths.append(f"{out}/in{d}.parquet")
        pq.write_table(t.filter(pc.less_equal(t.column("item_id"), cut)), paths[-1])
    return paths


def row(day: str, m: dict) -> str:
    dr = m.get("drift")
    if dr is None:
        return (f"| {day} | {m['items_read']} | {m['items_encoded']} | {m['items']} | (full balanced encode) "
                "| – | – | – |")
    f = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
    levels = "; ".join(f"{lv['smallest']}/{lv['largest']} ({lv['expected']:.1f})" for lv in dr["levels"])
    return (f"| {day} | {m['items_read']} | {m['items_encoded']} | {m['items']} | {levels} | "
            f"{f(dr['new_collision_rate'])} ({f(dr['published_collision_rate'])}) | {f(dr['error_ratio'])} | "
            f"{dr['retrain_recommended']} {'; '.join(dr['reasons'])} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="/tmp/daily_beauty")
    ap.add_argument("--master", default="local[2]")
    a = ap.parse_args()
    if not os.path.exists(DATA):
        sys.exit("../shared/data/beauty is absent")
    os.makedirs(a.out, exist_ok=True)
    log, sid = f"{a.out}/log.txt", f"{a.out}/sid"
    days = split_days(a.out)
    s = ["--master", a.master, "--log-level", "WARN"]
    gen, model, table = f"{sid}/gen=1", f"{sid}/gen=1/model", f"{sid}/gen=1/sids"
    manifests, seconds = [], []
    run(["generation", "--root", sid, "--generation", "1", "--begin", *s], log)
    seconds.append(run(["train", "--input", days[0], "--model", model, *s], log)
                   + run(["encode", "--input", days[0], "--model", model, "--output", table, "--generation", "1",
                          "--set", "dedup=suffix", *s], log))
    run(["generation", "--root", sid, "--generation", "1", "--publish", *s], log)
    manifests.append(json.load(open(f"{table}/_manifest.json")))
    for d in (1, 2, 3, 4, 4):
        seconds.append(run(["encode", "--input", days[d], "--model", model, "--existing", table, "--output", table,
                            *s], log))
        manifests.append(json.load(open(f"{table}/_manifest.json")))
    print("| day | input items | items added | table items | level codes min/max (N/K) "
          "| new items' collision rate (published) | error ratio | retrain_recommended |")
    print("|---|---|---|---|---|---|---|---|")
    for d, m in enumerate(manifests):
        print(row(str(d) if d < 5 else "4 (rerun)", m))
    print("seconds per day:", [round(x) for x in seconds], "; generation folder:", gen)


if __name__ == "__main__":
    main()
