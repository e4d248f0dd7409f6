"""Layers 2-4 on local-mode Spark: training, encoding, inputs, artifacts and the CLI (balance=none here;
the balanced pass has its own tests)."""
import json

import numpy as np
import pytest
import torch
from chispa import assert_df_equality
from pyspark.ml.linalg import Vectors, VectorUDT
from pyspark.sql import functions as F
from pyspark.sql import types as T

from sid_spark import ResidualKMeansModel, ResidualKMeansTokenizer, TokenizerConfig
from sid_spark.config import ConfigError
from sid_spark.errors import ArtifactError, InputError
from sid_spark.kernels import kmeans as km
from tests.conftest import make_df

SMALL = dict(levels=2, codebookSize=8, seed=3, balance="none", max_iter=15)


def rel_error(x, codebooks):
    codes, r = km.residual_encode(torch.from_numpy(x), [torch.from_numpy(c) for c in codebooks])
    return float((r.double() ** 2).sum() / (torch.from_numpy(x).double() ** 2).sum())


def numpy_residual_kmeans(x, levels, k, iters, seed):
    """Full-batch reference: k-means++ (our seeded kernel) then Lloyd, level by level."""
    r = x.astype(np.float32).copy()
    cbs = []
    for level in range(levels):
        c = km.kmeans_pp(torch.from_numpy(r), k, np.random.default_rng([seed, level])).numpy().astype(np.float64)
        for _ in range(iters):
            d = (r ** 2).sum(1)[:, None] - 2 * r @ c.T + (c ** 2).sum(1)[None]
            a = d.argmin(1)
            for j in range(k):
                if (a == j).any():
                    c[j] = r[a == j].mean(0)
        c = c.astype(np.float32)
        d = (r ** 2).sum(1)[:, None] - 2 * r @ c.T + (c ** 2).sum(1)[None]
        r = r - c[d.argmin(1)]
        cbs.append(c)
    return cbs


@pytest.fixture(scope="module")
def blob_model(spark, blobs):
    df = make_df(spark, blobs, partitions=3)
    return df, ResidualKMeansTokenizer(**SMALL).fit(df)


def test_fit_transform_shapes_and_range(blob_model, blobs):
    df, model = blob_model
    out = model.transform(df).select("item_id", "sid").collect()
    assert len(out) == len(blobs)
    sids = np.array([r["sid"] for r in out])
    assert sids.shape == (len(blobs), 2) and sids.min() >= 0 and sids.max() < 8
    assert model.summary["history"][-1]["level"] == 2


def test_spark_training_matches_full_batch_reference(blob_model, blobs):
    _, model = blob_model
    ref = numpy_residual_kmeans(blobs, 2, 8, 15, seed=3)
    assert rel_error(blobs, model.codebooks) <= 1.01 * rel_error(blobs, ref)


def test_one_lloyd_iteration_equals_numpy(spark, blobs):
    """Same initial centroids => same centroids after one distributed iteration (to 1e-5)."""
    from sid_spark.spark.prepare import prepare
    from sid_spark.spark.quantize import QuantizerState, level_stats

    cfg = TokenizerConfig(levels=1, codebook_size=8, balance="none")
    prepared = prepare(make_df(spark, blobs, partitions=4), cfg)
    init = blobs[::400].copy() + 0.5
    st = level_stats(prepared.valid, QuantizerState((), ()), init, None, 6)
    new = km.lloyd_update(torch.from_numpy(init), torch.from_numpy(st.counts), torch.from_numpy(st.sums))
    d = ((blobs[:, None, :] - init[None]) ** 2).sum(-1)
    a = d.argmin(1)
    want = np.stack([blobs[a == j].mean(0) if (a == j).any() else init[j] for j in range(8)])
    np.testing.assert_allclose(new.numpy(), want, atol=1e-5)


def test_minibatch_within_5_percent_of_full_lloyd(spark):
    from sid_spark.synthetic import numpy_catalog

    x = numpy_catalog(6000, 16, seed=5, components=40)
    df = make_df(spark, x, partitions=2)
    mb = ResidualKMeansTokenizer(levels=1, codebookSize=32, seed=1, balance="none", batch_size=1000,
                                 max_iter=30).fit(df)
    ref = numpy_residual_kmeans(x, 1, 32, 25, seed=1)
    assert rel_error(x, mb.codebooks) <= 1.05 * rel_error(x, ref)


def test_sids_identical_for_1_and_8_partitions(spark, blobs):
    m1 = ResidualKMeansTokenizer(**SMALL).fit(make_df(spark, blobs, partitions=1))
    m8 = ResidualKMeansTokenizer(**SMALL).fit(make_df(spark, blobs, partitions=8))
    for a, b in zip(m1.codebooks, m8.codebooks):
        np.testing.assert_array_equal(a, b)
    s1 = m1.encode(make_df(spark, blobs, partitions=1)).sids.orderBy("item_id")
    s8 = m8.encode(make_df(spark, blobs, partitions=8)).sids.orderBy("item_id")
    assert_df_equality(s1, s8)


def test_double_and_vectorudt_inputs_give_same_sids(spark, blob_model, blobs):
    df, model = blob_model
    want = model.encode(df).sids.orderBy("item_id")
    as_double = df.withColumn("embedding", F.col("embedding").cast(T.ArrayType(T.DoubleType())))
    assert_df_equality(model.encode(as_double).sids.orderBy("item_id"), want)
    rows = [(int(i), Vectors.dense(v.astype(float))) for i, v in enumerate(blobs)]
    as_vec = spark.createDataFrame(rows, T.StructType([T.StructField("item_id", T.LongType()),
                                                       T.StructField("embedding", VectorUDT())]))
    assert_df_equality(model.encode(as_vec).sids.orderBy("item_id"), want)


