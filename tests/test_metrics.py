"""Quality metrics: formulas on hand-computed cases (no Spark), the neighbour kernel against a float64 brute
force, and the Spark aggregations on tiny planted tables whose every value is worked out by hand below."""
import json
import math

import numpy as np
import pytest
from pyspark.sql import types as T

from sid_spark.metrics import evaluate, evaluate_full
from sid_spark.metrics import formulas as fm
from sid_spark.metrics.neighbours import EMBEDDING, SID, NeighbourSearch, brute_force_ranks, normalise

SID_SCHEMA = T.StructType([T.StructField("item_id", T.LongType()),
                           T.StructField("sid", T.ArrayType(T.IntegerType()))])


# ---- formulas -----------------------------------------------------------------------------------------------
def test_gini_of_5_1_4_is_4_over_15():
    # sorted [1, 4, 5], N = 10: L = (.1, .5, 1); (2/3) * ((1/3 - .1) + (2/3 - .5) + 0) = 4/15
    assert fm.gini([5, 1, 4]) == pytest.approx(4 / 15, abs=1e-12)
    assert fm.gini_from_histogram([5, 1, 4], [1, 1, 1]) == pytest.approx(4 / 15, abs=1e-12)


def test_gini_equals_mean_absolute_difference_and_histogram_form():
    rng = np.random.default_rng(0)
    c = rng.integers(0, 9, size=300)
    mad = np.abs(c[:, None] - c[None, :]).sum() / (2 * len(c) ** 2 * c.mean())
    assert fm.gini(c) == pytest.approx(mad, abs=1e-12)
    sizes, mult = np.unique(c, return_counts=True)
    assert fm.gini_from_histogram(sizes, mult) == pytest.approx(fm.gini(c), abs=1e-12)
    assert fm.gini([7, 7, 7, 7]) == 0.0


def test_entropy_of_uniform_code_is_log2_k():
    m = fm.level_metrics([5] * 8, 8)
    assert m["entropy_bits"] == pytest.approx(3.0, abs=1e-12)
    assert m["entropy_norm"] == pytest.approx(1.0, abs=1e-12)
    assert m["gini"] == 0.0 and m["utilization"] == 1.0 and m["dead_codes"] == 0
    # N = 40, S = sum c log2 c = 40 log2 5: H = log2 40 - log2 5 = 3
    assert fm.entropy_from_moments(40, 40 * math.log2(5)) == pytest.approx(3.0, abs=1e-12)


def test_level_metrics_with_dead_codes():
    m = fm.level_metrics([3, 0, 1, 0], 4)
    # p = (3/4, 1/4); Gini over (0, 0, 1, 3): L = (0, 0, .25, 1), (2/4)(.25 + .5 + .5 + 0) = 0.625
    assert m == pytest.approx({"codes_used": 2, "utilization": 0.5, "dead_codes": 2,
                               "entropy_bits": 0.8112781244591328, "entropy_norm": 0.4056390622295664,
                               "gini": 0.625, "max_code_size": 3, "min_code_size": 0, "top1pct_share": 0.75})


def test_sid_metrics_from_size_histogram():
    # 3 SIDs of 1 item, 1 of 2, 1 of 3: N = 8, N_d = 5. Gini over (1,1,1,2,3):
    # L = (1,2,3,5,8)/8; sum(i/5 - L) = .075 + .15 + .225 + .175 + 0 = .625; G = (2/5) .625 = .25
    m = fm.sid_metrics([1, 2, 3], [3, 1, 1])
    assert m == pytest.approx({"n_items": 8, "n_sids": 5, "collision_rate": 0.375, "items_in_collision": 0.625,
                               "n_items_in_collision": 5, "max_items_per_sid": 3, "sid_gini": 0.25})
    x, y = fm.lorenz_from_histogram([1, 2, 3], [3, 1, 1])
    np.testing.assert_allclose(x, [0, 0.6, 0.8, 1.0])
    np.testing.assert_allclose(y, [0, 3 / 8, 5 / 8, 1.0])


def test_hourglass_formula():
    # H(prefix) = (2, 2, 4) bits, distinct prefixes (4, 4, 16): level 2 adds nothing, one child per prefix
    g = fm.hourglass([2.0, 2.0, 4.0], [4, 4, 16], 4)
    assert [r["cond_entropy_bits"] for r in g] == [2.0, 0.0, 2.0]
    assert [r["mean_children"] for r in g] == [4.0, 1.0, 4.0]
    assert [r["cond_entropy_norm"] for r in g] == [1.0, 0.0, 1.0]


