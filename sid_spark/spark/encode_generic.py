"""Distributed encoding with any `sid_spark.encoders` encoder: the weights travel once as a broadcast, each Python
worker deserialises them once (cached by model_id), and every Arrow batch is one forward pass (spark-rapids-ml
``core.py`` pattern; the vector adapter and validation are the core's)."""
from __future__ import annotations

import math
from typing import Dict, Tuple

import numpy as np
import pyarrow as pa
import torch
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from ..config import TokenizerConfig
from ..encoders import Encoder, encoder_from_bytes
from .device import configure_torch_for_task, task_device
from .prepare import VEC, Prepared
from .runner import _batch_matrices
from .train import UNIT, training_sample
from .vectors import arrow_matrix

# model_id -> encoder on its device, per Python worker (workers are reused across tasks).
_LOADED: Dict[Tuple[str, str], Encoder] = {}


def broadcast_encoder(spark, enc: Encoder):
    """(broadcast of the encoder's bytes, model_id): what a partition function needs to rebuild it."""
    return spark.sparkContext.broadcast(enc.to_bytes()), enc.model_id


def _worker_encoder(bc, model_id: str, device: str) -> Encoder:
    dev = task_device(device)
    key = (model_id, str(dev))
    if key not in _LOADED:
        _LOADED.clear()
        _LOADED[key] = encoder_from_bytes(bc.value).to(dev)
    return _LOADED[key]


def sid_array(codes: np.ndarray) -> pa.Array:
    """(n, T) int codes -> Arrow list<int32> from one values buffer."""
    n, t = codes.shape
    offsets = pa.array(np.arange(0, (n + 1) * t, t, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(codes.astype(np.int32).reshape(-1), pa.int32()))


def encode_rows(rows: DataFrame, enc: Encoder, id_col: str, sid_col: str, device: str = "auto",
                broadcast=None) -> DataFrame:
    """(id, _vec) rows -> (id, sid array<int>), one encoder forward pass per Arrow batch."""
    bc, model_id = broadcast or broadcast_encoder(rows.sparkSession, enc)
    dim = enc.dim
    out_schema = T.StructType([rows.schema[id_col],
                               T.StructField(sid_col, T.ArrayType(T.IntegerType(), False), False)])

    def partition(batches):
        configure_torch_for_task()
        model = _worker_encoder(bc, model_id, device)
        for batch, x in _batch_matrices(batches, dim, model.device):
            codes = model.encode(x).cpu().numpy()
            yield pa.RecordBatch.from_arrays([batch.column(batch.schema.get_field_index(id_col)), sid_array(codes)],
                                             names=[id_col, sid_col])

    return rows.select(id_col, VEC).mapInArrow(partition, out_schema)


def reconstruction_error(rows: DataFrame, enc: Encoder, device: str = "auto", broadcast=None) -> float:
    """sum ||x - decode(encode(x))||^2 / sum ||x||^2 over `rows` (column _vec), one pass; the driver sums one
    row per partition."""
    bc, model_id = broadcast or broadcast_encoder(rows.sparkSession, enc)
    dim = enc.dim

    def partition(batches):
        configure_torch_for_task()
        model = _worker_encoder(bc, model_id, device)
        err = norm = 0.0
        for _, x in _batch_matrices(batches, dim, model.device):
            x_hat = model.reconstruct(x)
            err += float(((x - x_hat) ** 2).sum(dtype=torch.float64))
            norm += float((x ** 2).sum(dtype=torch.float64))
        yield pa.RecordBatch.from_arrays([pa.array([err]), pa.array([norm])], names=["err", "norm"])

    schema = T.StructType([T.StructField("err", T.DoubleType()), T.StructField("norm", T.DoubleType())])
    row = rows.select(VEC).mapInArrow(partition, schema).agg(
        F.sum("err").alias("e"), F.sum("norm").alias("n")).first()  # driver-ok: one row
    return float(row["e"] / row["n"]) if row["n"] else math.nan


def collect_sample(prepared: Prepared, cfg: TokenizerConfig) -> Tuple[np.ndarray, int]:
    """The training sample (rows chosen by id hash, at most ~cfg.sample_size) as one (m, d) float32 matrix on the
    driver, in hash order so the same catalog gives the same matrix whatever the partitioning; and N."""
    sample, n, _ = training_sample(prepared, cfg)
    try:
        table = sample.orderBy(UNIT).select(VEC).toArrow()  # driver-ok: training sample, bounded by sample_size
    finally:
        sample.unpersist()
    return np.array(arrow_matrix(table.column(0), prepared.dim)), n  # a writable copy for torch
