"""The pipeline on a real Spark standalone cluster (a master and two 1-core workers on 127.0.0.1), submitted the
way operators submit it: `spark-submit --properties-file conf/spark/<profile>.conf --py-files dist/sid_spark.zip
jobs/<step>.py --config conf/<step>.yaml`, here with every path and config on a viewfs mount and an empty working
directory. What local mode hides and these tests catch: files written to the driver's disk instead of the job's
filesystem, code not shipped to the executors, executors on another Python, job settings that ignore the Spark
profile, state kept in driver globals (the SIDs must equal the local-mode SIDs), exit codes a scheduler cannot act
on, a driver that dies mid-training.
"""
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from chispa import assert_df_equality

from sid_spark import ResidualKMeansModel, ResidualKMeansTokenizer
from sid_spark.config import resolve
from sid_spark.spark.train import IN_TASK_CONF
from tests.cluster import (TEST_JAVA_OPTIONS, build_wheel, spark_cluster,  # noqa: F401  (spark_cluster: fixture)
                           group_processes, spark_submit, standalone_cluster)

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[1]
# Tiny but not trivial: mini-batches smaller than the sample, three input files, two levels.
OVERRIDES = ["levels=2", "codebook_size=8", "seed=11", "balance=none", "max_iter=3", "batch_size=700",
             "init_factor=20", "block_rows=256"]
DEDUP = "suffix"  # one pass; conf/dedup.yaml's reassign needs a sparser catalog than 2000 items on 64 SIDs
PROFILE_BATCH_ROWS = "10000"  # spark.sql.execution.arrow.maxRecordsPerBatch in conf/spark/local.conf

PROBE = '''
import json, os, sys
os.environ.setdefault("SID_SPARK_SUBMITTED", "1")
import sid_spark
from sid_spark.spark.session import get_session

spark = get_session(app_name="sid_spark-probe")

def where(_):
    import os, sys
    import sid_spark
    from pyspark import TaskContext
    yield (sys.executable, os.path.abspath(sid_spark.__file__), TaskContext.get().partitionId())

rows = spark.sparkContext.parallelize(range(8), 8).mapPartitions(where).collect()
print("PROBE " + json.dumps({
    "driver_python": sys.executable, "driver_file": sid_spark.__file__, "executors": rows,
    "batch_rows": spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch"),
    "master": spark.sparkContext.master}))
spark.stop()
'''


def blob_catalog(path: Path, n_per_blob: int = 250, blobs: int = 8, dim: int = 8, files: int = 3) -> Path:
    """Clustered float32 vectors with int32 ids (the shape of the real catalogs), split over `files` files."""
    rng = np.random.default_rng(5)
    centers = rng.standard_normal((blobs, dim)) * 4
    x = np.concatenate([c + 0.5 * rng.standard_normal((n_per_blob, dim)) for c in centers]).astype(np.float32)
    ids = rng.permutation(len(x)).astype(np.int32)
    path.mkdir(parents=True)
    for i, part in enumerate(np.array_split(np.arange(len(x)), files)):
        table = pa.table({"item_id": pa.array(ids[part], pa.int32()),
                          "embedding": pa.array(list(x[part]), pa.list_(pa.float32()))})
        pq.write_table(table, path / f"part-{i}.parquet")
    return path


@pytest.fixture(scope="module")
def shipped(tmp_path_factory) -> Path:
    """The package as operators ship it: the wheel, as a .zip (Spark puts only .zip/.egg/.jar py-files on the
    executors' sys.path; a wheel is a zip archive)."""
    d = tmp_path_factory.mktemp("dist")
    wheel = build_wheel(d)
    return Path(shutil.copy(wheel, d / "sid_spark.zip"))


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> Path:
    return blob_catalog(tmp_path_factory.mktemp("catalog") / "items")


def check(proc, cluster) -> None:
    assert proc.returncode == 0, f"{proc.args}\nrc={proc.returncode}\n{proc.stderr[-6000:]}\n{cluster.logs(15)}"


