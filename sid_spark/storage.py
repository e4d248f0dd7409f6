"""Every file a job reads or writes, through Hadoop's FileSystem of the active SparkSession (py4j), so any scheme
Spark reaches works: hdfs, s3a, gs, abfs, viewfs, file. No pathlib/os/shutil on a user-given path.

    storage.write_bytes("hdfs:///m/codebooks.npz", blob); storage.read_text("viewfs://c/data/x.json")
    storage.check_no_overlap(output, input, model)   # InputError when one path lies inside (or is) another

Also the rules that keep outputs safe: `check_replaceable` (an existing output is replaced only when it is a
complete sid_spark output of the same kind), the per-output policy a command registers (`guard_output`: the
largest rejected share it accepts) and the reliable checkpoint folder of the output being written.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

from .errors import InputError

log = logging.getLogger("sid_spark.storage")

_CHUNK = 8 << 20  # bytes per py4j call: a 200 MB codebook file never crosses the gateway as one array


# ---- the session and paths -----------------------------------------------------------------------------------
def session(spark=None):
    """The given session, else the active one, else the one this process already built, else a new one."""
    if spark is not None:
        return spark
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession() or SparkSession._instantiatedSession
    if active is not None:
        return active
    from .spark.session import get_session

    return get_session()


def _path(path: str, spark=None):
    s = session(spark)
    p = s.sparkContext._jvm.org.apache.hadoop.fs.Path(str(path))  # local-ok: a Hadoop Path (any scheme)
    return p, p.getFileSystem(s.sparkContext._jsc.hadoopConfiguration())


def join(base: str, *names: str) -> str:
    return "/".join([str(base).rstrip("/"), *[n.strip("/") for n in names]])


def qualify(path: str, spark=None) -> str:
    """The fully qualified URI (scheme://authority/absolute/path) Hadoop resolves `path` to."""
    p, fs = _path(path, spark)
    return fs.makeQualified(p).toString().rstrip("/") or "/"


def exists(path: str, spark=None) -> bool:
    p, fs = _path(path, spark)
    return bool(fs.exists(p))


def is_dir(path: str, spark=None) -> bool:
    p, fs = _path(path, spark)
    return bool(fs.exists(p) and fs.getFileStatus(p).isDirectory())


def is_file(path: str, spark=None) -> bool:
    p, fs = _path(path, spark)
    return bool(fs.exists(p) and fs.getFileStatus(p).isFile())


def mkdirs(path: str, spark=None) -> None:
    p, fs = _path(path, spark)
    if not fs.mkdirs(p):
        raise IOError(f"could not create the folder {path}")


def list_names(path: str, spark=None) -> List[str]:
    """Names of the entries of folder `path` (sorted); [] when it does not exist."""
    p, fs = _path(path, spark)
    if not fs.exists(p):
        return []
    return sorted(st.getPath().getName() for st in fs.listStatus(p))


def glob(pattern: str, spark=None) -> List[str]:
    p, fs = _path(pattern, spark)
    return sorted(st.getPath().toString() for st in (fs.globStatus(p) or []))


def rename(src: str, dst: str, spark=None) -> bool:
    s, _ = _path(src, spark)
    d, fs = _path(dst, spark)
    return bool(fs.rename(s, d))


def delete(path: str, spark=None, recursive: bool = True) -> bool:
    p, fs = _path(path, spark)
    return bool(fs.delete(p, recursive))


def modification_ms(path: str, spark=None) -> int:
    p, fs = _path(path, spark)
    return int(fs.getFileStatus(p).getModificationTime())


def write_bytes(path: str, data: bytes, spark=None, must_have_parent: bool = False) -> None:
    """Write (overwrite) one file. `must_have_parent`: refuse to re-create a folder that vanished (a staging
    folder a stale-writer clean-up removed) instead of silently making a new, partial one."""
    p, fs = _path(path, spark)
    if must_have_parent and not fs.exists(p.getParent()):
        raise IOError(f"the folder of {path} vanished while it was written (deleted by another writer?)")
    out = fs.create(p, True)
    try:
        view = memoryview(data)
        for start in range(0, len(view), _CHUNK):
            out.write(bytearray(view[start:start + _CHUNK]))
    finally:
        out.close()


def read_bytes(path: str, spark=None) -> bytes:
    s = session(spark)
    p, fs = _path(path, s)
    stream = fs.open(p)  # local-ok: Hadoop FileSystem.open
    try:
        return bytes(s.sparkContext._jvm.org.apache.commons.io.IOUtils.toByteArray(stream))
    finally:
        stream.close()


def write_text(path: str, text: str, spark=None, must_have_parent: bool = False) -> None:
    write_bytes(path, text.encode("utf-8"), spark, must_have_parent)


def read_text(path: str, spark=None) -> Optional[str]:
    """The file's text, None when it does not exist."""
    if not exists(path, spark):
        return None
    return read_bytes(path, spark).decode("utf-8")


# ---- overlap and replaceable outputs -------------------------------------------------------------------------
def looks_like_path(source: str) -> bool:
    """A Parquet path rather than a catalog table name."""
    return "/" in source or source.endswith(".parquet") or ":" in source


def resolved(path: str, spark=None) -> str:
    """`qualify(path)`, with the deepest existing ancestor resolved through mount points and links (a viewfs
    path and the folder it maps to compare equal)."""
    p, fs = _path(path, spark)
    q = fs.makeQualified(p)
    rest: List[str] = []
    while q is not None and not fs.exists(q):
        rest.insert(0, q.getName())
        q = q.getParent()
    if q is None:
        return qualify(path, spark)
    try:
        base = fs.resolvePath(q).toString().rstrip("/")
    except Exception:  # a filesystem without resolvePath
        base = q.toString().rstrip("/")
    return "/".join([base, *rest]) if rest else base


def check_no_overlap(output: Optional[str], *others: Optional[str], spark=None) -> None:
    """InputError when `output` equals, contains or lies inside one of `others` (inputs, the model). Table
    names and None are skipped."""
    if not output:
        return
    out = resolved(output, spark)
    for other in others:
        if not other or not looks_like_path(str(other)):
            continue
        o = resolved(str(other), spark)
        if out == o:
            why = "is"
        elif o.startswith(out + "/"):
            why = "contains"
        elif out.startswith(o + "/"):
            why = "lies inside"
        else:
            continue
        raise InputError(f"output {output!r} {why} {other!r}: refusing to write over an input or the model")


def check_replaceable(output: str, manifest_name: str, kind: Optional[str] = None, allowed: tuple = (),
                      spark=None) -> Optional[dict]:
    """Refuse (InputError, nothing touched) to replace `output` unless it is missing, an empty folder, a folder
    holding only `allowed` entries, or a complete sid_spark output (its manifest names a kind) of `kind` (any
    kind when None). Returns the existing manifest (None when there is none)."""
    if not exists(output, spark):
        return None
    if not is_dir(output, spark):
        raise InputError(f"output {output!r} exists and is a file, not a sid_spark output: refusing to replace it")
    names = list_names(output, spark)
    if manifest_name not in names:
        if all(n in allowed for n in names):
            return None
        raise InputError(f"output {output!r} exists and is not a complete sid_spark output (no {manifest_name}): "
                         f"refusing to replace it (remove it or choose another path)")
    try:
        manifest = json.loads(read_text(join(output, manifest_name), spark) or "")
    except ValueError:
        manifest = None
    if not isinstance(manifest, dict) or not manifest.get("kind"):
        raise InputError(f"output {output!r} holds a {manifest_name} that sid_spark did not write: refusing to "
                         f"replace it")
    if kind is not None and manifest["kind"] != kind:
        raise InputError(f"output {output!r} holds a {manifest['kind']!r} output, not {kind!r}: refusing to "
                         f"replace it")
    return manifest


# ---- what a command declares about its output ----------------------------------------------------------------
@dataclass
class Policy:
    max_reject_share: Optional[float] = None
    kind: Optional[str] = None


_POLICIES: Dict[str, Policy] = {}


def guard_output(spark, output: Optional[str], *inputs: Optional[str], max_reject_share: Optional[float] = None,
                 kind: Optional[str] = None, manifest_name: str = "_manifest.json") -> None:
    """What a command calls before any work: `output` overlaps none of `inputs` (nor the model), an existing
    `output` is a complete sid_spark output (of `kind`), and the commit refuses a rejected share above
    `max_reject_share`."""
    if not output:
        return
    check_no_overlap(output, *inputs, spark=spark)
    check_replaceable(output, manifest_name, kind, spark=spark)
    _POLICIES[qualify(output, spark)] = Policy(max_reject_share, kind)


def policy(output: str, spark=None) -> Policy:
    return _POLICIES.get(qualify(output, spark), Policy())


def check_reject_share(output: str, read: Optional[int], rejected: Optional[int], limit: Optional[float]) -> None:
    if limit is None or not read or rejected is None:
        return
    share = rejected / read
    if share > limit:
        raise InputError(f"{rejected} of {read} items rejected ({share:.1%} > max_reject_share {limit}): "
                         f"{output} is kept as it was (wrong catalog or embedding model? see _rejects reasons)")


# ---- writer leases -------------------------------------------------------------------------------------------
LEASE_CONF = "spark.sid_spark.writerLeaseSeconds"
DEFAULT_LEASE_S = 600.0


def lease_seconds(spark=None) -> float:
    s = session(spark)
    try:
        return float(s.conf.get(LEASE_CONF, str(DEFAULT_LEASE_S)))
    except Exception:
        return DEFAULT_LEASE_S


class Lease:
    """A live-writer marker: a small file holding the writer's last heartbeat (epoch seconds), rewritten every
    lease/5 seconds by a daemon thread while the writer runs. Another writer treats the staging folders of a
    lease as its owner's until the heartbeat is older than the lease (the owner died)."""

    def __init__(self, path: str, spark=None):
        self.path = path
        self.spark = session(spark)
        self.seconds = lease_seconds(self.spark)
        self._stop = threading.Event()
        self._beat()
        self._thread = threading.Thread(target=self._run, name=f"sid_spark-lease-{path}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        write_text(self.path, json.dumps({"heartbeat": time.time(), "lease_s": self.seconds}), self.spark)

    def _run(self) -> None:
        while not self._stop.wait(max(0.5, self.seconds / 5)):
            try:
                self._beat()
            except Exception as e:  # the next beat retries; a writer that cannot beat is soon seen as dead
                log.warning("lease %s: heartbeat failed (%s)", self.path, e)

    def release(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        delete(self.path, self.spark, recursive=False)


def lease_is_live(path: str, spark=None) -> bool:
    """True when the lease file exists and its heartbeat is younger than the lease."""
    text = read_text(path, spark) if exists(path, spark) else None
    if text is None:
        return False
    try:
        beat = float(json.loads(text)["heartbeat"])
    except (ValueError, KeyError, TypeError):
        beat = modification_ms(path, spark) / 1000.0
    return time.time() - beat < lease_seconds(spark)


# ---- reliable checkpoints ------------------------------------------------------------------------------------
def checkpoint_dir(spark) -> Optional[str]:
    """The folder for reliable checkpoints (a lost executor costs a recomputation, not the job): the session's
    `spark.checkpoint.dir` when set, else the folder `commit_output` sets up beside the staging folder of the
    output being written (on the output's filesystem, deleted after the commit); None outside any commit (then
    a local checkpoint is the fallback)."""
    return spark.sparkContext.getCheckpointDir()


def use_checkpoint_dir(spark, path: Optional[str]) -> None:
    """Set (path) or unset (None) the SparkContext's checkpoint folder."""
    sc = spark.sparkContext
    if path is not None:
        sc.setCheckpointDir(path)
        return
    none = getattr(getattr(sc._jvm.scala, "None$"), "MODULE$")
    getattr(sc._jsc.sc(), "checkpointDir_$eq")(none)


def materialize_with(df, action):
    """(materialize(df), action(it)): `action` is a job that reads every row (an aggregation the caller needs, e.g.
    per-code counts), and that job computes and keeps the rows: one job instead of materialize's and the action's
    (with a reliable checkpoint, the write from the cache follows it, as in materialize)."""
    if not checkpoint_dir(df.sparkSession):
        cut = df.localCheckpoint(eager=False)
        return cut, action(cut)
    from pyspark import StorageLevel

    cached = df.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        result = action(cached)
        return cached.checkpoint(eager=True), result
    finally:
        cached.unpersist()


def cache_with(df, action):
    """(df persisted, action(it)) in one job: for a table whose lineage is one read of the input and a map, so
    recomputing a lost executor's partitions costs only those tasks and a cut (a reliable checkpoint would write
    every row once more) buys nothing. `action` reads every row (an aggregation the caller needs); the caller
    unpersists the table when done (on an error in `action`, it is unpersisted here)."""
    from pyspark import StorageLevel

    cached = df.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        return cached, action(cached)
    except BaseException:
        cached.unpersist()
        raise


def materialize(df, eager: bool = True):
    """Compute `df` once and cut its lineage: a reliable checkpoint when `checkpoint_dir` has a folder (a lost
    executor then costs a recomputation of the tasks, not the job), else a local one. Every cut of the balanced,
    append and dedup paths goes through here.

    A reliable checkpoint writes the RDD in a second job after the one that computes it; the rows are cached
    in between so that second job reads them instead of computing them again."""
    if not checkpoint_dir(df.sparkSession):
        return df.localCheckpoint(eager=eager)
    if not eager:
        return df.checkpoint(eager=False)
    from pyspark import StorageLevel

    cached = df.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        return cached.checkpoint(eager=True)
    finally:
        cached.unpersist()
