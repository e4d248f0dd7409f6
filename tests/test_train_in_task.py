"""A level's mini-batch loop inside one task (spark.train.train_in_one_task) gives the codebooks, prices and history
of the loop that runs one Spark job per iteration, bit for bit: the same slot statistics summed in the same order,
the same updates. Greedy and balanced levels, one mini-batch and several, slots > 1 (run side by side on the task's
threads: 2 on local[2])."""
import numpy as np
import pytest

import sid_spark.spark.train as train_mod
from sid_spark.config import TokenizerConfig
from sid_spark.synthetic import numpy_catalog
from sid_spark.tokenizer import ResidualKMeansTokenizer
from tests.conftest import make_df

CASES = {
    # several mini-batches (Sculley updates), 2 slots each on local[2]
    "none, 3 batches": dict(levels=2, codebookSize=8, seed=5, balance="none", max_iter=6, batch_size=700),
    # one batch (Lloyd updates), balanced: every slot solves its prices, plus the final price pass
    "exact, 1 batch": dict(levels=2, codebookSize=8, seed=5, balance="exact", max_iter=4),
    # balanced with several batches
    "exact, 2 batches": dict(levels=2, codebookSize=[8, 4], seed=3, balance="exact", max_iter=5, batch_size=1000),
}


@pytest.fixture(scope="module")
def catalog(spark):
    return make_df(spark, numpy_catalog(2000, 8, seed=4, components=25), partitions=3)


