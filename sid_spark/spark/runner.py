"""The one partition runner (in the spirit of spark-rapids-ml ``core.py``): every per-partition pass of sid_spark
goes through `map_blocks` (rows in, rows out) or `aggregate_blocks` (rows in, one K-sized result out).

The runner owns what every pass needs and none should write again:
- task set-up: torch threads (one per task, deterministic algorithms) and the task's device (its assigned GPU, else
  the CPU), then the algorithm's own `setup(device)` (codebooks, weights) once per task;
- the vector adapter: the `_vec` column of each Arrow batch becomes one (n, d) float32 tensor on the device,
  zero-copy from Arrow's buffer on the CPU; rows with a reject reason are not handed to the kernel;
- empty batches (skipped) and the output arrays: the kernel returns plain arrays (numpy or torch) per output
  column, the runner builds the Arrow columns from the output schema (list<int> SIDs from one values buffer,
  nulls for rejected rows) and passes every other column of the schema through from the input batch.

An algorithm supplies only a kernel and its output schema:

    def kernel(ctx, x, batch):             # ctx = setup(device); x: (n, d) float32 tensor; batch: the Arrow batch
        return {"sid": codes}              # (n, L) ints -> array<int>; (n,) -> the field's scalar type
    map_blocks(rows, schema, kernel, dim=d, setup=lambda dev: codebooks_on(dev))

A kernel may also return `Block(columns, rows)` where `rows` says which input row each output row repeats (one row
per alternative, for example), or None for nothing. Aggregations fold each block into an accumulator that supports
`+`, `to_bytes` and `from_bytes`; the driver receives one accumulator, combined on the executors beyond a few
partitions.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import numpy as np
import pyarrow as pa
import torch
from pyspark.sql import DataFrame
from pyspark.sql import types as T

from .device import configure_torch_for_task, task_device
from .prepare import VEC
from .vectors import arrow_matrix


@dataclass
class Block:
    """A kernel's output for one batch: arrays per output column, and (optionally) the input row each output row
    repeats for the pass-through columns (default: output row i is input row i)."""

    columns: dict
    rows: Optional[np.ndarray] = None


def task_setup(device: str = "auto", setup: Optional[Callable] = None):
    """Inside a task: (device, setup(device) or None) after one-thread, deterministic torch set-up."""
    configure_torch_for_task()
    dev = task_device(device)
    return dev, (setup(dev) if setup is not None else None)


def zero_copy_tensor(x: np.ndarray) -> torch.Tensor:
    """A torch view of Arrow's (read-only) values buffer; the kernels never write to their input."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(x)


def batch_matrix(batch: pa.RecordBatch, dim: int, dev: torch.device, keep: Optional[np.ndarray] = None,
                 vec_col: str = VEC) -> torch.Tensor:
    """The batch's vector column as an (n, dim) float32 tensor on `dev` (only the rows where `keep` is True)."""
    vec = batch.column(batch.schema.get_field_index(vec_col))
    if keep is not None and not keep.all():
        vec = vec.filter(pa.array(keep))
    if len(vec) == 0:
        return torch.empty((0, dim), dtype=torch.float32, device=dev)
    return zero_copy_tensor(arrow_matrix(vec, dim)).to(dev)


def sid_array(codes, mask: Optional[np.ndarray] = None) -> pa.Array:
    """(n, T) int codes -> Arrow list<int32> from one values buffer. With `mask` (True = null), codes holds only
    the unmasked rows, in order, and the masked rows are nulls."""
    codes = _numpy(codes)
    width = codes.shape[1] if codes.ndim == 2 else 0
    values = pa.array(codes.astype(np.int32, copy=False).reshape(-1), pa.int32())
    if mask is None:
        offsets = np.arange(0, (len(codes) + 1) * width, width, dtype=np.int32)
        return pa.ListArray.from_arrays(pa.array(offsets), values)
    offsets = np.zeros(len(mask) + 1, np.int32)
    np.cumsum(np.where(mask, 0, width), out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), values, mask=pa.array(mask))


