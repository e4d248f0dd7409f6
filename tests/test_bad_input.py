"""Bad input, row by row and structural: every row ends up encoded or in `_rejects` with its reason, and the
accounting adds up; structural problems stop train/encode with exit code 2 and one line before any heavy work.

The policy (README "Failure behaviour"): null id, null vector, empty vector, wrong dimension, a null element,
NaN/+-inf and all-zero vectors are rejected row by row; an id seen twice with the same vector is encoded once
(the extra copies are rejected as duplicate_id), an id seen with different vectors is rejected entirely
(conflicting_duplicate_id); missing columns, a non-numeric vector column, an empty input, N < K and input files of
different dimensions stop the job.
"""
import json
from collections import Counter

import numpy as np
import pytest
from pyspark.sql import types as T

from sid_spark.cli import main
from sid_spark.config import TokenizerConfig
from sid_spark.errors import InputError
from sid_spark.spark.prepare import prepare

D = 6
SCHEMA = T.StructType([T.StructField("item_id", T.LongType()),
                       T.StructField("embedding", T.ArrayType(T.FloatType()))])
CONF = "levels: 2\ncodebook_size: 4\nbalance: none\nmax_iter: 2\nseed: 5\n"


def good_vectors():
    rng = np.random.default_rng(8)
    return (rng.standard_normal((20, D)) + 3 * (np.arange(20) % 4)[:, None]).astype(np.float32)


def bad_rows():
    """(rows, expected rejects as a Counter of (id, reason), ids expected in the SID table)."""
    x = good_vectors()
    rows = [(i, x[i].tolist()) for i in range(20)]
    v = x[0].tolist()
    rows += [
        (100, None),
        (101, [float("nan")] + v[1:]),
        (102, [float("inf")] + v[1:]),
        (103, v[:-1] + [float("-inf")]),
        (104, [1.0, 2.0, 3.0, 4.0]),
        (105, []),
        (106, [0.0] * D),
        (107, [1.0, None] + v[2:]),
        (None, v),
        (108, v), (108, v),  # same vector twice: encoded once
        (109, v), (109, x[1].tolist()),  # different vectors: both rejected
        (110, x[2].tolist()), (110, x[2].tolist()), (110, x[2].tolist()),
    ]
    rejects = Counter({(100, "null_vector"): 1, (101, "non_finite"): 1, (102, "non_finite"): 1,
                       (103, "non_finite"): 1, (104, "wrong_dimension"): 1, (105, "empty_vector"): 1,
                       (106, "zero_vector"): 1, (107, "null_element"): 1, (None, "null_id"): 1,
                       (108, "duplicate_id"): 1, (109, "conflicting_duplicate_id"): 2, (110, "duplicate_id"): 2})
    encoded = set(range(20)) | {108, 110}
    return rows, rejects, encoded


