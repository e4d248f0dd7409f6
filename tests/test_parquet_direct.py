"""The direct Parquet read (sid_spark.spark.parquet_direct) against the JVM path: the same SIDs, rejects with the
same reasons, fingerprints and accounting, bad rows included; Spark's xxhash64 bit for bit; the JVM path wherever
the direct read does not apply."""
import json
from collections import Counter

import numpy as np
import pytest
from chispa import assert_df_equality
from pyspark.ml.linalg import Vectors, VectorUDT
from pyspark.sql import functions as F
from pyspark.sql import types as T

from sid_spark.commands.encode import write_sids
from sid_spark.config import TokenizerConfig
from sid_spark.spark.parquet_direct import DIRECT_READ_CONF, spark_xxhash64_floats
from sid_spark.spark.sid_table import FINGERPRINTS, FP, REJECTS
from sid_spark.tokenizer import ResidualKMeansModel

D = 6
NAN, INF = float("nan"), float("inf")


def catalog_rows():
    """(rows, expected Counter of (id, reason)): every reject reason, and the cases where two rules meet."""
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((60, D)) + 2 * (np.arange(60) % 5)[:, None]).astype(np.float32)
    rows = [(f"i{i}", x[i].tolist()) for i in range(60)]
    v = x[0].tolist()
    rows += [
        ("n0", None), ("e0", []), ("w0", v[:-1]), ("w1", v + [1.0]),
        ("nan", [NAN] + v[1:]), ("inf", v[:2] + [INF] + v[3:]), ("ninf", v[:-1] + [-INF]),
        ("null", [1.0, None] + v[2:]), ("nullnan", [None, NAN] + v[2:]),  # a NaN wins over the null
        ("nullinf", [None, INF] + v[2:]),  # no NaN: null_element
        ("allnull", [None] * D), ("zero", [0.0] * D), ("negzero", [-0.0] * D),
        ("wnan", [NAN] * 3),  # wrong length before non-finite
        ("mz", [-0.0] + v[1:]),  # valid: -0.0 hashes as 0.0
        (None, v), (None, None),
        ("d1", v), ("d1", v), ("d2", v), ("d2", x[1].tolist()),
        ("big", [1e39] + v[1:]),  # a double that overflows float (the double input): non-finite
    ]
    expected = Counter({("n0", "null_vector"): 1, ("e0", "empty_vector"): 1, ("w0", "wrong_dimension"): 1,
                        ("w1", "wrong_dimension"): 1, ("nan", "non_finite"): 1, ("inf", "non_finite"): 1,
                        ("ninf", "non_finite"): 1, ("null", "null_element"): 1, ("nullnan", "non_finite"): 1,
                        ("nullinf", "null_element"): 1, ("allnull", "null_element"): 1, ("zero", "zero_vector"): 1,
                        ("negzero", "zero_vector"): 1, ("wnan", "wrong_dimension"): 1, (None, "null_id"): 2,
                        ("d1", "duplicate_id"): 1, ("d2", "conflicting_duplicate_id"): 2})
    return rows, x, expected


def model(x):
    rng = np.random.default_rng(0)
    cbs = [x[rng.choice(len(x), 8, replace=False)], 0.3 * rng.standard_normal((8, D)).astype(np.float32)]
    return ResidualKMeansModel(TokenizerConfig(levels=2, codebook_size=8, balance="none"), cbs)


def encode_both(spark, df, m, out):
    """(manifest, sids, rejects, fingerprints) of the direct read and of the JVM path, in that order."""
    got = []
    for mode in ("auto", "false"):
        spark.conf.set(DIRECT_READ_CONF, mode)
        try:
            path = out / mode
            manifest = write_sids(spark, m, df, str(path))
        finally:
            spark.conf.unset(DIRECT_READ_CONF)
        got.append((manifest, spark.read.parquet(str(path)), spark.read.parquet(str(path / REJECTS)),
                    spark.read.parquet(str(path / FINGERPRINTS))))
    return got