def test_id_column_name_and_type_preserved(spark, blobs):
    df = make_df(spark, blobs[:200], id_col="sku", vector_col="vec").withColumn("sku", F.concat(F.lit("s"), "sku"))
    model = ResidualKMeansTokenizer(levels=1, codebookSize=4, idCol="sku", vectorCol="vec", balance="none").fit(df)
    sids = model.encode(df).sids
    assert sids.schema["sku"].dataType == T.StringType()
    assert sids.columns == ["sku", "sid"]


def test_save_load_round_trip(tmp_path, spark, blob_model):
    df, model = blob_model
    model.save(str(tmp_path / "m"))
    loaded = ResidualKMeansModel.load(str(tmp_path / "m"))
    assert loaded.model_id == model.model_id and loaded.config == model.config
    for a, b in zip(model.codebooks, loaded.codebooks):
        np.testing.assert_array_equal(a, b)
    assert_df_equality(loaded.encode(df).sids.orderBy("item_id"), model.encode(df).sids.orderBy("item_id"))
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert manifest["dimension"] == 6 and manifest["levels"] == 2 and "torch" in manifest["versions"]


def test_incomplete_and_corrupted_artifacts_refused(tmp_path, blob_model):
    _, model = blob_model
    model.save(str(tmp_path / "m"))
    (tmp_path / "m" / "manifest.json").rename(tmp_path / "manifest.bak")
    with pytest.raises(ArtifactError, match="incomplete"):
        ResidualKMeansModel.load(str(tmp_path / "m"))
    (tmp_path / "manifest.bak").rename(tmp_path / "m" / "manifest.json")
    blob = bytearray((tmp_path / "m" / "codebooks.npz").read_bytes())
    blob[-200] ^= 0xFF
    (tmp_path / "m" / "codebooks.npz").write_bytes(bytes(blob))
    with pytest.raises(ArtifactError, match="checksum"):
        ResidualKMeansModel.load(str(tmp_path / "m"))


def test_vectors_of_another_dimension_are_rejected_with_reason(spark, blob_model):
    _, model = blob_model
    other = make_df(spark, np.ones((5, 4), np.float32))
    res = model.encode(other)
    assert res.sids.count() == 0
    assert {r["reason"] for r in res.rejects.collect()} == {"wrong_dimension"}


def test_n_smaller_than_k_fails_early(spark, blobs):
    with pytest.raises(InputError, match="N < K"):
        ResidualKMeansTokenizer(levels=1, codebookSize=64, balance="none").fit(make_df(spark, blobs[:10]))


def test_unknown_and_bad_config_keys_name_the_key():
    with pytest.raises(ConfigError, match="'codebok_size'"):
        TokenizerConfig.from_dict({"codebok_size": 3})
    with pytest.raises(ConfigError, match="'levels'"):
        TokenizerConfig(levels=0)
    with pytest.raises(ConfigError, match="'device'"):
        TokenizerConfig(device="tpu")


def test_one_set_grammar_for_every_command():
    from sid_spark.commands.compare import split_encoder_overrides
    from sid_spark.commands.encoder import _split
    from sid_spark.config import parse_overrides, split_sections

    assert parse_overrides(["levels=2", "balance=[exact, none]", "tol=1e-3", "sid_col="]) == {
        "levels": 2, "balance": ["exact", "none"], "tol": 1e-3, "sid_col": ""}
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["levels"])
    per, rest = split_sections(["rqvae.epochs=5", "retrieval.ks=[5, 10]", "seed=3", "other.x=1"],
                               {"rqvae", "retrieval"})
    assert per == {"rqvae": {"epochs": 5}, "retrieval": {"ks": [5, 10]}} and rest == ["seed=3", "other.x=1"]
    # compare and the encoder commands read their sections with that same grammar
    assert split_encoder_overrides(["metrics.knn_queries=200", "seed=3"]) == ({"metrics": {"knn_queries": 200}},
                                                                              ["seed=3"])
    assert _split(["encoder.epochs=30", "seed=1"]) == ({"epochs": 30}, ["seed=1"])


def test_cli_train_encode_on_tiny_catalog(tmp_path, spark, blobs, capsys):
    from sid_spark.cli import main

    make_df(spark, blobs, partitions=2).write.parquet(str(tmp_path / "catalog"))
    conf = tmp_path / "c.yaml"
    conf.write_text("levels: 2\ncodebook_size: 8\nbalance: none\nmax_iter: 5\n")
    assert main(["train", "--input", str(tmp_path / "catalog"), "--model", str(tmp_path / "model"),
                 "--config", str(conf), "--set", "seed=11"]) == 0
    assert main(["encode", "--input", str(tmp_path / "catalog"), "--model", str(tmp_path / "model"),
                 "--output", str(tmp_path / "sids")]) == 0
    out = spark.read.parquet(str(tmp_path / "sids"))
    assert out.count() == len(blobs)
    manifest = json.loads((tmp_path / "sids" / "_manifest.json").read_text())
    assert manifest["items_read"] == manifest["items_encoded"] + manifest["items_rejected"] == len(blobs)
    assert ResidualKMeansModel.load(str(tmp_path / "model")).config.seed == 11
    assert main(["train", "--input", str(tmp_path / "catalog"), "--model", str(tmp_path / "m2"),
                 "--set", "levels=0"]) == 2
    assert "'levels'" in capsys.readouterr().err