# ---- neighbour kernel ---------------------------------------------------------------------------------------
def test_neighbour_search_matches_brute_force_across_blocks_and_batches():
    rng = np.random.default_rng(1)
    n, d, k = 300, 8, 7
    x = rng.standard_normal((n, d)).astype(np.float32)
    x[10] = x[20]  # an exact duplicate: its tie is broken by the item hash
    ids = np.arange(1000, 1000 + n, dtype=np.int64)
    hashes = rng.integers(-2 ** 63, 2 ** 63 - 1, size=n, dtype=np.int64)
    codes = rng.integers(0, 3, size=(n, 3))
    q_rows = np.array([0, 20, 10, 150, 299])
    search = NeighbourSearch(normalise(x[q_rows]), ids[q_rows], codes[q_rows], k, block_rows=64, query_tile=2)
    for part in np.array_split(np.arange(n), 5):  # five Arrow batches of one partition
        search.add(normalise(x[part]), ids[part], hashes[part], codes[part])
    r, qid, item, key = search.result()
    for j, row in enumerate(q_rows):
        emb_ref, sid_ref = brute_force_ranks(x, ids, hashes, codes, int(ids[row]))
        for ranking, ref in ((EMBEDDING, emb_ref), (SID, sid_ref)):
            sel = (r == ranking) & (qid == ids[row])
            got = item[sel][np.argsort(-key[sel], kind="stable")]
            assert got.tolist() == ref[:k], (row, ranking)


# ---- Spark aggregations -------------------------------------------------------------------------------------
def sid_df(spark, rows, partitions=2):
    return spark.createDataFrame([(int(i), [int(c) for c in s]) for i, s in rows], SID_SCHEMA).repartition(partitions)


def test_planted_hourglass(spark):
    # 16 items (a, 0, c), a, c in 0..3, K = 4: level 2 collapses onto code 0 (the hourglass waist)
    rows = [(4 * a + c, (a, 0, c)) for a in range(4) for c in range(4)]
    ev = evaluate_full(spark, sid_df(spark, rows), codebook_size=4)
    m = ev.metrics
    assert m["n_items"] == 16 and m["n_levels"] == 3
    l1, l2, l3 = m["levels"]
    assert (l1["utilization"], l2["utilization"], l3["utilization"]) == (1.0, 0.25, 1.0)
    assert l2["top1pct_share"] == 1.0 and l1["top1pct_share"] == 0.25
    assert l2["gini"] == pytest.approx(0.75)  # (0,0,0,16): (2/4)(.25+.5+.75+0)
    assert l2["entropy_bits"] == 0.0 and l1["entropy_bits"] == pytest.approx(2.0)
    assert [lv["cond_entropy_bits"] for lv in m["levels"]] == pytest.approx([2.0, 0.0, 2.0])
    assert [lv["mean_children"] for lv in m["levels"]] == [4.0, 1.0, 4.0]
    assert (l2["max_code_size"], l2["min_code_size"], l2["dead_codes"]) == (16, 0, 3)
    assert m["collision_rate"] == 0.0 and m["sid_gini"] == 0.0 and m["max_items_per_sid"] == 1
    assert m["rel_mse"] is None and m["hitrate"] is None
    assert [c.tolist() for c in ev.code_counts] == [[4, 4, 4, 4], [16, 0, 0, 0], [4, 4, 4, 4]]
    assert ev.per_code.count() == 12


def test_collisions_and_per_sid_table(spark):
    # SIDs: (0,0) x3, (0,1) x2, (1,1) x1, (2,0) x1 -> N = 7, N_d = 4
    rows = list(enumerate([(0, 0)] * 3 + [(0, 1)] * 2 + [(1, 1), (2, 0)]))
    ev = evaluate_full(spark, sid_df(spark, rows, 3), codebook_size=4)
    m = ev.metrics
    assert m["collision_rate"] == pytest.approx(1 - 4 / 7)
    assert m["items_in_collision"] == pytest.approx(5 / 7) and m["n_items_in_collision"] == 5
    assert m["max_items_per_sid"] == 3 and m["n_sids"] == 4
    # sizes (1,1,2,3), N = 7: L = (1,2,4,7)/7; (2/4) sum(i/4 - L) = (2/4)(3/28 + 6/28 + 5/28) = 1/4
    assert m["sid_gini"] == pytest.approx(0.25)
    assert m["sid_size_histogram"] == [[1, 2], [2, 1], [3, 1]]
    assert sorted((tuple(r["sid"]), r["count"]) for r in ev.per_sid.collect()) == [
        ((0, 0), 3), ((0, 1), 2), ((1, 1), 1), ((2, 0), 1)]
    lv1 = m["levels"][0]  # level-1 counts (5, 1, 1, 0)
    assert (lv1["codes_used"], lv1["max_code_size"], lv1["min_code_size"]) == (3, 5, 0)
    assert m["levels"][1]["mean_children"] == pytest.approx(4 / 3)  # 4 SIDs under 3 prefixes


