"""A lost worker: a job runs on a standalone cluster (master + two 1-core workers, tests/cluster.py) and, midway,
one worker is SIGKILLed with its executor and Python workers. Spark re-runs the lost tasks (and any shuffle output
the dead executor held) on the survivor; the job must complete and its SIDs must equal a clean run's, row for row.

- greedy `encode`: killed once its first write tasks have committed;
- balanced `encode`: killed at its second reliable checkpoint (level 2's ranking), once the cached tables of the
  checked rows and of level 2 are built; `dedup` (reassign): at its first reliable checkpoint. Before issue 13
  these paths cut their lineage with local checkpoints, blocks that die with the executor (the job then failed
  with "Checkpoint block ... not found"); now `storage.materialize` checkpoints beside the output's staging folder.
"""
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

from sid_spark.cli import main
from sid_spark.synthetic import numpy_catalog
from sid_spark.tokenizer import ResidualKMeansModel, ResidualKMeansTokenizer
from tests.cluster import build_wheel, spark_cluster  # noqa: F401  (spark_cluster: fixture)

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
N, D, FILES = 12000, 16, 24


def write_catalog(path: Path, n: int, d: int, components: int, seed: int, id_seed: int, files: int, id_type) -> Path:
    """A synthetic catalog of n shuffled ids as `files` Parquet files (one task each when read)."""
    path.mkdir()
    x = numpy_catalog(n, d, seed=seed, components=components)
    ids = np.random.default_rng(id_seed).permutation(n).astype(id_type.to_pandas_dtype())
    for i, part in enumerate(np.array_split(np.arange(n), files)):
        pq.write_table(pa.table({"item_id": pa.array(ids[part], id_type),
                                 "embedding": pa.array(list(x[part]), pa.list_(pa.float32()))}),
                       path / f"part-{i:03d}.parquet")
    return path


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> Path:
    return write_catalog(tmp_path_factory.mktemp("lost") / "items", N, D, 60, 9, 2, FILES, pa.int32())


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


def committed_tasks(parent: Path, name: str, part: str = "") -> int:
    """Write tasks already committed into `name`'s (hidden) staging directory, or into its sub-folder `part`."""
    return sum(1 for _ in parent.glob(f".{name}.staging-*/{part}_temporary/0/task_*"))


def checkpointed_rdds(parent: Path, name: str) -> int:
    """RDDs with a complete reliable-checkpoint part in the checkpoint folder beside `name`'s staging."""
    return len({p.parent for p in parent.glob(f".{name}.staging-*.ckpt/*/rdd-*/part-*")})


def staging_left(parent: Path) -> list:
    return sorted(p.name for p in parent.iterdir() if ".staging-" in p.name)


def submit_and_kill_worker(cluster, args, ready, name: str, at_kill=None):
    """spark-submit `args` (after the profile and --py-files), SIGKILL worker 0 once `ready()` holds while the job
    still runs (`at_kill()` checks that moment); the cluster gets a fresh second worker back afterwards."""
    result = {}

    def run():
        result["proc"] = cluster.submit(["--properties-file", "conf/spark/local.conf", "--py-files", *args],
                                        cwd=ROOT, timeout=480, name=name, wait_for_executors=True)

    job = threading.Thread(target=run)
    job.start()
    try:
        deadline = time.time() + 420
        while job.is_alive() and not ready() and time.time() < deadline:
            time.sleep(0.05)
        assert job.is_alive(), f"{name} ended before the kill:\n{result.get('proc') and result['proc'].stderr[-3000:]}"
        assert ready(), f"{name}: the point to kill at never came"
        if at_kill is not None:
            at_kill()
        cluster.kill_worker(0)
        job.join()
    finally:
        job.join()
        cluster.add_worker()
    proc = result["proc"]
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stderr[-6000:]}\n{cluster.logs(15)}"
    assert "Lost executor" in log or "ExecutorLost" in log, "the job never noticed the lost executor"
    return proc


