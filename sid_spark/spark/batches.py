"""The training sample, cut once into mini-batches of float32 blocks that stay cached on the executors.

Mini-batch k-means runs one Spark job per iteration. Filtering a cached DataFrame for the batch would scan the whole
sample and convert the batch's rows to Arrow again in every iteration; instead the sample is shuffled once into
``n_batches x slots`` RDD partitions, partition ``b * slots + j`` holding slot j of mini-batch b as one (m, d) float32
array (rows in hash order), and an iteration runs only its batch's ``slots`` partitions with ``SparkContext.runJob``.
A row's batch and slot come from its id hash alone, so the batches do not depend on the input's partitioning.
The shuffle is a DataFrame repartition of per-partition chunks (raw float32 bytes) keyed so that Spark's hash
partitioning puts each on its own partition (partition_keys): the SQL engine's shuffle, not Python-pickled records.
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


@dataclass
class BatchedSample:
    tagged: RDD  # the cached partitions: one (partition index, (m, d) float32 numpy array) pair each
    n_batches: int
    slots: int
    n_rows: int
    dim: int
    part_rows: List[int] = field(default_factory=list)  # rows of every partition, in partition order

    def __post_init__(self):
        # One (m, d) array per partition: the cached pairs' arrays (a map in the same Python worker, no copy).
        self.rdd = self.tagged.map(lambda pair: pair[1], preservesPartitioning=True)

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

    def head(self, m: int) -> np.ndarray:
        """The m rows with the smallest hash, (m, d) float32, gathered in one job: partitions are in hash order
        and so are their rows, and part_rows says how many each one holds."""
        need, parts, have = [], [], 0
        for part, rows in enumerate(self.part_rows):
            if have >= m:
                break
            if rows:
                parts.append(part)
                need.append(min(rows, m - have))
                have += need[-1]
        if not parts:
            return np.empty((0, self.dim), np.float32)
        take = dict(zip(parts, need))
        # driver-ok: m rows in all, O(seeding rows * d)
        got = self.rdd.context.runJob(
            self.rdd.mapPartitionsWithIndex(lambda i, arrays: (x[: take.get(i, 0)] for x in arrays)), lambda a: a,
            parts)
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
    same rows as a hash-range filter would. One pass over the sample plus one shuffle of its raw float32 bytes,
    sent on in chunks of `chunk_bytes` of each input partition's vectors (the batches do not depend on it)."""
    sc = sample.sparkSession.sparkContext
    n_batches = max(1, math.ceil(expected_rows / batch_size))
    slots = slot_count(expected_rows // n_batches, sc.defaultParallelism, slot_rows)
    n_parts = n_batches * slots
    key = F.least(F.floor(F.col(unit_col) * n_parts).cast("int"), F.lit(n_parts - 1))
    rows = sample.select(key.alias(_KEY), F.col(unit_col), VEC)

    hash_keys = partition_keys(n_parts)

    def flush(keys, units, mats):
        k, u, x = np.concatenate(keys), np.concatenate(units), np.concatenate(mats)
        order = np.argsort(k, kind="stable")
        k, u, x = k[order], u[order], x[order]
        bounds = np.flatnonzero(np.diff(k)) + 1
        for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(k)]):
            yield pa.RecordBatch.from_arrays(
                [pa.array([int(hash_keys[k[lo]])], pa.int32()), pa.array([u[lo:hi].tobytes()], pa.binary()),
                 pa.array([np.ascontiguousarray(x[lo:hi]).tobytes()], pa.binary())], ["k", "u", "x"])

    def chunks(batches):
        """Per input partition: one (key, units, vectors) record per destination partition it feeds and per
        chunk_bytes of its vectors, the key the one that Spark's hash partitioning sends to that partition
        (partition_keys). The task holds at most ~2 x CUT_CHUNK_BYTES of vectors (the rows gathered and their
        sorted copy) beyond one Arrow batch, whatever the input partition's size."""
        keys, units, mats, held = [], [], [], 0
        for batch in batches:
            if batch.num_rows == 0:
                continue
            keys.append(batch.column(0).to_numpy())
            units.append(batch.column(1).to_numpy())
            mats.append(arrow_matrix(batch.column(2), dim))
            held += mats[-1].nbytes
            if held >= chunk_bytes:
                yield from flush(keys, units, mats)
                keys, units, mats, held = [], [], [], 0
        if keys:
            yield from flush(keys, units, mats)

    schema = T.StructType([T.StructField("k", T.IntegerType()), T.StructField("u", T.BinaryType()),
                           T.StructField("x", T.BinaryType())])

    # Rows of every partition, reported by assemble itself: the pass that fills the cache is then a JVM-side count
    # of it, not a second Python stage that unpickles the whole sample again to measure it (2.4 against 2.9 s for
    # 1M x 128 on local[2], 4.5 against 7.6 s in a process that has already trained). A recomputed partition
    # reports the same count again (the accumulator keeps one entry per partition).
    sizes = sc.accumulator({}, _PartRows())

    def assemble(part, records):
        """All chunks of one partition -> (part, one array), rows in unit (hash) order whatever order the chunks
        came in. The index travels with the array, so a task that gathers every partition (a level trained in one
        task) reads the cache as it is."""
        units, mats = [], []
        for key, u, x in records:
            if key != hash_keys[part]:  # the shuffle did not partition as partition_keys assumes: never guess
                raise RuntimeError(f"mini-batch chunk with key {key} reached partition {part} of {n_parts}")
            units.append(np.frombuffer(u, np.float64))
            mats.append(np.frombuffer(x, np.float32).reshape(-1, dim))
        if not mats:
            sizes.add({part: 0})
            yield part, np.empty((0, dim), np.float32)
            return
        u, x = np.concatenate(units), np.concatenate(mats)
        sizes.add({part: len(x)})
        yield part, np.ascontiguousarray(x[np.argsort(u, kind="stable")])

    # The shuffle is the SQL engine's (binary rows, no Python pickling on the way); an explicit partition count is
    # never coalesced by adaptive execution, and assemble checks every chunk's destination anyway. Its records
    # reach Python as Arrow batches (arrow_records), not as pickled Rows.
    shuffled_df = rows.mapInArrow(chunks, schema).repartition(n_parts, "k")
    shuffled = arrow_records(shuffled_df, pa.schema([("k", pa.int32()), ("u", pa.binary()), ("x", pa.binary())]))
    if shuffled is None:
        shuffled = shuffled_df.rdd
    if shuffled.getNumPartitions() != n_parts:
        raise RuntimeError(f"mini-batch shuffle gave {shuffled.getNumPartitions()} partitions, not {n_parts}")
    tagged = shuffled.mapPartitionsWithIndex(assemble, preservesPartitioning=True) \
        .persist(StorageLevel.MEMORY_AND_DISK)
    tagged._jrdd.count()  # fills the cache: the JVM counts the pickled records, no Python stage reads them back
    counted = sizes.value  # driver-ok: one count a partition
    if sorted(counted) != list(range(n_parts)):
        raise RuntimeError(f"mini-batch cut reported {len(counted)} of {n_parts} partitions")
    part_rows = [int(counted[part]) for part in range(n_parts)]
    return BatchedSample(tagged, n_batches, slots, int(sum(part_rows)), dim, part_rows)


