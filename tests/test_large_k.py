"""Large codebooks: per-level sizes, code-tiled kernels, the memory bounds, exact balance at K = 1,024."""
import numpy as np
import pytest
import torch

from sid_spark.config import ConfigError, TokenizerConfig
from sid_spark.kernels import kmeans as km
from sid_spark.spark.train import driver_memory_bytes

from conftest import make_df


def test_codebook_size_one_int_or_one_per_level():
    assert TokenizerConfig(codebook_size=512).codebook_sizes == (512, 512, 512)
    cfg = TokenizerConfig(codebook_size=[8192, 1024, 16])
    assert cfg.codebook_sizes == (8192, 1024, 16) and cfg.codebook_size_for(1) == 1024
    assert cfg.to_dict()["codebook_size"] == [8192, 1024, 16]
    assert TokenizerConfig.from_dict(cfg.to_dict()) == cfg
    assert TokenizerConfig(codebook_size=16384).codebook_sizes[0] == 16384
    for bad in (1, 16385, [8, 8], [8, "8", 8], True, 2.5):
        with pytest.raises(ConfigError, match="codebook_size"):
            TokenizerConfig(codebook_size=bad)


@pytest.mark.parametrize("tile", [64, 300])
def test_code_tiles_give_the_untiled_codes_and_regret(tile):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(600, 12, generator=g)
    c = torch.randn(700, 12, generator=g)
    p = torch.randn(700, generator=g) * 0.5
    for topk in (1, 2, 3):
        want = km.assign(x, c, p, block_rows=256, topk=topk)
        got = km.assign(x, c, p, block_rows=256, topk=topk, code_tile=tile)
        assert torch.equal(got[0], want[0])
        torch.testing.assert_close(got[1], want[1], rtol=0, atol=1e-5)
    # the regret (second minus first cost) the balanced encode ranks by
    v = km.assign(x, c, p, block_rows=256, topk=2, code_tile=tile)[1]
    d = km.distances(x, c, p).double()
    top = torch.topk(d, 2, dim=1, largest=False).values
    torch.testing.assert_close((v[:, 1] - v[:, 0]).double(), top[:, 1] - top[:, 0], rtol=0, atol=1e-4)
    want = km.residual_encode(x, [c, c[:100]], [p, None], 256)
    got = km.residual_encode(x, [c, c[:100]], [p, None], 256, code_tile=tile)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_tied_scores_keep_the_lower_code_across_tiles():
    x = torch.zeros((5, 2))
    c = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])  # 0, 2, 3, 4 tie
    for tile in (1, 2, 3, 5):
        assert km.assign(x, c, code_tile=tile)[0].tolist() == [0] * 5
        assert km.residual_encode(x, [c], code_tile=tile)[0][:, 0].tolist() == [0] * 5


def test_score_buffers_stay_one_tile_wide_at_16384_codes():
    c = torch.zeros((16384, 4))
    scorer = km._Scorer(c, km._bias(c, None), 4096, km.DEFAULT_CODE_TILE)
    assert sum(b.numel() for b in scorer.buffers.values()) == 4096 * km.DEFAULT_CODE_TILE
    assert len(scorer.tiles) == 16384 // km.DEFAULT_CODE_TILE


def test_task_memory_bound():
    b = km.task_memory_bytes
    big = b([16384] * 3, 4096)
    # the codebooks and one level's float64 sums are the floor; everything else is bounded by block and tile
    floor = 4 * 3 * 16384 * 4096 + 8 * 16384 * 4096
    assert floor <= big <= floor + 512 * 2 ** 20
    assert big < 2 * 2 ** 30
    # linear in K beyond one tile: doubling K adds the codebooks and sums of the new codes only
    assert b([16384], 256) - b([8192], 256) == 8192 * (256 + 1) * (4 + 8)
    assert b([256], 256) < b([256], 256, block_rows=8192)
    # a balanced level's training adds its slot's Sinkhorn matrices (3 x 64 MiB) or, in an exact step, its
    # residuals, distances and float64 costs (6 x 64 MiB), whatever K
    assert b([16384] * 3, 4096, price_entries=2 ** 24) - big == 6 * 64 * 2 ** 20


