"""The partition runner's contract (sid_spark.spark.runner), checked with a dummy kernel: task set-up, the vector
adapter, empty batches, rejected rows, pass-through columns, repeated rows, the end-of-partition output and the
aggregation whatever the partition count."""
import numpy as np
import pyarrow as pa
import pytest
import torch
from pyspark.sql import functions as F
from pyspark.sql import types as T

from sid_spark.spark.prepare import VEC
from sid_spark.spark.runner import Block, Totals, aggregate_blocks, map_blocks, sid_array

DIM = 3


@pytest.fixture(scope="module")
def rows(spark):
    """40 rows: id, _vec = (id, 2 id, -id), tag = 'r<id>'; every fifth row rejected (reason set, _vec null)."""
    data = [(i, None if i % 5 == 0 else [float(i), 2.0 * i, -float(i)], f"r{i}",
             "bad_vector" if i % 5 == 0 else None) for i in range(40)]
    schema = T.StructType([T.StructField("id", T.LongType()), T.StructField(VEC, T.ArrayType(T.FloatType())),
                           T.StructField("tag", T.StringType()), T.StructField("reason", T.StringType())])
    return spark.createDataFrame(data, schema)


def dummy():
    """(kernel, setup) defined in a function so that Spark pickles them by value (the workers cannot import tests).
    setup draws a random token: the rows of a task share it only if setup runs once per task."""
    def kernel(ctx, x, batch):
        """Row sum, the first two coordinates as a 'SID', and what the task looked like from inside."""
        assert isinstance(x, torch.Tensor) and x.dtype == torch.float32 and x.shape[1] == DIM
        assert not torch.isnan(x).any()
        return {"total": x.sum(dim=1).double(), "codes": x[:, :2].to(torch.int64),
                "threads": np.full(len(x), torch.get_num_threads()), "setup": np.full(len(x), ctx["token"])}

    def setup(dev):
        assert dev == torch.device("cpu")
        return {"token": int(np.random.default_rng().integers(1, 2**62))}

    return kernel, setup


OUT = T.StructType([T.StructField("id", T.LongType()), T.StructField("tag", T.StringType()),
                    T.StructField("total", T.DoubleType()), T.StructField("codes", T.ArrayType(T.IntegerType())),
                    T.StructField("threads", T.IntegerType()), T.StructField("setup", T.LongType())])


def test_map_blocks_outputs_pass_through_and_task_setup(spark, rows):
    valid = rows.where(F.col("reason").isNull()).select("id", VEC, "tag")
    kernel, setup = dummy()
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "4")  # several batches per task
    try:
        out = map_blocks(valid.repartition(3), OUT, kernel, dim=DIM, setup=setup, device="cpu")
        got = {r["id"]: r for r in out.collect()}
    finally:
        spark.conf.unset("spark.sql.execution.arrow.maxRecordsPerBatch")
    assert sorted(got) == [i for i in range(40) if i % 5]
    for i, r in got.items():
        assert r["tag"] == f"r{i}"
        assert r["total"] == pytest.approx(2.0 * i)
        assert r["codes"] == [i, 2 * i]
        assert r["threads"] == 1  # one torch thread per task
    assert len({r["setup"] for r in got.values()}) == 3  # one setup per task (3 tasks, ~3 batches each)


def test_map_blocks_skips_empty_partitions(spark, rows):
    # 8 partitions for 2 rows: most partitions (and their batches) are empty and must yield nothing
    two = rows.where(F.col("id").isin(1, 2)).select("id", VEC, "tag").repartition(8)
    kernel, setup = dummy()
    out = map_blocks(two, OUT, kernel, dim=DIM, setup=setup, device="cpu")
    assert sorted(r["id"] for r in out.collect()) == [1, 2]
    empty = rows.where(F.col("id") < 0).select("id", VEC, "tag")
    assert map_blocks(empty, OUT, kernel, dim=DIM, setup=setup, device="cpu").count() == 0


def test_rejected_rows_are_never_handed_to_the_kernel_and_get_nulls(spark, rows):
    schema = T.StructType([T.StructField("id", T.LongType()), T.StructField("codes", T.ArrayType(T.IntegerType())),
                           T.StructField("total", T.DoubleType()), T.StructField("reason", T.StringType())])
    seen = map_blocks(rows.repartition(2), schema, lambda ctx, x, b: {"codes": x[:, :2].long(), "total": x[:, 2]},
                      dim=DIM, device="cpu", reason_col="reason").collect()
    assert len(seen) == 40
    for r in seen:
        if r["id"] % 5 == 0:
            assert (r["codes"], r["total"], r["reason"]) == (None, None, "bad_vector")
        else:
            assert (r["codes"], r["total"], r["reason"]) == ([r["id"], 2 * r["id"]], -r["id"], None)
    # a batch made only of rejects: the kernel is not called at all, every output is null
    only_bad = rows.where(F.col("id") % 5 == 0).coalesce(1)
    boom = map_blocks(only_bad, schema, lambda ctx, x, b: 1 / 0, dim=DIM, device="cpu", reason_col="reason")
    assert sorted((r["id"], r["codes"]) for r in boom.collect()) == [(i, None) for i in range(0, 40, 5)]


