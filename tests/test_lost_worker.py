"""A lost worker: `encode` runs on a standalone cluster (master + two 1-core workers, tests/cluster.py); once its
first write tasks have committed, one worker is SIGKILLed with its executor and Python workers. Spark re-runs
the lost tasks (and any shuffle output the dead executor held) on the survivor; the job must complete and its
SIDs must equal a clean run's, row for row."""
import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from chispa import assert_df_equality

from sid_spark.synthetic import numpy_catalog
from sid_spark.tokenizer import ResidualKMeansModel, ResidualKMeansTokenizer
from tests.cluster import build_wheel, spark_cluster  # noqa: F401  (spark_cluster: fixture)

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
N, D, FILES = 12000, 16, 24


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("lost") / "items"
    path.mkdir()
    x = numpy_catalog(N, D, seed=9, components=60)
    ids = np.random.default_rng(2).permutation(N).astype(np.int32)
    for i, part in enumerate(np.array_split(np.arange(N), FILES)):
        pq.write_table(pa.table({"item_id": pa.array(ids[part], pa.int32()),
                                 "embedding": pa.array(list(x[part]), pa.list_(pa.float32()))}),
                       path / f"part-{i:03d}.parquet")
    return path


@pytest.fixture(scope="module")
def model_path(spark, catalog, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("lost-model") / "model"
    ResidualKMeansTokenizer(levels=2, codebookSize=16, seed=4, balance="none", max_iter=2) \
        .fit(spark.read.parquet(str(catalog))).save(str(path))
    return path


@pytest.fixture(scope="module")
def shipped(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("dist")
    return Path(shutil.copy(build_wheel(d), d / "sid_spark.zip"))


def committed_tasks(parent: Path, name: str) -> int:
    """Write tasks of the SID table already committed into its (hidden) staging directory."""
    return sum(1 for _ in parent.glob(f".{name}.staging-*/_temporary/0/task_*"))


def test_encode_survives_a_lost_worker_with_the_clean_sids(spark, spark_cluster, shipped, catalog, model_path,
                                                            tmp_path):
    out = tmp_path / "sids"
    result = {}

    def run():
        result["proc"] = spark_cluster.submit(
            ["--properties-file", "conf/spark/local.conf", "--py-files", str(shipped),
             "--conf", "spark.sql.shuffle.partitions=32",
             str(ROOT / "jobs" / "encode.py"), "--config", "conf/encode.yaml", "--input", str(catalog),
             "--model", str(model_path), "--output", str(out)],
            cwd=ROOT, timeout=480, name="encode-lost-worker", wait_for_executors=True)

    job = threading.Thread(target=run)
    job.start()
    deadline = time.time() + 420
    while job.is_alive() and committed_tasks(tmp_path, "sids") == 0 and time.time() < deadline:
        time.sleep(0.05)
    assert job.is_alive(), "the encode job ended before any write task could be observed"
    assert committed_tasks(tmp_path, "sids") < 32, "every write task had committed: the kill came too late"
    spark_cluster.kill_worker(0)
    job.join()

    proc = result["proc"]
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stderr[-6000:]}\n{spark_cluster.logs(15)}"
    assert "Lost executor" in log or "ExecutorLost" in log, "the job never noticed the lost executor"
    manifest = json.loads((out / "_manifest.json").read_text())
    assert (manifest["items_read"], manifest["items_encoded"], manifest["items_rejected"]) == (N, N, 0)

    clean = ResidualKMeansModel.load(str(model_path)).encode(spark.read.parquet(str(catalog))).sids
    got = spark.read.parquet(str(out)).select("item_id", "sid")
    assert_df_equality(got.orderBy("item_id"), clean.select("item_id", "sid").orderBy("item_id"),
                       ignore_nullable=True)
