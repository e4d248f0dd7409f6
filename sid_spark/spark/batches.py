"""The training sample, cut once into mini-batches of float32 blocks that stay cached on the executors.

Mini-batch k-means runs one Spark job per iteration. Filtering a cached DataFrame for the batch would scan the whole
sample and convert the batch's rows to Arrow again in every iteration; instead the sample is shuffled once into
``n_batches x slots`` RDD partitions, partition ``b * slots + j`` holding slot j of mini-batch b (rows in hash
order), and an iteration runs only its batch's ``slots`` partitions with ``SparkContext.runJob``. A row's batch and
slot come from its id hash alone, so the batches do not depend on the input's partitioning.

The sample's rows reach Python once, as the Arrow batches of the Dataset (arrow_batches); each input partition
sends its rows on as a few (destination, (units, vectors)) chunk records through an RDD partitionBy, and the
shuffled, pickled chunks are what the cache holds: the JVM caches them as they arrive, with no Python stage after
the shuffle. A partition's chunks become its one (m, d) array when they are read (assemble_chunks: concatenated
and put in hash order, ~16 MB at 1M x 128 in 32 partitions), by the iteration's task or by the one task that
trains a level. 1M x 128 on local[2], 2026-12-07: the cut 5.9-6.0 s and a one-task gather 0.8-1.0 s, against
8.6-10.3 s and 0.5-0.9 s when the chunks went through a DataFrame repartition and a Python stage assembled the
cache (the SQL shuffle's rows converted back to Arrow and handed to Python cost ~2 s by itself).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import numpy as np
import pyarrow as pa
from pyspark import RDD, AccumulatorParam, StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from .prepare import VEC
from .vectors import arrow_matrix

_KEY = "_part"
# A mini-batch's blobs are summed on the driver, in slot order, when all of them together take at most this many
# bytes (one stage and no shuffle: a few slots at moderate K, where the tree's extra stage is most of an
# iteration's cost); larger, they are summed on the executors (tree_reduce). Either way the same left-to-right sum.
DIRECT_SUM_BYTES = 16 << 20
# The cut sends a partition's rows on in chunks of about this many bytes of vectors (one record per destination
# partition and chunk): a cut task's memory is bounded by it, not by the size of its input partition (a 250,000-row
# partition at d = 256 held twice, 512 MB, before).
CUT_CHUNK_BYTES = 32 << 20


def assemble_chunks(chunks, dim: int) -> np.ndarray:
    """A partition's (units (n,) float64, x (n, d) float32) chunks -> its (m, d) float32 rows in unit (hash) order,
    whatever order the chunks came in."""
    chunks = list(chunks)
    if not chunks:
        return np.empty((0, dim), np.float32)
    u = np.concatenate([c[0] for c in chunks])
    x = np.concatenate([c[1] for c in chunks]) if len(chunks) > 1 else chunks[0][1]
    return np.ascontiguousarray(x[np.argsort(u, kind="stable")])


@dataclass
class BatchedSample:
    tagged: RDD  # the cached chunks: (partition index, (units, (n, d) float32)) records, on their partition
    n_batches: int
    slots: int
    n_rows: int
    dim: int
    part_rows: List[int] = field(default_factory=list)  # rows of every partition, in partition order

    def __post_init__(self):
        # One (m, d) array per partition, assembled from its cached chunks where it is read.
        dim = self.dim
        self.rdd = self.tagged.mapPartitions(lambda records: [assemble_chunks((c for _, c in records), dim)],
                                             preservesPartitioning=True)

    def partitions(self, batch: int) -> List[int]:
        return list(range(batch * self.slots, (batch + 1) * self.slots))

    def run(self, batch: int, func: Callable) -> list:
        """func(iterator of (m, d) arrays) -> iterable of results, on the partitions of `batch` only."""
        return self.rdd.context.runJob(self.rdd, func, self.partitions(batch))

    def batch_rdd(self, batch: int) -> RDD:
        """The cached partitions of `batch` alone, as an RDD of `slots` partitions (Spark's PartitionPruningRDD:
        no task for the other batches' partitions, so a reduction over it runs on this batch's data only)."""
        return pruned(self.rdd, self.partitions(batch))

    def reduce(self, batch: int, func: Callable, add: Callable, fanout: int = 16, blob_bytes: Optional[int] = None):
        """func(iterator of (m, d) arrays) -> one bytes blob per partition of `batch`, summed by
        `add(bytes, bytes) -> bytes` in slot order. On the executors (tree_reduce: the driver receives one blob,
        whatever `slots` is), unless `blob_bytes` (an upper bound on one blob) says that all of them fit in
        DIRECT_SUM_BYTES and slots <= fanout: then the driver sums them as they come from one job, the same
        left-to-right sum the tree's one group would do."""
        if blob_bytes is not None and self.slots <= fanout and self.slots * blob_bytes <= DIRECT_SUM_BYTES:
            total = None
            for blob in self.run(batch, func):  # driver-ok: at most DIRECT_SUM_BYTES of K-sized blobs
                total = blob if total is None else add(total, blob)
            return total
        return tree_reduce(self.batch_rdd(batch).mapPartitions(func), add, fanout)

    def first_rows(self, m: int) -> List[tuple]:
        """Where the m rows with the smallest hash are: (partition, rows before it, rows taken from it) for each
        partition they come from, in order (partitions are in hash order, so are their rows; part_rows says how
        many each one holds)."""
        spans, have = [], 0
        for part, rows in enumerate(self.part_rows):
            if have >= m:
                break
            if rows:
                spans.append((part, have, min(rows, m - have)))
                have += spans[-1][2]
        return spans

    def head(self, m: int) -> np.ndarray:
        """The m rows with the smallest hash, (m, d) float32, gathered in one job (first_rows)."""
        spans = self.first_rows(m)
        if not spans:
            return np.empty((0, self.dim), np.float32)
        take = {part: n for part, _, n in spans}
        # driver-ok: m rows in all, O(seeding rows * d)
        got = self.rdd.context.runJob(
            self.rdd.mapPartitionsWithIndex(lambda i, arrays: (x[: take.get(i, 0)] for x in arrays)), lambda a: a,
            list(take))
        return np.concatenate([x for x in got if len(x)])[:m]

    def unpersist(self) -> None:
        self.tagged.unpersist()


