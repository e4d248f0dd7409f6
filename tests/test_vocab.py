"""The SID token vocabulary: layout, strings, round trips (numpy, file, Spark column)."""
import json

import numpy as np
import pytest

from sid_spark.vocab import Vocabulary, VocabError, with_token_ids


def test_layout_and_strings_by_hand():
    v = Vocabulary(levels=3, codebook_size=256, suffix_size=4)
    assert v.size == 3 * 256 + 4
    assert v.token_id(0, 17) == 17 and v.token_id(1, 203) == 256 + 203 and v.token_id(2, 88) == 512 + 88
    assert v.token_id(3, 1) == 768 + 1  # the suffix level
    assert [v.token_str(0, 17), v.token_str(1, 203), v.token_str(3, 1)] == ["<a_17>", "<b_203>", "<d_1>"]
    assert v.parse("<b_203>") == 459 and v.lookup(459) == (1, 203) and v.lookup(769) == (3, 1)
    np.testing.assert_array_equal(v.encode(np.array([[17, 203, 88]]), np.array([1])), [[17, 459, 600, 769]])
    with pytest.raises(VocabError):
        v.token_id(3, 4)  # suffix 4 is beyond suffix_size
    with pytest.raises(VocabError):
        v.parse("<e_0>")
    with pytest.raises(VocabError):
        v.encode(np.array([[0, 0, 256]]), np.array([0]))


def test_offset_reserves_special_ids_and_tokens_are_dense():
    v = Vocabulary(levels=2, codebook_size=3, suffix_size=2, offset=5)
    toks = v.tokens()
    assert [t["id"] for t in toks] == list(range(5, 5 + 8))
    assert [t["token"] for t in toks] == ["<a_0>", "<a_1>", "<a_2>", "<b_0>", "<b_1>", "<b_2>", "<c_0>", "<c_1>"]
    assert all(v.lookup(t["id"]) == (t["level"], t["code"]) for t in toks)


def test_encode_decode_round_trip():
    rng = np.random.default_rng(0)
    v = Vocabulary(levels=3, codebook_size=16, suffix_size=5, offset=3)
    sid, suf = rng.integers(0, 16, (100, 3)), rng.integers(0, 5, 100)
    codes, back = v.decode(v.encode(sid, suf))
    np.testing.assert_array_equal(codes, sid)
    np.testing.assert_array_equal(back, suf)
    ids = v.encode(sid, suf)
    ids[0, 1] = ids[0, 0]  # a level-a token in the level-b slot
    with pytest.raises(VocabError):
        v.decode(ids)
    plain = Vocabulary(levels=3, codebook_size=16)
    codes, none = plain.decode(plain.encode(sid))
    assert none is None and (codes == sid).all()


def test_file_round_trip_and_tampering(spark, tmp_path):  # files go through Hadoop (sid_spark.storage)
    v = Vocabulary(levels=3, codebook_size=8, suffix_size=2, offset=1)
    v.save(tmp_path / "v.json")
    assert Vocabulary.load(tmp_path / "v.json") == v
    data = json.loads((tmp_path / "v.json").read_text())
    data["tokens"][3]["token"] = "<z_9>"
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(VocabError, match="does not match"):
        Vocabulary.load(tmp_path / "bad.json")


def test_spark_token_column_matches_numpy(spark):
    from pyspark.sql import types as T

    v = Vocabulary(levels=3, codebook_size=10, suffix_size=3, offset=2)
    rows = [(1, [0, 0, 0], 0), (2, [9, 3, 7], 2), (3, [4, 5, 6], 1)]
    schema = T.StructType([T.StructField("item_id", T.LongType()),
                           T.StructField("sid", T.ArrayType(T.IntegerType())),
                           T.StructField("sid_suffix", T.IntegerType())])
    out = with_token_ids(spark.createDataFrame(rows, schema), v).orderBy("item_id").collect()
    want = v.encode(np.array([r[1] for r in rows]), np.array([r[2] for r in rows]))
    assert [r["sid_tokens"] for r in out] == want.tolist()
    assert out[1]["sid_tokens"] == [2 + 9, 2 + 10 + 3, 2 + 20 + 7, 2 + 30 + 2]
    with pytest.raises(VocabError, match="disagree"):
        with_token_ids(spark.createDataFrame(rows, schema).drop("sid_suffix"), v)