def test_block_rows_repeat_inputs_and_finish_emits_the_partition_result(spark, rows):
    valid = rows.where(F.col("reason").isNull()).select("id", VEC, "tag").coalesce(1)
    schema = T.StructType([T.StructField("id", T.LongType()), T.StructField("tag", T.StringType()),
                           T.StructField("copy", T.IntegerType())])

    def repeat(ctx, x, batch):  # row i of the batch twice, as copies 0 and 1
        n = len(x)
        ctx["n"] += n
        return Block({"copy": np.tile([0, 1], n)}, rows=np.repeat(np.arange(n), 2))

    def finish(ctx):  # one extra row per partition: how many rows it saw
        return {"id": np.array([-1]), "tag": pa.array(["total"]), "copy": np.array([ctx["n"]])}

    out = map_blocks(valid, schema, repeat, dim=DIM, setup=lambda dev: {"n": 0}, device="cpu",
                     finish=finish).collect()
    pairs = sorted((r["id"], r["tag"], r["copy"]) for r in out if r["id"] >= 0)
    assert pairs == sorted((i, f"r{i}", c) for i in range(40) if i % 5 for c in (0, 1))
    assert [(r["tag"], r["copy"]) for r in out if r["id"] < 0] == [("total", 32)]


@pytest.mark.parametrize("partitions", [1, 5, 40])  # 40 > tree_above=32: the executors' tree reduction
def test_aggregate_blocks_gives_one_total_whatever_the_partitioning(spark, rows, partitions):
    valid = rows.where(F.col("reason").isNull()).select(VEC).repartition(partitions)
    total = aggregate_blocks(valid, lambda ctx, x, b: Totals([len(x), float(x.double().sum())]),
                             lambda: Totals([0.0, 0.0]), dim=DIM, device="cpu")
    ids = [i for i in range(40) if i % 5]
    assert total.values.tolist() == [32.0, 2.0 * sum(ids)]


def test_sid_array_with_and_without_nulls():
    assert sid_array(np.array([[1, 2], [3, 4]])).to_pylist() == [[1, 2], [3, 4]]
    masked = sid_array(np.array([[5, 6]]), mask=np.array([True, False, True]))
    assert masked.to_pylist() == [None, [5, 6], None]
    assert sid_array(torch.tensor([[7, 8, 9]])).to_pylist() == [[7, 8, 9]]


def test_packed_vectors_round_trip_bit_for_bit_and_through_spark(spark):
    """The balanced encode caches its vectors as binary (4 * d bytes a row): the packing keeps every bit (-0.0,
    subnormals, the largest float), nulls the rows not kept, reads back from a slice, and Spark hands the bytes back
    unchanged to a kernel through map_blocks."""
    from sid_spark.spark.vectors import matrix_to_list_array, pack_vectors, packed_matrix

    rng = np.random.default_rng(2)
    m = rng.standard_normal((7, 3)).astype(np.float32)
    m[0, 0], m[1, 1], m[2, 2] = -0.0, np.float32(1e-42), np.float32(3.4e38)
    keep = np.array([True, True, False, True, True, False, True])
    packed = pack_vectors(matrix_to_list_array(m), keep, 3)
    assert packed.null_count == 2 and packed.is_null().to_pylist() == (~keep).tolist()
    kept = packed.filter(pa.array(keep))
    assert packed_matrix(kept, 3).tobytes() == m[keep].tobytes()
    assert packed_matrix(kept.slice(2, 3), 3).tobytes() == m[keep][2:5].tobytes()
    with pytest.raises(ValueError, match="null rows"):
        packed_matrix(packed, 3)
    with pytest.raises(ValueError, match="dimension 4"):
        packed_matrix(kept, 4)

    df = spark.createDataFrame([(i, bytearray(m[i].tobytes())) for i in range(7)],
                               T.StructType([T.StructField("i", T.IntegerType()),
                                             T.StructField(VEC, T.BinaryType())])).repartition(3)
    out = map_blocks(df, T.StructType([df.schema["i"], T.StructField("s", T.DoubleType())]),
                     lambda _ctx, x, _b: {"s": x.to(torch.float64).sum(1)}, dim=3)
    got = dict(out.collect())
    assert got == {i: float(m[i].astype(np.float64).sum()) for i in range(7)}
