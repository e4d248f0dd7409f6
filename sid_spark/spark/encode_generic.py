"""Distributed encoding with any `sid_spark.encoders` encoder: the weights travel once as a broadcast, each Python
worker deserialises them once (cached by model_id), and every Arrow batch is one forward pass (spark-rapids-ml
``core.py`` pattern; the vector adapter and validation are the core's)."""
from __future__ import annotations

import math
from typing import Dict, Tuple

import numpy as np
import torch
from pyspark.sql import DataFrame
from pyspark.sql import types as T

from ..config import TokenizerConfig
from ..encoders import Encoder, encoder_from_bytes
from .device import task_device
from .prepare import VEC, Prepared
from .runner import Totals, aggregate_blocks, map_blocks
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


def encode_rows(rows: DataFrame, enc: Encoder, id_col: str, sid_col: str, device: str = "auto",
                broadcast=None) -> DataFrame:
    """(id, _vec) rows -> (id, sid array<int>), one encoder forward pass per Arrow batch."""
    bc, model_id = broadcast or broadcast_encoder(rows.sparkSession, enc)
    schema = T.StructType([rows.schema[id_col], T.StructField(sid_col, T.ArrayType(T.IntegerType(), False), False)])

    def kernel(model, x, _batch):
        return {sid_col: model.encode(x.to(model.device))}

    return map_blocks(rows.select(id_col, VEC), schema, kernel, dim=enc.dim, device=device,
                      setup=lambda dev: _worker_encoder(bc, model_id, device))


def reconstruction_error(rows: DataFrame, enc: Encoder, device: str = "auto", broadcast=None) -> float:
    """sum ||x - decode(encode(x))||^2 / sum ||x||^2 over `rows` (column _vec), one pass; the driver receives one
    pair of sums."""
    bc, model_id = broadcast or broadcast_encoder(rows.sparkSession, enc)

    def kernel(model, x, _batch):
        x = x.to(model.device)
        x_hat = model.reconstruct(x)
        return Totals([float(((x - x_hat) ** 2).sum(dtype=torch.float64)), float((x ** 2).sum(dtype=torch.float64))])

    err, norm = aggregate_blocks(rows.select(VEC), kernel, lambda: Totals([0.0, 0.0]), dim=enc.dim, device=device,
                                 setup=lambda dev: _worker_encoder(bc, model_id, device)).values
    return float(err / norm) if norm else math.nan


def collect_sample(prepared: Prepared, cfg: TokenizerConfig) -> Tuple[np.ndarray, int]:
    """The training sample (rows chosen by id hash, at most ~cfg.sample_size) as one (m, d) float32 matrix on the
    driver, in hash order so the same catalog gives the same matrix whatever the partitioning; and N."""
    sample, n, _ = training_sample(prepared, cfg)
    try:
        table = sample.orderBy(UNIT).select(VEC).toArrow()  # driver-ok: training sample, bounded by sample_size
    finally:
        sample.unpersist()
    return np.array(arrow_matrix(table.column(0), prepared.dim)), n  # a writable copy for torch
