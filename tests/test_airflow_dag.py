"""jobs/sid_spark_dag.py loaded by Airflow's own DagBag, with Airflow really installed (in .venv-airflow, made by
`make airflow`, so that its pins never touch the project's venv). The check runs in a subprocess with that venv's
Python and prints what it found as JSON; then the rendered task commands really run, on local Spark with a tiny
catalog: the retrain DAG makes generation 1, the daily DAG appends to it twice and its drift branch is evaluated
by the DAG's own callable on the manifest the append wrote."""
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
AIRFLOW_PY = ROOT / ".venv-airflow" / "bin" / "python"
DAG_FILE = ROOT / "jobs" / "sid_spark_dag.py"

LOAD = r'''
import json, sys
try:
    from airflow.dag_processing.dagbag import DagBag
except ImportError:
    from airflow.models.dagbag import DagBag

overrides = json.loads(sys.argv[2])
try:
    bag = DagBag(dag_folder=sys.argv[1], include_examples=False)
except TypeError:  # Airflow >= 3.2: examples are a config option (AIRFLOW__CORE__LOAD_EXAMPLES)
    bag = DagBag(dag_folder=sys.argv[1])
out = {"import_errors": {k: str(v) for k, v in bag.import_errors.items()}, "dags": {}}
for dag_id, dag in bag.dags.items():
    tasks = {}
    params = {k: dag.params[k] for k in dag.params}
    params.update(overrides.get(dag_id, {}))
    ctx = {"params": params, "ds": "2026-03-04", "ds_nodash": "20260304", "var": {"value": {}}}
    for t in dag.tasks:
        info = {"type": type(t).__name__, "upstream": sorted(t.upstream_task_ids), "retries": t.retries}
        if hasattr(t, "application"):
            info.update({"conn_id": t._conn_id, "application": t.render_template(t.application, ctx),
                         "args": t.render_template(t.application_args, ctx),
                         "properties_file": t.render_template(t.properties_file, ctx),
                         "py_files": t.render_template(t.py_files, ctx),
                         "name": t.render_template(getattr(t, "name", None) or t._name, ctx)})
        if hasattr(t, "op_kwargs"):
            info["op_kwargs"] = t.render_template(t.op_kwargs, ctx)
        if hasattr(t, "trigger_dag_id"):
            info["trigger_dag_id"] = t.trigger_dag_id
            info["conf"] = t.render_template(t.conf, ctx)
        tasks[t.task_id] = info
    out["dags"][dag_id] = {"tasks": tasks, "params": sorted(dag.params), "schedule": str(dag.schedule)}
if len(sys.argv) > 3:  # call the daily DAG's branch callable on a manifest
    call = json.loads(sys.argv[3])
    task = bag.dags["sid_spark_daily"].get_task("drift")
    out["branch"] = task.python_callable(**call)
print("DAGBAG " + json.dumps(out, default=str))
'''


def load_dags(tmp, overrides=None, branch_call=None):
    if not AIRFLOW_PY.exists():
        pytest.fail(f"{AIRFLOW_PY} is missing: run `make airflow` (`make test` does it first)")
    home = tmp / "airflow_home"
    home.mkdir(exist_ok=True)
    env = {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "AIRFLOW__CORE__DAGS_FOLDER": str(DAG_FILE.parent), "SID_SPARK_HOME": "/opt/sid_spark"}
    env.pop("PYTHONPATH", None)
    argv = [str(AIRFLOW_PY), "-c", LOAD, str(DAG_FILE), json.dumps(overrides or {})]
    if branch_call is not None:
        argv.append(json.dumps(branch_call))
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300, cwd=home)
    assert proc.returncode == 0, proc.stderr[-5000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("DAGBAG "))
    return json.loads(line[len("DAGBAG "):])


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory):
    return load_dags(tmp_path_factory.mktemp("dagbag"), {d: {"root": "/data/sid"} for d in
                                                          ("sid_spark_daily", "sid_spark_retrain")})


