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
