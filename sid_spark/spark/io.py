"""Reading inputs and committing outputs atomically (staging directory + rename, manifest inside), through
sid_spark.storage (Hadoop's FileSystem, any scheme).

An existing output is replaced only when it is a complete sid_spark output of the same kind; each writer stages
into its own hidden folder, marked live by a lease (a heartbeat file), so a second writer or a reader never
deletes the staging folder of a writer that still runs.
"""
from __future__ import annotations

import contextlib
import json
import logging
import threading
import uuid
from typing import Callable, Iterator, Optional

from pyspark.sql import DataFrame, SparkSession

from .. import storage
from ..errors import InputError

log = logging.getLogger("sid_spark.io")

MANIFEST = "_manifest.json"
REJECTS = "_rejects"


def read_input(spark: SparkSession, source: str) -> DataFrame:
    """A Parquet path (file or directory, any Hadoop filesystem) or a catalog table name."""
    if _looks_like_path(source):
        if not _fs_exists(spark, source):
            recover_output(spark, source)  # a writer killed between its two renames: put the previous one back
        if not _fs_exists(spark, source):
            raise InputError(f"input {source!r} does not exist")
        return spark.read.parquet(source)
    try:
        return spark.table(source)
    except Exception as e:  # AnalysisException: table not found
        raise InputError(f"input {source!r} is neither an existing Parquet path nor a table ({type(e).__name__})") from None


def _looks_like_path(source: str) -> bool:
    return storage.looks_like_path(source)


def _fs_exists(spark: SparkSession, path: str) -> bool:
    return storage.exists(path, spark)


def write_text(spark: SparkSession, path: str, text: str) -> None:
    storage.write_text(path, text, spark)


def read_text(spark: SparkSession, path: str) -> Optional[str]:
    return storage.read_text(path, spark)


def _split(spark: SparkSession, output: str):
    """(parent folder, last name) of `output`, qualified."""
    p, fs = storage._path(output, spark)
    q = fs.makeQualified(p)
    parent = q.getParent()
    return (parent.toString() if parent is not None else None), q.getName()


def commit_output(spark: SparkSession, output: str, write: Callable[[str], dict], kind: Optional[str] = None,
                  manifest_name: str = MANIFEST, allowed: tuple = ()) -> dict:
    """Run `write(staging_dir)` (which writes every part of the output and returns the manifest), write the
    manifest last, then rename staging -> output. A killed job leaves only a hidden staging directory; the
    previous output stays intact until the rename.

    Refused (InputError, nothing touched): an existing `output` that is not a complete sid_spark output of the
    same kind (`kind`, else the manifest's), and a rejected share above the command's max_reject_share. While
    `write` runs, reliable checkpoints go to a folder beside staging unless spark.checkpoint.dir is set."""
    pol = storage.policy(output, spark)
    kind = kind or pol.kind
    existing = storage.check_replaceable(output, manifest_name, kind, allowed, spark)
    parent, name = _split(spark, output)
    if parent is None:
        raise InputError(f"output {output!r} is the root of its filesystem")
    if not storage.exists(parent, spark):
        storage.mkdirs(parent, spark)
    recover_output(spark, output)
    staging = storage.join(parent, f".{name}.staging-{uuid.uuid4().hex[:12]}")
    lease = storage.Lease(staging + ".lease", spark)
    ckpt = _checkpoints_begin(spark, staging + ".ckpt")  # joins an enclosing output_checkpoints
    try:
        try:
            manifest = write(staging)
            new_kind = manifest.get("kind")
            if existing is not None and new_kind and existing.get("kind") != new_kind:
                raise InputError(f"output {output!r} holds a {existing.get('kind')!r} output, not {new_kind!r}: "
                                 f"refusing to replace it")
            storage.check_reject_share(output, manifest.get("items_read"), manifest.get("items_rejected"),
                                       pol.max_reject_share)
            if not storage.exists(staging, spark):  # never re-create a staging folder someone removed
                raise IOError(f"the staging folder of {output} vanished while it was written (deleted by another "
                              f"writer?); nothing was committed")
            write_text(spark, storage.join(staging, manifest_name),
                       json.dumps(manifest, indent=2, sort_keys=True, default=str))
            # The output may have changed hands while we wrote: check again right before the swap.
            storage.check_replaceable(output, manifest_name, new_kind or kind, allowed, spark)
        except BaseException:
            storage.delete(staging, spark)  # a failed write leaves nothing; a killed one is cleaned by recover_output
            raise
        try:
            won = _swap_in(spark, staging, output)
        except BaseException:
            storage.delete(staging, spark)
            raise
    finally:
        _checkpoints_end(spark, ckpt)
        lease.release()
    if not won:
        text = read_text(spark, storage.join(output, manifest_name))
        return json.loads(text) if text else manifest
    return manifest