def test_reconstruction_residual_per_level(spark):
    from tests.conftest import make_df

    x = np.array([[1, 0], [0, 2], [0, 3]], np.float32)
    codebooks = [np.array([[1, 0], [0, 1]], np.float32), np.array([[0, 0], [0, 1]], np.float32)]
    sids = sid_df(spark, [(0, (0, 0)), (1, (1, 0)), (2, (1, 1))])
    m = evaluate(spark, sids, codebook_size=2, embeddings_df=make_df(spark, x), codebooks=codebooks, knn_queries=0)
    # residuals after level 1: 0, (0,1), (0,2) -> 5; after level 2: 0, (0,1), (0,1) -> 2; sum ||x||^2 = 14
    assert m["residual_rel"] == pytest.approx([5 / 14, 2 / 14])
    assert m["rel_mse"] == pytest.approx(2 / 14)
    assert m["knn_recall"] is None and m["hitrate"] is None  # knn_queries=0 and no interactions: no kNN pass


TOY_ANGLES = {1: 0, 2: 10, 3: 25, 4: 45, 5: 70, 6: 100}
TOY_SIDS = {1: (0, 0), 2: (1, 0), 3: (0, 1), 4: (1, 1), 5: (0, 0), 6: (0, 2)}


@pytest.fixture(scope="module")
def toy(spark):
    """Six items on the unit circle at the angles above. Embedding order from 1: 2,3,4,5,6; from 3: 2,4,1,5,6.
    SID order (shared prefix, then cosine) from 1: 5 | 3,6 | 2,4; from 3: 1,5,6 | 2,4."""
    from tests.conftest import make_df

    ids = np.array(sorted(TOY_ANGLES))
    rad = np.deg2rad([TOY_ANGLES[i] for i in ids])
    x = np.stack([np.cos(rad), np.sin(rad)], 1).astype(np.float32) * 3  # not unit: cosine must normalise
    emb = make_df(spark, x, ids=ids)
    sids = sid_df(spark, [(i, TOY_SIDS[i]) for i in ids])
    seq = spark.createDataFrame(
        [(1, [4, 1, 2]), (2, [3, 5]), (3, [2, 1, 5]), (4, [6]), (5, [1, 1]), (6, [2, 99])],
        "user_id int, item_ids array<int>")
    m = evaluate(spark, sids, codebook_size=3, embeddings_df=emb, interactions_df=seq, hit_ks=(2, 4), knn_queries=6)
    return x, ids, seq, m


def test_hitrate_on_toy_log(toy):
    m = toy[-1]
    hr = m["hitrate"]
    # transitions kept: 1->2 (user 1), 3->5 (user 2), 1->5 (user 3); user 4 is too short, user 5 repeats,
    # user 6 goes to an unknown item (skipped).
    # embedding ranks of b: 0, 3, 3; SID ranks: 3, 1, 0
    assert (hr["n_users"], hr["n_transitions"], hr["skipped"]) == (4, 3, 1)
    assert hr["embedding"] == pytest.approx({"2": 1 / 3, "4": 1.0})
    assert hr["sid"] == pytest.approx({"2": 2 / 3, "4": 1.0})


def test_knn_recall_on_toy_catalog_matches_reference(spark, toy):
    x, ids, _, m = toy
    hashes = np.array([r["h"] for r in spark.createDataFrame([(int(i),) for i in ids], "item_id long")
                      .selectExpr("item_id", "xxhash64(0, 0, item_id) as h").orderBy("item_id").collect()])
    codes = np.array([TOY_SIDS[i] for i in ids])
    assert brute_force_ranks(x, ids, hashes, codes, 1) == ([2, 3, 4, 5, 6], [5, 3, 6, 2, 4])
    assert brute_force_ranks(x, ids, hashes, codes, 3) == ([2, 4, 1, 5, 6], [1, 5, 6, 2, 4])
    for k in (2, 4):
        want = np.mean([len(set(e[:k]) & set(s[:k])) / k
                        for e, s in (brute_force_ranks(x, ids, hashes, codes, int(q)) for q in ids)])
        assert m["knn_recall"]["recall"][str(k)] == pytest.approx(want)
    assert m["knn_recall"]["recall"]["2"] == pytest.approx(5 / 12)  # hand: queries 1..6 share 1,1,0,1,1,1 of their top 2
    assert m["knn_recall"]["n_queries"] == 6


def test_metrics_do_not_depend_on_partitioning(spark, toy):
    from tests.conftest import make_df

    x, ids, seq, want = toy  # evaluated on 2 partitions
    emb = make_df(spark, x, ids=ids, partitions=1)
    sids = sid_df(spark, [(i, TOY_SIDS[i]) for i in ids], 3)
    got = evaluate(spark, sids, codebook_size=3, embeddings_df=emb, interactions_df=seq, hit_ks=(2, 4), knn_queries=6)
    assert json.dumps(got, sort_keys=True) == json.dumps(want, sort_keys=True)