def test_encode_survives_a_lost_worker_with_the_clean_sids(spark, spark_cluster, shipped, catalog, model_path,
                                                            tmp_path):
    out = tmp_path / "sids"
    # The kill comes inside the one pass that reads and encodes the vectors (single_pass.write_greedy writes it to
    # the staging folder's _encoded/): one task per input file (a 1 MB split limit keeps Spark from packing the
    # small files together), so after the first commit FILES - 1 tasks are still to run on two 1-core workers.
    # (The later writes of the small SID table are a task or two each: too brief a window to aim at.)
    encoded = "_encoded/"

    def not_too_late():
        assert committed_tasks(tmp_path, "sids", encoded) < FILES, "every encode task had committed: too late"

    submit_and_kill_worker(
        spark_cluster, [str(shipped), "--conf", "spark.sql.files.maxPartitionBytes=1m",
                        str(ROOT / "jobs" / "encode.py"), "--config", "conf/encode.yaml", "--input", str(catalog),
                        "--model", str(model_path), "--output", str(out)],
        lambda: committed_tasks(tmp_path, "sids", encoded) > 0, "encode-lost-worker", at_kill=not_too_late)
    manifest = json.loads((out / "_manifest.json").read_text())
    assert (manifest["items_read"], manifest["items_encoded"], manifest["items_rejected"]) == (N, N, 0)

    clean = ResidualKMeansModel.load(str(model_path)).encode(spark.read.parquet(str(catalog))).sids
    got = spark.read.parquet(str(out)).select("item_id", "sid")
    assert_df_equality(got.orderBy("item_id"), clean.select("item_id", "sid").orderBy("item_id"),
                       ignore_nullable=True)


# ---- balanced encode and dedup: a few thousand rows, K=8/16, two levels ----------------------------------------
SMALL_N, SMALL_D = 3000, 8


@pytest.fixture(scope="module")
def small_catalog(tmp_path_factory) -> Path:
    return write_catalog(tmp_path_factory.mktemp("lost-small") / "items", SMALL_N, SMALL_D, 40, 3, 5, 6,
                         pa.int64())


def test_balanced_encode_survives_a_lost_worker_with_the_clean_sids(spark, spark_cluster, shipped, small_catalog,
                                                                     tmp_path):
    model_path = tmp_path / "model"
    df = spark.read.parquet(str(small_catalog))
    # Two balanced levels; the kill comes at level 2's ranking checkpoint (the second one), after the level-2 table
    # (persisted, not checkpointed) was cached: the lost executor's blocks of it and of the checked rows are
    # recomputed from their lineage.
    ResidualKMeansTokenizer(levels=2, codebookSize=8, seed=4, balance="exact", max_iter=2).fit(df) \
        .save(str(model_path))
    out = tmp_path / "sids"
    submit_and_kill_worker(
        spark_cluster, [str(shipped), "--conf", "spark.sql.shuffle.partitions=8", str(ROOT / "jobs" / "encode.py"),
                        "--config", "conf/encode.yaml", "--input", str(small_catalog), "--model", str(model_path),
                        "--output", str(out)],
        lambda: checkpointed_rdds(tmp_path, "sids") >= 2, "balanced-encode-lost-worker")
    manifest = json.loads((out / "_manifest.json").read_text())
    assert (manifest["items_read"], manifest["items_encoded"]) == (SMALL_N, SMALL_N)
    assert staging_left(tmp_path) == []  # the checkpoints went with the staging folder

    clean = ResidualKMeansModel.load(str(model_path)).encode(df).sids
    got = spark.read.parquet(str(out)).select("item_id", "sid")
    assert_df_equality(got.orderBy("item_id"), clean.select("item_id", "sid").orderBy("item_id"),
                       ignore_nullable=True)


def test_dedup_survives_a_lost_worker_with_the_clean_sids(spark, spark_cluster, shipped, small_catalog, tmp_path):
    model_path, sids = tmp_path / "model", tmp_path / "sids"
    ResidualKMeansTokenizer(levels=2, codebookSize=16, seed=4, balance="none", max_iter=2) \
        .fit(spark.read.parquet(str(small_catalog))).save(str(model_path))
    assert main(["encode", "--input", str(small_catalog), "--model", str(model_path), "--output", str(sids)]) == 0
    dedup = ["--config", "conf/dedup.yaml", "--set", "dedup=reassign", "--set", "sid_capacity=16",
             "--input", str(small_catalog), "--sids", str(sids), "--model", str(model_path)]
    clean = tmp_path / "clean"  # the reference: the same command in local mode, in this process
    assert main(["dedup", *dedup, "--output", str(clean)]) == 0
    assert json.loads((clean / "_manifest.json").read_text())["rounds"] >= 1  # items did move

    out = tmp_path / "dedup"
    submit_and_kill_worker(
        spark_cluster, [str(shipped), "--conf", "spark.sql.shuffle.partitions=8", str(ROOT / "jobs" / "dedup.py"),
                        *dedup, "--output", str(out)],
        lambda: checkpointed_rdds(tmp_path, "dedup") >= 1, "dedup-lost-worker")
    assert staging_left(tmp_path) == []
    cols = ["item_id", "sid", "sid_suffix"]
    got = spark.read.parquet(str(out)).select(*cols).orderBy("item_id")
    assert_df_equality(got, spark.read.parquet(str(clean)).select(*cols).orderBy("item_id"), ignore_nullable=True)
    assert got.count() == SMALL_N and got.select("sid", "sid_suffix").distinct().count() == SMALL_N
