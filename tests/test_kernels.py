"""Layer 1: the torch kernels against plain numpy written here."""
import numpy as np
import pytest
import torch

from sid_spark.kernels import kmeans as km
from sid_spark.kernels import seeding as sd


def numpy_assign(x, c):
    d = ((x[:, None, :].astype(np.float64) - c[None, :, :]) ** 2).sum(-1)
    return d.argmin(1), d.min(1)


def numpy_lloyd_step(x, c):
    codes, _ = numpy_assign(x, c)
    out = c.astype(np.float64).copy()
    for k in range(len(c)):
        if (codes == k).any():
            out[k] = x[codes == k].mean(0)
    return out


def test_assign_matches_numpy_and_is_block_independent(blobs):
    rng = np.random.default_rng(1)
    c = blobs[rng.choice(len(blobs), 16, replace=False)]
    want, want_d = numpy_assign(blobs, c)
    for block in (7, 64, 4096):
        codes, dist = km.assign(torch.from_numpy(blobs), torch.from_numpy(c), block_rows=block)
        np.testing.assert_array_equal(codes.numpy(), want)
        np.testing.assert_allclose(dist.numpy(), want_d, rtol=1e-4, atol=1e-4)


def test_same_row_same_code_whatever_its_batch(blobs):
    c = torch.from_numpy(blobs[:32].copy())
    x = torch.from_numpy(blobs)
    full, _ = km.assign(x, c)
    for start, stop in ((0, 1), (5, 9), (100, 1700)):
        part, _ = km.assign(x[start:stop], c)
        assert torch.equal(part, full[start:stop])


def test_topk_sorted_and_prices_shift_choice():
    x = torch.tensor([[0.0, 0.0]])
    c = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]])
    codes, dist = km.assign(x, c, topk=3)
    assert codes.tolist() == [[0, 1, 2]]
    np.testing.assert_allclose(dist.numpy(), [[1.0, 4.0, 9.0]])
    priced, _ = km.assign(x, c, prices=torch.tensor([5.0, 0.0, 0.0]))
    assert priced.tolist() == [1]


@pytest.mark.parametrize("tile", [None, 3])
def test_top2_ties_go_to_the_lower_code(tile):
    """assign's top-2 (the balanced pass's first choice and regret): exactly equal scores in code order, within a
    tile and across tiles (tile 3 of 8 codes: a 3, 3, 2 split); the values are each row's two smallest."""
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 5.0]])
    # codes 1, 4 and 6 are the same centre, nearest to row 0; 0 and 5 tie for row 1, after 2 = the row itself
    c = torch.tensor([[2.0, 0.0], [0.5, 0.0], [1.0, 0.0], [9.0, 9.0], [0.5, 0.0], [2.0, 0.0], [0.5, 0.0], [0, 4.0]])
    codes, dist = km.assign(x, c, topk=2, code_tile=tile)
    assert codes.tolist() == [[1, 4], [2, 1], [7, 1]]
    torch.testing.assert_close(dist, torch.tensor([[0.25, 0.25], [0.0, 0.25], [1.0, 25.25]]))
    g = torch.Generator().manual_seed(4)
    x, c = torch.randn(300, 6, generator=g), torch.randn(40, 6, generator=g)
    codes, dist = km.assign(x, c, topk=2, block_rows=64, code_tile=tile)
    want = torch.topk(km.distances(x, c), 2, dim=1, largest=False)
    assert torch.equal(codes, want.indices)
    torch.testing.assert_close(dist, want.values, rtol=0, atol=1e-5)


def test_lloyd_update_matches_numpy_iteration(blobs):
    rng = np.random.default_rng(2)
    c = blobs[rng.choice(len(blobs), 8, replace=False)].copy()
    x = torch.from_numpy(blobs)
    codes, _ = km.assign(x, torch.from_numpy(c))
    counts, sums = km.partial_stats(x, codes, 8)
    new = km.lloyd_update(torch.from_numpy(c), counts, sums)
    np.testing.assert_allclose(new.numpy(), numpy_lloyd_step(blobs, c), atol=1e-5)