def test_driver_working_set_bound():
    d = 1024
    small = driver_memory_bytes(TokenizerConfig(), 128)
    assert small < 64 * 2 ** 20
    big = driver_memory_bytes(TokenizerConfig(codebook_size=8192), d)
    assert big < 2 * 2 ** 30  # the (init_factor K) x K float64 Sinkhorn matrix alone was 27 GB here
    # no K^2 term: from 8,192 to 16,384 codes it at most doubles
    assert driver_memory_bytes(TokenizerConfig(codebook_size=16384), d) <= 2 * big
    # and the catalog size does not enter (the sample only caps the seeding rows)
    assert driver_memory_bytes(TokenizerConfig(codebook_size=8192, sample_size=10 ** 9), d) == big
    cbs = 4 * 3 * 8192 * (d + 1)
    assert big >= cbs


def sizes_exact(codes, n, k):
    c = np.bincount(codes, minlength=k)
    return c.min() >= n // k and c.max() <= -(-n // k) and c.sum() == n


@pytest.fixture(scope="module")
def large_k(spark):
    from sid_spark import ResidualKMeansTokenizer

    rng = np.random.default_rng(4)
    x = (rng.standard_normal((3001, 8)) * rng.uniform(0.5, 2.0, 8)).astype(np.float32)
    model = ResidualKMeansTokenizer(levels=2, codebookSize=[1024, 8], seed=3, max_iter=3, balance="exact",
                                    init_factor=2).fit(make_df(spark, x, partitions=3))
    sids = model.encode(make_df(spark, x, partitions=2)).sids.orderBy("item_id").collect()
    return x, model, sids


def test_per_level_sizes_and_exact_balance_at_k_1024(large_k):
    x, model, sids = large_k
    assert [c.shape for c in model.codebooks] == [(1024, 8), (8, 8)]
    assert model.prices[0].shape == (1024,) and model.prices[1].shape == (8,)
    codes = np.array([r["sid"] for r in sids])
    assert codes.shape == (3001, 2)
    assert sizes_exact(codes[:, 0], 3001, 1024), np.bincount(codes[:, 0], minlength=1024)
    assert sizes_exact(codes[:, 1], 3001, 8), np.bincount(codes[:, 1], minlength=8)


def test_large_k_sids_do_not_depend_on_partitioning(spark, large_k):
    x, model, sids = large_k
    assert model.encode(make_df(spark, x, partitions=5)).sids.orderBy("item_id").collect() == sids


def test_tree_reduce_sums_in_partition_order_at_every_fanout(spark):
    """The executors' tree: groups of `fanout` consecutive partitions, level after level, added in partition order
    (a non-commutative `add` shows the order), one blob to the driver."""
    from sid_spark.spark.batches import tree_reduce

    blobs = spark.sparkContext.parallelize([str(i).encode() for i in range(40)], 40)
    want = ",".join(str(i) for i in range(40)).encode()
    for fanout in (2, 3, 16, 64):
        assert tree_reduce(blobs, lambda a, b: a + b"," + b, fanout) == want


