"""Collision resolution: the distance kernels (no Spark), suffix and reassign on Spark against hand-computed
cases and a sequential reference, partition invariance, and the `sid-spark dedup` CLI."""
import json

import numpy as np
import pytest
from pyspark.sql import functions as F

from sid_spark import ResidualKMeansModel, TokenizerConfig
from sid_spark.kernels import dedup as kd
from sid_spark.spark.dedup import dedup_sids
from sid_spark.spark.prepare import HASH, prepare
from tests.conftest import make_df

# Hand-built 2-level model in 2-d: level a = four far-apart centres, level b = small offsets.
CB0 = np.array([[0, 0], [10, 0], [0, 10], [10, 10]], np.float32)
CB1 = np.array([[0, 0], [1, 0], [0, 1], [-1, 0]], np.float32)
# id -> vector. Greedy SIDs: 1, 2, 3, 4 -> (0, 0) (4 is an exact duplicate of 1); 5 -> (1, 0).
HAND = {1: (0.1, 0.0), 2: (0.2, 0.0), 3: (0.0, 0.3), 4: (0.1, 0.0), 5: (10.0, 0.0)}


def hand_model(**kw):
    return ResidualKMeansModel(TokenizerConfig(levels=2, codebook_size=4, balance="none", **kw), [CB0, CB1])


def hand_df(spark, partitions=2):
    ids = np.array(sorted(HAND))
    return make_df(spark, np.array([HAND[i] for i in ids], np.float32), partitions=partitions, ids=ids)


# ---- kernels -------------------------------------------------------------------------------------------------
def test_alternatives_by_hand():
    x = np.array([HAND[2], HAND[3]], np.float32)
    codes, dist = kd.last_level_alternatives(x, np.array([[0, 0], [0, 0]]), [CB0, CB1], topk=8)
    assert codes.tolist() == [[1, 2, 3], [2, 1, 3]]  # item 3: codes 1 and 3 tie at 1.09 -> lower code first
    np.testing.assert_allclose(dist, [[0.64, 1.04, 1.44], [0.49, 1.09, 1.09]], rtol=1e-6)
    assert dist[1, 1] == dist[1, 2]


def test_alternatives_use_the_stored_prefix_and_drop_the_own_code():
    x = np.array([HAND[1]] * 3, np.float32)
    # Stored (non-greedy) prefix 1: residual (-9.9, 0), own code 0 excluded.
    codes, dist = kd.last_level_alternatives(x[:1], np.array([[1, 0]]), [CB0, CB1], topk=3)
    assert codes.tolist() == [[3, 2, 1]]
    np.testing.assert_allclose(dist, [[8.9 ** 2, 9.9 ** 2 + 1, 10.9 ** 2]], rtol=1e-5)
    # Own code 3 (as a balanced encoder may give) is not among the top-2 candidates: the farther one is dropped.
    codes, dist = kd.last_level_alternatives(x[:1], np.array([[0, 3]]), [CB0, CB1], topk=1)
    assert codes.tolist() == [[0]]
    np.testing.assert_allclose(dist, [[0.01]], rtol=1e-5)
    np.testing.assert_allclose(kd.reconstruction_sq_error(x[:1], np.array([[0, 3]]), [CB0, CB1]), [1.21], rtol=1e-6)


def test_alternatives_do_not_depend_on_batch_composition():
    rng = np.random.default_rng(1)
    cbs = [rng.standard_normal((16, 8)).astype(np.float32), 0.3 * rng.standard_normal((16, 8)).astype(np.float32)]
    x = rng.standard_normal((5000, 8)).astype(np.float32)
    sid = rng.integers(0, 16, (5000, 2))
    codes, dist = kd.last_level_alternatives(x, sid, cbs, topk=5, block_rows=256)
    for i in (0, 255, 256, 4999):
        c1, d1 = kd.last_level_alternatives(x[i:i + 1], sid[i:i + 1], cbs, topk=5, block_rows=256)
        assert (c1[0] == codes[i]).all() and (d1[0] == dist[i]).all()
    assert (np.diff(dist, axis=1) >= 0).all() and (codes != sid[:, 1:]).all()