def arg(task, flag):
    return task["args"][task["args"].index(flag) + 1]


def test_dags_load_without_import_errors(dagbag):
    assert dagbag["import_errors"] == {}
    assert sorted(dagbag["dags"]) == ["sid_spark_daily", "sid_spark_retrain"]


def test_daily_dag_appends_then_branches_on_drift(dagbag):
    tasks = dagbag["dags"]["sid_spark_daily"]["tasks"]
    assert set(tasks) == {"append", "evaluate", "drift", "no_drift", "alert", "trigger_retrain"}
    assert tasks["append"]["type"] == tasks["evaluate"]["type"] == "SparkSubmitOperator"
    assert tasks["drift"]["type"] == "BranchPythonOperator"
    assert tasks["evaluate"]["upstream"] == ["append"] and tasks["drift"]["upstream"] == ["evaluate"]
    assert all(tasks[t]["upstream"] == ["drift"] for t in ("no_drift", "alert", "trigger_retrain"))
    assert tasks["trigger_retrain"]["trigger_dag_id"] == "sid_spark_retrain"
    gen = "/data/sid/gen=1"  # no generation param, no Variable: generation 1
    a = tasks["append"]
    assert a["application"] == "/opt/sid_spark/jobs/encode.py"
    # The append extends the published table in place: --existing and --output are the same path.
    assert arg(a, "--existing") == arg(a, "--output") == f"{gen}/sids" and arg(a, "--model") == f"{gen}/model"
    assert arg(tasks["evaluate"], "--sids") == f"{gen}/sids"
    assert arg(tasks["evaluate"], "--output") == f"{gen}/daily/2026-03-04/eval"
    assert tasks["drift"]["op_kwargs"] == {"manifest_path": f"{gen}/sids/_manifest.json", "on_drift": "alert"}


def test_retrain_dag_writes_a_new_generation(dagbag):
    dag = dagbag["dags"]["sid_spark_retrain"]
    tasks = dag["tasks"]
    chain = ["begin", "train", "encode", "dedup", "evaluate", "publish", "make_current"]
    assert set(tasks) == set(chain) and dag["schedule"] in ("None", "null", "")
    for before, after in zip(chain, chain[1:]):
        assert tasks[after]["upstream"] == [before]
    gen = "/data/sid/gen=20260304"  # no generation param: the run's date
    assert arg(tasks["train"], "--model") == arg(tasks["encode"], "--model") == f"{gen}/model"
    assert arg(tasks["encode"], "--output") == arg(tasks["dedup"], "--sids") == f"{gen}/sids_raw"
    assert arg(tasks["dedup"], "--output") == arg(tasks["evaluate"], "--sids") == f"{gen}/sids"
    assert arg(tasks["encode"], "--generation") == arg(tasks["publish"], "--generation") == "20260304"
    assert tasks["make_current"]["op_kwargs"] == {"generation": "20260304"}
    for step in ("train", "encode", "dedup", "evaluate"):
        t = tasks[step]
        assert t["application"] == f"/opt/sid_spark/jobs/{step}.py" and (ROOT / "jobs" / f"{step}.py").is_file()
        assert t["args"][:2] == ["--config", f"/opt/sid_spark/conf/{step}.yaml"]
        assert (ROOT / "conf" / f"{step}.yaml").is_file()
        assert t["retries"] == 2 and t["conn_id"] == "spark_default"
        assert t["properties_file"] == "/opt/sid_spark/conf/spark/yarn.conf"
        assert t["name"] == f"sid_spark-{step}-2026-03-04"
    assert (ROOT / "jobs" / "generation.py").is_file()


def run_task(task, extra=()):
    from sid_spark.cli import main

    job = Path(task["application"]).stem
    assert main([job, *task["args"], *extra]) == 0, job