def test_partial_stats_split_and_summed_equal_whole(blobs):
    x = torch.from_numpy(blobs)
    codes = torch.from_numpy(np.arange(len(blobs)) % 5)
    c_all, s_all = km.partial_stats(x, codes, 5)
    c1, s1 = km.partial_stats(x[:1000], codes[:1000], 5)
    c2, s2 = km.partial_stats(x[1000:], codes[1000:], 5)
    assert torch.equal(c1 + c2, c_all)
    np.testing.assert_allclose((s1 + s2).numpy(), s_all.numpy(), rtol=1e-12)


def test_residual_encode_and_reconstruct(blobs):
    x = torch.from_numpy(blobs)
    cb1 = torch.from_numpy(blobs[:8].copy())
    cb2 = torch.from_numpy((blobs[8:16] - blobs[:8]).copy() * 0.1)
    codes, r = km.residual_encode(x, [cb1, cb2])
    c1, _ = numpy_assign(blobs, blobs[:8])
    np.testing.assert_array_equal(codes[:, 0].numpy(), c1)
    r1 = blobs - blobs[:8][c1]
    c2, _ = numpy_assign(r1, cb2.numpy())
    np.testing.assert_array_equal(codes[:, 1].numpy(), c2)
    np.testing.assert_allclose((x - km.reconstruct(codes, [cb1, cb2])).numpy(), r.numpy(), atol=1e-5)


def test_kmeans_pp_is_seeded_and_spreads_over_blobs(blobs):
    a = km.kmeans_pp(torch.from_numpy(blobs), 8, np.random.default_rng(3))
    b = km.kmeans_pp(torch.from_numpy(blobs), 8, np.random.default_rng(3))
    assert torch.equal(a, b)
    codes, _ = numpy_assign(a.numpy(), blobs[::400])  # one seed per true blob
    assert len(set(codes.tolist())) == 8


def test_sharded_kmeans_pp_is_seeded_draws_distinct_rows_and_spreads_over_blobs(blobs):
    x = torch.from_numpy(blobs)
    a = sd.kmeans_pp_sharded(x, 8, sd.seed_key(3, 0))
    assert torch.equal(a, sd.kmeans_pp_sharded(x, 8, sd.seed_key(3, 0)))
    assert not torch.equal(a, sd.kmeans_pp_sharded(x, 8, sd.seed_key(3, 1)))  # each level draws its own
    codes, _ = numpy_assign(a.numpy(), blobs[::400])  # one block of one centre per round at k = 8
    assert len(set(codes.tolist())) == 8
    # m == k: every row once, in some order
    rows = {tuple(r) for r in blobs[:40].tolist()}
    got = sd.kmeans_pp_sharded(x[:40], 40, sd.seed_key(5, 0), rounds=3)
    assert {tuple(r) for r in got.tolist()} == rows and len(got) == 40
    assert sd.seed_block(40, 3) == 13 and sd.seed_block(8192) == 512 and sd.seed_block(1) == 1
    assert sd.rounds_plan(40, 3) == [1, 13, 13, 13] and sum(sd.rounds_plan(8192)) == 8192 and len(sd.rounds_plan(8192)) == 17


@pytest.mark.parametrize("k", [40, 300])
def test_sharded_seeding_draws_the_same_centres_whatever_the_shards(k):
    # a row's draw comes from its global index, and the merge ranks offers by (live, key, index): the shards only
    # split the work
    rng = np.random.default_rng(7)
    x = torch.from_numpy(rng.standard_normal((1201, 5)).astype(np.float32))
    key = sd.seed_key(9, 2)
    one = sd.kmeans_pp_sharded(x, k, key)
    for shards in (2, 3, 8):
        assert torch.equal(sd.kmeans_pp_sharded(x, k, key, shards=shards), one)