# ---- Spark: hand-computed cases ----------------------------------------------------------------------------
def _hashes(spark, model, ids):
    valid = prepare(hand_df(spark), model.config, dim=2).valid
    return {r["item_id"]: r[HASH] for r in valid.where(F.col("item_id").isin(ids)).collect()}


def _run(spark, model, mode, partitions=2, **kw):
    df = hand_df(spark, partitions)
    sids = model.encode(df).sids
    res = dedup_sids(sids, prepare(df, model.config, dim=2).valid, model.quantizer(), mode, **kw)
    got = {r["item_id"]: (tuple(r["sid"]), r["sid_suffix"]) for r in res.sids.collect()}
    return got, res.report()


@pytest.fixture(scope="module")
def dup_order(spark):
    """Items 1 and 4 are exact duplicates: same distance, so the stable id hash decides (then the id)."""
    h = _hashes(spark, hand_model(), [1, 4])
    first = min((1, 4), key=lambda i: (h[i], i))
    return first, 5 - first


def test_suffix_by_hand(spark, dup_order):
    a, b = dup_order
    got, rep = _run(spark, hand_model(), "suffix")
    # Group (0, 0) ordered by distance to the reconstruction: {1, 4} at 0.01, 2 at 0.04, 3 at 0.09.
    assert got == {a: ((0, 0), 0), b: ((0, 0), 1), 2: ((0, 0), 2), 3: ((0, 0), 3), 5: ((1, 0), 0)}
    assert rep["largest_suffix"] == 3 and rep["items_suffixed"] == 3 and rep["items_moved"] == 0
    assert rep["rel_error_before"] == rep["rel_error_after"]


def test_reassign_by_hand(spark, dup_order):
    a, b = dup_order
    got, rep = _run(spark, hand_model(), "reassign", capacity=1)
    # Round 1: b -> (0,1) at 0.81 and 2 -> (0,1) at 0.64 compete, 2 wins; 3 -> (0,2) at 0.49.
    # Round 2: b's nearest SID with room is (0,3) at 1.21. Round 3 moves nothing.
    assert got == {a: ((0, 0), 0), 2: ((0, 1), 0), 3: ((0, 2), 0), b: ((0, 3), 0), 5: ((1, 0), 0)}
    assert rep["rounds"] == 2 and rep["items_moved"] == 3 and rep["items_unplaced"] == 0
    assert rep["largest_suffix"] == 0
    norm = 0.01 + 0.04 + 0.09 + 0.01 + 100.0
    assert rep["rel_error_before"] == pytest.approx((0.01 + 0.04 + 0.09 + 0.01) / norm, rel=1e-5)
    assert rep["rel_error_after"] == pytest.approx((0.01 + 0.64 + 0.49 + 1.21) / norm, rel=1e-5)


def test_reassign_leftover_gets_a_suffix(spark, dup_order):
    a, b = dup_order
    got, rep = _run(spark, hand_model(), "reassign", capacity=1, alternatives=1)
    # One alternative each: b and 2 both want (0,1); 2 is nearer; b has nothing else and stays, suffixed.
    assert got == {a: ((0, 0), 0), b: ((0, 0), 1), 2: ((0, 1), 0), 3: ((0, 2), 0), 5: ((1, 0), 0)}
    assert rep["rounds"] == 1 and rep["items_moved"] == 2 and rep["items_unplaced"] == 1
    assert rep["largest_suffix"] == 1


def test_reassign_capacity_two(spark, dup_order):
    a, b = dup_order
    got, rep = _run(spark, hand_model(), "reassign", capacity=2)
    assert got == {a: ((0, 0), 0), b: ((0, 0), 1), 2: ((0, 1), 0), 3: ((0, 2), 0), 5: ((1, 0), 0)}
    assert rep["items_moved"] == 2 and rep["rounds"] == 1


