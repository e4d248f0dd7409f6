"""Airflow DAGs of the Semantic-ID lifecycle, one `spark-submit` per Spark step:

* `sid_spark_daily` (@daily): append the day's new items to the current generation's published SID table
  (`encode --existing`: frozen codebooks, published (sid, suffix) never change, new SIDs placed by the capacity
  rule and de-duplicated against the published rows, one atomic commit), evaluate the grown table, then branch on
  the append's drift flag: nothing to do, an alert, or (param `on_drift: retrain`) a run of `sid_spark_retrain`.
* `sid_spark_retrain` (on demand, or a slow schedule): a new generation <root>/gen=<g>/: check g is new, train,
  full encode, dedup, evaluate, publish it in <root>/_generations.json and make it the daily DAG's current one.

Install (on the Airflow side): apache-airflow 3.x + apache-airflow-providers-apache-spark; copy this file into the
DAGs folder; point the `spark_default` connection at the cluster. Day 0:

    airflow dags trigger sid_spark_retrain --conf '{"input": "hdfs:///catalog/items", "root": "hdfs:///sid", "generation": "1"}'

after which `sid_spark_daily` appends to gen=1 every day. The daily DAG's generation is its `generation` param, else
the Airflow Variable `sid_spark_generation` (set by the retrain's last task). Every Spark step commits its output
atomically, so a retry or a re-run rewrites only its own output; a re-run of a day's append finds no new items
and leaves the table as it is. A job exits 0 when done and non-zero with a one-line reason on stderr.
"""
from __future__ import annotations

import json
import logging
import os
from datetime import datetime, timedelta

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

try:  # Airflow 3
    from airflow.providers.standard.operators.empty import EmptyOperator
    from airflow.providers.standard.operators.python import BranchPythonOperator, PythonOperator
    from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
    from airflow.sdk import DAG, Param
except ImportError:  # Airflow 2.x
    from airflow import DAG
    from airflow.models.param import Param
    from airflow.operators.empty import EmptyOperator
    from airflow.operators.python import BranchPythonOperator, PythonOperator
    from airflow.operators.trigger_dagrun import TriggerDagRunOperator