def code_matrix(arr, width: int) -> np.ndarray:
    """The inverse of sid_array: an Arrow list<int> column whose rows all have `width` codes -> (n, width) int64."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    return arr.flatten().to_numpy(zero_copy_only=False).astype(np.int64).reshape(-1, width)


def _numpy(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)


_SCALARS = {T.IntegerType: (np.int32, pa.int32()), T.LongType: (np.int64, pa.int64()),
            T.DoubleType: (np.float64, pa.float64()), T.FloatType: (np.float32, pa.float32()),
            T.ByteType: (np.int8, pa.int8()), T.ShortType: (np.int16, pa.int16()), T.BooleanType: (bool, pa.bool_())}


def to_arrow(value, dtype: T.DataType, mask: Optional[np.ndarray] = None) -> pa.Array:
    """A kernel's array -> the Arrow array of the output field's type (nulls where `mask`, which then covers the
    whole batch while `value` covers only the unmasked rows)."""
    if isinstance(value, (pa.Array, pa.ChunkedArray)):
        return value
    if isinstance(dtype, T.ArrayType) and isinstance(dtype.elementType, T.IntegerType):
        return sid_array(value, mask)
    if isinstance(dtype, T.BinaryType):
        return pa.array(list(value), pa.binary())
    if isinstance(dtype, T.ArrayType) and isinstance(dtype.elementType, T.DoubleType):
        v = _numpy(value).astype(np.float64)
        if mask is not None:
            raise ValueError("masked list<double> outputs are not supported")
        return pa.ListArray.from_arrays(pa.array(np.arange(0, (len(v) + 1) * v.shape[1], v.shape[1], dtype=np.int32)),
                                        pa.array(v.reshape(-1)))
    for t, (np_type, pa_type) in _SCALARS.items():
        if isinstance(dtype, t):
            v = _numpy(value).astype(np_type, copy=False)
            if mask is None:
                return pa.array(v, pa_type)
            full = np.zeros(len(mask), np_type)
            full[~mask] = v
            return pa.array(full, pa_type, mask=mask)
    raise TypeError(f"no Arrow conversion for output type {dtype.simpleString()}")


def _assemble(batch: Optional[pa.RecordBatch], schema: T.StructType, out, mask: Optional[np.ndarray]) -> pa.RecordBatch:
    block = out if isinstance(out, Block) else Block(out)
    take = None if block.rows is None else pa.array(np.asarray(block.rows, np.int64))
    names = batch.schema.names if batch is not None else []
    cols = []
    for f in schema.fields:
        if f.name in block.columns:
            cols.append(to_arrow(block.columns[f.name], f.dataType, mask if take is None else None))
        else:
            col = batch.column(names.index(f.name))
            cols.append(col if take is None else col.take(take))
    return pa.RecordBatch.from_arrays(cols, names=schema.names)


def map_blocks(rows: DataFrame, schema: T.StructType, kernel: Callable, *, dim: int,
               setup: Optional[Callable] = None, device: str = "auto", reason_col: Optional[str] = None,
               finish: Optional[Callable] = None, vec_col: str = VEC, on_device: bool = True) -> DataFrame:
    """`kernel(ctx, x, batch)` on every non-empty Arrow batch of `rows`; its outputs and the pass-through columns
    of `schema` (taken from the batch by name) make the output rows.

    reason_col: rows whose reason is not null are rejects. Their vectors are not handed to the kernel (which sees
    only the valid rows, zero-copy when a batch has no rejects) and their output columns are null.
    finish: `finish(ctx)` after the last batch may return the partition's last output rows (every column of
    `schema` from the kernel, none passed through), for kernels that fold the partition (a running top-k).
    on_device=False: x stays on the CPU (for kernels that move their own blocks), setup still gets the device."""
    return rows.mapInArrow(block_partition(schema, kernel, dim=dim, setup=setup, device=device, reason_col=reason_col,
                                           finish=finish, vec_col=vec_col, on_device=on_device), schema)


def block_partition(schema: T.StructType, kernel: Callable, *, dim: int, setup: Optional[Callable] = None,
                    device: str = "auto", reason_col: Optional[str] = None, finish: Optional[Callable] = None,
                    vec_col: str = VEC, on_device: bool = True) -> Callable:
    """map_blocks' partition function, `partition(batches) -> batches`, for a caller that makes its own Arrow
    batches inside the task (the direct Parquet read decodes them from the files' bytes) and hands them on."""

    def partition(batches: Iterator[pa.RecordBatch]):
        dev, ctx = task_setup(device, setup)
        for batch in batches:
            if batch.num_rows == 0:
                continue
            mask = None
            if reason_col is not None:
                ok = batch.column(batch.schema.get_field_index(reason_col)).is_null().to_numpy(zero_copy_only=False)
                mask = None if ok.all() else ~ok
            x = batch_matrix(batch, dim, dev if on_device else torch.device("cpu"), None if mask is None else ~mask,
                             vec_col)
            out = kernel(ctx, x, batch) if len(x) else _empty_outputs(schema, batch)
            if out is not None:
                yield _assemble(batch, schema, out, mask)
        if finish is not None:
            out = finish(ctx)
            if out is not None:
                yield _assemble(None, schema, out, None)

    return partition


def _empty_outputs(schema, batch) -> dict:
    """Every row of the batch was rejected: the kernel has nothing to do; outputs are all null."""
    return {f.name: np.zeros((0, 0), np.int32) if isinstance(f.dataType, T.ArrayType) else np.zeros(0)
            for f in schema.fields if f.name not in batch.schema.names}


_BLOB = T.StructType([T.StructField("blob", T.BinaryType())])


def aggregate_blocks(rows: DataFrame, kernel: Callable, zero: Callable, *, dim: int,
                     setup: Optional[Callable] = None, device: str = "auto", finish: Optional[Callable] = None,
                     tree_above: int = 32, vec_col: str = VEC):
    """Fold `kernel(ctx, x, batch) -> accumulator` over every non-empty batch of `rows`, one accumulator per
    partition (`zero()` to start; `finish(ctx, acc)` may turn it into another before it travels), summed: the
    driver receives one, whatever the partition count (tree-combined on the executors beyond `tree_above`)."""

    def partition(batches: Iterator[pa.RecordBatch]):
        dev, ctx = task_setup(device, setup)
        acc = zero()
        for batch in batches:
            if batch.num_rows:
                acc = acc + kernel(ctx, batch_matrix(batch, dim, dev, vec_col=vec_col), batch)
        if finish is not None:
            acc = finish(ctx, acc)
        yield pa.RecordBatch.from_arrays([pa.array([acc.to_bytes()], pa.binary())], ["blob"])

    blobs = rows.mapInArrow(partition, _BLOB)
    kind = type(zero())
    return combine_blobs(blobs, kind, zero, tree_above)


def combine_blobs(blobs: DataFrame, kind, zero: Callable, tree_above: int = 32):
    """Sum one accumulator blob per partition: collected directly for a few partitions, tree-reduced on the
    executors beyond `tree_above` so the driver never holds more than a handful of K-sized results."""
    n_parts = blobs.rdd.getNumPartitions()
    if n_parts == 0:
        return zero()
    if n_parts <= tree_above:
        total = zero()
        for row in blobs.collect():  # driver-ok: one K-sized blob per partition, <= tree_above of them
            total = total + kind.from_bytes(bytes(row[0]))
        return total
    return blobs.rdd.map(lambda r: kind.from_bytes(bytes(r[0]))).treeReduce(lambda a, b: a + b, depth=2)


class Totals:
    """A float64 vector accumulator for aggregate_blocks (sums of errors, norms, ...)."""

    def __init__(self, values):
        self.values = np.asarray(values, np.float64)

    def __add__(self, other: "Totals") -> "Totals":
        return Totals(self.values + other.values)

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.save(buf, self.values)
        return buf.getvalue()

    @staticmethod
    def from_bytes(blob: bytes) -> "Totals":
        return Totals(np.load(io.BytesIO(blob)))
