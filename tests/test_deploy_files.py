"""What an operator deploys, checked without Docker, YARN or Kubernetes: the Dockerfile's sources and entry point,
the Kubernetes manifests, the Spark profiles (conf/spark/*.conf), the job configs (conf/<step>.yaml), the GPU
discovery script, and the choice of the GPU that Spark assigned to a task."""
import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from sid_spark.config import resolve

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
STEPS = ("train", "encode", "dedup", "evaluate")
PROFILES = ("local", "yarn", "k8s", "gpu")


def dockerfile_instructions():
    """(INSTRUCTION, argument text) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(ln for ln in DOCKERFILE.read_text().splitlines()
                                        if not ln.lstrip().startswith("#")))
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln.strip() else "")
            for ln in text.splitlines() if ln.strip()]


def spark_properties(path: Path) -> dict:
    """A Spark --properties-file: `key value` (or key=value / key:value) lines, '#' comments."""
    props = {}
    for ln in path.read_text().splitlines():
        ln = ln.strip()
        if not ln or ln.startswith(("#", "!")):
            continue
        key, value = re.split(r"\s*[=:\s]\s*", ln, maxsplit=1)
        assert key not in props, f"{path.name}: {key} set twice"
        props[key] = value.strip()
    return props


# ---- docker ------------------------------------------------------------------------------------------------
def test_dockerfile_builds_on_the_official_spark_image_as_non_root_with_a_torch_build_arg():
    ins = dockerfile_instructions()
    args = dict(a.split("=", 1) for k, a in ins if k == "ARG" and "=" in a)
    base = next(a for k, a in ins if k == "FROM")
    base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
    assert base.startswith("apache/spark:4.3.0-") and "python3" in base
    users = [a for k, a in ins if k == "USER"]
    assert users and users[-1] not in ("root", "0")
    runs = " ".join(a for k, a in ins if k == "RUN")
    assert {"TORCH_INDEX", "TORCH_VERSION"} <= set(args)
    assert '--index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"' in runs
    # The torch the image installs is the one the project pins.
    pins = dict(ln.split("==") for ln in (ROOT / "constraints.txt").read_text().splitlines() if "==" in ln)
    assert args["TORCH_VERSION"] == pins["torch"]


def test_every_file_the_dockerfile_copies_exists():
    copies = [shlex.split(a) for k, a in dockerfile_instructions() if k in ("COPY", "ADD")]
    assert copies
    for parts in copies:
        sources = [p for p in parts[:-1] if not p.startswith("--")]
        for src in sources:
            assert (ROOT / src).exists(), f"COPY source {src} does not exist (build context = repository root)"
    # ... and none of them is kept out of the build context by the ignore file beside the Dockerfile.
    import fnmatch

    ignored = [ln.strip() for ln in (ROOT / "docker" / "Dockerfile.dockerignore").read_text().splitlines()
               if ln.strip() and not ln.startswith("#")]
    for parts in copies:
        for src in (p for p in parts[:-1] if not p.startswith("--")):
            prefixes = ["/".join(src.split("/")[:i]) for i in range(1, src.count("/") + 2)]
            hits = [pat for pat in ignored for pre in prefixes if fnmatch.fnmatch(pre, pat)]
            assert not hits, f"COPY source {src} is excluded by Dockerfile.dockerignore: {hits}"


def test_the_images_entry_point_submits_a_real_job(tmp_path):
    ins = dict(dockerfile_instructions())
    entry = json.loads(ins["ENTRYPOINT"])
    assert entry == ["/opt/sid_spark/docker/entrypoint.sh"]
    default_step = json.loads(ins["CMD"])[0]
    assert (ROOT / "jobs" / f"{default_step}.py").is_file()
    # Run the entry point against a stub spark-submit: it must submit jobs/<step>.py with conf/<step>.yaml.
    spark_home = tmp_path / "spark"
    (spark_home / "bin").mkdir(parents=True)
    stub = spark_home / "bin" / "spark-submit"
    stub.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@"\n')
    stub.chmod(0o755)
    env = {**os.environ, "SPARK_HOME": str(spark_home), "SID_SPARK_HOME": str(ROOT)}
    env.pop("SID_SPARK_PROFILE", None)
    for step in STEPS:
        out = subprocess.run(["bash", str(ENTRYPOINT), step, "--input", "in.parquet"], env=env,
                             capture_output=True, text=True, check=True).stdout.splitlines()
        assert out == ["--properties-file", f"{ROOT}/conf/spark/local.conf", f"{ROOT}/jobs/{step}.py",
                       "--config", f"{ROOT}/conf/{step}.yaml", "--input", "in.parquet"]
    bad = subprocess.run(["bash", str(ENTRYPOINT), "no_such_step"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stdout == "" and "no_such_step" in bad.stderr


# ---- kubernetes --------------------------------------------------------------------------------------------
def k8s_docs():
    docs = {}
    for path in sorted((ROOT / "docker" / "k8s").glob("*.yaml")):
        docs[path.name] = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    return docs


def test_manifests_parse_and_are_kubernetes_objects():
    docs = k8s_docs()
    assert {"driver-pod-template.yaml", "executor-pod-template.yaml", "rbac.yaml",
            "spark-application.yaml"} <= set(docs)
    for name, ds in docs.items():
        assert ds, name
        for d in ds:
            assert d["apiVersion"] and d["kind"], name


def test_pod_templates_match_the_k8s_profile():
    props = spark_properties(ROOT / "conf" / "spark" / "k8s.conf")
    for role in ("driver", "executor"):
        template = ROOT / props[f"spark.kubernetes.{role}.podTemplateFile"]
        (pod,) = yaml.safe_load_all(template.read_text())
        assert pod["kind"] == "Pod"
        names = [c["name"] for c in pod["spec"]["containers"]]
        assert props[f"spark.kubernetes.{role}.podTemplateContainerName"] in names
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    rbac = {d["kind"]: d for d in k8s_docs()["rbac.yaml"]}
    assert rbac["ServiceAccount"]["metadata"]["name"] == props["spark.kubernetes.authenticate.driver.serviceAccountName"]
    assert rbac["ServiceAccount"]["metadata"]["namespace"] == props["spark.kubernetes.namespace"]
    assert {"pods", "services", "configmaps"} <= set(rbac["Role"]["rules"][0]["resources"])


def test_spark_application_runs_a_real_job_from_the_image():
    (app,) = k8s_docs()["spark-application.yaml"]
    assert app["kind"] == "SparkApplication" and app["spec"]["type"] == "Python"
    main = app["spec"]["mainApplicationFile"]
    assert main.startswith("local:///opt/sid_spark/")
    # /opt/sid_spark/<x> in the image is <x> in the repository (COPY jobs /opt/sid_spark/jobs, ...).
    assert (ROOT / main[len("local:///opt/sid_spark/"):]).is_file()
    args = app["spec"]["arguments"]
    assert (ROOT / args[args.index("--config") + 1][len("/opt/sid_spark/"):]).is_file()
    assert app["spec"]["driver"]["serviceAccount"] == "sid-spark"


# ---- profiles and job configs ------------------------------------------------------------------------------
@pytest.mark.parametrize("profile", PROFILES)
def test_spark_profiles_parse_as_properties_files(profile):
    props = spark_properties(ROOT / "conf" / "spark" / f"{profile}.conf")
    assert props and all(k.startswith("spark.") for k in props), profile


def test_yarn_profile_sizes_python_arrow_and_dynamic_allocation():
    p = spark_properties(ROOT / "conf" / "spark" / "yarn.conf")
    assert p["spark.master"] == "yarn"
    for key in ("spark.executor.memory", "spark.executor.memoryOverhead", "spark.executor.pyspark.memory",
                "spark.sql.execution.arrow.maxRecordsPerBatch"):
        assert key in p, key
    assert p["spark.dynamicAllocation.enabled"] == "true"
    assert p["spark.dynamicAllocation.shuffleTracking.enabled"] == "true"
    assert p["spark.pyspark.python"] == p["spark.executorEnv.PYSPARK_PYTHON"]


def test_k8s_profile_names_image_namespace_and_service_account():
    p = spark_properties(ROOT / "conf" / "spark" / "k8s.conf")
    for key in ("spark.kubernetes.container.image", "spark.kubernetes.namespace",
                "spark.kubernetes.authenticate.driver.serviceAccountName"):
        assert p[key], key


def test_gpu_profile_asks_for_gpus_with_a_real_discovery_script():
    p = spark_properties(ROOT / "conf" / "spark" / "gpu.conf")
    assert float(p["spark.executor.resource.gpu.amount"]) == 1
    # tasks per GPU x GPU share per task = the executor's cores: every core gets a slice, none is left idle.
    assert int(p["spark.executor.cores"]) * float(p["spark.task.resource.gpu.amount"]) == 1
    # The path is the script's place in the image, where COPY conf /opt/sid_spark/conf puts it.
    path = p["spark.executor.resource.gpu.discoveryScript"]
    assert path.startswith("/opt/sid_spark/")
    script = ROOT / path[len("/opt/sid_spark/"):]
    assert script.is_file() and os.access(script, os.X_OK)


@pytest.mark.parametrize("step", STEPS)
def test_job_configs_are_valid_for_their_job(step):
    path = ROOT / "conf" / f"{step}.yaml"
    job_keys = {}
    if step == "evaluate":
        from sid_spark.commands.evaluate import JOB_KEYS as job_keys
    settings = resolve(str(path), [], job_keys)  # raises ConfigError naming any unknown or bad key
    assert (ROOT / "jobs" / f"{step}.py").is_file()
    if step in ("encode", "dedup"):
        # These keys override the trained model's config: nothing that was learnt may be listed.
        learnt = {"levels", "codebook_size", "seed", "sample_size", "batch_size", "init_factor", "max_iter",
                  "balance", "id_col", "vector_col"}
        assert not learnt & set(yaml.safe_load(path.read_text()))
    if step == "dedup":
        assert settings.tokenizer.dedup != "none"


def test_train_config_holds_tokenizer_defaults():
    from sid_spark.config import TokenizerConfig

    data = yaml.safe_load((ROOT / "conf" / "train.yaml").read_text())
    defaults = TokenizerConfig().to_dict()
    assert {"levels", "codebook_size", "seed", "balance"} <= set(data)
    assert {k: defaults[k] for k in data} == data


# ---- GPUs --------------------------------------------------------------------------------------------------
def run_discovery(tmp_path, nvidia_smi_output=None):
    path = tmp_path / "bin"
    path.mkdir(exist_ok=True)
    if nvidia_smi_output is not None:
        fake = path / "nvidia-smi"
        fake.write_text(f"#!/bin/sh\nprintf '{nvidia_smi_output}'\n")
        fake.chmod(0o755)
    env = {"PATH": f"{path}:/usr/bin:/bin"}
    out = subprocess.run([str(ROOT / "conf" / "spark" / "discover_gpus.sh")], env=env, capture_output=True,
                         text=True, check=True).stdout
    return json.loads(out)


def test_discovery_script_lists_the_gpus_nvidia_smi_sees(tmp_path):
    assert run_discovery(tmp_path, "0\\n1\\n3\\n") == {"name": "gpu", "addresses": ["0", "1", "3"]}


def test_discovery_script_without_gpus_lists_none(tmp_path):
    assert run_discovery(tmp_path) == {"name": "gpu", "addresses": []}


class _Resource:
    def __init__(self, addresses):
        self.addresses = addresses


class _Task:
    def __init__(self, addresses):
        self._addresses = addresses

    def resources(self):
        return {"gpu": _Resource(self._addresses)} if self._addresses is not None else {}


@pytest.mark.parametrize("addresses,visible,want", [(["1"], 2, 1), (["3"], 4, 3), (["0"], 1, 0), (None, 2, 0)])
def test_kernel_device_is_the_gpu_spark_assigned_to_the_task(monkeypatch, addresses, visible, want):
    import pyspark
    import torch

    from sid_spark.spark import device

    monkeypatch.setattr(pyspark.TaskContext, "get", classmethod(lambda cls: _Task(addresses)))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    assert device.task_device("auto") == torch.device(f"cuda:{want}")
    assert device.task_device("cpu") == torch.device("cpu")