# ---- Spark: planted duplicates, reference, partition invariance ----------------------------------------------
K, D = 16, 8


def planted(seed=0):
    """150 clustered items + 30 exact duplicates + 30 near-duplicates (noise 1e-4), and a 2 x 16 model."""
    rng = np.random.default_rng(seed)
    cb0 = rng.standard_normal((K, D)).astype(np.float32)
    cb1 = (0.3 * rng.standard_normal((K, D))).astype(np.float32)
    pick = rng.choice(K, 150, p=np.r_[[0.3, 0.2], np.full(K - 2, 0.5 / (K - 2))])
    x = cb0[pick] + 0.15 * rng.standard_normal((150, D)).astype(np.float32)
    src = rng.choice(150, 60, replace=False)
    near = x[src[30:]] + 1e-4 * rng.standard_normal((30, D)).astype(np.float32)
    return np.concatenate([x, x[src[:30]], near]).astype(np.float32), [cb0, cb1]


def reference(x, ids, h, sid, cbs, mode, cap, topk):
    """Sequential statement of the same rules, one item at a time."""
    d0 = kd.reconstruction_sq_error(x, sid, cbs)
    key = {i: (d0[j], h[i], i) for j, i in enumerate(ids)}
    groups = {}
    for j, i in enumerate(ids):
        groups.setdefault(tuple(sid[j]), []).append(i)
    row = {i: j for j, i in enumerate(ids)}
    if mode == "suffix":
        return {i: (g, r) for g, members in groups.items() for r, i in enumerate(sorted(members, key=key.get))}
    occ, final, pending = {}, {}, []
    for g, members in groups.items():
        for r, i in enumerate(sorted(members, key=key.get)):
            if r < cap:
                occ[g] = occ.get(g, 0) + 1
                final[i] = (g, key[i])
            else:
                pending.append(i)
    codes, dist = kd.last_level_alternatives(x, sid, cbs, topk)
    while True:
        proposals = {}
        for i in pending:
            j = row[i]
            for c, dd in zip(codes[j], dist[j]):
                t = tuple(sid[j][:-1]) + (int(c),)
                if occ.get(t, 0) < cap:
                    proposals.setdefault(t, []).append((dd, h[i], i))
                    break
        if not proposals:
            break
        for t, props in proposals.items():
            for p in sorted(props)[: cap - occ.get(t, 0)]:
                occ[t] = occ.get(t, 0) + 1
                final[p[2]] = (t, p)
                pending.remove(p[2])
    out = {}
    by_sid = {}
    for i, (g, k) in final.items():
        by_sid.setdefault(g, []).append((k, i))
    for g, members in by_sid.items():
        for r, (_, i) in enumerate(sorted(members)):
            out[i] = (g, r)
    left = {}
    for i in pending:
        left.setdefault(tuple(sid[row[i]]), []).append(i)
    for g, members in left.items():
        for r, i in enumerate(sorted(members, key=key.get)):
            out[i] = (g, cap + r)
    return out


@pytest.fixture(scope="module")
def planted_run(spark):
    x, cbs = planted()
    model = ResidualKMeansModel(TokenizerConfig(levels=2, codebook_size=K, balance="none"), cbs)
    ids = np.arange(len(x)) * 7 + 3
    out = {}
    for parts in (1, 8):
        df = make_df(spark, x, partitions=parts, ids=ids)
        valid = prepare(df, model.config, dim=D).valid
        sids = model.encode(df).sids.repartition(parts)
        for mode in ("suffix", "reassign"):
            res = dedup_sids(sids, valid, model.quantizer(), mode, capacity=1, alternatives=K - 1)
            out[(parts, mode)] = (sorted((r["item_id"], tuple(r["sid"]), r["sid_suffix"]) for r in res.sids.collect()),
                                  res.report())
        if parts == 1:
            base = sorted((r["item_id"], tuple(r["sid"])) for r in sids.collect())
            h = {r["item_id"]: r[HASH] for r in valid.select("item_id", HASH).collect()}
    return x, ids, cbs, base, h, out