def test_executors_import_the_shipped_package_with_the_venv_python_and_the_profile_applies(
        spark_cluster, shipped, tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    proc = spark_cluster.submit(["--properties-file", "conf/spark/local.conf", "--py-files", str(shipped),
                                 str(probe)], cwd=ROOT, timeout=180, name="probe",
                                wait_for_executors=True)
    check(proc, spark_cluster)
    report = json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("PROBE "))[6:])
    assert report["master"] == spark_cluster.url
    # The command line's --conf spark.master wins over the profile's; the profile's Arrow batch size wins over
    # the job's built-in default (16384).
    assert report["batch_rows"] == PROFILE_BATCH_ROWS
    assert report["driver_python"] == sys.executable
    assert report["driver_file"].startswith(str(shipped)), report["driver_file"]
    files = {f for _, f, _ in report["executors"]}
    assert {p for p, _, _ in report["executors"]} == {sys.executable}
    assert len(report["executors"]) == 8
    # Each executor imported sid_spark from its own copy of the zip in its worker's work dir, not the checkout.
    assert all("sid_spark.zip" in f and str(ROOT / "sid_spark") not in f for f in files), files
    assert {f.split("/worker-")[1].split("/")[0] for f in files} == {"0", "1"}, files


MOUNT = "viewfs://sidcluster/data"


@pytest.fixture(scope="module")
def viewfs_submit(spark_cluster, shipped, catalog, tmp_path_factory):
    """(submit, mounted folder, cwd): spark-submit of a job script with `viewfs://sidcluster/data` mapped onto the
    mounted folder (a ViewFileSystem mount table given as --conf), which holds the catalog and conf/*.yaml, from
    an empty working directory that every test checks stays empty."""
    root = tmp_path_factory.mktemp("run")
    target, cwd = root / "mounted", root / "cwd"
    shutil.copytree(catalog, target / "items")
    (target / "conf").mkdir()
    for step in ("train", "encode", "dedup", "evaluate"):
        shutil.copy(ROOT / "conf" / f"{step}.yaml", target / "conf" / f"{step}.yaml")
    cwd.mkdir()

    def run(job: Path, *args: str, name: str, conf: tuple = ()):
        return spark_cluster.submit(
            ["--properties-file", str(ROOT / "conf" / "spark" / "local.conf"), "--py-files", str(shipped),
             "--conf", f"spark.hadoop.fs.viewfs.mounttable.sidcluster.link./data={target.as_uri()}",
             *conf, str(job), *args], cwd=cwd, timeout=240, name=name)

    return run, target, cwd


def train_args(model: str):
    return ["--config", f"{MOUNT}/conf/train.yaml", *[a for o in OVERRIDES for a in ("--set", o)],
            "--input", f"{MOUNT}/items", "--model", model]


@pytest.fixture(scope="module")
def on_cluster(spark_cluster, viewfs_submit):
    """train -> encode -> dedup -> evaluate, each step a spark-submit to the cluster, wired as the DAG wires them;
    every path and config on viewfs (a non-`file` Hadoop filesystem: the jobs must go through Hadoop's, never
    the driver's local disk). Returns the local folders the outputs landed in, and the logs."""
    run, target, _ = viewfs_submit
    steps = {
        "train": train_args(f"{MOUNT}/model"),
        "encode": ["--config", f"{MOUNT}/conf/encode.yaml", "--input", f"{MOUNT}/items", "--model",
                   f"{MOUNT}/model", "--output", f"{MOUNT}/sids"],
        "dedup": ["--config", f"{MOUNT}/conf/dedup.yaml", "--set", f"dedup={DEDUP}", "--input", f"{MOUNT}/items",
                  "--sids", f"{MOUNT}/sids", "--model", f"{MOUNT}/model", "--output", f"{MOUNT}/dedup"],
        "evaluate": ["--config", f"{MOUNT}/conf/evaluate.yaml", "--sids", f"{MOUNT}/dedup", "--model",
                     f"{MOUNT}/model", "--embeddings", f"{MOUNT}/items", "--output", f"{MOUNT}/eval"],
    }
    # The cluster trains with one Spark job per iteration (this small sample would train each level in one task):
    # its per-iteration progress lines are checked below, and its model against the local one, which trains in
    # one task, so the two paths are compared end to end.
    confs = {"train": ("--conf", f"{IN_TASK_CONF}=false")}
    logs = {}
    for step, args in steps.items():
        proc = run(ROOT / "jobs" / f"{step}.py", *args, name=step, conf=confs.get(step, ()))
        check(proc, spark_cluster)
        logs[step] = proc.stdout + proc.stderr
    return {step: target / step for step in ("model", "sids", "dedup", "eval")}, logs


