"""Reading inputs and committing outputs atomically (staging directory + rename, manifest inside)."""
from __future__ import annotations

import json
import uuid
from typing import Callable, Optional

from pyspark.sql import DataFrame, SparkSession

from ..errors import InputError

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
    return "/" in source or source.endswith(".parquet") or ":" in source


def _jpath(spark: SparkSession, path: str):
    jvm = spark.sparkContext._jvm
    p = jvm.org.apache.hadoop.fs.Path(path)
    return p, p.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())


def _fs_exists(spark: SparkSession, path: str) -> bool:
    p, fs = _jpath(spark, path)
    return fs.exists(p)


def write_text(spark: SparkSession, path: str, text: str) -> None:
    p, fs = _jpath(spark, path)
    out = fs.create(p, True)
    try:
        out.write(bytearray(text.encode("utf-8")))
    finally:
        out.close()


def read_text(spark: SparkSession, path: str) -> Optional[str]:
    p, fs = _jpath(spark, path)
    if not fs.exists(p):
        return None
    jvm = spark.sparkContext._jvm
    stream = fs.open(p)
    try:
        return jvm.org.apache.commons.io.IOUtils.toString(stream, "UTF-8")
    finally:
        stream.close()


def commit_output(spark: SparkSession, output: str, write: Callable[[str], dict]) -> dict:
    """Run `write(staging_dir)` (which writes every part of the output and returns the manifest), write the
    manifest last, then rename staging -> output. A killed job leaves only a hidden staging directory; the
    previous output stays intact until the rename."""
    out_path, fs = _jpath(spark, output)
    parent = out_path.getParent()
    if parent is not None and not fs.exists(parent):
        fs.mkdirs(parent)
    recover_output(spark, output)
    tag = uuid.uuid4().hex[:8]
    staging = f"{output.rstrip('/')}.__staging-{tag}" if parent is None else \
        parent.toString() + f"/.{out_path.getName()}.staging-{tag}"
    jvm = spark.sparkContext._jvm
    st_path = jvm.org.apache.hadoop.fs.Path(staging)
    try:
        manifest = write(staging)
        write_text(spark, staging + "/" + MANIFEST, json.dumps(manifest, indent=2, sort_keys=True, default=str))
    except BaseException:
        fs.delete(st_path, True)  # a failed write leaves nothing behind; a killed one is cleaned by recover_output
        raise
    if fs.exists(out_path):
        old = jvm.org.apache.hadoop.fs.Path(staging + ".old")
        if not fs.rename(out_path, old):
            raise IOError(f"could not move the previous {output} aside")
        if not fs.rename(st_path, out_path):
            fs.rename(old, out_path)
            raise IOError(f"could not commit {output}")
        fs.delete(old, True)
    elif not fs.rename(st_path, out_path):
        raise IOError(f"could not commit {output}")
    return manifest


def recover_output(spark: SparkSession, output: str) -> None:
    """Undo what a job killed inside `commit_output` left behind, before the next one writes `output`.

    Killed while writing: a hidden `.<name>.staging-<tag>` directory, deleted (never visible as output).
    Killed between moving the previous output aside and renaming the new one in: `output` is missing and the
    previous one sits in `.<name>.staging-<tag>.old`; it is renamed back. Killed after the commit, before the
    clean-up: the `.old` directory is deleted.
    """
    out_path, fs = _jpath(spark, output)
    parent = out_path.getParent()
    if parent is None or not fs.exists(parent):
        return
    jvm = spark.sparkContext._jvm
    pattern = jvm.org.apache.hadoop.fs.Path(parent, f".{out_path.getName()}.staging-*")
    leftovers = sorted((st.getPath() for st in (fs.globStatus(pattern) or [])), key=lambda p: p.getName())
    olds = [p for p in leftovers if p.getName().endswith(".old")]
    if olds and not fs.exists(out_path):
        newest = max(olds, key=lambda p: fs.getFileStatus(p).getModificationTime())
        if not fs.rename(newest, out_path):
            raise IOError(f"could not restore the previous {output} from {newest.toString()}")
        olds.remove(newest)
    for p in leftovers:
        if fs.exists(p):
            fs.delete(p, True)


def read_manifest(spark: SparkSession, output: str) -> Optional[dict]:
    text = read_text(spark, output.rstrip("/") + "/" + MANIFEST)
    return None if text is None else json.loads(text)
