"""The daily flow: day 0 trains and encodes a synthetic catalog; later days append to the published table with
`sid-spark encode --existing` (the same path in and out, as the daily DAG does): one day adds items, one adds
none, one fewer than K, one is a rerun. Published (sid, suffix) never change, reruns are identical, the table
stays unique, balanced code sizes follow the append capacity rule, and the drift figures equal numpy's."""
import json

import numpy as np
import pytest

from sid_spark.cli import main
from sid_spark.drift import collision_rates, error_figures, level_figures, retrain_decision
from sid_spark.spark.append import append_capacity
from sid_spark.synthetic import numpy_catalog
from tests.conftest import make_df

K, LEVELS, D = 16, 2, 8
N0, N1, N3 = 900, 300, 7  # day 0; day 1 adds N1; day 2 adds none; day 3 adds N3 < K; day 4 reruns day 3


def numpy_model(x: np.ndarray):
    """A 2-level balanced residual k-means model from a few numpy Lloyd iterations (no Spark training: the flow,
    not the codebooks, is under test)."""
    from sid_spark import ResidualKMeansModel, TokenizerConfig

    rng = np.random.default_rng(0)
    r, codebooks = x.astype(np.float64), []
    for _ in range(LEVELS):
        c = r[rng.choice(len(r), K, replace=False)]
        for _ in range(10):
            a = ((r[:, None, :] - c[None]) ** 2).sum(-1).argmin(1)
            c = np.stack([r[a == j].mean(0) if (a == j).any() else c[j] for j in range(K)])
        codebooks.append(c.astype(np.float32))
        r = r - c[((r[:, None, :] - c[None]) ** 2).sum(-1).argmin(1)]
    cfg = TokenizerConfig(levels=LEVELS, codebook_size=K)  # balance: exact, dedup: none (the defaults)
    return ResidualKMeansModel(cfg, codebooks, [None] * LEVELS, summary={"n_items": len(x)})