@pytest.mark.parametrize("mode", ["suffix", "reassign"])
def test_planted_unique_and_partition_invariant(planted_run, mode):
    x, ids, cbs, base, h, out = planted_run
    rows, rep = out[(1, mode)]
    assert rows == out[(8, mode)][0]
    assert {k: v for k, v in rep.items() if k != "dedup_seconds"} == \
        {k: v for k, v in out[(8, mode)][1].items() if k != "dedup_seconds"}
    assert len(rows) == len(x) == len({(s, f) for _, s, f in rows})
    assert len({s for _, s in base}) < len(x)  # there were collisions to resolve


@pytest.mark.parametrize("mode", ["suffix", "reassign"])
def test_planted_matches_sequential_reference(planted_run, mode):
    x, ids, cbs, base, h, out = planted_run
    order = np.argsort(ids)
    sid = np.array([s for _, s in base])
    want = reference(x[order], list(ids[order]), h, sid, cbs, mode, 1, K - 1)
    assert {i: (s, f) for i, s, f in out[(1, mode)][0]} == want


def test_reassign_respects_capacity_and_moves_within_prefix(planted_run):
    x, ids, cbs, base, h, out = planted_run
    rows, rep = out[(1, "reassign")]
    before = {i: s for i, s in base}
    placed = [s for _, s, f in rows if f == 0]
    assert len(placed) == len(set(placed))  # capacity 1: a placed SID holds one item
    assert all(s[:-1] == before[i][:-1] for i, s, _ in rows)  # only the last level ever changes
    moved = sum(s != before[i] for i, s, _ in rows)
    assert moved == rep["items_moved"] > 0
    # With every alternative allowed, an item stays unplaced only when its whole prefix is full.
    full = {p for p in {s[:-1] for s in placed} if sum(s[:-1] == p for s in placed) == K}
    leftovers = [s for _, s, f in rows if f > 0]
    assert len(leftovers) == rep["items_unplaced"] and all(s[:-1] in full for s in leftovers)
    assert rep["rel_error_after"] >= rep["rel_error_before"]


# ---- CLI ---------------------------------------------------------------------------------------------------
def test_cli_dedup_writes_unique_table_with_vocab(tmp_path, spark):
    from sid_spark.cli import main
    from sid_spark.vocab import Vocabulary

    x, cbs = planted(1)
    model = ResidualKMeansModel(TokenizerConfig(levels=2, codebook_size=K, balance="none"), cbs)
    model.save(str(tmp_path / "model"))
    make_df(spark, x).write.parquet(str(tmp_path / "catalog"))
    common = ["--input", str(tmp_path / "catalog"), "--model", str(tmp_path / "model")]
    assert main(["encode", *common, "--output", str(tmp_path / "sids")]) == 0
    assert main(["dedup", *common, "--sids", str(tmp_path / "sids"), "--output", str(tmp_path / "dd"),
                 "--set", "dedup=reassign"]) == 0
    out = spark.read.parquet(str(tmp_path / "dd"))
    assert out.columns == ["item_id", "sid", "sid_suffix"]
    assert out.count() == len(x) == out.select("sid", "sid_suffix").distinct().count()
    man = json.loads((tmp_path / "dd" / "_manifest.json").read_text())
    assert man["dedup"] == "reassign" and man["model_id"] == model.model_id and man["items"] == len(x)
    assert man["items_moved"] > 0 and man["rel_error_after"] >= man["rel_error_before"] > 0
    vocab = Vocabulary.load(tmp_path / "dd" / "_vocab.json")
    assert vocab.suffix_size == man["largest_suffix_in_table"] + 1 and vocab.levels == 2
    assert main(["dedup", *common, "--sids", str(tmp_path / "sids"), "--output", str(tmp_path / "dd2")]) == 2