@pytest.fixture(scope="module")
def local_run(spark, catalog):
    """The reference: the same config in local mode, in-process, through the Python API."""
    cfg = resolve(str(ROOT / "conf" / "train.yaml"), OVERRIDES).tokenizer
    df = spark.read.parquet(str(catalog))
    model = ResidualKMeansTokenizer(cfg).fit(df)
    return df, model, model.encode(df).sids


def test_a_long_job_logs_its_level_and_iteration(on_cluster):
    _, logs = on_cluster
    # one progress line per iteration (sid_spark.progress): level, iteration, and an estimate of what is left
    first = re.search(r"train level 1/2[^:]*: iteration 1/3: rows=\d+ .*\(\d+ s, at most ~\d+ s left\)", logs["train"])
    later = re.search(r"train level 2/2[^:]*: iteration \d/3: .*\(\d+ s, at most ~\d+ s left\)", logs["train"])
    assert first and later, logs["train"][-3000:]


def test_train_and_encode_on_the_cluster_equal_local_mode(on_cluster, local_run, spark):
    paths, _ = on_cluster
    _, local, local_sids = local_run
    remote = ResidualKMeansModel.load(str(paths["model"]))
    for a, b in zip(local.codebooks, remote.codebooks):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    manifest = json.loads((paths["sids"] / "_manifest.json").read_text())
    assert (manifest["items_read"], manifest["items_encoded"], manifest["items_rejected"]) == (2000, 2000, 0)
    got = spark.read.parquet(str(paths["sids"])).select("item_id", "sid")
    assert_df_equality(got, local_sids.select("item_id", "sid"), ignore_row_order=True, ignore_nullable=True)


def test_dedup_on_the_cluster_equals_local_mode_and_makes_sids_unique(on_cluster, local_run, spark):
    from pyspark.sql import functions as F

    from sid_spark.spark.dedup import dedup_sids, suffix_col_name
    from sid_spark.spark.prepare import prepare

    paths, _ = on_cluster
    df, local, local_sids = local_run
    model = ResidualKMeansModel(local.config.replace(dedup=DEDUP), local.codebooks, local.prices)
    want = dedup_sids(local_sids, prepare(df, model.config, dim=model.dim).valid, model.quantizer()).sids
    cols = ["item_id", "sid", suffix_col_name("sid")]
    got = spark.read.parquet(str(paths["dedup"]))
    assert_df_equality(got.select(*cols), want.select(*cols), ignore_row_order=True, ignore_nullable=True)
    assert got.count() == 2000 and got.select(*cols[1:]).distinct().count() == 2000
    # dedup only appends a suffix: the SIDs themselves are the encoded ones.
    joined = got.join(spark.read.parquet(str(paths["sids"])).withColumnRenamed("sid", "encoded"), "item_id")
    assert joined.filter(F.col("sid") != F.col("encoded")).count() == 0


def test_evaluate_on_the_cluster_reports_on_the_deduplicated_table(on_cluster):
    paths, _ = on_cluster
    metrics = json.loads((paths["eval"] / "metrics.json").read_text())
    assert metrics["n_items"] == 2000
    assert (paths["eval"] / "report.html").is_file() and (paths["eval"] / "_manifest.json").is_file()


CRASH_IN_LEVEL_2 = '''
import os, sys
os.environ.setdefault("SID_SPARK_SUBMITTED", "1")
import sid_spark.spark.train as train_mod
from sid_spark.cli import main

real = train_mod.train_level


def dies_in_level_2(sample, frozen, init_x, cfg, level, *a, **k):
    if level == 1:
        os._exit(137)  # the driver dies as a SIGKILLed one does: no clean-up, no exit handlers
    return real(sample, frozen, init_x, cfg, level, *a, **k)


train_mod.train_level = dies_in_level_2
sys.exit(main(["train", *sys.argv[1:]]))
'''


