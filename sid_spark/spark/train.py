"""Distributed residual mini-batch k-means: the driver keeps codebooks and K-sized counts, executors do the rows."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np
import torch
from pyspark import StorageLevel
from pyspark.sql import functions as F

from ..config import TokenizerConfig
from ..errors import InputError
from ..kernels import kmeans as km
from ..kernels import seeding as sd
from ..progress import Progress
from .prepare import HASH, VEC, Prepared
from .batches import DIRECT_SUM_BYTES, BatchedSample, assemble_chunks, batched_sample
from .quantize import QuantizerState, SlotPricing, batch_stats, price_rows
from .seeding import SEED_TASKS, seed_level, seeding_shards

log = logging.getLogger("sid_spark.train")

UNIT = "_u"


def hash_unit(col: str = HASH):
    """The 64-bit item hash mapped to a uniform double in [0, 1)."""
    return (F.shiftright(F.col(col), 11).cast("double") + float(2 ** 52)) / float(2 ** 53)


@dataclass
class TrainResult:
    codebooks: List[np.ndarray]
    prices: List[Optional[np.ndarray]]
    n_items: int
    n_sample: int
    history: List[dict] = field(default_factory=list)


def sample_rows(prepared: Prepared, cfg: TokenizerConfig):
    """(rows (_vec, _u) to train on, catalog size N, expected sample size): the rows whose id hash falls in
    [0, sample_size / N), with _u the hash rescaled to [0, 1). Chosen by id hash, so independent of partitioning."""
    n = prepared.n_valid if prepared.n_valid is not None else prepared.valid.count()
    if n == 0:
        raise InputError("input has no valid rows to train on (see the rejects table)")
    k = max(cfg.codebook_sizes)
    if n < k:
        raise InputError(f"N < K: {n} valid items cannot fill codebook_size={k} codes; "
                         f"lower codebook_size or add items")
    frac = min(1.0, cfg.sample_size / n)
    rows = prepared.valid.select(VEC, hash_unit().alias(UNIT))
    if frac < 1.0:
        rows = rows.where(F.col(UNIT) < F.lit(frac))
    return rows.withColumn(UNIT, F.col(UNIT) / F.lit(frac)), n, int(round(n * frac))


def training_sample(prepared: Prepared, cfg: TokenizerConfig):
    """Persisted sample rows (_vec, _u) and the catalog size, for the encoders that train on a collected sample."""
    rows, n, _ = sample_rows(prepared, cfg)
    # Few fat partitions: per-task overhead dominates small ones.
    parts = max(1, min(rows.rdd.getNumPartitions(), prepared.valid.sparkSession.sparkContext.defaultParallelism))
    sample = rows.coalesce(parts).persist(StorageLevel.MEMORY_AND_DISK)
    n_sample = sample.count()
    _check_sample(n_sample, cfg)
    return sample, n, n_sample


def _check_sample(n_sample: int, cfg: TokenizerConfig) -> None:
    k = max(cfg.codebook_sizes)
    if n_sample < k:
        raise InputError(f"training sample of {n_sample} rows is smaller than codebook_size={k}; "
                         f"raise sample_size")


# Beyond this K the seeding set stops growing as init_factor * K and k-means++ draws its centres in
# kernels.seeding.SEED_ROUNDS rounds of GEMMs on the executors (seeding.seed_level: the seeding rows in shards, one job a
# round, the driver holding the centres and one round's candidates), not O(K^2 * init_factor * trials * d) in K
# passes on the driver. Up to LARGE_K the greedy k-means++ of before on the driver, unchanged.
LARGE_K = 1024


def seeding_rows(cfg: TokenizerConfig, n_sample: int, k: Optional[int] = None) -> int:
    """Rows of the k-means++ seeding set for codebook size k (the largest level's by default): init_factor * K up
    to K = LARGE_K, then max(init_factor * LARGE_K, 4 K)."""
    k = max(cfg.codebook_sizes) if k is None else k
    m = cfg.init_factor * k if k <= LARGE_K else min(cfg.init_factor * k, max(cfg.init_factor * LARGE_K, 4 * k))
    return min(n_sample, m)


def driver_memory_bytes(cfg: TokenizerConfig, dim: int, n_sample: int = 1 << 62) -> int:
    """Upper bound on the driver's training working set (bytes), for `cfg` on dim-d vectors:

      4 * sum(K_l) * (d + 1)            the codebooks and prices of every level (float32)
    + m * d * (4 + 4 + 8)               seeding rows, their residuals and k-means++'s float64 copy,
                                        m = seeding_rows(cfg) = init_factor * K
    + 8 * m * (t + 3)                   k-means++ distance rows for t = 2 + ln K candidates
                                        (beyond K = LARGE_K the seeding runs on the executors instead, and the
                                        driver holds 8 * K * d, the centres chosen and their concatenation, plus
                                        2 * SEED_TASKS * b * (4 d + 17), one round's offers as they arrive and
                                        merged, b = kernels.seeding.seed_block(K) centres a round: no seeding rows)
    + 8 * K * (d + 1) * 6               one level's statistics as they arrive and are decoded (blob, arrays),
                                        float64 centroids and the update's temporaries
    + 8 * K * 8                         counts, seen, prices and per-code history
    + batches.DIRECT_SUM_BYTES          a mini-batch's blobs, when they are few and small enough to be summed on
                                        the driver (16 MiB; otherwise the executors sum them)

    with K = max(K_l), m from K and the seeding term the largest over the levels (each with its own K_l): linear
    in K and d, independent of the catalog size N and of the number of executors (the statistics arrive as one
    reduced blob per iteration, or as at most DIRECT_SUM_BYTES of slot blobs). n_sample caps m for a small sample.
    """
    k_max, k_sum = max(cfg.codebook_sizes), sum(cfg.codebook_sizes)
    small = [k for k in cfg.codebook_sizes if k <= LARGE_K]
    m = seeding_rows(cfg, n_sample, max(small)) if small else 0
    seeding = max(8 * k * dim + 2 * SEED_TASKS * sd.seed_block(k) * (4 * dim + 17) if k > LARGE_K
                  else m * dim * 16 + 8 * m * (2 + int(np.log(k)) + 3) for k in cfg.codebook_sizes)
    return 4 * k_sum * (dim + 1) + seeding + 48 * k_max * (dim + 1) + 64 * k_max + DIRECT_SUM_BYTES


def init_rows(batched: BatchedSample, m: int) -> np.ndarray:
    """The m sample rows with the smallest hash: the k-means++ seeding set, (m, d) float32, in one job."""
    return batched.head(m)


# A level is trained inside one task (train_in_one_task) when the whole sample and its residuals take at most this
# many bytes (spark.sid_spark.trainInOneTaskMaxBytes) and the cost model (level_seconds) says the level takes less
# time there than as one Spark job per iteration. One job per iteration costs ~JOB_SECONDS of scheduling and
# Python-worker round trips (measured on local[2], where it is cheapest: 0.13-0.17 s a job that reads its two cached
# slots and does nothing, ~0.05 s between jobs) and spreads the iteration's arithmetic over the mini-batch's slots,
# but every iteration computes the batch's residuals through the frozen levels again. One task computes them once
# for the whole sample, after gathering it from the cache (GATHER_BYTES_PER_SECOND), and runs every slot's
# arithmetic on one core. The arithmetic on one core: the statistics pass at GEMM_FLOPS (2 K d flops a row and
# level, the whole pass and not the GEMM alone: 90 ms for 62,500 rows at K = 256, d = 128 on the team's 2-core
# machine, 2026-12-07); an exact step adds the exact assignment (EXACT_ENTRY_SECONDS an entry of the slot's rows x
# K: the top-2, ranking and repair beyond the statistics pass, 91 against 51 ms a 31,250-row slot at K = 256) and
# every slot's Sinkhorn solve once every PRICE_EVERY steps (SINKHORN_ENTRY_SECONDS an entry), and the level ends
# with the fine solve (FINAL_ENTRY_SECONDS an entry, 14 epsilons of up to 12 over-relaxed sweeps against the coarse
# 7 of 10: 1.14 s for 31,250 x 256 on one core). The result does not depend on the choice (fit_level runs the
# same updates on the same sums).
IN_TASK_CONF = "spark.sid_spark.trainInOneTask"  # auto (default) | false
IN_TASK_BYTES_CONF = "spark.sid_spark.trainInOneTaskMaxBytes"
# The one task is alone on its executor while it runs (the driver waits for it): it computes its slots' statistics
# on this many threads, one slot per thread (each slot's arithmetic on one torch thread, exactly as a task of the
# jobs path computes it, and the slots summed in slot order: the same numbers whatever the count). With fewer slots
# than threads each slot's row-parallel kernels take threads // slots torch threads (kernels.kmeans.row_threads:
# the same numbers as one; Beauty's one-slot balanced level 2.95 -> 2.15 s on 2). The cost model counts no gain
# from those. Default: the cores of one executor (spark.executor.cores; local[N]: N), 1 where the session does not
# say.
IN_TASK_THREADS_CONF = "spark.sid_spark.trainInOneTaskThreads"
TRAIN_IN_TASK_BYTES = 1 << 30
JOB_SECONDS = 0.2
GEMM_FLOPS = 4e10
GATHER_BYTES_PER_SECOND = 1e9
EXACT_ENTRY_SECONDS = 5e-9
SINKHORN_ENTRY_SECONDS = 6e-8
FINAL_ENTRY_SECONDS = 1.4e-7


def expected_iterations(cfg: TokenizerConfig, n_batches: int, k: int, batch_rows: int, balanced: bool) -> tuple:
    """(greedy iterations, exact steps) a level is expected to run: a pass over the mini-batches and one more (the
    loop stops no earlier), at least WARMUP_ITER; a balanced level's warm-up as fit_level ends it
    (WARMUP_ROWS_PER_CODE), then its exact steps."""
    if not balanced:
        return min(cfg.max_iter, max(WARMUP_ITER, n_batches + 1)), 0
    rows_rule = max(WARMUP_ITER, -(-WARMUP_ROWS_PER_CODE * k // max(1, batch_rows)))
    return min(loop_iterations(cfg, n_batches, True), rows_rule), cfg.balance_exact_steps


def level_seconds(cfg: TokenizerConfig, level: int, n_rows: int, n_batches: int, slots: int, dim: int,
                  balanced: bool, in_task: bool, threads: int = 1) -> float:
    """Estimated seconds of `level`'s mini-batch loop, one job per iteration or (`in_task`) in one task whose
    slots run on `threads` threads (min(threads, slots) at a time; the frozen residuals on all of them)."""
    k = cfg.codebook_size_for(level)
    frozen = sum(cfg.codebook_size_for(j) for j in range(level))
    batch_rows = -(-n_rows // max(1, n_batches))
    slot_rows = -(-batch_rows // max(1, slots))
    greedy, steps = expected_iterations(cfg, n_batches, k, batch_rows, balanced)
    # one core's work on a whole mini-batch
    level_stats = 2.0 * batch_rows * dim * k / GEMM_FLOPS
    frozen_stats = 2.0 * batch_rows * dim * frozen / GEMM_FLOPS
    exact = (batch_rows * k * EXACT_ENTRY_SECONDS
             + slots * price_rows(k, slot_rows, dim) * k * SINKHORN_ENTRY_SECONDS / PRICE_EVERY)
    final = slots * price_rows(k, slot_rows, dim, final=True) * k * FINAL_ENTRY_SECONDS if balanced else 0.0
    if in_task:
        # the slots of an iteration in rounds of min(threads, slots) at a time
        share = -(-max(1, slots) // max(1, min(threads, slots))) / max(1, slots)
        setup = (4.0 * n_rows * dim / GATHER_BYTES_PER_SECOND
                 + 2.0 * n_rows * dim * frozen / GEMM_FLOPS / max(1, threads))
        return setup + (greedy * level_stats + steps * (level_stats + exact) + final) * share
    per_slot = 1.0 / max(1, slots)
    return (greedy * (JOB_SECONDS + (frozen_stats + level_stats) * per_slot)
            + steps * (JOB_SECONDS + (frozen_stats + level_stats + exact) * per_slot)
            + (JOB_SECONDS + (frozen_stats + level_stats) * per_slot + final * per_slot if balanced else 0.0))


def train_in_one_task(spark, cfg: TokenizerConfig, n_rows: int, n_batches: int, slots: int, dim: int,
                      balanced: bool, level: int = 0, threads: Optional[int] = None) -> bool:
    """Whether `level`'s mini-batch loop runs inside one task: the sample fits the byte bound, and level_seconds
    says one task takes less time than one job per iteration."""
    mode = spark.conf.get(IN_TASK_CONF, "auto").strip().lower()
    if mode in ("false", "off", "no"):
        return False
    max_bytes = int(spark.conf.get(IN_TASK_BYTES_CONF, str(TRAIN_IN_TASK_BYTES)))
    if 8 * n_rows * dim > max_bytes:  # the sample and its residuals through the frozen levels, float32
        return False
    args = (cfg, level, n_rows, n_batches, slots, dim, balanced)
    threads = task_threads(spark) if threads is None else threads
    return level_seconds(*args, in_task=True, threads=threads) <= level_seconds(*args, in_task=False)


def task_threads(spark) -> int:
    """Threads of a level trained in one task (IN_TASK_THREADS_CONF): the cores of one executor."""
    conf = spark.conf.get(IN_TASK_THREADS_CONF, "auto").strip().lower()
    if conf not in ("", "auto"):
        return max(1, int(conf))
    cores = spark.conf.get("spark.executor.cores", None)
    if cores:
        return max(1, int(cores))
    sc = getattr(spark, "sparkContext", None)
    if sc is not None and sc.master.startswith("local"):
        return max(1, sc.defaultParallelism)  # local[N]: one executor of N cores
    return 1


# A balanced level: up to WARMUP_ITER plain (greedy) iterations -- at least one pass over the mini-batches -- then
# cfg.balance_exact_steps exact steps: every slot assigns its rows exactly balanced (what the encode does to the
# catalog) before the centres move, under prices solved on the executors every PRICE_EVERY steps and reused in
# between. Beauty 3 x 256 (single-process mirror, two row orders): rel. error 0.2602 with 20 steps re-priced every
# 4th, 0.2610 every 5th (15 steps), 0.2732 priced once, 0.2629-0.2636 with a solve in every step; the Sinkhorn-priced
# loop of before plus 8 exact steps 0.2629-0.2636, at three times the balanced levels' cost.
WARMUP_ITER = 6
PRICE_EVERY = 4
# ... and the warm-up stops before the end of its pass once it has seen this many rows per code after WARMUP_ITER
# iterations: a pass is needed when a batch holds a few rows per code (Beauty cut into 12 batches of 1,024 at
# K = 256: rel. error 0.3114 with 6 iterations against 0.3069 with the pass), not when each holds hundreds. 1M x 128,
# 3 x 256 (16 batches of 62,500, 244 rows per code each; 2026-12-07, greedy codes through the balanced codebooks):
# the pass 0.3321 in 75.9 s (two runs), 2,048 rows per code (9 iterations) 0.3321 in 71.1 s, 1,024 (6) 0.3330.
WARMUP_ROWS_PER_CODE = 2048


def loop_iterations(cfg: TokenizerConfig, n_batches: int, balanced: bool) -> int:
    """Iterations of a level's first loop at most: max_iter, or a balanced level's greedy warm-up (see
    WARMUP_ITER; it may stop earlier, WARMUP_ROWS_PER_CODE)."""
    return min(cfg.max_iter, max(WARMUP_ITER, n_batches)) if balanced else cfg.max_iter


def fit_level(stats, centroids: torch.Tensor, cfg: TokenizerConfig, k: int, n_batches: int, balanced: bool,
              on_step=None):
    """The mini-batch loop of one level, wherever it runs (the driver, one job per iteration; or one task):
    `stats(batch, centroids (k, d) float32 numpy, prices, pricing) -> LevelStats` of one mini-batch. The same
    updates in the same order either way, so both give the same codebook. A balanced level warms up greedily,
    then takes its exact steps (see WARMUP_ITER), restarting the mini-batch learning rates, and ends with one
    fine price solve for the model. Returns (codebook, prices, history)."""
    seen = torch.zeros(k, dtype=torch.int64)  # rows each code had, for the dead-code check
    rate = torch.zeros(k, dtype=torch.int64)  # Sculley's running counts (1 / rate: the learning rate)
    prices = None
    history = []

    def update(it, st, dead_after):
        nonlocal centroids, seen, rate
        counts = torch.from_numpy(st.counts)
        sums = torch.from_numpy(st.sums)
        if n_batches == 1:
            new = km.lloyd_update(centroids, counts, sums)
            dead = counts
        else:
            new, rate = km.sculley_update(centroids, rate, counts, sums)
            seen = seen + counts
            dead = seen if it >= dead_after else torch.ones_like(seen)
        new, _, n_split = km.split_empty(new, dead)
        shift = km.centroid_shift(centroids, new)
        centroids = new
        history.append({"iter": it + 1, "rows": st.rows, "mse": st.sse / max(st.rows, 1), "shift": shift,
                        "split": n_split, "max_count": int(st.counts.max()), "min_count": int(st.counts.min())})
        if on_step is not None:
            on_step(history[-1])
        return shift, n_split

    it, warmup_rows = -1, 0
    for it in range(loop_iterations(cfg, n_batches, balanced)):
        st = stats(it % n_batches, centroids.numpy(), None, None)
        shift, n_split = update(it, st, n_batches - 1)
        warmup_rows += st.rows
        if shift < cfg.tol and n_split == 0 and (n_batches == 1 or it >= n_batches):
            break
        if balanced and it + 1 >= WARMUP_ITER and warmup_rows >= WARMUP_ROWS_PER_CODE * k:
            break
    if balanced:
        # Sculley's rates restart: each exact step's batch counts as much as the steps before it together, so
        # the centres move to the means of balanced clusters instead of a 1/(epochs x batches) nudge towards them.
        rate = torch.zeros(k, dtype=torch.int64)
        for step in range(cfg.balance_exact_steps):
            it += 1
            solve = step % PRICE_EVERY == 0 or prices is None
            st = stats(it % n_batches, centroids.numpy(), None if solve else prices,
                       SlotPricing(exact=True, reuse=not solve))
            if solve:
                prices = st.prices
            shift, _ = update(it, st, 0)
            if shift < cfg.tol and n_batches == 1:
                break
        prices = stats((it + 1) % n_batches, centroids.numpy(), None, SlotPricing(final=True)).prices
    return centroids.numpy(), prices, history


def _fit_in_one_task(batched: BatchedSample, frozen: QuantizerState, centroids: torch.Tensor, cfg: TokenizerConfig,
                     k: int, dim: int, balanced: bool, threads: int = 1):
    """fit_level in one task that holds the whole cached sample: its partitions (batch b, slot j at b * slots + j,
    the index cached with each array) are gathered by a coalesce, and each iteration sums its batch's slot
    statistics in slot order, as the driver sums the blobs of batch_stats' job. The slots of an iteration (and the
    frozen residuals of the partitions) run on `threads` threads, each on one torch thread as a task of the jobs
    path: the same numbers. One job per level; the driver receives the K-sized result."""
    from concurrent.futures import ThreadPoolExecutor

    from .device import configure_torch_for_task
    from .quantize import slot_stats
    from .runner import task_setup

    slots, n_batches = batched.slots, batched.n_batches
    start = centroids.numpy()

    def task(items):
        dev, (cbs, prs) = task_setup(frozen.device, frozen.tensors)

        def residuals(pair):
            # The partition's rows from its cached chunks, and the frozen levels' residuals once, not in every
            # iteration: the same rows through the same kernel as slot_stats would run them, so the same numbers
            # (the task holds them instead of the sample).
            index, chunks = pair
            array = assemble_chunks(chunks, dim)
            if len(array) and cbs:
                array = km.residual_encode(torch.from_numpy(array).to(dev), cbs, prs, frozen.block_rows)[1]
                array = array.cpu().numpy()
            return index, array

        # torch and numpy release the GIL in the kernels: the threads share the executor's idle cores. Each thread
        # sets its own torch threads (OpenMP's count is per thread: a new thread would otherwise run its GEMMs on
        # every core, not on one as a task of the jobs path does). One slot at a time: no pool, the task's thread.
        # Fewer slots than threads (a balanced batch of one slot): each slot's row-parallel kernels share the
        # cores left (kernels.kmeans.row_threads; the same numbers as on one thread).
        per_slot = max(1, threads // max(1, min(threads, slots)))

        def thread_setup():
            configure_torch_for_task()
            km.set_row_threads(per_slot)

        pool = ThreadPoolExecutor(min(threads, slots), initializer=thread_setup) if min(threads, slots) > 1 else None
        run = map if pool is None else pool.map
        try:
            km.set_row_threads(per_slot if pool is None else 1)  # the task's own thread computes the slot
            gathered = {}
            for index, chunk in items:
                gathered.setdefault(index, []).append(chunk)
            parts = {index: [array] for index, array in run(residuals, gathered.items())}
            del gathered

            def stats(batch, level_codebook, level_prices, pricing):
                cb = km.as_tensor(level_codebook, dev)
                pr = None if level_prices is None else km.as_tensor(level_prices, dev)  # slot_stats: unless it solves

                def one(j):
                    return slot_stats(parts.get(batch * slots + j, []), dev, [], [], cb, pr, dim, frozen.block_rows,
                                      pricing)

                total = None
                for st in run(one, range(slots)):  # in slot order
                    total = st if total is None else total + st
                return total

            result = fit_level(stats, torch.from_numpy(start), cfg, k, n_batches, balanced)
        finally:
            km.set_row_threads(1)
            if pool is not None:
                pool.shutdown()
        yield result

    # The cached (index, chunk) records as they are: no Python stage between the cache and the task, which would
    # unpickle and pickle the whole sample once more in this one task.
    (result,) = batched.tagged.coalesce(1).mapPartitions(task).collect()  # driver-ok: one level's codebook
    return result


def train_level(batched: BatchedSample, frozen: QuantizerState, init_x: Optional[np.ndarray], cfg: TokenizerConfig,
                level: int, dim: int, balanced: bool = False, in_task: bool = False, threads: int = 1,
                seed_shards=None):
    """Fit the codebook of `level` on residuals of the frozen levels.

    A balanced level assigns by ``argmin ||r - c||^2 + p`` with prices every slot of the mini-batch solves for its
    own rows inside the statistics job (quantize.SlotPricing: Sinkhorn on the executors), so each centre is the mean
    of a balanced cluster; one more pass over the next mini-batch solves the final prices for the final centres.
    The driver holds K-sized prices only. `in_task`: the whole loop runs in one task (train_in_one_task), with the
    same result, its slots on `threads` threads. Seeding: greedy k-means++ of the driver's seeding rows `init_x`
    up to LARGE_K codes, beyond it the executors' blocked k-means++ of `seed_shards` (seeding.seed_level).
    Returns (codebook, prices, history)."""
    k = cfg.codebook_size_for(level)
    if k > LARGE_K:
        centroids = torch.from_numpy(seed_level(seed_shards, frozen, k, sd.seed_key(cfg.seed, level)))
    else:
        rng = np.random.default_rng([cfg.seed, level])
        cbs = [torch.from_numpy(c) for c in frozen.codebooks]
        prs = [None if p is None else torch.from_numpy(p) for p in frozen.prices]
        _, init_r = km.residual_encode(torch.from_numpy(init_x), cbs, prs, frozen.block_rows)
        centroids = km.kmeans_pp(init_r, k, rng)
        del init_r
    total = loop_iterations(cfg, batched.n_batches, balanced) + (cfg.balance_exact_steps if balanced else 0)
    what = f"train level {level + 1}/{cfg.levels}{' (balanced)' if balanced else ''}: iteration"
    if in_task:
        # One line when the task starts and one when it ends, with the later levels' estimate (this level's time
        # per iteration times their iterations at most): the loop itself runs where the driver cannot log it.
        progress = Progress(log, what, total, after=total * (cfg.levels - level - 1))
        log.info("train level %d/%d%s: up to %d iterations in one task (%d thread(s))", level + 1, cfg.levels,
                 " (balanced)" if balanced else "", total, threads)
        codebook, prices, history = _fit_in_one_task(batched, frozen, centroids, cfg, k, dim, balanced, threads)
        last = history[-1]
        progress.step(len(history), f"in one task; rows={last['rows']} mse={last['mse']:.6g} "
                                    f"shift={last['shift']:.3g} codes {last['min_count']}..{last['max_count']}",
                      steps_left=0)
    else:
        progress = Progress(log, what, total, early_stop=True, after=total * (cfg.levels - level - 1))

        def on_step(h):
            progress.step(h["iter"], f"rows={h['rows']} mse={h['mse']:.6g} shift={h['shift']:.3g} "
                                     f"split={h['split']} codes {h['min_count']}..{h['max_count']}")

        def stats(batch, level_codebook, level_prices, pricing):
            return batch_stats(batched, batch, frozen, level_codebook, level_prices, dim, pricing)

        codebook, prices, history = fit_level(stats, centroids, cfg, k, batched.n_batches, balanced, on_step)
    return codebook, prices, [{"level": level + 1, **h} for h in history]


def train_residual_kmeans(prepared: Prepared, cfg: TokenizerConfig, balanced=None,
                          start: Optional[TrainResult] = None, on_level=None) -> TrainResult:
    """Level after level: each level clusters what the frozen earlier levels leave (r = x - sum c_l[s_l]).

    `balanced(level)` says whether a level is balanced; `start` resumes from already trained levels;
    `on_level(result)` is called after every level (checkpointing).
    """
    rows, n, expected = sample_rows(prepared, cfg)
    any_balanced = balanced is not None and any(balanced(level) for level in range(cfg.levels))
    # A balanced level prices every slot on its own rows: a slot holds at least the rows one solve takes.
    slot_rows = price_rows(max(cfg.codebook_sizes), expected, prepared.dim) if any_balanced else None
    batched = batched_sample(rows, UNIT, expected, cfg.batch_size, prepared.dim, slot_rows)
    try:
        n_sample = batched.n_rows
        _check_sample(n_sample, cfg)
        small = [cfg.codebook_size_for(lv) for lv in range(cfg.levels) if cfg.codebook_size_for(lv) <= LARGE_K]
        large = [cfg.codebook_size_for(lv) for lv in range(cfg.levels) if cfg.codebook_size_for(lv) > LARGE_K]
        init_x = init_rows(batched, seeding_rows(cfg, n_sample, max(small))) if small else None
        shards = seeding_shards(batched, seeding_rows(cfg, n_sample, max(large))) if large else None
        log.info("training %d sample rows in %d mini-batch(es) of %d slot(s)", n_sample, batched.n_batches,
                 batched.slots)
        result = start or TrainResult([], [], n, n_sample)
        result.n_items, result.n_sample = n, n_sample
        threads = task_threads(prepared.valid.sparkSession)
        for level in range(len(result.codebooks), cfg.levels):
            frozen = QuantizerState(tuple(result.codebooks), tuple(result.prices), cfg.block_rows, cfg.device)
            is_balanced = bool(balanced(level)) if balanced else False
            in_task = train_in_one_task(prepared.valid.sparkSession, cfg, n_sample, batched.n_batches,
                                        batched.slots, prepared.dim, is_balanced, level, threads)
            cb, prices, hist = train_level(batched, frozen, init_x, cfg, level, prepared.dim, is_balanced,
                                           in_task=in_task, threads=threads, seed_shards=shards)
            result.codebooks.append(cb)
            result.prices.append(prices)
            result.history.extend(hist)
            if on_level is not None:
                on_level(result)
        return result
    finally:
        batched.unpersist()