@pytest.fixture(scope="module")
def bad_catalog(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    rows, rejects, encoded = bad_rows()
    spark.createDataFrame(rows, SCHEMA).coalesce(1).write.parquet(str(root / "catalog"))
    (root / "c.yaml").write_text(CONF)
    return root, rejects, encoded


@pytest.fixture(scope="module")
def trained(bad_catalog):
    root, _, _ = bad_catalog
    rc = main(["train", "--input", str(root / "catalog"), "--model", str(root / "model"),
               "--config", str(root / "c.yaml")])
    assert rc == 0
    return root


def test_prepare_counts_every_row_once(spark, bad_catalog):
    root, rejects, encoded = bad_catalog
    p = prepare(spark.read.parquet(str(root / "catalog")), TokenizerConfig(levels=2, codebook_size=4, balance="none"))
    assert p.dim == D
    assert p.n_read == 36
    assert Counter((r["item_id"], r["reason"]) for r in p.rejects.collect()) == rejects
    assert {r["item_id"] for r in p.valid.collect()} == encoded
    assert p.n_valid == p.valid.count() == len(encoded)  # counted by the duplicate check's aggregation


def test_training_skips_bad_rows_and_records_accounting(trained):
    summary = json.loads((trained / "model" / "summary.json").read_text())
    acc = summary["accounting"]
    assert acc == {"items_read": 36, "items_valid": 22, "items_rejected": 14,
                   "rejected_by_reason": {"conflicting_duplicate_id": 2, "duplicate_id": 3, "empty_vector": 1,
                                          "non_finite": 3, "null_element": 1, "null_id": 1, "null_vector": 1,
                                          "wrong_dimension": 1, "zero_vector": 1}}
    assert summary["n_items"] == 22
    assert not (trained / "model" / "_checkpoints").exists()


def test_encode_writes_rejects_with_reasons_and_accounting(spark, bad_catalog, trained):
    root, rejects, encoded = bad_catalog
    out = root / "sids"
    assert main(["encode", "--input", str(root / "catalog"), "--model", str(trained / "model"),
                 "--output", str(out)]) == 0
    sids = {r["item_id"]: list(r["sid"]) for r in spark.read.parquet(str(out)).collect()}
    got_rejects = spark.read.parquet(str(out / "_rejects"))
    assert set(got_rejects.columns) == {"item_id", "reason"}
    assert Counter((r["item_id"], r["reason"]) for r in got_rejects.collect()) == rejects
    assert set(sids) == encoded
    # The copy kept for a duplicated id is encoded like the same vector under another id.
    assert sids[108] == sids[0] and sids[110] == sids[2]
    manifest = json.loads((out / "_manifest.json").read_text())
    assert (manifest["items_read"], manifest["items_encoded"], manifest["items_rejected"]) == (36, 22, 14)


def test_wrong_dimension_rows_are_rejected_at_encode(spark, trained):
    from sid_spark.tokenizer import ResidualKMeansModel

    model = ResidualKMeansModel.load(str(trained / "model"))
    x = good_vectors()
    df = spark.createDataFrame([(1, x[0].tolist()), (2, x[1].tolist()[:5]), (3, x[2].tolist() + [0.5])], SCHEMA)
    res = model.encode(df)
    assert [r["item_id"] for r in res.sids.collect()] == [1]
    assert sorted((r["item_id"], r["reason"]) for r in res.rejects.collect()) == [(2, "wrong_dimension"),
                                                                                  (3, "wrong_dimension")]


def test_double_and_ml_vector_columns_are_accepted(spark, trained):
    from pyspark.ml.linalg import Vectors, VectorUDT

    from sid_spark.tokenizer import ResidualKMeansModel

    model = ResidualKMeansModel.load(str(trained / "model"))
    x = good_vectors()
    as_float = spark.createDataFrame([(i, x[i].tolist()) for i in range(6)], SCHEMA)
    as_double = spark.createDataFrame([(i, x[i].astype(np.float64).tolist()) for i in range(6)],
                                      "item_id long, embedding array<double>")
    as_ml = spark.createDataFrame([(i, Vectors.dense(x[i].astype(np.float64))) for i in range(6)],
                                  T.StructType([T.StructField("item_id", T.LongType()),
                                                T.StructField("embedding", VectorUDT())]))
    want = sorted(map(tuple, model.encode(as_float).sids.collect()))
    assert sorted(map(tuple, model.encode(as_double).sids.collect())) == want
    assert sorted(map(tuple, model.encode(as_ml).sids.collect())) == want
    # A double too large for float32 becomes inf and is rejected, not encoded as garbage.
    huge = spark.createDataFrame([(1, [1e300] + [0.0] * (D - 1))], "item_id long, embedding array<double>")
    assert [r["reason"] for r in model.encode(huge).rejects.collect()] == ["non_finite"]


# ---- structural problems: exit code 2, one line naming the problem, nothing written ----------------------
def run_cli(capsys, *argv):
    rc = main(list(argv))
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sid-spark")]
    return rc, err


def assert_stops(capsys, tmp_path, trained, catalog, pattern, conf=CONF):
    (tmp_path / "c.yaml").write_text(conf)
    rc, err = run_cli(capsys, "train", "--input", str(catalog), "--model", str(tmp_path / "model"),
                      "--config", str(tmp_path / "c.yaml"))
    assert rc == 2 and len(err) == 1 and pattern in err[0], err
    assert not (tmp_path / "model").exists()
    if trained is not None:
        rc, err = run_cli(capsys, "encode", "--input", str(catalog), "--model", str(trained / "model"),
                          "--output", str(tmp_path / "sids"))
        assert rc == 2 and len(err) == 1 and pattern in err[0], err
        assert not (tmp_path / "sids").exists()


def test_empty_input_stops(spark, tmp_path, capsys, trained):
    spark.createDataFrame([], SCHEMA).write.parquet(str(tmp_path / "empty"))
    assert_stops(capsys, tmp_path, trained, tmp_path / "empty", "input is empty")


def test_n_smaller_than_k_stops(spark, tmp_path, capsys):
    x = good_vectors()
    spark.createDataFrame([(i, x[i].tolist()) for i in range(3)], SCHEMA).write.parquet(str(tmp_path / "tiny"))
    assert_stops(capsys, tmp_path, None, tmp_path / "tiny", "N < K: 3 valid items")


def test_no_usable_vector_stops_training(spark, tmp_path, capsys):
    spark.createDataFrame([(1, None), (2, [])], SCHEMA).write.parquet(str(tmp_path / "novec"))
    assert_stops(capsys, tmp_path, None, tmp_path / "novec", "no rows with a non-empty vector")


@pytest.mark.parametrize("ddl, value, pattern", [
    ("item_id long, embedding string", "0.1,0.2", "vector column 'embedding' has type string"),
    ("item_id long, embedding array<string>", ["0.1"] * D, "vector column 'embedding' has type array<string>"),
    ("item_id long, vec array<float>", [0.1] * D, "vector column 'embedding' not found"),
    ("id long, embedding array<float>", [0.1] * D, "id column 'item_id' not found"),
])
def test_bad_schema_stops(spark, tmp_path, capsys, trained, ddl, value, pattern):
    spark.createDataFrame([(1, value)], ddl).write.parquet(str(tmp_path / "cat"))
    assert_stops(capsys, tmp_path, trained, tmp_path / "cat", pattern)


def test_files_of_different_dimensions_stop(spark, tmp_path, capsys, trained):
    x = good_vectors()
    cat = tmp_path / "mixed"
    spark.createDataFrame([(i, x[i].tolist()) for i in range(10)], SCHEMA).coalesce(1) \
        .write.parquet(str(cat))
    spark.createDataFrame([(100 + i, x[i].tolist() + [1.0, 2.0]) for i in range(10)], SCHEMA).coalesce(1) \
        .write.mode("append").parquet(str(cat))
    assert_stops(capsys, tmp_path, trained, cat, "input mixes vector dimensions")
    with pytest.raises(InputError) as e:
        prepare(spark.read.parquet(str(cat)), TokenizerConfig(balance="none"))
    msg = str(e.value)
    assert "6-d" in msg and "8-d" in msg and msg.count(".parquet") == 2 and "\n" not in msg


def test_one_odd_row_in_a_file_is_a_reject_not_a_stop(spark):
    """The file's dimension is its most common length: 3 rows of 6-d and 1 of 4-d is a 6-d file."""
    x = good_vectors()
    df = spark.createDataFrame([(i, x[i].tolist()) for i in range(3)] + [(9, [1.0, 2.0, 3.0, 4.0])], SCHEMA)
    p = prepare(df, TokenizerConfig(balance="none"))
    assert (p.dim, p.n_read) == (D, 4)
    assert [(r["item_id"], r["reason"]) for r in p.rejects.collect()] == [(9, "wrong_dimension")]
    assert p.valid.count() == 3
