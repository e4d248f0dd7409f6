"""The one vector-column adapter: array<float>, array<double> or pyspark.ml Vector -> array<float> in SQL,
then Arrow list<float> -> one contiguous (n, d) float32 matrix per batch, without per-row Python."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
from pyspark.ml.functions import vector_to_array
from pyspark.ml.linalg import VectorUDT
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from ..errors import InputError

_NUMERIC = (T.FloatType, T.DoubleType, T.IntegerType, T.LongType, T.ShortType, T.ByteType, T.DecimalType)


def float_array_column(df: DataFrame, col: str) -> Column:
    """`col` as array<float>, whatever numeric form it came in; structural errors name the column and type."""
    if col not in df.columns:
        raise InputError(f"vector column '{col}' not found (columns: {', '.join(df.columns)})")
    dt = df.schema[col].dataType
    if isinstance(dt, VectorUDT):
        return vector_to_array(F.col(col), "float32")
    if isinstance(dt, T.ArrayType) and isinstance(dt.elementType, T.FloatType):
        return F.col(col)
    if isinstance(dt, T.ArrayType) and isinstance(dt.elementType, _NUMERIC):
        return F.col(col).cast(T.ArrayType(T.FloatType()))
    raise InputError(f"vector column '{col}' has type {dt.simpleString()}; expected array<float>, array<double> "
                     f"or a pyspark.ml Vector")


def arrow_matrix(arr: pa.Array, dim: int) -> np.ndarray:
    """list<float> Arrow array (no nulls, every row of length `dim`) -> (n, dim) float32, zero-copy where Arrow allows."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    n = len(arr)
    if pa.types.is_binary(arr.type):
        return packed_matrix(arr, dim)
    flat = arr.flatten()
    if len(flat) != n * dim:
        raise ValueError(f"expected {n} vectors of dimension {dim}, got {len(flat)} values")
    values = flat.to_numpy(zero_copy_only=False)
    if values.dtype != np.float32:
        values = values.astype(np.float32)
    return values.reshape(n, dim)


def matrix_to_list_array(m: np.ndarray, value_type=pa.float32()) -> pa.Array:
    """(n, d) matrix -> fixed-length list Arrow array, built from one values buffer."""
    n, d = m.shape
    offsets = pa.array(np.arange(0, (n + 1) * d, d, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(np.ascontiguousarray(m).reshape(-1), type=value_type))


def pack_vectors(vec: pa.Array, keep: np.ndarray, dim: int) -> pa.Array:
    """list<float> vectors -> binary (each kept row's `dim` float32 as 4 * dim bytes; the other rows null): Spark
    takes a binary value from Arrow as one copy, an array<float> element by element."""
    n = len(vec)
    m = np.ascontiguousarray(arrow_matrix(vec.filter(pa.array(keep)), dim) if keep.any()
                             else np.empty((0, dim), np.float32))
    offsets = np.zeros(n + 1, np.int32)
    np.cumsum(np.where(keep, 4 * dim, 0), out=offsets[1:])
    validity = pa.array(keep, pa.bool_()).buffers()[1]
    return pa.Array.from_buffers(pa.binary(), n, [validity, pa.py_buffer(offsets), pa.py_buffer(m.view(np.uint8))],
                                 null_count=int(n - keep.sum()))


def packed_matrix(arr: pa.Array, dim: int) -> np.ndarray:
    """The inverse of pack_vectors for a binary array without nulls: (n, dim) float32 (zero-copy when aligned)."""
    n = len(arr)
    if arr.null_count:
        raise ValueError("packed vectors: null rows cannot be read as a matrix")
    offsets = np.frombuffer(arr.buffers()[1], np.int32, n + 1, offset=4 * arr.offset)
    start, stop = int(offsets[0]), int(offsets[-1])
    if stop - start != 4 * n * dim or not (np.diff(offsets) == 4 * dim).all():
        raise ValueError(f"expected {n} packed vectors of dimension {dim}")
    data = arr.buffers()[2]
    values = np.frombuffer(data, np.uint8, stop - start, offset=start)
    if values.ctypes.data % 4:
        values = values.copy()
    return values.view(np.float32).reshape(n, dim)