def test_training_statistics_summed_on_the_driver_equal_the_tree(spark):
    """A mini-batch's few small blobs are summed on the driver (one stage, no shuffle); the executors' tree gives
    the same statistics to the last bit."""
    import pandas as pd

    from sid_spark.spark.batches import DIRECT_SUM_BYTES, batched_sample
    from sid_spark.spark.quantize import LevelStats, stats_blob_bytes

    n, d, k = 2000, 8, 64
    x = np.random.default_rng(7).standard_normal((n, d)).astype(np.float32)
    pdf = pd.DataFrame({"_vec": list(x), "_u": (np.arange(n) + 0.5) / n})
    batched = batched_sample(spark.createDataFrame(pdf).repartition(3), "_u", n, n // 2, d)
    cb = torch.from_numpy(x[:k].copy())

    def partition(arrays):
        from sid_spark.spark.quantize import matrix_stats

        acc = LevelStats.zeros(k, d)
        for block in arrays:
            acc = acc + matrix_stats(torch.from_numpy(block), [], [], cb, None, 4096)
        yield acc.to_bytes()

    try:
        assert batched.slots * stats_blob_bytes(k, d) <= DIRECT_SUM_BYTES
        for batch in range(batched.n_batches):
            direct = LevelStats.from_bytes(batched.reduce(batch, partition, LevelStats.add_bytes, 16,
                                                             stats_blob_bytes(k, d)))
            tree = LevelStats.from_bytes(batched.reduce(batch, partition, LevelStats.add_bytes, 16))
            assert direct.rows == tree.rows == sum(batched.part_rows[batch * batched.slots:(batch + 1) * batched.slots])
            np.testing.assert_array_equal(direct.counts, tree.counts)
            np.testing.assert_array_equal(direct.sums, tree.sums)
            assert direct.sse == tree.sse
    finally:
        batched.unpersist()


def test_cut_in_small_chunks_gives_the_same_mini_batches(spark):
    """The cut sends each input partition on in chunks of CUT_CHUNK_BYTES (a cut task's memory does not grow with
    its partition): with one chunk per Arrow batch (10,000 rows, Spark's default; an input partition of 12,500 rows
    is two) the mini-batches are the same arrays, row for row."""
    import pandas as pd

    from sid_spark.spark import batches as B

    n, d = 25_000, 4
    x = np.random.default_rng(11).standard_normal((n, d)).astype(np.float32)
    u = np.random.default_rng(12).permutation(n).astype(np.float64) / n
    pdf = pd.DataFrame({"_vec": list(x), "_u": u})
    df = spark.createDataFrame(pdf).repartition(2)

    def cut(chunk_bytes=B.CUT_CHUNK_BYTES):
        batched = B.batched_sample(df, "_u", n, n // 3, d, chunk_bytes=chunk_bytes)
        try:
            return batched.part_rows, batched.rdd.collect()  # test only: 25,000 x 4
        finally:
            batched.unpersist()

    whole_rows, whole = cut()
    small_rows, small = cut(chunk_bytes=1)
    assert small_rows == whole_rows and sum(whole_rows) == n and len(whole) == len(whole_rows)
    for a, b in zip(whole, small):
        np.testing.assert_array_equal(a, b)
    # every partition in hash order, and together the input rows
    order = np.argsort(u, kind="stable")
    np.testing.assert_array_equal(np.concatenate(whole), x[order])


def test_seeding_beyond_large_k_gives_the_same_codebook_whatever_the_partitioning(spark, monkeypatch):
    """K = 2,048 > LARGE_K is seeded on the executors (seeding.seed_level): the same seeding rows, numbered by hash,
    in any input partitioning, so the same codebook. 8 rounds instead of 64 keep the test short (one job a round);
    the rounds do not enter the argument."""
    from sid_spark import ResidualKMeansTokenizer
    from sid_spark.kernels import seeding as sd
    from sid_spark.spark.train import LARGE_K

    monkeypatch.setattr(sd, "SEED_ROUNDS", 8)
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2600, 6)).astype(np.float32)
    fits = [ResidualKMeansTokenizer(levels=1, codebookSize=2048, seed=5, max_iter=2, balance="none",
                                    init_factor=2).fit(make_df(spark, x, partitions=p)) for p in (2, 5)]
    assert 2048 > LARGE_K and fits[0].codebooks[0].shape == (2048, 6)
    np.testing.assert_array_equal(fits[0].codebooks[0], fits[1].codebooks[0])
    assert len(np.unique(fits[0].codebooks[0], axis=0)) == 2048  # no two codes share a centre