def slot_count(batch_rows: int, parallelism: int, slot_rows: Optional[int] = None) -> int:
    """Slots (tasks) of one mini-batch: the cluster's parallelism, or fewer when `slot_rows` asks every slot to hold
    at least that many of the batch's rows (a balanced level prices each slot on its own rows, so a slot of a few
    rows per code would give noisy prices however many cores there are)."""
    slots = max(1, parallelism)
    if slot_rows:
        slots = min(slots, max(1, batch_rows // max(1, slot_rows)))
    return slots


def batched_sample(sample: DataFrame, unit_col: str, expected_rows: int, batch_size: int, dim: int,
                   slot_rows: Optional[int] = None, chunk_bytes: int = CUT_CHUNK_BYTES) -> BatchedSample:
    """Cut `sample` (columns _vec and `unit_col`, a uniform [0, 1) hash) into mini-batches of ~batch_size rows
    (their number from `expected_rows`, so it is known before the pass), each in slot_count() slots.

    Batch b holds the rows whose unit falls in [b / n_batches, (b + 1) / n_batches), so the first iterations see the
    same rows as a hash-range filter would. One pass over the sample plus one shuffle of its raw float32 rows,
    sent on in chunks of `chunk_bytes` of each input partition's vectors (the batches do not depend on it)."""
    sc = sample.sparkSession.sparkContext
    n_batches = max(1, math.ceil(expected_rows / batch_size))
    slots = slot_count(expected_rows // n_batches, sc.defaultParallelism, slot_rows)
    n_parts = n_batches * slots
    key = F.least(F.floor(F.col(unit_col) * n_parts).cast("int"), F.lit(n_parts - 1))
    rows = sample.select(key.alias(_KEY), F.col(unit_col), VEC)

    # Rows of every destination, reported by the map side (input partition, destination) -> rows, so the pass that
    # fills the cache is a JVM-side count with no Python stage. A recomputed input partition reports the same
    # entries again (the accumulator keeps one per key).
    sizes = sc.accumulator({}, _PartRows())

    def flush(keys, units, mats):
        k, u, x = np.concatenate(keys), np.concatenate(units), np.concatenate(mats)
        order = np.argsort(k, kind="stable")
        k, u, x = k[order], u[order], x[order]
        bounds = np.flatnonzero(np.diff(k)) + 1
        for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(k)]):
            yield int(k[lo]), (u[lo:hi].copy(), np.ascontiguousarray(x[lo:hi]))

    def chunks(index, batches):
        """Per input partition: one (destination, (units, vectors)) record per destination partition it feeds and
        per chunk_bytes of its vectors. The task holds at most ~2 x CUT_CHUNK_BYTES of vectors (the rows gathered
        and their sorted copy) beyond one Arrow batch, whatever the input partition's size."""
        keys, units, mats, held, sent = [], [], [], 0, {}

        def out():
            for dest, chunk in flush(keys, units, mats):
                sent[(index, dest)] = sent.get((index, dest), 0) + len(chunk[0])
                yield dest, chunk

        for batch in batches:
            if batch.num_rows == 0:
                continue
            keys.append(batch.column(0).to_numpy())
            units.append(batch.column(1).to_numpy())
            mats.append(arrow_matrix(batch.column(2), dim))
            held += mats[-1].nbytes
            if held >= chunk_bytes:
                yield from out()
                keys, units, mats, held = [], [], [], 0
        if keys:
            yield from out()
        sizes.add(sent)

    schema = pa.schema([(_KEY, pa.int32()), (unit_col, pa.float64()), (VEC, pa.list_(pa.float32()))])
    source = arrow_batches(rows, schema)
    if source is not None:
        records = source.mapPartitionsWithIndex(chunks)
    else:  # no Arrow batch RDD on this Spark: the chunks made in mapInArrow and sent as binary, one Row a chunk
        records = rows.mapInArrow(_as_binary(chunks, dim), _BINARY_CHUNKS).rdd.map(
            lambda r: (r.k, (np.frombuffer(r.u, np.float64), np.frombuffer(r.x, np.float32).reshape(-1, dim))))
    tagged = records.partitionBy(n_parts, _identity) \
        .persist(StorageLevel.MEMORY_AND_DISK)
    tagged._jrdd.count()
    counted = sizes.value  # driver-ok: one count per (input partition, destination)
    part_rows = [0] * n_parts
    for (_, dest), n in counted.items():
        if not 0 <= dest < n_parts:
            raise RuntimeError(f"mini-batch chunk for partition {dest} of {n_parts}")
        part_rows[dest] += int(n)
    return BatchedSample(tagged, n_batches, slots, int(sum(part_rows)), dim, part_rows)


def _identity(key: int) -> int:
    return key


_BINARY_CHUNKS = T.StructType([T.StructField("k", T.IntegerType()), T.StructField("u", T.BinaryType()),
                               T.StructField("x", T.BinaryType())])


def _as_binary(chunks: Callable, dim: int) -> Callable:
    """chunks(index, Arrow batches) as a mapInArrow function: each (destination, (units, rows)) chunk one row of
    raw bytes (the fallback of arrow_batches; one Row a chunk, not a row a vector)."""
    def run(batches):
        from pyspark import TaskContext

        for dest, (u, x) in chunks(TaskContext.get().partitionId(), batches):
            yield pa.RecordBatch.from_arrays([pa.array([dest], pa.int32()), pa.array([u.tobytes()], pa.binary()),
                                              pa.array([x.tobytes()], pa.binary())], ["k", "u", "x"])
    return run


class _PartRows(AccumulatorParam):
    """An accumulator of {partition: rows}: a partition computed again reports the same entry, not a second one."""

    def zero(self, value):
        return {}

    def addInPlace(self, value1, value2):
        value1.update(value2)
        return value1


def arrow_batches(df: DataFrame, schema: pa.Schema, rows_per_batch: int = 10_000) -> Optional[RDD]:
    """The rows of `df` as an RDD of pyarrow RecordBatches of `schema` (up to rows_per_batch rows each), handed
    from the JVM to Python as the Dataset's Arrow batch RDD (what toPandas collects): the rows reach Python as
    mapInArrow's input does, and no Python function runs in the JVM's plan. The batch RDD is not public API: None
    where this Spark (or Spark Connect) has none."""
    from pyspark.serializers import NoOpSerializer

    spark = df.sparkSession
    try:
        tz = spark.conf.get("spark.sql.session.timeZone")
        # (maxRecordsPerBatch, timeZoneId, errorOnDuplicatedFieldNames, largeVarTypes)
        jrdd = df._jdf.toArrowBatchRdd(int(rows_per_batch), tz, True, False).toJavaRDD()
    except Exception:  # no _jdf (Spark Connect), or a Spark without this method
        return None

    def batches(messages):
        for message in messages:
            yield pa.ipc.read_record_batch(pa.py_buffer(message), schema)

    return RDD(jrdd, spark.sparkContext, NoOpSerializer()).mapPartitions(batches, preservesPartitioning=True)


def pruned(rdd: RDD, partitions: List[int]) -> RDD:
    """The listed partitions of `rdd` (cached blocks are read where they are), as a new RDD."""
    sc = rdd.context
    jvm = sc._jvm
    keep = jvm.java.util.HashSet()
    for part in partitions:
        keep.add(int(part))
    # A Scala Set is a function Int => Boolean: the partition filter PartitionPruningRDD.create expects.
    scala_keep = jvm.scala.jdk.javaapi.CollectionConverters.asScala(keep)
    jrdd = jvm.org.apache.spark.rdd.PartitionPruningRDD.create(rdd._jrdd.rdd(), scala_keep)
    return RDD(jrdd.toJavaRDD(), sc, rdd._jrdd_deserializer)


def tree_reduce(blobs: RDD, add: Callable, fanout: int = 16, zero: Optional[bytes] = None):
    """Sum an RDD of one bytes blob per partition on the executors: groups of `fanout` consecutive partitions are
    shuffled to one task and added in partition order, level after level, until one blob is left, which alone
    goes to the driver. The fixed order (not the shuffle's arrival order) keeps float sums reproducible; with
    partitions <= fanout it is the plain left-to-right sum. `zero`, when given, starts every group's sum."""
    n = blobs.getNumPartitions()
    keyed = blobs.mapPartitionsWithIndex(lambda i, it: ((i, b) for b in it))
    fanout = max(2, int(fanout))
    while True:
        groups = max(1, math.ceil(n / fanout))

        def combine(items, zero=zero):
            ordered = sorted(items, key=lambda kv: kv[1][0])
            if not ordered:
                return
            total = zero if zero is not None else None
            for _, (_, blob) in ordered:
                total = blob if total is None else add(total, blob)
            yield ordered[0][0], total

        keyed = (keyed.map(lambda kv, f=fanout: (kv[0] // f, kv))
                 .partitionBy(groups, lambda g: g)
                 .mapPartitions(combine, preservesPartitioning=True))
        if groups == 1:
            break
        n = groups
    out = keyed.values().collect()  # driver-ok: one K-sized blob
    return out[0] if out else zero