@pytest.fixture(scope="module")
def days(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("daily")
    x = numpy_catalog(N0 + N1 + N3, d=D, seed=3, components=24)
    # Day 1's items come from a shifted distribution, so the drift report has something to see.
    x[N0:N0 + N1] += 0.4 * np.eye(D, dtype=np.float32)[0]
    for day, end in {0: N0, 1: N0 + N1, 3: N0 + N1 + N3}.items():
        make_df(spark, x[:end], partitions=2 if day != 1 else 3).write.parquet(str(root / f"in{day}"))
    paths = {day: str(root / f"in{({2: 1, 4: 3}).get(day, day)}") for day in range(5)}
    numpy_model(x[:N0]).save(str(root / "model"))
    return {"root": root, "x": x, "inputs": paths, "model": str(root / "model")}


def table(spark, path):
    df = spark.read.parquet(path)
    suffix = "sid_suffix" in df.columns
    rows = df.collect()
    return {r["item_id"]: (tuple(r["sid"]), r["sid_suffix"] if suffix else None) for r in rows}


def manifest(path):
    with open(f"{path}/_manifest.json") as f:
        return json.load(f)


def run_days(spark, days, mode, tmp, run=(1, 2, 3, 4), rerun=False, extra=()):
    """Day 0 full encode into <tmp>/sids, then the days in `run` appended in place; each day's table + manifest.
    `rerun`: day 3 is also appended once to another path first; both must hold the same rows."""
    sids = str(tmp / "sids")
    common = ["--model", days["model"], "--set", f"dedup={mode}", *extra]
    assert main(["encode", "--input", days["inputs"][0], "--output", sids, "--generation", "1", *common]) == 0
    out = {0: (table(spark, sids), manifest(sids))}
    for day in run:
        if rerun and day == 3:
            other = str(tmp / "sids_rerun")
            assert main(["encode", "--input", days["inputs"][day], "--existing", sids, "--output", other,
                         *common]) == 0
            out["rerun"] = table(spark, other)
        assert main(["encode", "--input", days["inputs"][day], "--existing", sids, "--output", sids, *common]) == 0
        out[day] = (table(spark, sids), manifest(sids))
        with open(f"{sids}/_metrics.json") as f:
            assert json.load(f)["drift"] == out[day][1]["drift"]  # the drift report, beside the manifest
    return out


def check_flow(out, mode):
    sizes = {0: N0, 1: N0 + N1, 2: N0 + N1, 3: N0 + N1 + N3, 4: N0 + N1 + N3}
    days_run = sorted(d for d in out if isinstance(d, int))
    for i, day in enumerate(days_run):
        t, man = out[day]
        assert len(t) == sizes[day] == man.get("items", man["items_encoded"]), day
        assert man["generation"] == "1" and man.get("dedup", "none") == mode
        if day:
            prev = out[days_run[i - 1]][0]
            assert {i: t[i] for i in prev} == prev, f"day {day} moved a published SID"
            assert set(t) - set(prev) == set(range(sizes[days_run[i - 1]], sizes[day]))
        if mode != "none":
            assert len(set(t.values())) == len(t), f"day {day}: (sid, suffix) not unique"
    for same, before in ((2, 1), (4, 3)):  # no new items / rerun: the same rows, nothing encoded, no drift
        if same in out:
            assert out[same][0] == out[before][0]
            assert out[same][1]["items_encoded"] == 0 and out[same][1]["drift"]["retrain_recommended"] is False


def check_capacity(out, levels):
    """After every append, every checked level's codes hold at most cap = ceil(N/K), and at least
    cap - (K cap - N): the append fills the grown catalog's capacity."""
    for day in (1, 3):
        t, man = out[day]
        n = len(t)
        cap = append_capacity(n, K)
        assert man["append"]["capacity"] == [cap] * LEVELS
        codes = np.array([s for s, _ in t.values()])
        for level in levels:
            counts = np.bincount(codes[:, level], minlength=K)
            assert counts.max() <= cap and counts.min() >= cap - (K * cap - n), (day, level, counts)


@pytest.fixture(scope="module")
def default_flow(days, spark, tmp_path_factory):
    # The error threshold is lowered so that day 1's shifted items cross it.
    return run_days(spark, days, "none", tmp_path_factory.mktemp("flow_none"), rerun=True,
                    extra=("--set", "drift_max_error_ratio=1.05"))


def test_daily_flow_default_config(default_flow):
    out = default_flow
    check_flow(out, "none")
    assert out["rerun"] == out[3][0]  # the same append run twice: the same SIDs
    check_capacity(out, range(LEVELS))
    assert out[1][1]["drift"]["levels"][0]["new_items"] == N1
    assert out[3][1]["drift"]["levels"][1]["new_items"] == N3
    assert out[3][1]["append"]["capacity"] == [append_capacity(N0 + N1 + N3, K)] * LEVELS


@pytest.mark.parametrize("mode", ["suffix", "reassign"])
def test_daily_flow_dedup_modes(days, spark, tmp_path, mode):
    out = run_days(spark, days, mode, tmp_path, run=(1, 3, 4))
    check_flow(out, mode)
    # reassign moves items between last-level codes; the levels above keep the capacity rule.
    check_capacity(out, range(LEVELS) if mode == "suffix" else range(LEVELS - 1))


def test_drift_figures_equal_numpy(days, default_flow):
    from sid_spark import ResidualKMeansModel

    model = ResidualKMeansModel.load(days["model"])
    before, after, man = default_flow[0][0], default_flow[1][0], default_flow[1][1]
    drift = man["drift"]
    assert man["retrain_recommended"] is drift["retrain_recommended"]

    x = days["x"]
    old_ids = np.array(sorted(before))
    new_ids = np.array(sorted(set(after) - set(before)))
    codes = {i: np.array(after[i][0]) for i in after}
    for level in range(LEVELS):
        old = np.bincount([codes[i][level] for i in old_ids], minlength=K)
        new = np.bincount([codes[i][level] for i in new_ids], minlength=K)
        want = level_figures(old, new, True)
        assert want["largest"] == int((old + new).max()) and want["new_items"] == N1
        for key, v in want.items():
            got = drift["levels"][level][key]
            assert (got == pytest.approx(v)) if isinstance(v, float) else (got == v), key

    def sq_error(ids):
        xh = sum(model.codebooks[lv][[codes[i][lv] for i in ids]] for lv in range(LEVELS))
        return float(((x[ids].astype(np.float64) - xh) ** 2).sum()), float((x[ids].astype(np.float64) ** 2).sum())

    (nsq, nnorm), (osq, onorm) = sq_error(new_ids), sq_error(old_ids)
    for key, v in error_figures(nsq, nnorm, len(new_ids), osq, onorm, len(old_ids)).items():
        assert drift[key] == pytest.approx(v, rel=1e-4), key

    keys = [tuple(codes[i]) for i in old_ids] + [tuple(codes[i]) for i in new_ids]
    count = {}
    for kk in keys:
        count[kk] = count.get(kk, 0) + 1
    old_count = {}
    for i in old_ids:
        old_count[tuple(codes[i])] = old_count.get(tuple(codes[i]), 0) + 1
    new_c = sum(1 for i in new_ids if count[tuple(codes[i])] > 1)
    old_c = sum(1 for i in old_ids if old_count[tuple(codes[i])] > 1)
    for key, v in collision_rates(new_c, len(new_ids), old_c, len(old_ids)).items():
        assert drift[key] == pytest.approx(v), key
    assert drift["reject_reasons"] == {} and drift["reject_rate"] == 0.0
    # The shifted day crosses the error threshold set in default_flow, and says so.
    assert drift["error_ratio"] > 1.05 and drift["retrain_recommended"] is True
    assert any("quantisation error" in r for r in drift["reasons"])


def test_retrain_decision_thresholds():
    report = {"levels": [{"balanced": True, "largest_vs_expected": 1.1}, {"balanced": False,
                                                                       "largest_vs_expected": 9.0}],
              "error_ratio": 1.3, "new_collision_rate": 0.3, "published_collision_rate": 0.25,
              "reject_rate": 0.0, "unseen_fraction": 0.1}
    flag, reasons = retrain_decision(report, {"drift_max_code_ratio": 1.5, "drift_max_error_ratio": 1.25,
                                              "drift_max_collision_increase": 0.1})
    assert flag and len(reasons) == 1 and "quantisation error" in reasons[0]  # unbalanced level 2 not judged
    assert retrain_decision(report, {"drift_max_error_ratio": None}) == (False, [])
    assert retrain_decision(report, {"drift_max_code_ratio": 1.05})[0]
    assert append_capacity(1207, 16) == 76 and append_capacity(1200, 16) == 75
    assert append_capacity(1200, 16, 0.1) == 83
