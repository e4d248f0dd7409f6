"""The direct Parquet read of the greedy encode (issue 17): executors decode the input files with pyarrow, so the
vectors never pass through the JVM's row format or its Arrow conversion.

The JVM path reads each vector into Spark's rows, checks it with SQL expressions, hashes it, converts it to Arrow
and sends it to Python: on the team's 2-core machine that hand-off alone runs at ~150-180k items/s for 128-d
vectors, before any encoding. Here Spark still lists and schedules the files and reads their bytes through Hadoop's
FileSystem (the `binaryFile` source: hdfs, s3a, gs, viewfs, file alike); each task receives whole files as opaque
bytes and does, per block of rows and in numpy, what the JVM path does in SQL:
- the reject reason, with the same rules and precedence as `prepare.row_reason`;
- the vector's length (`size`) and fingerprint (Spark's `xxhash64` of the array<float>, bit for bit);
- then the same runner and kernel as the JVM path (`quantize.checked_rows_encoder`).
Its output is the JVM path's narrow table, row for row, so everything after it is shared.

Used automatically (`spark.sid_spark.directParquetRead=auto`) when the input is a plain Parquet scan (no
partition columns, no filter or projection on top), the vector column is array<float|double>, the id is a plain
scalar, and no file is larger than DIRECT_MAX_FILE_BYTES (a task holds one file's bytes at a time: the JVM's copy
and Python's). Anything else — tables that are not plain Parquet paths, ml Vectors, big files — takes the JVM path.
`false` always takes the JVM path.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator, Optional
from urllib.parse import unquote

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from . import prepare as P
from .prepare import FILE, VEC
from .sid_table import FP
from .single_pass import LEN, REASON

log = logging.getLogger("sid_spark.encode")

DIRECT_READ_CONF = "spark.sid_spark.directParquetRead"  # auto (default) | false
DIRECT_MAX_FILE_BYTES = 128 << 20
DIRECT_BATCH_ROWS = 16_384
ARROW_BATCH_CONF = "spark.sql.execution.arrow.maxRecordsPerBatch"

# Reason codes, in reverse precedence: a later rule overwrites an earlier one, so the first rule of
# prepare.row_reason that holds is the one a row keeps.
_REASONS = [None, P.ZERO_VECTOR, P.NON_FINITE, P.NULL_ELEMENT, P.WRONG_DIMENSION, P.EMPTY_VECTOR, P.NULL_VECTOR,
            P.NULL_ID]
_ID_TYPES = (T.StringType, T.LongType, T.IntegerType, T.ShortType, T.ByteType, T.BinaryType)


def parquet_files(spark: SparkSession, df: DataFrame, id_col: str, vec_col: str) -> Optional[list]:
    """The input files when `df` is eligible for the direct read (see the module), else None."""
    if spark.conf.get(DIRECT_READ_CONF, "auto").strip().lower() in ("false", "off", "jvm"):
        return None
    try:
        vt = df.schema[vec_col].dataType
        it = df.schema[id_col].dataType
        if not (isinstance(vt, T.ArrayType) and isinstance(vt.elementType, (T.FloatType, T.DoubleType))):
            return None
        if not isinstance(it, _ID_TYPES):
            return None
        plan = df._jdf.queryExecution().analyzed()
        if plan.getClass().getSimpleName() != "LogicalRelation":
            return None
        rel = plan.relation()
        if rel.getClass().getSimpleName() != "HadoopFsRelation":
            return None
        if "Parquet" not in rel.fileFormat().getClass().getSimpleName() or rel.partitionSchema().length() > 0:
            return None
    except Exception:  # Spark Connect (no _jdf), a plan shape this Spark names differently: the JVM path
        return None
    # inputFiles() gives URIs (a space is %20); binaryFile's load() takes Hadoop path strings and reads them as
    # globs, so a name with a glob character would match other files or none: such inputs take the JVM path.
    files = [unquote(f) for f in df.inputFiles()]  # driver-ok: one name per file, not per item
    if any(c in f for f in files for c in "*?[]{}\\"):
        return None
    return files


def _binary_files(spark: SparkSession, files: list) -> Optional[DataFrame]:
    """The files as binaryFile rows (path, content), or None when one is too big for the direct read."""
    bins = spark.read.format("binaryFile").load(files)
    biggest = bins.agg(F.max("length")).first()[0]  # driver-ok: one row; reads no file's content
    if biggest is not None and biggest > DIRECT_MAX_FILE_BYTES:
        log.info("direct Parquet read skipped: a file holds %d bytes (> %d); the JVM path reads the vectors",
                 biggest, DIRECT_MAX_FILE_BYTES)
        return None
    return bins.select("path", "content")


def _checked_schema(id_field: T.StructField) -> T.StructType:
    return T.StructType([id_field, T.StructField(VEC, T.ArrayType(T.FloatType()), True),
                         T.StructField(REASON, T.StringType(), True), T.StructField(FP, T.LongType(), False),
                         T.StructField(LEN, T.IntegerType(), True), T.StructField(FILE, T.StringType(), False)])


@contextmanager
def one_file_per_batch(spark: SparkSession):
    """While a direct-read job runs: one file's bytes per Arrow batch into Python (the default would send up to
    10,000 files in one)."""
    before = spark.conf.get(ARROW_BATCH_CONF, None)
    spark.conf.set(ARROW_BATCH_CONF, "1")
    try:
        yield
    finally:
        if before is None:
            spark.conf.unset(ARROW_BATCH_CONF)
        else:
            spark.conf.set(ARROW_BATCH_CONF, before)


def direct_checked(spark: SparkSession, df: DataFrame, id_col: str, vec_col: str, dim: int, files: list,
                   stage=None) -> Optional[DataFrame]:
    """The checked rows of `df`'s files (id, _vec, reason, fp, len, file: the JVM path's rows and schema, but a
    rejected row keeps its vector), decoded in the executors; None when a file is too big. stage: a function
    (checked schema) -> (schema, partition function) applied to the checked batches in the same task (the balanced
    encode's chain pass). Run its job inside `one_file_per_batch`."""
    bins = _binary_files(spark, files)
    if bins is None:
        return None
    id_field = df.schema[id_col]
    id_type = _arrow_type(id_field.dataType)
    schema = _checked_schema(id_field)
    then = None
    if stage is not None:
        schema, then = stage(schema)

    def partition(batches: Iterator[pa.RecordBatch]):
        checked = _decoded(batches, id_col, vec_col, dim, id_type)
        return checked if then is None else then(checked)

    return bins.mapInArrow(partition, schema)


def direct_encoded(spark: SparkSession, df: DataFrame, q, id_col: str, vec_col: str, files: list):
    """A function `write(path)` that runs the pass and writes the narrow encoded table of `df`'s files (the same
    rows and schema as the JVM path's), or None when a file is too big for the direct read."""
    from .quantize import checked_rows_encoder

    cfg = q.config
    out = direct_checked(spark, df, id_col, vec_col, q.dim, files,
                         stage=lambda schema: checked_rows_encoder(schema, cfg.id_col, cfg.sid_col, REASON, q.state(),
                                                                   q.dim))
    if out is None:
        return None

    def write(path: str) -> None:
        with one_file_per_batch(spark):
            out.write.parquet(path)

    return write


def _arrow_type(dt: T.DataType) -> pa.DataType:
    from pyspark.sql.pandas.types import to_arrow_type

    return to_arrow_type(dt)


def _decoded(batches: Iterator[pa.RecordBatch], id_col: str, vec_col: str, dim: int,
             id_type: pa.DataType) -> Iterator[pa.RecordBatch]:
    """binaryFile rows (path, content) -> checked batches (id, _vec, reason, fp, len, file), one file at a time."""
    import pyarrow.parquet as pq

    for b in batches:
        paths, contents = b.column(0), b.column(1)
        for i in range(b.num_rows):
            name = paths[i].as_py()
            pf = pq.ParquetFile(pa.BufferReader(contents[i].as_buffer()))
            for rb in pf.iter_batches(batch_size=DIRECT_BATCH_ROWS, columns=[id_col, vec_col], use_threads=False):
                if rb.num_rows:
                    yield checked_batch(rb.column(0), rb.column(1), dim, id_col, id_type, name)


def checked_batch(ids: pa.Array, vec: pa.Array, dim: int, id_col: str, id_type: pa.DataType,
                  file_name: str) -> pa.RecordBatch:
    """What the JVM path computes per row in SQL, for one block: (id, _vec as list<float> or null, reason, xxhash64
    of the float vector (valid rows; 42, the hash of null, elsewhere), size, file)."""
    n = len(vec)
    if not pa.types.is_list(vec.type):  # large_list, fixed_size_list
        vec = vec.cast(pa.list_(vec.type.value_type))
    vec_null = _nulls(vec)
    offs = vec.offsets.to_numpy(zero_copy_only=False).astype(np.int64)
    start = int(offs[0])
    vals = vec.values.slice(start, int(offs[-1]) - start)
    offs = offs - start
    lengths = np.diff(offs)
    with np.errstate(over="ignore", invalid="ignore"):
        v = vals.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)  # double -> float as Spark's cast
    elem_null = _nulls(vals) if vals.null_count else None

    code = np.zeros(n, np.int8)
    if elem_null is None and len(v) == n * dim and (lengths == dim).all():
        # The usual block: every vector has the model's length and no null element; two passes over it.
        m = v.reshape(n, dim)
        code[~m.any(axis=1)] = 1
        code[~np.isfinite(m).all(axis=1)] = 2
    else:
        def per_row(flag):
            c = np.zeros(len(flag) + 1, np.int64)
            np.cumsum(flag, out=c[1:])
            return c[offs[1:]] - c[offs[:-1]]

        finite = np.isfinite(v)
        nan = np.isnan(v)
        if elem_null is not None:
            nan &= ~elem_null
            finite |= elem_null
        n_nan = per_row(nan)
        n_nonzero = per_row((v != 0) if elem_null is None else ((v != 0) & ~elem_null))
        n_null = per_row(elem_null) if elem_null is not None else np.zeros(n, np.int64)
        code[n_nonzero == 0] = 1
        code[per_row(~finite) > 0] = 2
        code[(n_null > 0) & (n_nan == 0)] = 3
        code[lengths != dim] = 4
        code[lengths == 0] = 5
    code[vec_null] = 6
    if ids.null_count:
        code[_nulls(ids)] = 7
    ok = code == 0

    fp = np.full(n, 42, np.int64)
    if ok.any():
        if ok.all() and len(v) == n * dim:
            m = v.reshape(n, dim)
        else:
            m = v[offs[:-1][ok][:, None] + np.arange(dim)]
        fp[ok] = spark_xxhash64_floats(m)
    reason = pa.DictionaryArray.from_arrays(pa.array(code, pa.int8(), mask=ok),
                                            pa.array([""] + _REASONS[1:], pa.string()))
    vec_out = pa.ListArray.from_arrays(pa.array(offs.astype(np.int32)), pa.array(v, pa.float32()),
                                       mask=pa.array(vec_null) if vec_null.any() else None)
    length = pa.array(lengths.astype(np.int32), pa.int32(), mask=vec_null if vec_null.any() else None)
    if ids.type != id_type:
        ids = ids.cast(id_type)
    return pa.RecordBatch.from_arrays(
        [ids, vec_out, reason.cast(pa.string()), pa.array(fp, pa.int64()), length,
         pa.repeat(pa.scalar(file_name, pa.string()), n)],
        names=[id_col, VEC, REASON, FP, LEN, FILE])