def assert_same_output(direct, jvm, id_col="item_id"):
    (m1, s1, r1, f1), (m2, s2, r2, f2) = direct, jvm
    for a, b in ((s1, s2), (r1, r2), (f1, f2)):
        cols = sorted(a.columns)
        assert_df_equality(a.select(cols), b.select(cols), ignore_row_order=True, ignore_nullable=True)
    keys = ("items_read", "items_encoded", "items_rejected")
    assert [m1[k] for k in keys] == [m2[k] for k in keys]
    assert m1["items_read"] == m1["items_encoded"] + m1["items_rejected"]


@pytest.mark.parametrize("element", [T.FloatType(), T.DoubleType()])
def test_direct_read_matches_the_jvm_path_row_for_row(spark, tmp_path, element):
    rows, x, expected = catalog_rows()
    if isinstance(element, T.FloatType):
        rows = [r for r in rows if r[0] != "big"]  # 1e39 is not a float to begin with
    else:
        expected[("big", "non_finite")] = 1
    schema = T.StructType([T.StructField("item_id", T.StringType()), T.StructField("embedding", T.ArrayType(element))])
    src = tmp_path / "catalog"
    # Three files, several row groups each: the direct read decodes files and row groups itself.
    (spark.createDataFrame(rows, schema).repartition(3, "item_id")
     .write.option("parquet.block.size", 2048).parquet(str(src)))
    df = spark.read.parquet(str(src))
    direct, jvm = encode_both(spark, df, model(x), tmp_path)
    assert direct[0]["vector_read"] == "parquet_direct" and jvm[0]["vector_read"] == "spark"
    assert_same_output(direct, jvm)
    assert Counter((r["item_id"], r["reason"]) for r in direct[2].collect()) == expected
    assert direct[0]["items_read"] == len(rows)
    assert direct[1].count() == 60 + 2  # i0..i59, the -0.0 row, d1 once
    # The fingerprint is the one the JVM path computes (Spark's xxhash64 of the float vector).
    fp = dict(direct[3].select("item_id", FP).collect())
    want = spark_xxhash64_floats(x[:3])
    assert [fp[f"i{i}"] for i in range(3)] == want.tolist()


def test_long_ids_and_one_file(spark, tmp_path):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((300, D)).astype(np.float32)
    rows = [(i, x[i].tolist()) for i in range(300)] + [(None, x[0].tolist()), (7, None)]
    schema = T.StructType([T.StructField("item_id", T.LongType()), T.StructField("embedding", T.ArrayType(T.FloatType()))])
    spark.createDataFrame(rows, schema).coalesce(1).write.parquet(str(tmp_path / "c"))
    direct, jvm = encode_both(spark, spark.read.parquet(str(tmp_path / "c")), model(x), tmp_path)
    assert direct[0]["vector_read"] == "parquet_direct"
    assert_same_output(direct, jvm)
    assert (direct[0]["items_read"], direct[0]["items_encoded"], direct[0]["items_rejected"]) == (302, 300, 2)  # id 7 keeps its valid row


def test_inputs_the_direct_read_does_not_take_go_through_spark(spark, tmp_path):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((40, D)).astype(np.float32)
    m = model(x)
    vec_schema = T.StructType([T.StructField("item_id", T.LongType()), T.StructField("embedding", VectorUDT())])
    spark.createDataFrame([(i, Vectors.dense(x[i].tolist())) for i in range(40)], vec_schema) \
        .write.parquet(str(tmp_path / "vectors"))
    plain = spark.createDataFrame([(i, x[i].tolist()) for i in range(40)],
                                  T.StructType([T.StructField("item_id", T.LongType()),
                                                T.StructField("embedding", T.ArrayType(T.FloatType()))]))
    plain.withColumn("part", F.col("item_id") % 2).write.partitionBy("part").parquet(str(tmp_path / "parted"))
    plain.write.parquet(str(tmp_path / "plain"))
    cases = {"ml Vector column": spark.read.parquet(str(tmp_path / "vectors")),
             "partitioned input": spark.read.parquet(str(tmp_path / "parted")),
             "a filter on top": spark.read.parquet(str(tmp_path / "plain")).where("item_id < 30"),
             "not from files": plain}
    for i, (name, df) in enumerate(cases.items()):
        manifest = write_sids(spark, m, df, str(tmp_path / f"out{i}"))
        assert manifest["vector_read"] == "spark", name
        assert manifest["items_read"] == df.count(), name
    # The same plain files do take the direct read, and the result equals the partitioned input's SIDs.
    manifest = write_sids(spark, m, spark.read.parquet(str(tmp_path / "plain")), str(tmp_path / "direct"))
    assert manifest["vector_read"] == "parquet_direct"
    assert_df_equality(spark.read.parquet(str(tmp_path / "direct")),
                       spark.read.parquet(str(tmp_path / "out1")).select("item_id", "sid"),
                       ignore_row_order=True, ignore_nullable=True)


