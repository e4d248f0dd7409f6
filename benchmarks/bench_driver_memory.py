"""Driver peak memory vs catalog size: it must not grow with N.

For each N (default 1,000,000 and 4,000,000) a fresh driver process generates a synthetic catalog to Parquet,
trains (levels=2, K=64 by default) and encodes it with the CLI's `write_sids`, and reports the peak resident
memory (VmHWM) of the Python driver and of the Spark JVM, plus the time of each step.

    .venv/bin/python benchmarks/bench_driver_memory.py                   # 1M and 4M, d=32
    .venv/bin/python benchmarks/bench_driver_memory.py --items 100000 400000 --master local[2]

In local mode the JVM is driver *and* executor, so its peak includes the executor's work and is capped by
--driver-memory (the heap) rather than by N; on a cluster the driver JVM only holds plans and K-sized
aggregates. The Python driver's figure is the one the design rules are about: no collect() of item-sized data.
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


def vm_hwm_mb(pid: int | str = "self") -> float:
    """Peak resident set (VmHWM) of a process, in MB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def jvm_pid(spark) -> int:
    """The JVM behind this session's py4j gateway (spark-submit execs into java)."""
    import psutil

    proc = psutil.Process(spark.sparkContext._gateway.proc.pid)
    for p in [proc, *proc.children(recursive=True)]:
        if "java" in p.name():
            return p.pid
    return proc.pid


class WorkerPeak:
    """Peak resident memory of the Spark JVM's Python workers (the executors' tasks, in local mode), sampled.

    A thread reads the RSS of every process under the JVM whose command line names pyspark (the daemon and the
    workers it forks; a reused worker runs one task at a time) every `interval` seconds. take() returns the
    largest RSS seen since the last take() in MB, so each phase of a run gets its own figure. Sampled, so a
    spike shorter than the interval can be missed; the figure is a worker's whole process (the interpreter,
    torch, the task's arrays), an upper bound on what its task allocated."""

    def __init__(self, jpid: int, interval: float = 0.1):
        import threading

        self.jpid, self.interval, self.peak = jpid, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        jvm = psutil.Process(self.jpid)
        while not self._stop.is_set():
            try:
                for p in jvm.children(recursive=True):
                    try:
                        if "pyspark" in " ".join(p.cmdline()):
                            self.peak = max(self.peak, p.memory_info().rss)
                    except psutil.Error:
                        pass
            except psutil.Error:
                return
            self._stop.wait(self.interval)

    def take(self) -> float:
        peak, self.peak = self.peak, 0
        return round(peak / 2 ** 20, 1)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def one_run(args) -> dict:
    """Runs inside a fresh process: generate, train, encode; return the figures."""
    sys.path.insert(0, str(ROOT))
    from sid_spark.commands.encode import write_sids
    from sid_spark.spark.session import get_session
    from sid_spark.synthetic import synthetic_catalog
    from sid_spark.tokenizer import ResidualKMeansTokenizer

    n = args.items[0]
    spark = get_session(args.master, app_name="bench-driver-memory",
                        conf={"spark.driver.memory": args.driver_memory,
                              "spark.sql.shuffle.partitions": str(args.shuffle_partitions)})
    spark.sparkContext.setLogLevel("ERROR")
    jpid = jvm_pid(spark)
    work = Path(args.workdir)
    t0 = time.time()
    synthetic_catalog(spark, n, args.dim, seed=0, partitions=max(2, n // 250_000)) \
        .write.mode("overwrite").parquet(str(work / "catalog"))
    t_gen = time.time() - t0
    df = spark.read.parquet(str(work / "catalog"))
    t0 = time.time()
    model = ResidualKMeansTokenizer(levels=args.levels, codebook_size=args.k, balance=args.balance, seed=1,
                                    max_iter=args.max_iter, sample_size=args.sample_size).fit(df)
    t_train = time.time() - t0
    manifest = write_sids(spark, model, df, str(work / "sids"))
    out = {"items": n, "dim": args.dim, "levels": args.levels, "k": args.k, "balance": args.balance,
           "python_driver_peak_mb": round(vm_hwm_mb(), 1), "jvm_peak_mb": round(vm_hwm_mb(jpid), 1),
           "generate_s": round(t_gen, 1), "train_s": round(t_train, 1),
           "encode_s": round(manifest["encode_seconds"], 1), "items_encoded": manifest["items_encoded"]}
    spark.stop()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, nargs="+", default=[1_000_000, 4_000_000])
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--levels", type=int, default=2)
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--balance", default="none", choices=["none", "exact"])
    p.add_argument("--max-iter", type=int, default=5)
    p.add_argument("--sample-size", type=int, default=200_000)
    p.add_argument("--master", default="local[2]")
    p.add_argument("--driver-memory", default="2g")
    p.add_argument("--shuffle-partitions", type=int, default=16)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print("RESULT " + json.dumps(one_run(args)), flush=True)
        return
    rows = []
    for n in args.items:
        with tempfile.TemporaryDirectory(prefix="bench-mem-") as work:
            cmd = [sys.executable, __file__, "--child", "--workdir", work, "--items", str(n),
                   *[a for k in ("dim", "levels", "k", "balance", "max_iter", "sample_size", "master",
                                 "driver_memory", "shuffle_partitions")
                     for a in (f"--{k.replace('_', '-')}", str(getattr(args, k)))]]
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                sys.exit(f"run with {n} items failed:\n{proc.stderr[-3000:]}")
            rows.append(json.loads(line[7:]))
            print(json.dumps(rows[-1]), flush=True)
    print(f"\n{'items':>10} {'python driver peak MB':>22} {'JVM peak MB':>12} {'train s':>8} {'encode s':>9}")
    for r in rows:
        print(f"{r['items']:>10} {r['python_driver_peak_mb']:>22} {r['jvm_peak_mb']:>12} {r['train_s']:>8} "
              f"{r['encode_s']:>9}")
    if len(rows) > 1:
        a, b = rows[0], rows[-1]
        print(f"python driver peak x{b['python_driver_peak_mb'] / a['python_driver_peak_mb']:.2f} for "
              f"x{b['items'] / a['items']:.0f} items")


if __name__ == "__main__":
    main()