class _PartRows(AccumulatorParam):
    """An accumulator of {partition: rows}: a partition computed again reports the same entry, not a second one."""

    def zero(self, value):
        return {}

    def addInPlace(self, value1, value2):
        value1.update(value2)
        return value1


def arrow_records(df: DataFrame, schema: pa.Schema) -> Optional[RDD]:
    """The rows of `df` as an RDD of tuples (one per row, `schema`'s columns; binary values as pyarrow Buffers,
    which numpy reads without a copy), handed from the JVM to Python as Arrow record batches: the Dataset's Arrow
    batch RDD (what toPandas collects), one row per batch, read back with `schema`. DataFrame.rdd instead pickles
    every Row in the JVM (Pyrolite) and unpickles it in Python: 5.5-6.7 s against 2.4-2.5 s for 512 MB of binary
    values in 64 rows on local[2]. The batch RDD is not public API: None where this Spark (or Spark Connect) has
    none, and the caller takes DataFrame.rdd."""
    from pyspark.serializers import NoOpSerializer

    spark = df.sparkSession
    try:
        tz = spark.conf.get("spark.sql.session.timeZone")
        # (maxRecordsPerBatch, timeZoneId, errorOnDuplicatedFieldNames, largeVarTypes)
        jrdd = df._jdf.toArrowBatchRdd(1, tz, True, False).toJavaRDD()
    except Exception:  # no _jdf (Spark Connect), or a Spark without this method: the Row path
        return None
    names = schema.names

    def rows(batches):
        for message in batches:
            batch = pa.ipc.read_record_batch(pa.py_buffer(message), schema)
            columns = [batch.column(name) for name in names]
            for i in range(batch.num_rows):
                yield tuple(c[i].as_buffer() if pa.types.is_binary(c.type) else c[i].as_py() for c in columns)

    return RDD(jrdd, spark.sparkContext, NoOpSerializer()).mapPartitions(rows, preservesPartitioning=True)


def spark_hash_int(values) -> np.ndarray:
    """Spark's hash() of int values (Murmur3_x86_32.hashInt with seed 42, what hash partitioning uses), as int32."""
    with np.errstate(over="ignore"):
        k = np.asarray(values).astype(np.int64).astype(np.uint32) * np.uint32(0xCC9E2D51)
        k = ((k << np.uint32(15)) | (k >> np.uint32(17))) * np.uint32(0x1B873593)
        h = np.uint32(42) ^ k
        h = ((h << np.uint32(13)) | (h >> np.uint32(19))) * np.uint32(5) + np.uint32(0xE6546B64)
        h = h ^ np.uint32(4)  # the input's length in bytes
        h = (h ^ (h >> np.uint32(16))) * np.uint32(0x85EBCA6B)
        h = (h ^ (h >> np.uint32(13))) * np.uint32(0xC2B2AE35)
        return (h ^ (h >> np.uint32(16))).view(np.int32)


def partition_keys(n_parts: int) -> np.ndarray:
    """(n_parts,) int32: for every partition p the smallest int v >= 0 that Spark's hash partitioning into n_parts
    partitions, pmod(hash(v), n_parts), sends to p -- so a DataFrame repartition(n_parts, key) puts each chunk on
    the partition of its (batch, slot)."""
    need = max(64, int(n_parts * (math.log(n_parts + 1) + 8)))
    while True:
        dest = np.mod(spark_hash_int(np.arange(need)).astype(np.int64), n_parts)
        found, first = np.unique(dest, return_index=True)
        if len(found) == n_parts:
            return first.astype(np.int32)  # np.unique sorts: found == arange(n_parts)
        need *= 2


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