def test_task_commands_run_on_local_spark(spark, tmp_path):
    """The rendered commands of both DAGs, run in order on local Spark: retrain -> generation 1, two daily
    appends (the second a rerun: nothing new, the same table), the drift branch, a second retrain refused."""
    from sid_spark.cli import main
    from sid_spark.synthetic import numpy_catalog
    from tests.conftest import make_df

    x = numpy_catalog(330, d=8, seed=5, components=12)
    make_df(spark, x[:300]).write.parquet(str(tmp_path / "day0"))
    make_df(spark, x).write.parquet(str(tmp_path / "day1"))
    seqs = [(u, [int(i) for i in np.random.default_rng(u).choice(300, 6, replace=False)]) for u in range(40)]
    spark.createDataFrame(seqs, "user_id long, item_ids array<long>").write.parquet(str(tmp_path / "seq"))
    common = {"root": str(tmp_path / "sid"), "sequences": str(tmp_path / "seq"), "conf_dir": str(ROOT / "conf"),
              "jobs_dir": str(ROOT / "jobs")}
    small = ["--set", "levels=2", "--set", "codebook_size=8", "--set", "max_iter=4", "--set", "init_factor=10"]
    dags = load_dags(tmp_path, {"sid_spark_retrain": {**common, "input": str(tmp_path / "day0"), "generation": "1"},
                                "sid_spark_daily": {**common, "input": str(tmp_path / "day1")}})
    retrain, daily = dags["dags"]["sid_spark_retrain"]["tasks"], dags["dags"]["sid_spark_daily"]["tasks"]
    ev = ["--set", "knn_queries=20"]
    for step in ("begin", "train", "encode", "dedup", "evaluate", "publish"):
        run_task(retrain[step], {"train": small, "evaluate": ev}.get(step, ()))
    gen = tmp_path / "sid" / "gen=1"
    registry = json.loads((tmp_path / "sid" / "_generations.json").read_text())
    model_id = json.loads((gen / "model" / "manifest.json").read_text())["model_id"]
    assert registry["current"] == "1" and registry["generations"][0]["model_id"] == model_id
    published = {r["item_id"]: (tuple(r["sid"]), r["sid_suffix"]) for r in spark.read.parquet(str(gen / "sids")).collect()}
    assert len(published) == 300 and len(set(published.values())) == 300

    tables = []
    for _ in range(2):  # the day, then a rerun of it
        run_task(daily["append"])
        tables.append({r["item_id"]: (tuple(r["sid"]), r["sid_suffix"])
                       for r in spark.read.parquet(str(gen / "sids")).collect()})
    assert len(tables[0]) == 330 and tables[1] == tables[0] and len(set(tables[0].values())) == 330
    assert {i: tables[0][i] for i in published} == published
    man = json.loads((gen / "sids" / "_manifest.json").read_text())
    assert man["generation"] == "1" and man["model_id"] == model_id and man["dedup"] == "suffix"
    run_task(daily["evaluate"], ev)
    evaluated = gen / "daily" / "2026-03-04" / "eval"
    assert json.loads((evaluated / "metrics.json").read_text())["drift"] == man["drift"]
    assert "<h2 id='drift'>Drift of the last append</h2>" in (evaluated / "report.html").read_text()

    path = daily["drift"]["op_kwargs"]["manifest_path"]
    assert path == str(gen / "sids" / "_manifest.json")
    flag = man["drift"]["retrain_recommended"]
    got = load_dags(tmp_path, branch_call={"manifest_path": path, "on_drift": "retrain"})["branch"]
    assert got == ("trigger_retrain" if flag else "no_drift")
    # A forced drift flag takes the alert branch.
    forced = tmp_path / "forced.json"
    forced.write_text(json.dumps({"drift": {"retrain_recommended": True, "reasons": ["test"]}}))
    assert load_dags(tmp_path, branch_call={"manifest_path": str(forced), "on_drift": "alert"})["branch"] == "alert"
    # Generation 1 is published: a retrain into it is refused before anything is written.
    assert main(["generation", *retrain["begin"]["args"]]) == 2