def test_executor_seeding_draws_the_in_process_seeds_through_frozen_levels(spark, monkeypatch):
    """seed_level on the cached sample (the seeding rows cut into 3 shards, one job a round) gives exactly the
    centres of kernels.seeding run in one process on the same rows' residuals through a frozen level; the driver
    receives no seeding row."""
    import torch

    from sid_spark.kernels import seeding as sd
    from sid_spark.spark import seeding as S
    from sid_spark.spark.batches import BatchedSample
    from sid_spark.spark.quantize import QuantizerState

    rng = np.random.default_rng(2)
    x = rng.standard_normal((3000, 16)).astype(np.float32)
    parts = [x[:700], x[700:1900], x[1900:2100], x[2100:]]  # cached partitions in hash order, uneven
    # the cut's cached records: (partition, (units, rows)) chunks on their partition, here one chunk each
    tagged = spark.sparkContext.parallelize(
        [(i, (np.arange(len(p), dtype=np.float64), p)) for i, p in enumerate(parts)], 4).persist()
    batched = BatchedSample(tagged, 2, 2, 3000, 16, [len(p) for p in parts])
    m = 2500
    monkeypatch.setattr(S, "SEED_TASK_BYTES", 4 * m * 16 // 3 + 1)
    assert S.seed_tasks(m, 16) == 3
    frozen_cb = rng.standard_normal((8, 16)).astype(np.float32)
    frozen = QuantizerState((frozen_cb,), (None,), 512, "cpu")
    try:
        shards = S.seeding_shards(batched, m)
        assert shards.getNumPartitions() == 3
        got = S.seed_level(shards, frozen, 1500, sd.seed_key(4, 1), rounds=5)
    finally:
        tagged.unpersist()
    r = km.residual_encode(torch.from_numpy(x[:m]), [torch.from_numpy(frozen_cb)], [None], 512)[1]
    want = sd.kmeans_pp_sharded(r, 1500, sd.seed_key(4, 1), shards=3, rounds=5)
    np.testing.assert_array_equal(got, want.numpy())
    assert len(np.unique(got, axis=0)) == 1500


def test_code_tiles_are_sized_for_the_device():
    """CPU: 2,048 codes a tile. CUDA: the widest power of two up to 16,384 whose two 4,096-row float32 score
    buffers take at most 1/32 of the device's memory (no device needed: its memory is given)."""
    gib = 2 ** 30
    assert km.code_tile_for("cpu") == km.DEFAULT_CODE_TILE == 2048
    assert km.code_tile_for("cuda", total_memory=80 * gib) == 16384  # one GEMM per block up to K = 16,384
    assert km.code_tile_for("cuda", total_memory=16 * gib) == 16384  # 2 x 4 B x 4,096 x 16,384 = 16 GiB / 32
    assert km.code_tile_for("cuda", total_memory=12 * gib) == 8192
    assert km.code_tile_for("cuda", total_memory=gib) == 2048  # never below the CPU's tile
    assert km.code_tile_for("cuda", block_rows=16384, total_memory=16 * gib) == 4096
    for mem in (gib, 12 * gib, 80 * gib):
        tile = km.code_tile_for("cuda", total_memory=mem)
        assert tile == 2048 or 2 * 4 * 4096 * tile <= mem // 32


def test_arrow_batches_hand_over_the_rows_that_dataframe_rdd_gives(spark):
    """The cut reads the sample as the Dataset's Arrow batches (batches.arrow_batches), not pickled Rows: on this
    Spark the Arrow path exists (None would mean the slower Row path is taken), and gives the same rows, value for
    value, in the same partitions, a vector column as list<float>."""
    import pyarrow as pa

    from sid_spark.spark import batches as B

    rows = [(i % 3, i / 7.0, [float(i), -1.5 * i]) for i in range(25)]
    df = spark.createDataFrame(rows, "k int, u double, v array<float>").repartition(3, "k")
    schema = pa.schema([("k", pa.int32()), ("u", pa.float64()), ("v", pa.list_(pa.float32()))])
    arrow = B.arrow_batches(df, schema, rows_per_batch=4)
    assert arrow is not None and arrow.getNumPartitions() == df.rdd.getNumPartitions() == 3
    got = arrow.map(lambda b: [tuple(r.values()) for r in b.to_pylist()]).glom() \
        .map(lambda bs: [r for b in bs for r in b]).collect()
    want = df.rdd.glom().map(lambda rs: [(r.k, r.u, list(r.v)) for r in rs]).collect()
    assert got == want and sum(len(p) for p in got) == 25
    assert max(arrow.map(lambda b: b.num_rows).collect()) <= 4


def test_cut_falls_back_to_rows_with_the_same_mini_batches(spark, monkeypatch):
    """Where the Arrow batch RDD is missing, the cut makes its chunks in mapInArrow and sends them as binary Rows (one
    a chunk): the same row counts and the same mini-batches, row for row."""
    import pandas as pd

    from sid_spark.spark import batches as B

    n, d = 3_000, 3
    x = np.random.default_rng(5).standard_normal((n, d)).astype(np.float32)
    u = np.random.default_rng(6).permutation(n).astype(np.float64) / n
    df = spark.createDataFrame(pd.DataFrame({"_vec": list(x), "_u": u})).repartition(3)

    def cut():
        batched = B.batched_sample(df, "_u", n, n // 2, d)
        try:
            return batched.part_rows, batched.rdd.collect()  # test only: 3,000 x 3
        finally:
            batched.unpersist()

    arrow_rows, arrow = cut()
    monkeypatch.setattr(B, "arrow_batches", lambda *a, **k: None)
    rows_rows, rows = cut()
    assert arrow_rows == rows_rows and sum(arrow_rows) == n and len(arrow) == len(arrow_rows)
    for a, b in zip(arrow, rows):
        np.testing.assert_array_equal(a, b)
