"""Seeding beyond LARGE_K on the executors (issue 15): the sharded blocked k-means++ of `kernels.seeding`, one
Spark job a round.

The seeding rows -- the m sample rows of smallest hash, as before -- are cut into `seed_tasks(m, d)` shards of
consecutive rows (at most SEED_TASKS, each about SEED_TASK_BYTES of vectors), taken through the frozen levels once
(their residuals cached with the level's shards), and every round is one job: each shard takes the centres the
last round chose, updates its rows' distances (one GEMM), and offers its best c candidates; the driver keeps the
best c of at most SEED_TASKS x c offers. The shard's distances travel from round to round in Spark's cache (a
small (closest, taken) pair per shard, zipped with the cached rows), so the rows are read, never re-sent.

Driver: the centres chosen so far, (K, d) float32, and one round's offers, SEED_TASKS x ceil(K / 16) x d x 4 bytes
(2 K d): no seeding rows. A task: its shard, at most m d 4 / SEED_TASKS bytes beyond SEED_TASK_BYTES, and one
round's distance block. The seeding does not depend on the input's partitioning (the rows are chosen and
numbered by hash, the draws come from the rows' numbers), nor on the number of shards up to the GEMM's rounding.
"""
from __future__ import annotations

import math
from typing import List, Optional

import numpy as np
from pyspark import RDD, StorageLevel
from pyspark.serializers import BatchedSerializer, CPickleSerializer

from ..kernels import seeding as sd
from .batches import BatchedSample, pruned

SEED_TASKS = 8
SEED_TASK_BYTES = 32 << 20


def seed_tasks(m: int, dim: int) -> int:
    """Shards (tasks) of a seeding set of m rows of dim floats."""
    return max(1, min(SEED_TASKS, math.ceil(4 * m * dim / SEED_TASK_BYTES)))


def _one_per_batch(rdd: RDD) -> RDD:
    # Both sides of a zip pickled one element at a time: RDD.zip then pairs the cached blocks as they are, instead
    # of re-batching (a Python pass that unpickles and pickles the shard's rows again every round).
    return rdd._reserialize(BatchedSerializer(CPickleSerializer(), 1))


def seeding_shards(batched: BatchedSample, m: int) -> RDD:
    """The first m rows of the cached sample (partitions and rows in hash order) as seed_tasks(m, d) partitions of
    one (start, (n, d) float32) element each, shard s holding rows [bounds[s], bounds[s+1]); one shuffle of m
    rows. Not cached: each level caches its residuals."""
    dim = batched.dim
    tasks = seed_tasks(m, dim)
    bounds = np.linspace(0, m, tasks + 1).round().astype(np.int64)
    spans = batched.first_rows(m)
    # pruned() renumbers the partitions it keeps: its partition i is cached partition spans[i][0]
    offsets = [(start, n) for _, start, n in spans]

    def split(index, arrays):
        start, n = offsets[index]
        for x in arrays:
            lo = start
            while lo < start + n:
                s = int(np.searchsorted(bounds, lo, side="right")) - 1
                hi = min(start + n, int(bounds[s + 1]))
                yield s, (lo, np.ascontiguousarray(x[lo - start: hi - start]))
                lo = hi

    def assemble(index, items):
        chunks = sorted((lo, x) for _, (lo, x) in items)
        x = np.concatenate([c for _, c in chunks]) if chunks else np.empty((0, dim), np.float32)
        yield int(bounds[index]), x

    return (pruned(batched.rdd, [part for part, _, _ in spans]).mapPartitionsWithIndex(split)
            .partitionBy(tasks, lambda s: s)
            .mapPartitionsWithIndex(assemble, preservesPartitioning=True))


def seed_level(shards: RDD, frozen, k: int, key: int, rounds: Optional[int] = None) -> np.ndarray:
    """(k, d) float32 k-means++ centres for a level, drawn from the residuals of the seeding shards through the
    `frozen` levels (quantize.QuantizerState), one job a round (kernels.seeding.rounds_plan; `rounds`:
    kernels.seeding.SEED_ROUNDS)."""
    import torch

    from ..kernels import kmeans as km
    from .runner import task_setup

    def residuals(items):
        dev, (cbs, prs) = task_setup(frozen.device, frozen.tensors)
        for start, x in items:
            if len(x) and cbs:
                x = km.residual_encode(torch.from_numpy(x).to(dev), cbs, prs, frozen.block_rows)[1].cpu().numpy()
            yield start, x

    base = _one_per_batch(shards.mapPartitions(residuals, preservesPartitioning=True)) \
        .persist(StorageLevel.MEMORY_AND_DISK)
    state, prev, centres, chosen = None, None, [], None
    device = frozen.device  # a round's closure carries the last round's centres, never the frozen codebooks
    try:
        for r, c in enumerate(sd.rounds_plan(k, rounds or sd.SEED_ROUNDS)):
            def step(pairs, chosen=chosen, r=r, c=c):
                dev, _ = task_setup(device)
                for (start, x), st in pairs:
                    shard = sd.Shard(torch.from_numpy(x).to(dev), start)
                    if st is not None:
                        shard.closest, shard.taken = st[0].copy(), st[1].copy()
                    shard.take(chosen)
                    yield (shard.closest, shard.taken), shard.offer(key, r, c)

            zipped = base.map(lambda b: (b, None)) if state is None else base.zip(state)
            nxt = zipped.mapPartitions(step).persist(StorageLevel.MEMORY_AND_DISK)
            offers: List[sd.Offer] = nxt.map(lambda e: e[1]).collect()  # driver-ok: <= SEED_TASKS x c rows
            if prev is not None:
                prev.unpersist()
            prev = nxt
            chosen = sd.Offer.merge(offers, c)
            centres.append(chosen.rows)
            state = _one_per_batch(nxt.map(lambda e: e[0]))
        return np.concatenate(centres)[:k]
    finally:
        if prev is not None:
            prev.unpersist()
        base.unpersist()