def test_sharded_seeding_takes_rows_with_weight_before_rows_on_a_centre():
    # three distinct points repeated: after the first centre, D^2 sampling can only draw the two others (weight
    # > 0); the rest of the 6 centres are rows sitting on a centre, and still no row twice
    x = torch.tensor([[0.0, 0.0]] * 5 + [[3.0, 0.0]] * 5 + [[0.0, 4.0]] * 5)
    for seed in range(5):
        c = sd.kmeans_pp_sharded(x, 6, sd.seed_key(seed, 0), shards=2, rounds=1)
        assert {tuple(r) for r in c.tolist()} == {(0.0, 0.0), (3.0, 0.0), (0.0, 4.0)}
    assert sd.kmeans_pp_sharded(x, 15, sd.seed_key(0, 0), shards=3, rounds=2).shape == (15, 2)


def test_seeding_uniforms_are_uniform_and_keyed():
    u = sd.uniforms(sd.seed_key(1, 0), 4, np.arange(200_000))
    assert 0 < u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.003 and abs(u.var() - 1 / 12) < 0.001
    assert np.array_equal(u[1000:1010], sd.uniforms(sd.seed_key(1, 0), 4, np.arange(1000, 1010)))
    assert not np.array_equal(u[:10], sd.uniforms(sd.seed_key(1, 0), 5, np.arange(10)))
    assert not np.array_equal(u[:10], sd.uniforms(sd.seed_key(2, 0), 4, np.arange(10)))


def test_sharded_kmeans_pp_seeds_as_well_as_one_candidate_kmeans_pp():
    # what it replaces beyond LARGE_K (k-means++ with one candidate per centre): 64 rounds at K = 512, the seeds'
    # error on the rows over three seeds within 3% (single runs differ by up to ~5% either way)
    rng = np.random.default_rng(11)
    centres = rng.standard_normal((300, 16)).astype(np.float32)
    x = centres[rng.integers(300, size=6000)] + 0.3 * rng.standard_normal((6000, 16)).astype(np.float32)
    x = torch.from_numpy(x)

    def error(c):
        _, d = km.assign(x, c)
        return float(d.double().sum())

    one = sum(error(km.kmeans_pp(x, 512, np.random.default_rng(s), trials=1)) for s in range(3))
    sharded = sum(error(sd.kmeans_pp_sharded(x, 512, sd.seed_key(s, 0), shards=3)) for s in range(3))
    assert sharded <= 1.03 * one


def test_split_empty_reseeds_every_dead_code():
    c = torch.tensor([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0], [9.0, 9.0]])
    counts = torch.tensor([0, 10, 0, 3])
    new, n, n_split = km.split_empty(c, counts)
    assert n_split == 2
    assert (n > 0).all()
    assert len({tuple(r) for r in new.tolist()}) == 4  # no two codes share a centre
    # both dead codes come from the largest cluster (code 1, then one of its halves)
    assert float((new[[0, 1, 2]] - c[1]).abs().max()) < 0.01
    assert torch.equal(new[3], c[3])


def test_row_threads_give_the_one_thread_numbers():
    """A one-slot level trained in one task runs its row-parallel kernels on the task's idle cores
    (km.row_threads): every output must be the one a single torch thread gives, the balanced top-2 and Sinkhorn's
    prices included, on shapes large enough for torch to split the work (10 M entries)."""
    from sid_spark.kernels import balance as bal

    g = torch.Generator().manual_seed(7)
    x = torch.randn(40_000, 32, generator=g) * (1 + torch.rand(40_000, 1, generator=g))
    cbs = [torch.randn(256, 32, generator=g), 0.3 * torch.randn(256, 32, generator=g)]
    prices = torch.randn(256, generator=g)

    def run():
        dist = km.distances(x, cbs[0])
        return [dist, *km.assign(x, cbs[0], prices, topk=2), *km.residual_encode(x, cbs, [prices, None]),
                *map(torch.from_numpy, bal.top2(bal.PricedDistances(dist, prices.numpy()))),
                torch.from_numpy(bal.sinkhorn_prices(dist, torch.full((256,), 40_000 / 256), 4, coarse=True)[0])]

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = run()
        with km.row_threads(2):
            with km.rows_parallel():
                assert torch.get_num_threads() == 2  # inside a kernel ...
            assert torch.get_num_threads() == 1  # ... only
            two = run()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert len(one) == len(two) == 8
    for a, b in zip(one, two):
        assert torch.equal(a, b)