# Where the jobs and confs live on the machine that runs spark-submit: the checkout this file sits in, or the
# image's /opt/sid_spark (docker/Dockerfile), or whatever SID_SPARK_HOME says.
SID_SPARK_HOME = os.environ.get("SID_SPARK_HOME", os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GENERATION_VARIABLE = "sid_spark_generation"
DATE = "{{ params.run_date or ds }}"

default_args = {
    "owner": "sid_spark",
    # A lost executor or a pre-empted node is retried by Spark itself (spark.task.maxFailures); these retries are
    # for what Spark cannot retry: a lost driver, a cluster that refused the application.
    "retries": 2,
    "retry_delay": timedelta(minutes=10),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(hours=1),
    "execution_timeout": timedelta(hours=8),
}


def common_params() -> dict:
    return {
        "input": Param("hdfs:///data/catalog/items", type="string",
                       description="the whole catalog today: Parquet path or table (item id + embedding)"),
        "sequences": Param("hdfs:///data/catalog/sequences", type="string",
                           description="user sequences for evaluate (user_id, item_ids oldest first)"),
        "root": Param("hdfs:///data/sid", type="string",
                      description="generations live in <root>/gen=<g>/ (model, sids, eval)"),
        "run_date": Param(None, type=["null", "string"],
                          description="YYYY-MM-DD of this run; empty = the run's logical date"),
        "spark_profile": Param(f"{SID_SPARK_HOME}/conf/spark/yarn.conf", type="string",
                               description="spark-submit --properties-file (conf/spark/{local,yarn,k8s}.conf)"),
        "py_files": Param(f"{SID_SPARK_HOME}/dist/sid_spark.zip", type=["null", "string"],
                          description="the package zip to ship; empty when the image has it installed"),
        "conf_dir": Param(f"{SID_SPARK_HOME}/conf", type="string", description="where conf/<step>.yaml are"),
        "jobs_dir": Param(f"{SID_SPARK_HOME}/jobs", type="string",
                          description="where jobs/<step>.py are (local:///opt/sid_spark/jobs on Kubernetes)"),
    }


def spark_step(task_id: str, job: str, args: list, config: bool = True) -> SparkSubmitOperator:
    conf = ["--config", f"{{{{ params.conf_dir }}}}/{job}.yaml"] if config else []
    return SparkSubmitOperator(
        task_id=task_id,
        conn_id="spark_default",
        application=f"{{{{ params.jobs_dir }}}}/{job}.py",
        application_args=[*conf, *args],
        properties_file="{{ params.spark_profile }}",
        py_files="{{ params.py_files or '' }}",
        name=f"sid_spark-{task_id}-{DATE}",
    )


def read_json(path: str) -> dict:
    """A small JSON file on any filesystem pyarrow knows (local, hdfs://, s3://, gs://)."""
    if path.startswith("file:") or "://" not in path:
        with open(path.split("file:", 1)[-1] if path.startswith("file:") else path) as f:
            return json.load(f)
    from pyarrow import fs

    filesystem, inner = fs.FileSystem.from_uri(path)
    with filesystem.open_input_stream(inner) as f:
        return json.loads(f.read().decode("utf-8"))


def drift_branch(manifest_path: str, on_drift: str) -> str:
    """Task id to follow after the append: no_drift, alert, or trigger_retrain."""
    drift = read_json(manifest_path).get("drift") or {}
    if not drift.get("retrain_recommended"):
        return "no_drift"
    logging.getLogger("sid_spark").warning("drift: %s", "; ".join(drift.get("reasons", [])))
    return "trigger_retrain" if on_drift == "retrain" else "alert"


def alert(manifest_path: str) -> None:
    """The drift alert: the reasons in the task log. Wire a notifier (on_success_callback, email, Slack) here."""
    drift = read_json(manifest_path).get("drift") or {}
    logging.getLogger("sid_spark").warning("retrain recommended for %s: %s", manifest_path,
                                           "; ".join(drift.get("reasons", [])))


def set_current_generation(generation: str) -> None:
    try:
        from airflow.sdk import Variable
    except ImportError:
        from airflow.models import Variable
    Variable.set(GENERATION_VARIABLE, generation)


# ---- daily: append -> evaluate -> drift branch ------------------------------------------------------------------
with DAG(
    dag_id="sid_spark_daily",
    description="Semantic IDs: append the day's new items to the published table (SIDs never move), evaluate, "
                "check drift",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=default_args,
    tags=["sid_spark", "spark"],
    params={**common_params(),
            "generation": Param(None, type=["null", "string"],
                                description=f"generation to append to; empty = Variable {GENERATION_VARIABLE}"),
            "on_drift": Param("alert", enum=["alert", "retrain"],
                              description="when the drift flag is set: alert, or trigger sid_spark_retrain")},
) as daily:
    gen = f"{{{{ params.generation or var.value.get('{GENERATION_VARIABLE}', '1') }}}}"
    base = f"{{{{ params.root }}}}/gen={gen}"
    append = spark_step("append", "encode", ["--input", "{{ params.input }}", "--model", f"{base}/model",
                                             "--existing", f"{base}/sids", "--output", f"{base}/sids"])
    evaluate = spark_step("evaluate", "evaluate", ["--sids", f"{base}/sids", "--model", f"{base}/model",
                                                   "--embeddings", "{{ params.input }}",
                                                   "--interactions", "{{ params.sequences }}",
                                                   "--output", f"{base}/daily/{DATE}/eval"])
    drift = BranchPythonOperator(task_id="drift", python_callable=drift_branch,
                                 op_kwargs={"manifest_path": f"{base}/sids/_manifest.json",
                                            "on_drift": "{{ params.on_drift }}"})
    no_drift = EmptyOperator(task_id="no_drift")
    alert_task = PythonOperator(task_id="alert", python_callable=alert,
                                op_kwargs={"manifest_path": f"{base}/sids/_manifest.json"})
    retrain = TriggerDagRunOperator(task_id="trigger_retrain", trigger_dag_id="sid_spark_retrain",
                                    conf={"input": "{{ params.input }}", "sequences": "{{ params.sequences }}",
                                          "root": "{{ params.root }}"})
    append >> evaluate >> drift >> [no_drift, alert_task, retrain]


# ---- retrain: a new generation ------------------------------------------------------------------------------------
with DAG(
    dag_id="sid_spark_retrain",
    description="Semantic IDs: a new generation (train, full encode, dedup, evaluate, publish)",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=default_args,
    tags=["sid_spark", "spark"],
    params={**common_params(),
            "generation": Param(None, type=["null", "string"],
                                description="name of the new generation; empty = the run's date (YYYYMMDD)"),
            "dedup": Param("suffix", enum=["suffix", "reassign"], description="how SIDs are made unique")},
) as retrain_dag:
    gen = "{{ params.generation or ds_nodash }}"
    base = f"{{{{ params.root }}}}/gen={gen}"
    begin = spark_step("begin", "generation", ["--root", "{{ params.root }}", "--generation", gen, "--begin"],
                       config=False)
    train = spark_step("train", "train", ["--input", "{{ params.input }}", "--model", f"{base}/model"])
    encode = spark_step("encode", "encode", ["--input", "{{ params.input }}", "--model", f"{base}/model",
                                             "--output", f"{base}/sids_raw", "--generation", gen])
    dedup = spark_step("dedup", "dedup", ["--input", "{{ params.input }}", "--sids", f"{base}/sids_raw",
                                          "--model", f"{base}/model", "--output", f"{base}/sids",
                                          "--set", "dedup={{ params.dedup }}"])
    evaluate_new = spark_step("evaluate", "evaluate", ["--sids", f"{base}/sids", "--model", f"{base}/model",
                                                       "--embeddings", "{{ params.input }}",
                                                       "--interactions", "{{ params.sequences }}",
                                                       "--output", f"{base}/eval"])
    publish = spark_step("publish", "generation", ["--root", "{{ params.root }}", "--generation", gen,
                                                   "--publish"], config=False)
    make_current = PythonOperator(task_id="make_current", python_callable=set_current_generation,
                                  op_kwargs={"generation": gen})
    begin >> train >> encode >> dedup >> evaluate_new >> publish >> make_current