def test_on_viewfs_nothing_lands_in_the_cwd_and_a_driver_killed_in_training_resumes_to_the_same_model(
        on_cluster, viewfs_submit, spark_cluster, tmp_path):
    """After the chain (on viewfs, see on_cluster): a train whose driver dies in level 2, then its `--resume`,
    both under spark-submit on viewfs; the working directory stays empty throughout."""
    paths, _ = on_cluster
    run, target, cwd = viewfs_submit
    dedup = json.loads((paths["dedup"] / "_manifest.json").read_text())
    assert (dedup["items"], dedup["unique_sids"]) == (2000, 2000)
    assert not [p.name for p in target.iterdir() if ".staging-" in p.name]  # no lease, checkpoint, staging left
    assert sorted(cwd.rglob("*")) == []

    crash = tmp_path / "train_dies_in_level_2.py"
    crash.write_text(CRASH_IN_LEVEL_2)
    died = run(crash, *train_args(f"{MOUNT}/m2"), name="train-dies")
    assert died.returncode != 0 and not (target / "m2" / "manifest.json").exists(), died.stderr[-3000:]
    assert (target / "m2" / "_checkpoints" / "level_1" / "manifest.json").is_file()
    resumed = run(ROOT / "jobs" / "train.py", *train_args(f"{MOUNT}/m2"), "--resume", name="train-resume")
    check(resumed, spark_cluster)
    assert "resume: 1 level(s) from checkpoint" in resumed.stdout + resumed.stderr
    clean, again = (json.loads((target / m / "manifest.json").read_text()) for m in ("model", "m2"))
    assert again["model_id"] == clean["model_id"]  # the interrupted-and-resumed model is the uninterrupted one
    assert sorted(cwd.rglob("*")) == []  # nothing of any step landed in the driver's working directory


def test_a_failed_job_exits_non_zero_with_one_line_reason(shipped, tmp_path):
    # How spark-submit hands the job's exit code on does not depend on the master: local[1] spares two executors.
    proc = spark_submit(["--master", "local[1]", "--conf", f"spark.driver.extraJavaOptions={TEST_JAVA_OPTIONS}",
                         "--properties-file", "conf/spark/local.conf", "--py-files", str(shipped),
                         str(ROOT / "jobs" / "encode.py"), "--config", "conf/encode.yaml",
                         "--input", str(tmp_path / "missing"), "--model", str(tmp_path / "no-model"),
                         "--output", str(tmp_path / "out")], cwd=ROOT, timeout=240)
    assert proc.returncode == 2, proc.stderr[-3000:]
    # spark-submit merges the Python driver's stderr into its stdout (PythonRunner); Airflow's SparkSubmitHook
    # reads both, so the one line lands in the task log either way.
    reasons = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("sid-spark encode:")]
    assert len(reasons) == 1, proc.stdout[-3000:]
    assert reasons[0].startswith("sid-spark encode: error:") and "no-model" in reasons[0]
    assert not (tmp_path / "out").exists()


def _group_alive(pgid: int) -> bool:
    return bool(group_processes(pgid))


def test_kill_worker_loses_the_machine_and_add_worker_brings_one_back(spark_cluster):
    # Runs last in this module: the cluster ends with two (different) alive workers again.
    victim = spark_cluster.kill_worker(0)
    assert not _group_alive(victim.proc.pid)
    spark_cluster._wait(lambda: spark_cluster.alive_workers() == 1, 60, "the master to drop the killed worker")
    spark_cluster.add_worker()
    assert spark_cluster.alive_workers() == 2 and len(spark_cluster.workers) == 2


def test_every_process_is_stopped_when_the_body_fails(tmp_path):
    groups = []
    with pytest.raises(RuntimeError, match="test body failed"):
        with standalone_cluster(tmp_path, workers=1) as cluster:
            groups = [cluster.master.proc.pid, *(w.proc.pid for w in cluster.workers)]
            assert cluster.alive_workers() == 1 and all(_group_alive(g) for g in groups)
            raise RuntimeError("test body failed")
    assert len(groups) == 2 and not any(_group_alive(g) for g in groups)