def _swap_in(spark: SparkSession, staging: str, output: str) -> bool:
    """Rename staging -> output (moving the previous output aside first). False when a concurrent writer
    committed `output` between our check and our rename: Hadoop then moves staging *into* the output (as a
    hidden folder that readers skip); it is removed and the other writer's complete output is kept."""
    old = staging + ".old"
    for _ in range(3):  # the previous output may vanish under us (another writer moving it aside): look again
        if storage.exists(output, spark) and not storage.rename(output, old, spark):
            continue
        if storage.rename(staging, output, spark):
            break
        if storage.exists(old, spark):  # put the previous output back unless another writer's is there now
            if storage.exists(output, spark):
                storage.delete(old, spark)
            else:
                storage.rename(old, output, spark)
    else:
        raise IOError(f"could not commit {output} (another writer kept moving it)")
    if storage.exists(old, spark):
        storage.delete(old, spark)
    nested = storage.join(output, staging.rstrip("/").rsplit("/", 1)[-1])
    if storage.exists(nested, spark):
        storage.delete(nested, spark)
        log.warning("another writer committed %s at the same time; its complete output is kept", output)
        return False
    return True


# ---- reliable checkpoints of the output being written --------------------------------------------------------
@contextlib.contextmanager
def output_checkpoints(spark: SparkSession, output: str) -> Iterator[Optional[str]]:
    """Reliable checkpoints (storage.materialize) for work that builds `output` before `commit_output` starts
    (dedup's rounds, the appended items): a `.<name>.staging-<tag>.ckpt` folder beside the output, on its
    filesystem, marked live by its own lease (so `recover_output` leaves it alone and removes it once its
    driver died), deleted on exit. `commit_output` inside the block uses the same folder. Nothing when the
    session has spark.checkpoint.dir. Yields the folder (None when none was set up)."""
    parent, name = _split(spark, output)
    if parent is None:
        raise InputError(f"output {output!r} is the root of its filesystem")
    base = storage.join(parent, f".{name}.staging-{uuid.uuid4().hex[:12]}")
    lease = storage.Lease(base + ".lease", spark)
    ckpt = _checkpoints_begin(spark, base + ".ckpt")
    try:
        yield ckpt
    finally:
        _checkpoints_end(spark, ckpt)
        lease.release()


_CKPT_LOCK = threading.Lock()
_CKPT = {"path": None, "users": 0}


def _checkpoints_begin(spark: SparkSession, path: str) -> Optional[str]:
    """Point the SparkContext's checkpoint folder at `path` (on the output's filesystem) unless the session has
    one; nested or concurrent commits in one driver share the first one's folder."""
    with _CKPT_LOCK:
        if _CKPT["users"]:
            _CKPT["users"] += 1
            return _CKPT["path"]
        if spark.sparkContext.getCheckpointDir():
            return None  # the operator's spark.checkpoint.dir
        storage.use_checkpoint_dir(spark, path)
        _CKPT.update(path=path, users=1)
        return path


def _checkpoints_end(spark: SparkSession, path: Optional[str]) -> None:
    if path is None:
        return
    with _CKPT_LOCK:
        _CKPT["users"] -= 1
        if _CKPT["users"] > 0:
            return
        owned = _CKPT["path"]
        _CKPT.update(path=None, users=0)
        storage.use_checkpoint_dir(spark, None)
    storage.delete(owned, spark)


def recover_output(spark: SparkSession, output: str) -> None:
    """Undo what a dead writer of `output` left behind, before the next one writes it; a live writer's folders
    (its lease's heartbeat is younger than the lease) are left alone.

    Killed while writing: a hidden `.<name>.staging-<tag>` directory (+ `.lease`, `.ckpt`), deleted (never
    visible as output). Killed between moving the previous output aside and renaming the new one in: `output`
    is missing and the previous one sits in `.<name>.staging-<tag>.old`; it is renamed back. Killed after the
    commit, before the clean-up: the `.old` directory is deleted.
    """
    parent, name = _split(spark, output)
    if parent is None or not storage.exists(parent, spark):
        return
    prefix = storage.join(parent, f".{name}.staging-")
    tags: dict = {}
    for path in storage.glob(prefix + "*", spark):
        tag = path[path.rfind(f".{name}.staging-") + len(f".{name}.staging-"):].split(".")[0]
        tags.setdefault(tag, []).append(path)
    dead = {t: ps for t, ps in tags.items() if not storage.lease_is_live(prefix + t + ".lease", spark)}
    olds = [p for ps in dead.values() for p in ps if p.endswith(".old")]
    if olds and not storage.exists(output, spark):
        newest = max(olds, key=lambda p: storage.modification_ms(p, spark))
        if not storage.rename(newest, output, spark):
            raise IOError(f"could not restore the previous {output} from {newest}")
        log.warning("restored the previous %s from %s (a writer died between its two renames)", output, newest)
        olds.remove(newest)
        for ps in dead.values():
            if newest in ps:
                ps.remove(newest)
    for ps in dead.values():
        for p in sorted(ps, key=lambda p: p.endswith(".lease")):  # the lease last
            if storage.exists(p, spark):
                storage.delete(p, spark)


def read_manifest(spark: SparkSession, output: str) -> Optional[dict]:
    text = read_text(spark, output.rstrip("/") + "/" + MANIFEST)
    return None if text is None else json.loads(text)
