"""Airflow DAG: the nightly Semantic-ID pipeline, train -> encode -> dedup -> evaluate, one `spark-submit` each.

Install (on the Airflow side): apache-airflow 3.x + apache-airflow-providers-apache-spark; copy this file into the
DAGs folder. Point the `spark_default` connection at the cluster (host `yarn`, or `k8s://https://<api-server>`),
and trigger with params, e.g.

    airflow dags trigger sid_spark_nightly --conf '{"input": "hdfs:///catalog/items", "output_root": "hdfs:///sid"}'

Every path a task writes is under `<output_root>/<run_date>/`, so a retry or a re-run of one date rewrites only
that date (the jobs commit their outputs atomically). A job exits 0 when done and non-zero with a one-line reason
on stderr, which is what Airflow shows as the task's failure.
"""
from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

try:  # Airflow 3
    from airflow.sdk import DAG, Param
except ImportError:  # Airflow 2.x
    from airflow import DAG
    from airflow.models.param import Param

# Where the jobs and confs live on the machine that runs spark-submit: the checkout this file sits in, or the
# image's /opt/sid_spark (docker/Dockerfile), or whatever SID_SPARK_HOME says.
SID_SPARK_HOME = os.environ.get("SID_SPARK_HOME", os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

STEPS = ("train", "encode", "dedup", "evaluate")
RUN = "{{ params.output_root }}/{{ params.run_date or ds }}"
PATHS = {"model": f"{RUN}/model", "sids": f"{RUN}/sids", "dedup": f"{RUN}/sids_dedup", "evaluate": f"{RUN}/eval"}

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

with DAG(
    dag_id="sid_spark_nightly",
    description="Semantic IDs: train a residual k-means tokenizer, encode the catalog, de-duplicate, evaluate",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=default_args,
    tags=["sid_spark", "spark"],
    params={
        "input": Param("hdfs:///data/catalog/items", type="string",
                       description="catalog: Parquet path or table (item id + embedding)"),
        "sequences": Param("hdfs:///data/catalog/sequences", type="string",
                           description="user sequences for evaluate (user_id, item_ids oldest first)"),
        "output_root": Param("hdfs:///data/sid", type="string",
                             description="every output goes to <output_root>/<run_date>/"),
        "run_date": Param(None, type=["null", "string"],
                          description="YYYY-MM-DD to (re)build; empty = the run's logical date"),
        "spark_profile": Param(f"{SID_SPARK_HOME}/conf/spark/yarn.conf", type="string",
                               description="spark-submit --properties-file (conf/spark/{local,yarn,k8s}.conf)"),
        "py_files": Param(f"{SID_SPARK_HOME}/dist/sid_spark.zip", type=["null", "string"],
                          description="the package zip to ship; empty when the image has it installed"),
        "conf_dir": Param(f"{SID_SPARK_HOME}/conf", type="string", description="where conf/<step>.yaml are"),
        "jobs_dir": Param(f"{SID_SPARK_HOME}/jobs", type="string",
                          description="where jobs/<step>.py are (local:///opt/sid_spark/jobs on Kubernetes)"),
    },
) as dag:
    step_args = {
        "train": ["--input", "{{ params.input }}", "--model", PATHS["model"]],
        "encode": ["--input", "{{ params.input }}", "--model", PATHS["model"], "--output", PATHS["sids"]],
        "dedup": ["--input", "{{ params.input }}", "--sids", PATHS["sids"], "--model", PATHS["model"],
                  "--output", PATHS["dedup"]],
        "evaluate": ["--sids", PATHS["dedup"], "--model", PATHS["model"], "--embeddings", "{{ params.input }}",
                     "--interactions", "{{ params.sequences }}", "--output", PATHS["evaluate"]],
    }
    tasks = {
        step: SparkSubmitOperator(
            task_id=step,
            conn_id="spark_default",
            application=f"{{{{ params.jobs_dir }}}}/{step}.py",
            application_args=["--config", f"{{{{ params.conf_dir }}}}/{step}.yaml", *step_args[step]],
            properties_file="{{ params.spark_profile }}",
            py_files="{{ params.py_files or '' }}",
            name=f"sid_spark-{step}-{{{{ params.run_date or ds }}}}",
        )
        for step in STEPS
    }
    tasks["train"] >> tasks["encode"] >> tasks["dedup"] >> tasks["evaluate"]
