"""The encoders on Spark: distributed encoding equals one-process encoding, sampling is partition-proof, the
Estimator/Model API and CLI round-trip, and `compare` writes the table with numbers we can recompute by hand."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
from pyspark.sql import types as T

from sid_spark.compare import Row, parse_encoders, to_html, to_markdown
from sid_spark.config import ConfigError, TokenizerConfig
from sid_spark.encoder_tokenizer import EncoderModel, EncoderTokenizer
from sid_spark.encoders import get_encoder
from sid_spark.spark.encode_generic import encode_rows, reconstruction_error
from sid_spark.spark.prepare import prepare
from tests.conftest import make_df

TINY = dict(hidden=(32,), latent=8, epochs=3, batch_size=256, init_rows=512)
SPECS = {
    "vqvae": dict(codebook_size=16, **TINY),
    "rqvae": dict(levels=2, codebook_size=16, **TINY),
    "fsq": dict(levels=((4, 4), (4, 4)), **TINY),
    "rqopq": dict(rk_levels=1, codebook_size=16, opq_subspaces=2, opq_codebook_size=16, init_rows=512),
    "opmq": dict(experts=2, subspace_dim=4, codebook_size=16, **TINY),
    "simhash": dict(tokens=2, bits=4),
}


@pytest.fixture(scope="module")
def catalog():
    """24 blobs in 16-d, 2,000 items."""
    rng = np.random.default_rng(5)
    centers = rng.standard_normal((24, 16)) * 2
    x = centers[rng.integers(0, 24, 2000)] + 0.3 * rng.standard_normal((2000, 16))
    return x.astype(np.float32)


@pytest.mark.parametrize("name", list(SPECS))
def test_distributed_encode_equals_one_process(spark, catalog, name):
    torch.set_num_threads(1)
    enc = get_encoder(name, seed=1, block_rows=256, **SPECS[name]).fit(catalog)
    cfg = TokenizerConfig(balance="none")
    rows = prepare(make_df(spark, catalog, partitions=3), cfg).valid
    got = encode_rows(rows, enc, "item_id", "sid").toPandas().sort_values("item_id")
    want = enc.encode(catalog).numpy()
    assert got["item_id"].tolist() == list(range(len(catalog)))
    np.testing.assert_array_equal(np.stack(got["sid"].to_numpy()), want)
    local = float(((torch.from_numpy(catalog).double() - enc.reconstruct(catalog).double()) ** 2).sum()
                  / (torch.from_numpy(catalog).double() ** 2).sum())
    assert reconstruction_error(rows, enc) == pytest.approx(local, rel=1e-6)


def test_fit_is_partition_proof_and_samples_by_hash(spark, catalog):
    m1 = EncoderTokenizer("rqopq", seed=2, sampleSize=1200, **SPECS["rqopq"]).fit(make_df(spark, catalog, 1))
    m4 = EncoderTokenizer("rqopq", seed=2, sampleSize=1200, **SPECS["rqopq"]).fit(make_df(spark, catalog, 4))
    assert m1.model_id == m4.model_id
    n_sample = m1.summary["n_sample"]
    assert m1.summary["n_items"] == 2000 and 1000 < n_sample < 1400  # ~ 1200 drawn by hash, not exactly


def test_model_api_transform_save_load(spark, catalog, tmp_path):
    df = make_df(spark, catalog, 2)
    model = EncoderTokenizer("fsq", seed=4, **SPECS["fsq"]).fit(df)
    out = model.transform(df).orderBy("item_id").toPandas()
    np.testing.assert_array_equal(np.stack(out["sid"].to_numpy()), model.encoder.encode(catalog).numpy())
    model.save(str(tmp_path / "fsq"))
    back = EncoderModel.load(str(tmp_path / "fsq"))
    assert back.model_id == model.model_id and back.config == model.config
    assert back.encode(df).sids.orderBy("item_id").collect() == model.encode(df).sids.orderBy("item_id").collect()


def test_bad_rows_are_rejected_not_encoded(spark, catalog):
    model = EncoderTokenizer("simhash", **SPECS["simhash"]).fit(make_df(spark, catalog, 2))
    schema = T.StructType([T.StructField("item_id", T.LongType()), T.StructField("embedding", T.ArrayType(T.FloatType()))])
    bad = spark.createDataFrame([(1, [1.0] * 16), (2, [1.0] * 3), (3, None)], schema)
    res = model.encode(bad)
    assert [r["item_id"] for r in res.sids.collect()] == [1]
    assert sorted((r["item_id"], r["reason"]) for r in res.rejects.collect()) == [
        (2, "wrong_dimension"), (3, "null_vector")]


def test_cli_train_and_encode_encoder(spark, catalog, tmp_path):
    from sid_spark.cli import main

    make_df(spark, catalog, 2).write.parquet(str(tmp_path / "cat"))
    assert main(["train-encoder", "--encoder", "simhash", "--input", str(tmp_path / "cat"), "--model",
                 str(tmp_path / "m"), "--set", "encoder.tokens=2", "--set", "encoder.bits=4", "--set", "seed=9"]) == 0
    assert main(["encode-encoder", "--input", str(tmp_path / "cat"), "--model", str(tmp_path / "m"),
                 "--output", str(tmp_path / "sids")]) == 0
    manifest = json.loads((tmp_path / "sids" / "_manifest.json").read_text())
    assert manifest["items_encoded"] == 2000 and manifest["token_sizes"] == [16, 16]
    sids = spark.read.parquet(str(tmp_path / "sids")).orderBy("item_id").toPandas()
    want = get_encoder("simhash", seed=9, tokens=2, bits=4).fit(catalog).encode(catalog).numpy()
    np.testing.assert_array_equal(np.stack(sids["sid"].to_numpy()), want)
    assert main(["train-encoder", "--encoder", "pq", "--input", str(tmp_path / "cat"), "--model",
                 str(tmp_path / "m2")]) == 2


def test_compare_cli_writes_the_table(spark, catalog, tmp_path):
    from sid_spark.cli import main

    make_df(spark, catalog, 2).write.parquet(str(tmp_path / "cat"))
    rng = np.random.default_rng(0)
    seqs = pd.DataFrame({"user_id": np.arange(300, dtype=np.int32),
                         "item_ids": [rng.integers(0, 2000, 5).astype(np.int32) for _ in range(300)]})
    spark.createDataFrame(seqs).write.parquet(str(tmp_path / "seqs"))
    rc = main(["compare", "--input", str(tmp_path / "cat"), "--interactions", str(tmp_path / "seqs"),
               "--encoders", "rkmeans,simhash", "--output", str(tmp_path / "cmp"),
               "--set", "levels=2", "--set", "codebook_size=16", "--set", "max_iter=3", "--set", "seed=9",
               "--set", "simhash.tokens=2", "--set", "simhash.bits=4", "--set", "metrics.knn_queries=50"])
    assert rc == 0
    md = (tmp_path / "cmp" / "comparison.md").read_text()
    html = (tmp_path / "cmp" / "comparison.html").read_text()
    rows = {r["name"]: r for r in json.loads((tmp_path / "cmp" / "comparison.json").read_text())}
    assert set(rows) == {"rkmeans", "simhash"} and not any(r["error"] for r in rows.values())
    assert md.count("\n| ") == 3 and html.count("<tr>") == 3  # header + one row per encoder
    # SimHash needs no training: its collision rate is 1 - distinct/N of the seeded hash, computed here by hand.
    codes = get_encoder("simhash", seed=9, tokens=2, bits=4).fit(catalog).encode(catalog).numpy()
    assert rows["simhash"]["collision_rate"] == pytest.approx(1 - len({tuple(c) for c in codes}) / len(codes))
    used = [len(np.unique(codes[:, t])) / 16 for t in range(2)]
    assert rows["simhash"]["utilization"] == pytest.approx(used)
    for r in rows.values():
        assert r["n_items"] == 2000 and 0 <= r["rel_error"] and isinstance(r["train_seconds"], float)
        assert len(r["utilization"]) == 2 and r["encode_items_per_s"] > 0
        assert 0 <= r["hitrate_10"] <= 1 and 0 <= r["sid_gini"] <= 1


def test_encoder_names_and_rendering():
    assert parse_encoders("all")[:2] == ["rkmeans", "rkmeans_balanced"] and len(parse_encoders("all")) == 8
    with pytest.raises(ConfigError, match="'pq'"):
        parse_encoders("fsq,pq")
    rows = [Row("fsq", "2x16", 0.25, [1.0, 0.5], [4.0, 3.0], 0.1, 0.2, None, 1.5, 1000.0),
            Row("vqvae", error="ValueError: boom")]
    md = to_markdown(rows)
    assert "| fsq | 2x16 | 0.2500 | 1.000 / 0.500 | 4.00 / 3.00 | 0.1000 | 0.2000 | – | 1.5 | 1,000 |" in md
    assert "failed: ValueError: boom" in md and "<td>failed: ValueError: boom</td>" in to_html(rows)


def test_compare_adds_the_retrieval_column_with_one_split_for_every_encoder(spark, catalog, tmp_path):
    from sid_spark.cli import main

    make_df(spark, catalog[:600], 2).write.parquet(str(tmp_path / "cat"))
    rng = np.random.default_rng(1)
    seqs = pd.DataFrame({"user_id": np.arange(120, dtype=np.int64),
                         "item_ids": [rng.integers(0, 600, 6).astype(np.int64) for _ in range(120)]})
    spark.createDataFrame(seqs).write.parquet(str(tmp_path / "seqs"))
    tiny = ["d_model=8", "heads=2", "encoder_layers=1", "decoder_layers=1", "mlp=16", "epochs=1", "beam_width=10",
            "val_users=20"]
    base = ["compare", "--input", str(tmp_path / "cat"), "--interactions", str(tmp_path / "seqs"),
            "--encoders", "rkmeans,simhash", "--set", "levels=2", "--set", "codebook_size=8", "--set", "max_iter=2",
            "--set", "simhash.tokens=2", "--set", "simhash.bits=3", "--set", "metrics.knn_queries=20"]
    assert main(base + ["--output", str(tmp_path / "no"), "--set", "retrieval.epochs=1"]) == 2  # keys, no flag
    assert main([*base, "--output", str(tmp_path / "cmp"), "--retrieval",
                 *sum([["--set", f"retrieval.{t}"] for t in tiny], [])]) == 0
    rows = {r["name"]: r for r in json.loads((tmp_path / "cmp" / "comparison.json").read_text())}
    md = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "| HitRate@10 | retrieval R@10 | retrieval N@10 | train s |" in md
    for r in rows.values():
        got = r["extra"]["retrieval"]
        # every encoder is scored on the same split: 120 test users, 120 * (6 - 3) training examples
        assert got["test_users"] == 120 and got["train_examples"] == 360 and got["epochs"] == 1
        assert got["items"] == 600 and got["sids"] == 600  # the suffix makes every item reachable
        assert r["retrieval_recall_10"] == got["recall@10"] and 0 <= r["retrieval_ndcg_10"] <= r["retrieval_recall_10"]


def test_the_retrieval_columns_appear_only_when_scored():
    plain = Row("fsq", "2x16", 0.25, [1.0], [4.0], 0.1, 0.2, None, 1.5, 1000.0)
    scored = Row("rq", "2x16", 0.25, [1.0], [4.0], 0.1, 0.2, None, 1.5, 1000.0, retrieval_recall_10=0.125,
                 retrieval_ndcg_10=0.0625)
    assert "retrieval R@10" not in to_markdown([plain])
    md = to_markdown([plain, scored])
    assert "| rq | 2x16 | 0.2500 | 1.000 | 4.00 | 0.1000 | 0.2000 | – | 0.1250 | 0.0625 | 1.5 | 1,000 |" in md
    assert "| fsq | 2x16 | 0.2500 | 1.000 | 4.00 | 0.1000 | 0.2000 | – | – | – | 1.5 | 1,000 |" in md
