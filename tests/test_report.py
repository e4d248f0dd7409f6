"""report.html: self-contained (every chart an embedded PNG, nothing fetched), and the `evaluate` / `demo`
commands that write it."""
import base64
import json
import re
import shutil

import numpy as np

from sid_spark.metrics import formulas as fm
from sid_spark.report import CHARTS, write_report

REQUIRED_KEYS = {"n_items", "levels", "collision_rate", "items_in_collision", "max_items_per_sid", "sid_gini",
                 "rel_mse", "hitrate"}
LEVEL_KEYS = {"level", "utilization", "entropy_bits", "gini", "max_code_size", "min_code_size"}


def embedded_pngs(text: str) -> dict:
    found = dict(re.findall(r"<img id='chart-(\w+)'[^>]*src='data:image/png;base64,([A-Za-z0-9+/=]+)'", text))
    return {cid: base64.b64decode(b64) for cid, b64 in found.items()}


def assert_self_contained(text: str) -> None:
    pngs = embedded_pngs(text)
    assert set(pngs) == set(CHARTS)
    for png in pngs.values():
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    assert not re.search(r"(src|href)=['\"](https?:|//)", text)  # opens offline: nothing to fetch


def hand_metrics():
    code_counts = [np.array([4, 4, 4, 4]), np.array([16, 0, 0, 0]), np.array([4, 4, 4, 4])]
    levels = [{"level": i + 1, **fm.level_metrics(c, 4), **g}
              for i, (c, g) in enumerate(zip(code_counts, fm.hourglass([2.0, 2.0, 4.0], [4, 4, 16], 4)))]
    m = {"n_items": 16, "n_levels": 3, "codebook_size": 4, "levels": levels, **fm.sid_metrics([1], [16]),
         "sid_size_histogram": [[1, 16]], "rel_mse": 0.25, "residual_rel": [0.5, 0.4, 0.25],
         "hitrate": {"n_users": 5, "n_transitions": 4, "skipped": 1, "embedding": {"10": 0.5, "50": 0.75},
                     "sid": {"10": 0.25, "50": 0.5}},
         "knn_recall": {"n_queries": 16, "catalog_items": 16, "recall": {"10": 0.6, "50": 1.0}}}
    return m, code_counts


def test_report_embeds_every_chart(spark, tmp_path):  # the file goes through Hadoop (sid_spark.storage)
    m, counts = hand_metrics()
    path = tmp_path / "report.html"
    text = write_report(str(path), m, counts, title="hand case")
    assert path.read_text(encoding="utf-8") == text
    assert_self_contained(text)
    assert "<h1>hand case</h1>" in text and "SID HitRate" in text and "0.7500" in text


