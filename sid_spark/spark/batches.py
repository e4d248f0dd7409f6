"""The training sample, cut once into mini-batches of float32 blocks that stay cached on the executors.

Mini-batch k-means runs one Spark job per iteration. Filtering a cached DataFrame for the batch would scan the whole
sample and convert the batch's rows to Arrow again in every iteration; instead the sample is shuffled once into
``n_batches x slots`` RDD partitions, partition ``b * slots + j`` holding slot j of mini-batch b as one (m, d) float32
array (rows in hash order), and an iteration runs only its batch's ``slots`` partitions with ``SparkContext.runJob``.
A row's batch and slot come from its id hash alone, so the batches do not depend on the input's partitioning.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, List

import numpy as np
import pyarrow as pa
from pyspark import RDD, StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from .prepare import VEC
from .vectors import arrow_matrix

_KEY = "_part"


@dataclass
class BatchedSample:
    rdd: RDD  # one (m, d) float32 numpy array per partition
    n_batches: int
    slots: int
    n_rows: int
    dim: int

    def partitions(self, batch: int) -> List[int]:
        return list(range(batch * self.slots, (batch + 1) * self.slots))

    def run(self, batch: int, func: Callable) -> list:
        """func(iterator of (m, d) arrays) -> iterable of results, on the partitions of `batch` only."""
        return self.rdd.context.runJob(self.rdd, func, self.partitions(batch))

    def unpersist(self) -> None:
        self.rdd.unpersist()


def batched_sample(sample: DataFrame, unit_col: str, expected_rows: int, batch_size: int, dim: int) -> BatchedSample:
    """Cut `sample` (columns _vec and `unit_col`, a uniform [0, 1) hash) into mini-batches of ~batch_size rows
    (their number from `expected_rows`, so it is known before the pass).

    Batch b holds the rows whose unit falls in [b / n_batches, (b + 1) / n_batches), so the first iterations see the
    same rows as a hash-range filter would. One pass over the sample plus one shuffle of its raw float32 bytes."""
    sc = sample.sparkSession.sparkContext
    n_batches = max(1, math.ceil(expected_rows / batch_size))
    slots = max(1, sc.defaultParallelism)
    n_parts = n_batches * slots
    key = F.least(F.floor(F.col(unit_col) * n_parts).cast("int"), F.lit(n_parts - 1))
    rows = sample.select(key.alias(_KEY), F.col(unit_col), VEC)

    def chunks(batches):
        """Per input partition: one (key, units, vectors) record per destination partition it feeds."""
        keys, units, mats = [], [], []
        for batch in batches:
            if batch.num_rows == 0:
                continue
            keys.append(batch.column(0).to_numpy())
            units.append(batch.column(1).to_numpy())
            mats.append(arrow_matrix(batch.column(2), dim))
        if not keys:
            return
        k, u, x = np.concatenate(keys), np.concatenate(units), np.concatenate(mats)
        order = np.argsort(k, kind="stable")
        k, u, x = k[order], u[order], x[order]
        bounds = np.flatnonzero(np.diff(k)) + 1
        for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(k)]):
            yield pa.RecordBatch.from_arrays(
                [pa.array([int(k[lo])], pa.int32()), pa.array([u[lo:hi].tobytes()], pa.binary()),
                 pa.array([np.ascontiguousarray(x[lo:hi]).tobytes()], pa.binary())], ["k", "u", "x"])

    schema = T.StructType([T.StructField("k", T.IntegerType()), T.StructField("u", T.BinaryType()),
                           T.StructField("x", T.BinaryType())])

    def assemble(records):
        """All chunks of one partition -> one array, rows in unit (hash) order whatever order the chunks came in."""
        units, mats = [], []
        for _, (u, x) in records:
            units.append(np.frombuffer(u, np.float64))
            mats.append(np.frombuffer(x, np.float32).reshape(-1, dim))
        if not mats:
            yield np.empty((0, dim), np.float32)
            return
        u, x = np.concatenate(units), np.concatenate(mats)
        yield np.ascontiguousarray(x[np.argsort(u, kind="stable")])

    rdd = (rows.mapInArrow(chunks, schema).rdd
           .map(lambda r: (r[0], (bytes(r[1]), bytes(r[2]))))
           .partitionBy(n_parts, lambda k: k)
           .mapPartitions(assemble, preservesPartitioning=True)
           .persist(StorageLevel.MEMORY_AND_DISK))
    n_rows = int(sum(rdd.map(len).collect()))  # driver-ok: one count per partition
    return BatchedSample(rdd, n_batches, slots, n_rows, dim)
