"""jobs/sid_spark_dag.py loaded by Airflow's own DagBag, with Airflow really installed (in .venv-airflow, made by
`make airflow`, so that its pins never touch the project's venv). The check runs in a subprocess with that venv's
Python and prints what it found as JSON."""
import json
import os
import subprocess
from pathlib import Path

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

try:
    bag = DagBag(dag_folder=sys.argv[1], include_examples=False)
except TypeError:  # Airflow >= 3.2: examples are a config option (AIRFLOW__CORE__LOAD_EXAMPLES)
    bag = DagBag(dag_folder=sys.argv[1])
out = {"import_errors": {k: str(v) for k, v in bag.import_errors.items()}, "dags": {}}
for dag_id, dag in bag.dags.items():
    tasks = {}
    for t in dag.tasks:
        ctx = {"params": {k: dag.params[k] for k in dag.params}, "ds": "2026-03-04"}
        ctx["params"]["output_root"] = "/data/sid"
        tasks[t.task_id] = {
            "type": type(t).__name__, "upstream": sorted(t.upstream_task_ids), "retries": t.retries,
            "conn_id": t._conn_id, "application": t.render_template(t.application, ctx),
            "args": t.render_template(t.application_args, ctx),
            "properties_file": t.render_template(t.properties_file, ctx),
            "py_files": t.render_template(t.py_files, ctx), "name": t.render_template(getattr(t, "name", None) or t._name, ctx)}
    out["dags"][dag_id] = {"tasks": tasks, "params": sorted(dag.params)}
print("DAGBAG " + json.dumps(out, default=str))
'''


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory):
    if not AIRFLOW_PY.exists():
        pytest.fail(f"{AIRFLOW_PY} is missing: run `make airflow` (`make test` does it first)")
    home = tmp_path_factory.mktemp("airflow_home")
    env = {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "AIRFLOW__CORE__DAGS_FOLDER": str(DAG_FILE.parent), "SID_SPARK_HOME": "/opt/sid_spark"}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([str(AIRFLOW_PY), "-c", LOAD, str(DAG_FILE)], capture_output=True, text=True, env=env,
                          timeout=300, cwd=home)
    assert proc.returncode == 0, proc.stderr[-5000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("DAGBAG "))
    return json.loads(line[len("DAGBAG "):])


def test_dag_loads_without_import_errors(dagbag):
    assert dagbag["import_errors"] == {}
    assert list(dagbag["dags"]) == ["sid_spark_nightly"]


def test_tasks_are_spark_submits_chained_train_encode_dedup_evaluate(dagbag):
    tasks = dagbag["dags"]["sid_spark_nightly"]["tasks"]
    assert set(tasks) == {"train", "encode", "dedup", "evaluate"}
    assert {t["type"] for t in tasks.values()} == {"SparkSubmitOperator"}
    assert tasks["train"]["upstream"] == []
    assert tasks["encode"]["upstream"] == ["train"]
    assert tasks["dedup"]["upstream"] == ["encode"]
    assert tasks["evaluate"]["upstream"] == ["dedup"]
    assert all(t["retries"] == 2 and t["conn_id"] == "spark_default" for t in tasks.values())


def test_params_render_into_the_job_arguments(dagbag):
    dag = dagbag["dags"]["sid_spark_nightly"]
    assert {"input", "sequences", "output_root", "run_date", "spark_profile", "py_files"} <= set(dag["params"])
    tasks = dag["tasks"]
    run = "/data/sid/2026-03-04"  # run_date empty -> the logical date
    for step, t in tasks.items():
        # Every entry point the DAG submits is a real job file with its conf/<step>.yaml.
        assert t["application"] == f"/opt/sid_spark/jobs/{step}.py"
        assert (ROOT / "jobs" / f"{step}.py").is_file(), step
        assert t["args"][:2] == ["--config", f"/opt/sid_spark/conf/{step}.yaml"]
        assert (ROOT / "conf" / f"{step}.yaml").is_file(), step
        assert t["properties_file"] == "/opt/sid_spark/conf/spark/yarn.conf"
        assert t["py_files"] == "/opt/sid_spark/dist/sid_spark.zip"
        assert t["name"] == f"sid_spark-{step}-2026-03-04"

    def arg(step, flag):
        args = tasks[step]["args"]
        return args[args.index(flag) + 1]

    # Each step reads what the one before it wrote, all under <output_root>/<run_date>/.
    assert arg("train", "--model") == arg("encode", "--model") == arg("dedup", "--model") == f"{run}/model"
    assert arg("encode", "--output") == arg("dedup", "--sids") == f"{run}/sids"
    assert arg("dedup", "--output") == arg("evaluate", "--sids") == f"{run}/sids_dedup"
    assert arg("evaluate", "--output") == f"{run}/eval"
    assert arg("train", "--input") == arg("evaluate", "--embeddings") == "hdfs:///data/catalog/items"