def test_evaluate_cli_writes_metrics_tables_and_report(tmp_path, spark, blobs):
    from sid_spark.cli import main
    from tests.conftest import make_df

    ids = np.arange(len(blobs))
    make_df(spark, blobs, ids=ids).write.parquet(str(tmp_path / "catalog"))
    rng = np.random.default_rng(0)
    spark.createDataFrame([(u, [int(i) for i in rng.choice(ids, 4, replace=False)]) for u in range(30)],
                          "user_id int, item_ids array<int>").write.parquet(str(tmp_path / "seq"))
    common = ["--set", "levels=2", "--set", "codebook_size=8", "--set", "balance=none", "--set", "max_iter=5"]
    assert main(["train", "--input", str(tmp_path / "catalog"), "--model", str(tmp_path / "model"), *common]) == 0
    assert main(["encode", "--input", str(tmp_path / "catalog"), "--model", str(tmp_path / "model"),
                 "--output", str(tmp_path / "sids")]) == 0
    assert main(["evaluate", "--sids", str(tmp_path / "sids"), "--embeddings", str(tmp_path / "catalog"),
                 "--model", str(tmp_path / "model"), "--interactions", str(tmp_path / "seq"),
                 "--output", str(tmp_path / "eval"), "--set", "knn_queries=50", "--set", "hit_ks=[5, 20]"]) == 0
    out = tmp_path / "eval"
    m = json.loads((out / "metrics.json").read_text())
    assert REQUIRED_KEYS <= set(m) and all(LEVEL_KEYS <= set(lv) for lv in m["levels"])
    assert m["n_items"] == len(blobs) and len(m["levels"]) == 2
    assert 0 < m["rel_mse"] < 1 and m["residual_rel"][-1] == m["rel_mse"]
    assert m["hitrate"]["n_transitions"] == 30 and set(m["hitrate"]["sid"]) == {"5", "20"}
    per_code = spark.read.parquet(str(out / "per_code"))
    per_sid = spark.read.parquet(str(out / "per_sid"))
    assert per_code.count() == 2 * 8
    assert per_sid.count() == m["n_sids"] and per_sid.agg({"count": "sum"}).first()[0] == len(blobs)
    assert_self_contained((out / "report.html").read_text(encoding="utf-8"))
    # a SID table and a model that do not belong together are refused (exit 2, nothing written)
    shutil.copytree(tmp_path / "sids", tmp_path / "sids_other")
    manifest = json.loads((tmp_path / "sids_other" / "_manifest.json").read_text())
    (tmp_path / "sids_other" / "_manifest.json").write_text(json.dumps({**manifest, "model_id": "another"}))
    (tmp_path / "sids_other" / "._manifest.json.crc").unlink(missing_ok=True)  # Hadoop's checksum of the old text
    assert main(["evaluate", "--sids", str(tmp_path / "sids_other"), "--model", str(tmp_path / "model"),
                 "--output", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()


def test_demo_prints_summary_and_writes_report(tmp_path, spark, capsys):
    from sid_spark.cli import main

    assert main(["demo", "--items", "1500", "--dim", "8", "--output", str(tmp_path / "demo"), "--set", "levels=2",
                 "--set", "codebook_size=8", "--set", "balance=none", "--set", "max_iter=5"]) == 0
    assert "collision rate" in capsys.readouterr().out
    assert_self_contained((tmp_path / "demo" / "report.html").read_text(encoding="utf-8"))
    m = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert m["n_items"] == 1500 and m["knn_recall"]["n_queries"] == 1000


def test_report_has_a_drift_section_only_for_an_appended_table():
    from sid_spark.drift import drift_report
    from sid_spark.report import render

    m, counts = hand_metrics()
    assert "id='drift'" not in render(m, counts)
    drift = drift_report([np.array([3, 3, 2, 2])], [np.array([3, 0, 0, 1])], [True],
                         {"new_collision_rate": 0.25, "published_collision_rate": 0.1},
                         {"error_ratio": 1.5, "new_error": 0.3, "published_error": 0.2},
                         {"bad dimension <384>": 2}, items_read=16, n_train=10,
                         thresholds={"drift_max_code_ratio": 1.5, "drift_max_error_ratio": 1.25})
    text = render({**m, "drift": drift}, counts)
    section = text[text.index("id='drift'"):text.index("id='chart-")]
    # level 1 after the append: codes 6/3/2/3 of 14 items, N/K = 3.5; the largest is 6/3.5 = 1.7143 > 1.5
    assert "<td>1</td><td>4</td><td>exact</td><td>14</td><td>3.5000</td><td>6</td><td>1.7143</td><td>2</td>" in section
    assert "<td>retrain recommended</td><td>yes</td>" in section
    assert "<td>error ratio (new / published)</td><td>1.5000</td>" in section
    assert "rejected: bad dimension &lt;384&gt;</td><td>2</td>" in section  # escaped, not raw HTML
    assert "level 1 largest code / (N/K) 1.714 &gt; drift_max_code_ratio 1.5" in section
    assert "new/published quantisation error 1.5 &gt; drift_max_error_ratio 1.25" in section