def _nulls(arr: pa.Array) -> np.ndarray:
    return arr.is_null().to_numpy(zero_copy_only=False)


_P1 = np.uint64(0x9E3779B185EBCA87)
_P2 = np.uint64(0xC2B2AE3D27D4EB4F)
_P3 = np.uint64(0x165667B19E3779F9)
_P5_4 = np.uint64((0x27D4EB2F165667C5 + 4) & 0xFFFFFFFFFFFFFFFF)


def spark_xxhash64_floats(m: np.ndarray, seed: int = 42, chunk: int = 8192) -> np.ndarray:
    """Spark's `xxhash64(array<float>)` of each row of the (n, d) float32 matrix `m` (no nulls): XxHash64's
    hashInt of each element's bits, the previous element's hash as the seed, -0.0 hashed as 0.0; as Spark's
    signed longs. Vectorised over rows (`chunk` at a time, so the working arrays stay in cache), d sequential
    steps of 14 in-place uint64 operations: ~2 us per 128-d row on one core."""
    bits = np.ascontiguousarray(m, np.float32).view(np.uint32)
    out = np.empty(len(bits), np.uint64)
    for s in range(0, len(bits), chunk):
        b = bits[s:s + chunk]
        cols = np.ascontiguousarray(np.where(b == np.uint32(0x80000000), np.uint32(0), b).T)
        h = np.full(len(b), seed, np.uint64)
        t = np.empty_like(h)
        for j in range(cols.shape[0]):
            h += _P5_4
            np.multiply(cols[j], _P1, out=t, dtype=np.uint64)
            h ^= t
            np.left_shift(h, np.uint64(23), out=t)
            h >>= np.uint64(41)
            h |= t
            h *= _P2
            h += _P3
            np.right_shift(h, np.uint64(33), out=t)
            h ^= t
            h *= _P2
            np.right_shift(h, np.uint64(29), out=t)
            h ^= t
            h *= _P3
            np.right_shift(h, np.uint64(32), out=t)
            h ^= t
        out[s:s + chunk] = h
    return out.view(np.int64)