def test_xxhash64_is_sparks_bit_for_bit(spark):
    rng = np.random.default_rng(1)
    m = rng.standard_normal((40, 5)).astype(np.float32)
    m[0, 0] = -0.0
    m[1] = 0.0
    m[2, 1] = np.float32(1e-42)  # subnormal
    m[3] = np.float32(3.4e38)
    df = spark.createDataFrame([(i, m[i].tolist()) for i in range(len(m))],
                               T.StructType([T.StructField("i", T.IntegerType()),
                                             T.StructField("v", T.ArrayType(T.FloatType()))]))
    want = dict(df.select("i", F.xxhash64("v")).collect())
    assert spark_xxhash64_floats(m).tolist() == [want[i] for i in range(len(m))]
    assert json.dumps(spark_xxhash64_floats(m[:0]).tolist()) == "[]"


def test_file_names_are_hadoop_paths_not_uris(spark, tmp_path):
    """A space or % in a name is read directly (inputFiles() gives URIs; the read needs paths); a glob character
    in a name takes the JVM path (binaryFile reads its paths as globs)."""
    import glob
    import os

    rng = np.random.default_rng(7)
    x = rng.standard_normal((50, D)).astype(np.float32)
    schema = T.StructType([T.StructField("item_id", T.LongType()), T.StructField("embedding", T.ArrayType(T.FloatType()))])
    routes = {}
    for name in ("part a%b.parquet", "part[1].parquet"):
        src = tmp_path / f"in {len(routes)}"
        spark.createDataFrame([(i, x[i].tolist()) for i in range(50)], schema).coalesce(1).write.parquet(str(src))
        os.rename(glob.glob(str(src / "part-*.parquet"))[0], str(src / name))
        direct, jvm = encode_both(spark, spark.read.parquet(str(src)), model(x), tmp_path / f"out{len(routes)}")
        assert_same_output(direct, jvm)
        assert direct[0]["items_encoded"] == 50
        routes[name] = direct[0]["vector_read"]
    assert routes == {"part a%b.parquet": "parquet_direct", "part[1].parquet": "spark"}


def test_balanced_encode_direct_and_jvm_agree_with_bad_rows(spark, tmp_path):
    """The balanced encode reads the input once (directly or by Spark) and chains every level in that pass; both
    routes give the same SIDs, rejects, fingerprints and accounting, exact sizes at both levels, and the SIDs of
    the API's route (prepare, then the chain pass over the prepared rows)."""
    rows, x, expected = catalog_rows()
    rows = [r for r in rows if r[0] != "big"]
    schema = T.StructType([T.StructField("item_id", T.StringType()),
                           T.StructField("embedding", T.ArrayType(T.FloatType()))])
    src = tmp_path / "catalog"
    spark.createDataFrame(rows, schema).repartition(3, "item_id").write.parquet(str(src))
    df = spark.read.parquet(str(src))
    greedy = model(x)
    balanced = ResidualKMeansModel(TokenizerConfig(levels=2, codebook_size=8, balance="exact"), greedy.codebooks)
    direct, jvm = encode_both(spark, df, balanced, tmp_path)
    assert direct[0]["vector_read"] == "parquet_direct" and jvm[0]["vector_read"] == "spark"
    assert_same_output(direct, jvm)
    assert Counter((r["item_id"], r["reason"]) for r in direct[2].collect()) == expected
    sids = direct[1].collect()
    assert len(sids) == 62  # i0..i59, the -0.0 row, d1 once
    for level in range(2):
        sizes = Counter(r["sid"][level] for r in sids)
        assert sorted(sizes) == list(range(8)) and set(sizes.values()) <= {7, 8}, sizes
    api = balanced.encode(df).sids
    assert_df_equality(api.select("item_id", "sid"), direct[1].select("item_id", "sid"), ignore_row_order=True,
                       ignore_nullable=True)