def fit(spark, df, params, mode, monkeypatch):
    calls = []
    real = train_mod._fit_in_one_task

    def counted(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(train_mod, "_fit_in_one_task", counted)
    spark.conf.set(train_mod.IN_TASK_CONF, mode)
    try:
        model = ResidualKMeansTokenizer(**params).fit(df)
    finally:
        spark.conf.unset(train_mod.IN_TASK_CONF)
    return model, len(calls)


@pytest.mark.parametrize("case", sorted(CASES))
def test_one_task_equals_one_job_per_iteration(spark, catalog, case, monkeypatch):
    params = CASES[case]
    assert train_mod.task_threads(spark) == 2  # local[2]: the one task runs its 2 slots on 2 threads
    jobs, n_jobs = fit(spark, catalog, params, "false", monkeypatch)
    task, n_task = fit(spark, catalog, params, "auto", monkeypatch)
    assert (n_jobs, n_task) == (0, 2)  # the auto run trained both levels in one task each
    for a, b in zip(task.codebooks, jobs.codebooks):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(task.prices, jobs.prices):
        if params["balance"] == "exact":
            np.testing.assert_array_equal(a, b)
        else:
            assert a is None and b is None
    assert task.summary.history == jobs.summary.history
    assert task.model_id == jobs.model_id


class _Conf:
    def __init__(self, values):
        self.values = values

    def get(self, key, default=None):
        return self.values.get(key, default)


class _Session:
    def __init__(self, **values):
        self.conf = _Conf(values)


def test_choice_follows_the_bounds_and_the_cost_model():
    cfg = TokenizerConfig(levels=3, codebook_size=256)
    one_task = train_mod.train_in_one_task
    # 1M x 128 in 16 batches of 2 slots, greedy level 1: 17 iterations of 62,500 x 2 x 128 x 256 flops (0.1024 s
    # on one core) after gathering the 512 MB sample (0.512 s), against 17 jobs of 0.2 s plus half an iteration
    assert train_mod.level_seconds(cfg, 0, 1_000_000, 16, 2, 128, False, in_task=True) == pytest.approx(
        4 * 1_000_000 * 128 / 1e9 + 17 * 2.0 * 62_500 * 128 * 256 / 4e10)
    assert train_mod.level_seconds(cfg, 0, 1_000_000, 16, 2, 128, False, in_task=False) == pytest.approx(
        17 * (0.2 + 2.0 * 62_500 * 128 * 256 / 4e10 / 2))
    # on 2 threads the 2 slots of an iteration run side by side: the arithmetic takes half as long (the gather not)
    assert train_mod.level_seconds(cfg, 1, 1_000_000, 16, 2, 128, False, in_task=True, threads=2) == pytest.approx(
        4 * 1_000_000 * 128 / 1e9 + 2.0 * 1_000_000 * 128 * 256 / 4e10 / 2 + 17 * 2.0 * 62_500 * 128 * 256 / 4e10 / 2)
    # 3 slots on 2 threads: two rounds an iteration, 2/3 of the one-thread time
    assert train_mod.level_seconds(cfg, 0, 1_200_000, 16, 3, 128, False, in_task=True, threads=2) == pytest.approx(
        4 * 1_200_000 * 128 / 1e9 + 17 * 2.0 * 75_000 * 128 * 256 / 4e10 * 2 / 3)
    assert train_mod.task_threads(_Session()) == 1  # a session that names no executor cores
    assert train_mod.task_threads(_Session(**{"spark.executor.cores": "8"})) == 8
    assert train_mod.task_threads(_Session(**{"spark.executor.cores": "8", train_mod.IN_TASK_THREADS_CONF: "3"})) == 3
    # ... and at every level: the frozen levels' residuals once for the whole sample, not in every iteration
    assert all(one_task(_Session(), cfg, 1_000_000, 16, 2, 128, False, level) for level in range(3))
    # balanced, the same sample on one core: level 1 7.6 s in one task (25 statistics passes of 2 slots, 16 exact
    # assignments at 5e-9 s an entry, 4 coarse solves of 8,192 rows a slot, the fine solve of 31,250) against 8.8 s
    # as 26 jobs that split each iteration over two cores
    assert train_mod.level_seconds(cfg, 0, 1_000_000, 16, 2, 128, True, in_task=True) == pytest.approx(
        4 * 1_000_000 * 128 / 1e9 + 25 * 2.0 * 62_500 * 128 * 256 / 4e10 + 16 * 62_500 * 256 * 5e-9
        + 4 * 2 * 8192 * 256 * 6e-8 + 2 * 31_250 * 256 * 1.4e-7)
    assert all(one_task(_Session(), cfg, 1_000_000, 16, 2, 128, True, level) for level in range(3))
    # 20,000 rows in one batch of 2 slots, either way
    assert one_task(_Session(), cfg, 20_000, 1, 2, 128, False, 2)
    assert one_task(_Session(), cfg, 20_000, 1, 2, 128, True, 2)
    # one slot (Beauty's balanced batch): no core is left idle, whatever the iteration costs
    assert one_task(_Session(), cfg, 12_101, 1, 1, 384, True, 2)
    # a balanced iteration spread over 32 slots: one core would do what 32 share
    assert not one_task(_Session(), cfg, 1_000_000, 16, 32, 128, True, 0)
    # 1M x 384: 1.5 GB of sample, even in one slot
    assert not one_task(_Session(), cfg, 1_000_000, 16, 1, 384, False)
    # a lower byte bound from the session, and the switch
    assert one_task(_Session(), cfg, 500_000, 8, 1, 128, False)
    assert not one_task(_Session(**{train_mod.IN_TASK_BYTES_CONF: str(100 << 20)}), cfg, 500_000, 8, 1, 128, False)
    assert not one_task(_Session(**{train_mod.IN_TASK_CONF: "false"}), cfg, 1000, 1, 1, 8, False)
    # K = 8,192 at d = 256: 65,536 rows x 2 x 256 x 8,192 flops = 6.9 s an iteration on one core
    assert not one_task(_Session(), TokenizerConfig(levels=3, codebook_size=8192), 200_000, 4, 2, 256, False)


def test_exact_steps_assign_every_slot_exactly(spark, catalog):
    """balance_exact_steps iterations follow the loop of every balanced level; in each, every slot's rows are
    assigned exactly balanced (each of the 2 slots on local[2]: m_j/K +-1 rows per code), so the batch's counts
    differ by at most 2 (1 per slot) -- which the greedy warm-up's assignment does not give."""
    params = dict(levels=2, codebookSize=8, seed=5, balance="exact", max_iter=4)
    base = ResidualKMeansTokenizer(**params, balance_exact_steps=0).fit(catalog).summary.history
    steps = ResidualKMeansTokenizer(**params, balance_exact_steps=3).fit(catalog).summary.history
    for level in (1, 2):
        loop = [h for h in base if h["level"] == level]
        ext = [h for h in steps if h["level"] == level]
        if level == 1:  # the loop itself is unchanged (level 2 starts from another level 1)
            assert ext[:-3] == loop
        assert [h["iter"] for h in ext[-3:]] == [len(ext) - 2, len(ext) - 1, len(ext)]
        for h in ext[-3:]:
            assert h["rows"] == 2000 and h["max_count"] - h["min_count"] <= 2
    assert max(h["max_count"] - h["min_count"] for h in base) > 2


def recording_stats(data, k, calls):
    """A fit_level `stats` over the mini-batches `data` (numpy rows): greedy counts and sums of the batch, each call
    recorded in `calls` as (batch, prices given, pricing, centroids); a solving call's prices are (call number) x
    (0, 1, ..., k - 1), weighted by the batch's rows."""
    from sid_spark.spark.quantize import LevelStats

    def stats(batch, centroids, prices, pricing):
        calls.append((batch, None if prices is None else prices.copy(), pricing, centroids.copy()))
        x = data[batch]
        codes = ((x[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)
        sums = np.zeros((k, x.shape[1]))
        np.add.at(sums, codes, x.astype(np.float64))
        st = LevelStats(np.bincount(codes, minlength=k), sums, 0.0, len(x))
        if pricing is not None and not pricing.reuse:
            st.price_sum, st.price_rows = len(calls) * len(x) * np.arange(k, dtype=np.float64), len(x)
        return st

    return stats


def test_balanced_level_warms_up_then_reprices_every_fourth_exact_step():
    """fit_level of a balanced level: greedy iterations (no pricing) up to WARMUP_ITER, then the exact steps, each
    solving its prices (reuse=False, no prices handed in) every PRICE_EVERY-th step and reusing the last solved
    prices in between, then one final solve; with several mini-batches the warm-up covers every batch once and
    the mini-batch learning rates restart (the first exact step moves every centre to its batch mean)."""
    import torch

    rng = np.random.default_rng(0)
    k, d = 4, 3
    data = [rng.normal(size=(40, d)).astype(np.float32) for _ in range(3)]
    calls = []
    stats = recording_stats(data, k, calls)
    cfg = TokenizerConfig(levels=1, codebook_size=k, max_iter=30, tol=0.0, balance_exact_steps=9)
    start = torch.from_numpy(data[0][:k].copy())
    _, prices, history = train_mod.fit_level(stats, start, cfg, k, 3, True)
    warm = train_mod.WARMUP_ITER
    assert [c[2] for c in calls[:warm]] == [None] * warm
    exact = calls[warm:warm + 9]
    assert [c[2].exact for c in exact] == [True] * 9
    assert [not c[2].reuse for c in exact] == [s % train_mod.PRICE_EVERY == 0 for s in range(9)]
    for step, (_, given, pricing, _) in enumerate(exact):
        solved_at = warm + step - step % train_mod.PRICE_EVERY + 1  # the call number whose prices are reused
        if pricing.reuse:
            assert np.allclose(given, solved_at * (np.arange(k) - (k - 1) / 2))  # centred, as LevelStats.prices
        else:
            assert given is None
    assert calls[-1][2].final and len(calls) == warm + 9 + 1 and len(history) == warm + 9
    assert [c[0] for c in calls] == [i % 3 for i in range(len(calls))]
    # the restart: after the first exact step each centre with rows is the mean of its rows in that batch
    batch, _, _, before = exact[0]
    after = calls[warm + 1][3]
    x = data[batch]
    codes = ((x[:, None, :] - before[None]) ** 2).sum(-1).argmin(1)
    for code in np.unique(codes):
        assert np.allclose(after[code], x[codes == code].astype(np.float64).mean(0), atol=1e-6)
    # ... which a warm-up step (the rates not restarted) does not do
    batch, _, _, before = calls[warm - 1]
    after = exact[0][3]
    codes = ((data[batch][:, None, :] - before[None]) ** 2).sum(-1).argmin(1)
    assert not all(np.allclose(after[c], data[batch][codes == c].mean(0), atol=1e-6) for c in np.unique(codes))


@pytest.mark.parametrize("rows, warm", [(40, 12), (1000, 9), (2000, 6)])
def test_balanced_warm_up_ends_after_its_pass_or_enough_rows_per_code(rows, warm):
    """A balanced level's greedy warm-up over 12 mini-batches: the whole pass when a batch holds few rows per code,
    else the first iteration, after WARMUP_ITER, at which it has seen WARMUP_ROWS_PER_CODE rows per code (k = 4:
    8,192 rows, 9 batches of 1,000, WARMUP_ITER of 2,000)."""
    import torch

    assert train_mod.WARMUP_ROWS_PER_CODE * 4 == 8192 and train_mod.WARMUP_ITER == 6
    rng = np.random.default_rng(1)
    k, d, n_batches = 4, 3, 12
    data = [rng.normal(size=(rows, d)).astype(np.float32) for _ in range(n_batches)]
    calls = []
    cfg = TokenizerConfig(levels=1, codebook_size=k, max_iter=30, tol=0.0, balance_exact_steps=4)
    train_mod.fit_level(recording_stats(data, k, calls), torch.from_numpy(data[0][:k].copy()), cfg, k, n_batches,
                        True)
    pricings = [c[2] for c in calls]
    assert pricings[:warm] == [None] * warm and pricings[warm] is not None and pricings[warm].exact
    assert len(pricings) == warm + 4 + 1
