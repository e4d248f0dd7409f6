"""Balanced capacity: exact code sizes floor(N/K)/ceil(N/K) at every level, on the kernel and on Spark."""
import numpy as np
import pytest
import torch
from chispa import assert_df_equality

from sid_spark import ResidualKMeansTokenizer
from sid_spark.errors import InputError
from sid_spark.kernels import balance as bal
from sid_spark.kernels import kmeans as km
from sid_spark.synthetic import numpy_catalog
from tests.conftest import make_df


def skewed(n, d, seed=0):
    """90% of the items in one tight blob, the rest spread out."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    x[: int(0.9 * n)] = 0.05 * x[: int(0.9 * n)] + 3
    return x


def algorithm1(x, k, iters, rng):
    """The seed's Algorithm 1 (OneRec balanced k-means), written plainly: cluster after cluster takes its
    w = N/K nearest unassigned items, then each centre moves to the mean of what it took."""
    n = len(x)
    w = n // k
    c = x[rng.choice(n, k, replace=False)].astype(np.float64)
    for _ in range(iters):
        free = np.ones(n, bool)
        codes = np.full(n, -1)
        for j in range(k):
            idx = np.nonzero(free)[0]
            take = w if j < k - 1 else len(idx)
            d = ((x[idx] - c[j]) ** 2).sum(1)
            chosen = idx[np.argsort(d, kind="stable")[:take]]
            codes[chosen] = j
            free[chosen] = False
        c = np.stack([x[codes == j].mean(0) for j in range(k)])
    return codes, c


def sizes_exact(codes, n, k):
    counts = np.bincount(codes, minlength=k)
    return counts.min() >= n // k and counts.max() <= -(-n // k) and counts.sum() == n


@pytest.mark.parametrize("n,k,counts,want", [
    (12, 4, [5, 1, 3, 3], [3, 3, 3, 3]),
    (14, 4, [5, 1, 3, 3], [4, 3, 4, 3]),  # the two extra slots go to the most demanded codes, ties to the lower
    (5, 5, [0, 0, 0, 0, 5], [1, 1, 1, 1, 1]),
])
def test_capacities(n, k, counts, want):
    caps = bal.capacities(n, k, np.array(counts))
    assert caps.tolist() == want and caps.sum() == n


@pytest.mark.parametrize("n", [1024, 1037])
def test_exact_assign_sizes_on_skewed_data(n):
    x = torch.from_numpy(skewed(n, 8))
    c = km.kmeans_pp(x, 16, np.random.default_rng(0))
    codes, _ = bal.exact_assign(km.distances(x, c), None, np.arange(n))
    assert sizes_exact(codes, n, 16)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_assign_rows_gives_exact_assign_codes(seed):
    """The training's exact step (exact_assign_rows: first choices from the score tiles, the repair on the moved
    rows' distances alone) gives exact_assign's codes on the dense matrix, exact sizes, and each row's distance to
    its code; with prices, with an uneven n and skewed rows that the repair has to move."""
    rng = np.random.default_rng(seed)
    n, k = 611, 12
    x = torch.from_numpy(skewed(n, 6, seed))
    c = km.kmeans_pp(x, k, rng)
    prices = (0.1 * rng.standard_normal(k)).astype(np.float32) if seed else None
    tie = rng.permutation(n).astype(np.int64)
    codes, rounds, dist = bal.exact_assign_rows(x, c, prices, tie, block_rows=100)
    want, want_rounds = bal.exact_assign(km.distances(x, c), prices, tie)
    np.testing.assert_array_equal(codes, want)
    assert rounds == want_rounds > 0 and sizes_exact(codes, n, k)
    np.testing.assert_allclose(dist, ((x - c[torch.from_numpy(codes)]) ** 2).sum(1).double().numpy(), atol=1e-4)


def test_priced_distances_block_by_block_equal_the_dense_float64_costs():
    """exact_assign reads dist + prices in float64 a row block at a time (PricedDistances, top2): the same costs,
    first choices and regrets as the dense (n, K) float64 matrix, ties included (integer distances), over blocks
    of 7 rows."""
    rng = np.random.default_rng(5)
    dist = torch.from_numpy(rng.integers(0, 3, size=(50, 6)).astype(np.float32))
    prices = (rng.integers(-1, 2, size=6) * 0.5).astype(np.float32)
    dense = dist.to(torch.float64) + torch.as_tensor(prices, dtype=torch.float64)
    costs = bal.PricedDistances(dist, prices)
    rows = np.array([49, 3, 3, 0])
    assert torch.equal(costs[rows], dense[rows]) and torch.equal(costs[slice(10, 17)], dense[10:17])
    best = torch.topk(dense, 2, dim=1, largest=False)
    first, regret = bal.top2(costs, block_rows=7)
    np.testing.assert_array_equal(first, best.indices[:, 0].numpy())
    np.testing.assert_array_equal(regret, (best.values[:, 1] - best.values[:, 0]).numpy())
    assert (regret == 0).any()  # the case has ties
    assert torch.equal(bal.PricedDistances(dist, None)[rows], dist[rows].to(torch.float64))


def test_sinkhorn_prices_balance_the_sample():
    x = torch.from_numpy(skewed(3200, 8, seed=1))
    c = km.kmeans_pp(x, 32, np.random.default_rng(1))
    d = km.distances(x, c)
    greedy = np.bincount(d.argmin(1).numpy(), minlength=32)
    prices, eps = bal.sinkhorn_prices(d, torch.full((32,), 100.0))
    priced = np.bincount((d + torch.from_numpy(prices)).argmin(1).numpy(), minlength=32)
    assert greedy.max() > 300  # the blob piles onto a few codes without prices ...
    assert priced.max() <= 110 and priced.min() >= 90  # ... and is spread almost evenly with them
    assert eps > 0



def log_domain_sinkhorn(d, caps, schedule, sweeps):
    """The textbook log-domain iteration (float64), the reference for the stabilised one."""
    d = d.double()
    g = torch.zeros(d.shape[1], dtype=torch.float64)
    logb = torch.log(caps.double())
    for eps in schedule:
        for _ in range(sweeps):
            f = -eps * torch.logsumexp((g.unsqueeze(0) - d) / eps, 1)
            g = eps * logb - eps * torch.logsumexp((f.unsqueeze(1) - d) / eps, 0)
    return (-g - (-g).mean()).numpy()


def test_stabilised_sinkhorn_gives_the_log_domain_prices():
    x = torch.from_numpy(skewed(600, 6, seed=2))
    d = km.distances(x, km.kmeans_pp(x, 12, np.random.default_rng(2)))
    caps = torch.full((12,), 50.0)
    got, eps = bal.sinkhorn_prices(d, caps, 10, coarse=True)
    want = log_domain_sinkhorn(d, caps, bal.eps_schedule(float(d.double().mean()), 7, 0.25), 10)
    assert eps == pytest.approx(float(d.double().mean()) / 4 ** 7, rel=1e-5)
    np.testing.assert_allclose(got, want, atol=1e-4 * float(d.mean()))


def test_sinkhorn_blocked_sweeps_give_the_prices_of_whole_matrix_sweeps(monkeypatch):
    """The sweeps read the kernel in cache-sized row blocks (both products of a block in one visit). Against the
    whole-matrix iteration written out here, with blocks of 7 rows (a ragged last one) and of the whole matrix."""
    x = torch.from_numpy(skewed(600, 6, seed=3))
    d = km.distances(x, km.kmeans_pp(x, 12, np.random.default_rng(3)))
    caps = torch.full((12,), 50.0)
    g = torch.zeros(12)
    for eps in bal.eps_schedule(float(d.mean()), 7, 0.25):
        kernel = torch.add(g.unsqueeze(0) / eps, d, alpha=-1.0 / eps)
        kernel = (kernel - kernel.max(1, keepdim=True).values).clamp(min=-87.0).exp()
        u = 1.0 / kernel.sum(1)
        for _ in range(10):
            v = (caps / (kernel.T @ u).clamp_min(1e-30)).clamp_max(1e30)
            u = 1.0 / (kernel @ v).clamp_min(1e-30)
        g = g + eps * torch.log(v)
    want = (-g.double() - (-g.double()).mean()).float().numpy()
    for block_bytes in (7 * 4 * 12, 1 << 30):
        monkeypatch.setattr(bal, "SWEEP_BLOCK_BYTES", block_bytes)
        got, _ = bal.sinkhorn_prices(d, caps, 10, coarse=True)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * float(d.mean()))
    assert bal.sweep_block_rows(12) == (1 << 30) // 48 and bal.sweep_block_rows(1 << 30) == 1


def test_over_relaxed_sweeps_come_nearer_the_converged_prices():
    """The final solve's sweeps are over-relaxed (quantize.FINAL_OMEGA): with the same sweeps per epsilon its prices
    are nearer those of many plain sweeps than plain sweeps are, and they balance the sample as well."""
    from sid_spark.spark.quantize import FINAL_OMEGA, FINAL_SWEEPS

    x = torch.from_numpy(skewed(4000, 8, seed=5))
    d = km.distances(x, km.kmeans_pp(x, 40, np.random.default_rng(5)))
    caps = torch.full((40,), 100.0)
    converged, _ = bal.sinkhorn_prices(d, caps, 200)
    plain, _ = bal.sinkhorn_prices(d, caps, FINAL_SWEEPS)
    relaxed, _ = bal.sinkhorn_prices(d, caps, FINAL_SWEEPS, omega=FINAL_OMEGA)
    assert np.abs(relaxed - converged).max() < 0.8 * np.abs(plain - converged).max()
    sizes = np.bincount((d + torch.from_numpy(relaxed)).argmin(1).numpy(), minlength=40)
    assert sizes.min() >= 85 and sizes.max() <= 115
    np.testing.assert_array_equal(bal.sinkhorn_prices(d, caps, FINAL_SWEEPS, omega=1.0)[0], plain)  # plain sweeps
    # sweeps per epsilon: an int is that count at every epsilon; fewer sweeps at the end give other prices
    np.testing.assert_array_equal(bal.sinkhorn_prices(d, caps, (12,) * 14)[0], bal.sinkhorn_prices(d, caps, 12)[0])
    assert not np.array_equal(bal.sinkhorn_prices(d, caps, (12,) * 13 + (2,))[0], bal.sinkhorn_prices(d, caps, 12)[0])


def test_executor_prices_balance_every_slot_of_a_training_batch(spark):
    """Balanced training statistics: each slot of the cached mini-batch solves its own prices and assigns under them
    (counts near N/K where the greedy assignment piles onto a few codes); the driver gets their row-weighted mean."""
    from sid_spark.spark.batches import batched_sample
    from sid_spark.spark.quantize import QuantizerState, SlotPricing, batch_stats, price_rows

    n, k = 1600, 16
    x = skewed(n, 8, seed=4)
    pdf = __import__("pandas").DataFrame({"_vec": list(x), "_u": (np.arange(n) + 0.5) / n})
    batched = batched_sample(spark.createDataFrame(pdf).repartition(3), "_u", n, n, 8)
    try:
        state = QuantizerState((), ())
        cb = km.kmeans_pp(torch.from_numpy(x), k, np.random.default_rng(0)).numpy()
        greedy = batch_stats(batched, 0, state, cb, None, 8)
        priced = batch_stats(batched, 0, state, cb, None, 8, SlotPricing(final=True))
    finally:
        batched.unpersist()
    assert greedy.price_sum is None and greedy.prices is None
    assert greedy.counts.max() > 3 * n / k  # the blob takes most of the codes' rows without prices
    assert priced.counts.sum() == n and priced.rows == n
    assert priced.counts.max() <= 1.1 * n / k and priced.counts.min() >= 0.9 * n / k
    # the final solve prices every row of its slot; inside the loop a slot prices at most 32 rows per code
    assert priced.price_rows == n and price_rows(k, 800, 8) == 32 * k and price_rows(k, 800, 8, final=True) == 800
    assert priced.prices.shape == (k,) and priced.prices.dtype == np.float32
    assert abs(float(priced.prices.mean())) < 1e-3 * float(np.abs(priced.prices).max())
    # the bound on a slot's Sinkhorn matrices: 2^24 entries each, whatever K, d and the slot's size
    assert (price_rows(8192, 10 ** 6, 256), price_rows(16384, 10 ** 6, 64), price_rows(256, 10 ** 6, 4096),
            price_rows(256, 10 ** 6, 128)) == (2048, 1024, 4096, 8192)

def test_a_balanced_slot_holds_the_rows_of_one_solve_whatever_the_parallelism(spark):
    """slot_count: the cluster's parallelism, fewer when each slot must hold slot_rows of the batch (a balanced level
    prices each slot on its own rows); batched_sample cuts each batch into that many slots."""
    from sid_spark.spark.batches import batched_sample, slot_count

    assert [slot_count(12101, 2, 8192), slot_count(65536, 2, 8192), slot_count(65536, 800, 8192),
            slot_count(65536, 800, 2048), slot_count(100, 4), slot_count(100, 4, 1000), slot_count(0, 0, 10)] == \
        [1, 2, 8, 32, 4, 1, 1]
    n = 1600
    x = skewed(n, 8, seed=4)
    pdf = __import__("pandas").DataFrame({"_vec": list(x), "_u": (np.arange(n) + 0.5) / n})
    df = spark.createDataFrame(pdf).repartition(3)
    for slot_rows, want in ((None, spark.sparkContext.defaultParallelism), (500, 1), (300, 2)):
        batched = batched_sample(df, "_u", n, n // 2, 8, slot_rows)  # 2 batches of 800 rows
        try:
            assert (batched.n_batches, batched.slots) == (2, min(want, spark.sparkContext.defaultParallelism))
            assert len(batched.part_rows) == 2 * batched.slots and batched.n_rows == n
        finally:
            batched.unpersist()


@pytest.fixture(scope="module")
def catalog(spark):
    x = numpy_catalog(1003, 8, seed=2, components=30)  # 1003 = 62*16 + 11: not divisible by K
    return x, make_df(spark, x, partitions=3)


BAL = dict(levels=3, codebookSize=16, seed=5, max_iter=6, balance="exact")


@pytest.fixture(scope="module")
def balanced(spark, catalog):
    x, df = catalog
    model = ResidualKMeansTokenizer(**BAL).fit(df)
    stats = {}
    from sid_spark.spark.balance import encode_balanced
    from sid_spark.spark.prepare import prepare

    sids = encode_balanced(prepare(df, model.config, dim=model.dim).valid, model.quantizer(), stats)
    return model, sids.orderBy("item_id"), stats


def test_every_level_exactly_balanced_on_spark(balanced, catalog):
    x, _ = catalog
    _, sids, stats = balanced
    codes = np.array([r["sid"] for r in sids.collect()])
    assert codes.shape == (len(x), 3)
    for level in range(3):
        assert sizes_exact(codes[:, level], len(x), 16), np.bincount(codes[:, level], minlength=16)
    assert stats["n_items"] == len(x)


def test_balanced_sids_do_not_depend_on_partitioning(spark, balanced, catalog):
    x, _ = catalog
    model, sids, _ = balanced
    other = model.encode(make_df(spark, x, partitions=8)).sids.orderBy("item_id")
    assert_df_equality(other, sids)



def test_distributed_and_one_task_repair_place_the_same_items(spark, balanced, catalog, monkeypatch):
    """The overflow is placed in one task once few enough remain (here from the start); with that turned off the
    distributed rounds run instead. Same algorithm, same ranking: the same SIDs, exact sizes either way."""
    from sid_spark.spark import balance as spark_balance
    from sid_spark.spark.balance import encode_balanced
    from sid_spark.spark.prepare import prepare

    x, df = catalog
    model, sids, stats = balanced
    assert sum(stats["local_repair_items"]) > 0 and stats["repair_rounds"] == [0, 0, 0]
    monkeypatch.setattr(spark_balance, "LOCAL_REPAIR_ENTRIES", 0)
    dist_stats = {}
    rounds_sids = encode_balanced(prepare(df, model.config, dim=model.dim).valid, model.quantizer(), dist_stats)
    assert dist_stats["local_repair_items"] == [0, 0, 0] and max(dist_stats["repair_rounds"]) > 0
    assert dist_stats["overflow"] == stats["overflow"]
    assert_df_equality(rounds_sids.orderBy("item_id"), sids)


def test_repair_fills_exactly_the_room_left():
    rng = np.random.default_rng(3)
    adj = torch.from_numpy(rng.random((40, 5)))
    free = np.array([10, 0, 20, 5, 5])
    for rounds in (64, 1, 0):  # 0: every row by the slot fallback, in tie order
        codes, used = bal.repair(adj, rng.permutation(40), free, max_rounds=rounds)
        assert np.bincount(codes, minlength=5).tolist() == free.tolist() and used <= rounds
    codes, used = bal.repair(adj, np.arange(40), free)
    first = adj.numpy().argmin(1)
    # everyone whose first choice had room and was among the nearest applicants kept it: round 1 fills code 2
    assert all(codes[i] == 2 for i in np.nonzero(first == 2)[0])


def plain_repair(adj, tie, free, max_rounds, codes):
    """The repair rounds as the method states them: every round reads the unplaced rows' costs afresh, masks the
    full codes, and each row applies to its nearest code with room; the nearest applicants (cost, tie, row) fill it."""
    n, k = adj.shape
    free = free.copy()
    for rounds in range(max_rounds + 1):
        idx = np.nonzero(codes < 0)[0]
        if not len(idx):
            return codes, rounds
        if rounds == max_rounds:
            order = idx[np.lexsort((idx, tie[idx]))]
            codes[order] = np.repeat(np.arange(k), np.maximum(free, 0))[: len(order)]
            return codes, rounds
        a = adj[idx].numpy().copy()
        a[:, free <= 0] = np.inf
        choice = a.argmin(1)
        order = np.lexsort((idx, tie[idx], a[np.arange(len(idx)), choice], choice))
        for code in np.unique(choice):
            take = [i for i in order if choice[i] == code][: max(free[code], 0)]
            codes[idx[take]] = code
            free[code] -= len(take)


@pytest.mark.parametrize("seed", range(6))
def test_repair_gives_the_plain_rounds_codes(seed):
    """repair reads the costs once and drops placed rows and full codes round by round: the same codes and rounds
    as the plain statement of the rounds, on random and tie-heavy costs (integer distances, repeated tie hashes),
    with rows already placed and with the slot fallback (max_rounds 0 and 1)."""
    rng = np.random.default_rng(seed)
    n, k = 150, 7
    dist = rng.integers(0, 3, size=(n, k)) if seed % 2 else rng.random((n, k))
    adj = bal.PricedDistances(torch.from_numpy(dist.astype(np.float32)), (rng.integers(-1, 2, size=k) * 0.5)
                              .astype(np.float32))
    tie = rng.integers(0, 4, size=n) if seed % 3 == 0 else rng.permutation(n)
    codes = np.full(n, -1)
    codes[:40] = np.arange(40) % k  # placed before the repair
    free = bal.capacities(n, k, rng.integers(0, 9, size=k)) - np.bincount(codes[:40], minlength=k)
    for max_rounds in (64, 1, 0):
        got = bal.repair(adj, tie, free, max_rounds, codes.copy())
        want = plain_repair(adj, tie, free, max_rounds, codes.copy())
        np.testing.assert_array_equal(got[0], want[0])
        assert got[1] == want[1] and sizes_exact(got[0], n, k)


def test_skewed_catalog_balanced_at_every_level(spark):
    x = skewed(800, 8, seed=3)
    df = make_df(spark, x, partitions=2)
    model = ResidualKMeansTokenizer(levels=2, codebookSize=16, seed=1, max_iter=4).fit(df)
    codes = np.array([r["sid"] for r in model.encode(df).sids.collect()])
    for level in range(2):
        assert sizes_exact(codes[:, level], 800, 16)


def test_better_than_algorithm1_oracle(spark):
    """Same small data, one level: both exact in size; our relative reconstruction error is lower."""
    x = numpy_catalog(960, 8, seed=4, components=20)
    k = 16
    codes1, c1 = algorithm1(x.astype(np.float64), k, iters=5, rng=np.random.default_rng(0))
    err1 = ((x - c1[codes1]) ** 2).sum() / (x ** 2).sum()
    df = make_df(spark, x, partitions=2)
    model = ResidualKMeansTokenizer(levels=1, codebookSize=k, seed=0, max_iter=10).fit(df)
    rows = model.encode(df).sids.orderBy("item_id").collect()
    codes = np.array([r["sid"][0] for r in rows])
    err = ((x - model.codebooks[0][codes]) ** 2).sum() / (x ** 2).sum()
    assert sizes_exact(codes1, 960, k) and sizes_exact(codes, 960, k)
    assert err < err1


def test_n_smaller_than_k_fails_early(spark):
    with pytest.raises(InputError, match="N < K"):
        ResidualKMeansTokenizer(levels=1, codebookSize=32).fit(make_df(spark, skewed(20, 4)))


def test_without_repair_rounds_the_slot_fallback_still_gives_exact_sizes(balanced, catalog):
    """balance_repair_rounds=0: every item over capacity goes straight to the global slot fallback."""
    import dataclasses

    from sid_spark.spark.balance import encode_balanced
    from sid_spark.spark.prepare import prepare

    x, df = catalog
    model, repaired, _ = balanced
    stats = {}
    cfg = dataclasses.replace(model.config, balance_repair_rounds=0)
    sids = encode_balanced(prepare(df, cfg, dim=model.dim).valid, model.quantizer(cfg), stats).orderBy("item_id")
    codes = np.array([r["sid"] for r in sids.collect()])
    assert stats["repair_rounds"] == [0, 0, 0] and min(stats["fallback_items"]) > 0
    for level in range(3):
        assert sizes_exact(codes[:, level], len(x), 16), np.bincount(codes[:, level], minlength=16)
    # the items that kept their price-nearest code are the same with or without repair rounds at level 1
    first = np.array([r["sid"][0] for r in repaired.collect()])
    assert (first == codes[:, 0]).mean() > 0.5
