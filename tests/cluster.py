"""A real Spark standalone cluster for tests: one master and N workers on 127.0.0.1, started from the installed
pyspark's `bin/spark-class`, and `spark-submit` against it.

    from tests.cluster import standalone_cluster
    with standalone_cluster(tmp_dir, workers=2) as cluster:
        cluster.submit(["--py-files", wheel, "jobs/train.py", ...])
        cluster.kill_worker(1)          # lose a machine: the worker, its executors and their Python workers

Every daemon runs in its own process group (so the executors a worker forks, and their Python workers, are in
that group too); `stop()` kills every group it started, and the context manager / pytest fixture call it on
success and on failure alike. Daemon logs are in `<root>/logs/`, and the tail of them is attached to every
error this module raises.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

import pyspark
import pytest

HOST = "127.0.0.1"
SPARK_HOME = Path(pyspark.__file__).resolve().parent
# Small daemons: the cluster shares a 2-core machine with the test process and its own local session.
DAEMON_MEMORY = "256m"
# Short-lived test JVMs spend most of their CPU in the JIT: C1 only and a serial GC halve that.
TEST_JAVA_OPTIONS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"


class ClusterError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def group_processes(pgid: int) -> List[int]:
    """Live (not zombie) processes of process group `pgid`. spark-class leaves a zombie `bash` behind (its
    process substitution, orphaned when the JVM that exec'd over the script dies): dead, and not counted."""
    live = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            live.append(int(stat.parent.name))
    return live


def spark_env(python: str = sys.executable) -> Dict[str, str]:
    """Environment for spark-class / spark-submit: this pyspark's SPARK_HOME, loopback only, and `python` on the
    driver and on every executor (the classic cluster failure is executors running another interpreter)."""
    env = dict(os.environ)
    env.update({"SPARK_HOME": str(SPARK_HOME), "SPARK_LOCAL_IP": HOST, "SPARK_LOCAL_HOSTNAME": "localhost",
                "SPARK_DAEMON_MEMORY": DAEMON_MEMORY, "PYSPARK_PYTHON": python,
                "PYSPARK_DRIVER_PYTHON": python, "SPARK_NO_DAEMONIZE": "1",
                "SPARK_DAEMON_JAVA_OPTS": TEST_JAVA_OPTIONS})
    # A job's settings come from spark-submit's arguments, not from whatever SPARK_CONF_DIR the machine has.
    env.pop("SPARK_CONF_DIR", None)
    env.pop("SID_SPARK_SUBMITTED", None)
    return env


@dataclass
class Daemon:
    name: str
    proc: subprocess.Popen
    log: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def processes(self) -> List[int]:
        """Live processes of this daemon's group: itself, and the executors and Python workers it forked."""
        return group_processes(self.proc.pid)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group (daemon + the executors and Python workers it forked)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


@dataclass
class StandaloneCluster:
    root: Path
    python: str = sys.executable
    worker_cores: int = 1
    worker_memory: str = "1g"
    master_port: int = 0
    master_ui_port: int = 0
    master: Optional[Daemon] = None
    workers: List[Daemon] = field(default_factory=list)
    _dead: List[Daemon] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"spark://{HOST}:{self.master_port}"

    # ---- lifecycle ---------------------------------------------------------------------------------------
    def _spawn(self, name: str, args: Sequence[str]) -> Daemon:
        (self.root / "logs").mkdir(parents=True, exist_ok=True)
        log = self.root / "logs" / f"{name}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen([str(SPARK_HOME / "bin" / "spark-class"), *args], stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=spark_env(self.python),
                                    cwd=self.root, start_new_session=True)
        return Daemon(name, proc, log)

    def start(self, workers: int = 2, timeout: float = 90.0) -> "StandaloneCluster":
        self.master_port, self.master_ui_port = free_port(), free_port()
        self.master = self._spawn("master", ["org.apache.spark.deploy.master.Master", "--host", HOST,
                                             "--port", str(self.master_port),
                                             "--webui-port", str(self.master_ui_port)])
        self._wait(lambda: self._state() is not None, timeout, "the master to answer")
        for _ in range(workers):
            self.add_worker(wait=False)
        self.wait_for_workers(workers, timeout)
        return self

    def add_worker(self, wait: bool = True, timeout: float = 60.0) -> Daemon:
        i = len(self.workers) + len(self._dead)
        work_dir = self.root / f"worker-{i}"
        work_dir.mkdir(parents=True, exist_ok=True)
        worker = self._spawn(f"worker-{i}", ["org.apache.spark.deploy.worker.Worker", "--host", HOST,
                                             "--port", str(free_port()), "--webui-port", str(free_port()),
                                             "--cores", str(self.worker_cores), "--memory", self.worker_memory,
                                             "--work-dir", str(work_dir), self.url])
        self.workers.append(worker)
        if wait:
            self.wait_for_workers(len(self.workers), timeout)
        return worker

    def kill_worker(self, index: int = -1, sig: int = signal.SIGKILL) -> Daemon:
        """Lose a machine: SIGKILL worker `index` with its executors and their Python workers (one process group).
        The master notices after its worker timeout; running tasks of that executor are retried elsewhere."""
        worker = self.workers.pop(index)
        worker.kill(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.proc.wait(timeout=30)
        self._dead.append(worker)
        return worker

    def stop(self) -> None:
        """Kill every process group this cluster started (workers first), then reap them. Safe to call twice."""
        daemons = [*self.workers, *self._dead, *([self.master] if self.master else [])]
        for d in daemons:
            d.kill(signal.SIGTERM)
        deadline = time.time() + 10
        for d in daemons:
            with contextlib.suppress(subprocess.TimeoutExpired):
                d.proc.wait(timeout=max(0.1, deadline - time.time()))
        for d in daemons:  # SIGKILL the group even when the leader exited: its executors may still be there
            d.kill(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                d.proc.wait(timeout=10)
        self._dead.extend(self.workers)
        self.workers = []

    # ---- state -------------------------------------------------------------------------------------------
    def _state(self) -> Optional[dict]:
        """The master's JSON status page (workers, applications), None while it is not up."""
        try:
            with urllib.request.urlopen(f"http://{HOST}:{self.master_ui_port}/json/", timeout=2) as r:
                return json.loads(r.read().decode())
        except (OSError, ValueError):
            return None

    def alive_workers(self) -> int:
        state = self._state() or {}
        return sum(1 for w in state.get("workers", []) if w.get("state") == "ALIVE")

    def wait_for_workers(self, n: int, timeout: float = 60.0) -> None:
        self._wait(lambda: self.alive_workers() >= n, timeout, f"{n} alive workers")

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.master is not None and not self.master.alive():
                raise ClusterError(f"the Spark master exited while waiting for {what}\n{self.logs()}")
            if ready():
                return
            time.sleep(0.5)
        raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what}\n{self.logs()}")

    def logs(self, n: int = 30) -> str:
        return "\n".join(f"--- {d.name} ({d.log}) ---\n{d.tail(n)}"
                         for d in [*([self.master] if self.master else []), *self.workers, *self._dead])

    # ---- jobs --------------------------------------------------------------------------------------------
    def submit_conf(self, wait_for_executors: bool = False) -> List[str]:
        """The `--conf` arguments that fit a job onto this cluster: one 1-core executor per worker."""
        conf = {"spark.master": self.url, "spark.submit.deployMode": "client",
                "spark.driver.host": HOST, "spark.driver.bindAddress": HOST,
                "spark.driver.memory": "1g", "spark.executor.memory": self.worker_memory,
                "spark.executor.cores": str(self.worker_cores), "spark.ui.enabled": "false",
                "spark.pyspark.python": self.python, "spark.pyspark.driver.python": self.python,
                "spark.sql.shuffle.partitions": "4",
                "spark.driver.extraJavaOptions": TEST_JAVA_OPTIONS,
                "spark.executor.extraJavaOptions": TEST_JAVA_OPTIONS}
        if wait_for_executors:  # start once every worker has given its executor: work surely spreads out
            conf.update({"spark.scheduler.minRegisteredResourcesRatio": "1.0",
                         "spark.scheduler.maxRegisteredResourcesWaitingTime": "90s"})
        return [arg for k, v in conf.items() for arg in ("--conf", f"{k}={v}")]

    def submit(self, args: Sequence[str], timeout: float = 300.0, cwd: Optional[Path] = None,
               name: str = "submit", wait_for_executors: bool = False) -> subprocess.CompletedProcess:
        """`spark-submit <cluster conf> <args>`; the driver (and anything it forks) is killed on timeout."""
        return spark_submit([*self.submit_conf(wait_for_executors), *args], timeout=timeout, cwd=cwd, python=self.python,
                            log=self.root / "logs" / f"{name}.log")


def spark_submit(args: Sequence[str], timeout: float = 300.0, cwd: Optional[Path] = None,
                 python: str = sys.executable, log: Optional[Path] = None) -> subprocess.CompletedProcess:
    """Run this pyspark's `bin/spark-submit` in its own process group, killed whole on timeout."""
    cmd = [str(SPARK_HOME / "bin" / "spark-submit"), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd,
                            env=spark_env(python), stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise ClusterError(f"spark-submit timed out after {timeout:.0f}s: {' '.join(cmd)}\n{err[-4000:]}")
    finally:
        with contextlib.suppress(ProcessLookupError):  # a driver's stray children (Python workers)
            os.killpg(proc.pid, signal.SIGKILL)
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(f"$ {' '.join(cmd)}\n--- stdout ---\n{out}\n--- stderr ---\n{err}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@contextlib.contextmanager
def standalone_cluster(root: Path, workers: int = 2, python: str = sys.executable, worker_cores: int = 1,
                       worker_memory: str = "1g") -> Iterator[StandaloneCluster]:
    cluster = StandaloneCluster(Path(root), python=python, worker_cores=worker_cores, worker_memory=worker_memory)
    try:
        yield cluster.start(workers)
    finally:
        cluster.stop()


def build_wheel(dest: Path, project: Optional[Path] = None) -> Path:
    """`pip wheel --no-deps` of the package, the artifact operators ship with `--py-files`. Built from a copy of
    the sources so that the build leaves nothing in the (shared) checkout."""
    project = project or Path(__file__).resolve().parents[1]
    dest.mkdir(parents=True, exist_ok=True)
    src = dest / "src"
    shutil.copytree(project / "sid_spark", src / "sid_spark",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(project / name, src / name)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                           str(dest), str(src)], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise ClusterError(f"pip wheel failed:\n{proc.stderr[-3000:]}")
    wheels = sorted(dest.glob("sid_spark-*.whl"))
    if not wheels:
        raise ClusterError(f"pip wheel wrote no sid_spark wheel into {dest}")
    return wheels[-1]


@pytest.fixture(scope="module")
def spark_cluster(tmp_path_factory) -> Iterator[StandaloneCluster]:
    """A master + 2 one-core workers for the tests of one module; stopped (every process) also on failure.
    Use it with `from tests.cluster import spark_cluster`."""
    with standalone_cluster(tmp_path_factory.mktemp("spark-cluster"), workers=2) as cluster:
        yield cluster
