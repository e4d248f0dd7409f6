"""Seeded synthetic catalogs: a Gaussian mixture with Zipf-weighted components, L2-normalised, generated on the
executors in fixed chunks of ids so the same (seed, n, d) gives the same vectors whatever the partitioning."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

CHUNK = 4096


def mixture_params(d: int, components: int, seed: int, zipf_s: float = 1.1):
    rng = np.random.default_rng([seed, 0])
    centers = rng.standard_normal((components, d)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    weights = 1.0 / np.arange(1, components + 1) ** zipf_s
    return centers, weights / weights.sum()


def chunk_vectors(chunk: int, d: int, centers: np.ndarray, weights: np.ndarray, seed: int,
                  spread: float) -> np.ndarray:
    """The CHUNK vectors of ids [chunk*CHUNK, (chunk+1)*CHUNK): (CHUNK, d) float32."""
    rng = np.random.default_rng([seed, 1, chunk])
    comp = rng.choice(len(weights), size=CHUNK, p=weights)
    x = centers[comp] + spread * rng.standard_normal((CHUNK, d)).astype(np.float32) / np.sqrt(d)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def numpy_catalog(n: int, d: int = 128, seed: int = 0, components: int = 1000, spread: float = 0.6) -> np.ndarray:
    """The same catalog as `synthetic_catalog`, in memory (tests and benchmarks of the kernels)."""
    centers, weights = mixture_params(d, components, seed)
    chunks = [chunk_vectors(c, d, centers, weights, seed, spread) for c in range((n + CHUNK - 1) // CHUNK)]
    return np.concatenate(chunks)[:n]


def synthetic_catalog(spark: SparkSession, n: int = 200_000, d: int = 128, seed: int = 0, components: int = 1000,
                      spread: float = 0.6, partitions: int | None = None, id_col: str = "item_id",
                      vector_col: str = "embedding") -> DataFrame:
    """DataFrame (id_col long, vector_col array<float>) of n items."""
    centers, weights = mixture_params(d, components, seed)
    parts = partitions or max(1, min(64, n // 50_000 + 1))

    def gen(batches):
        cache: dict = {}
        for batch in batches:
            ids = batch.column(0).to_numpy()
            out = np.empty((len(ids), d), np.float32)
            chunks = ids // CHUNK
            for c in np.unique(chunks):
                if c not in cache:
                    cache.clear()
                    cache[c] = chunk_vectors(int(c), d, centers, weights, seed, spread)
                sel = chunks == c
                out[sel] = cache[c][ids[sel] - c * CHUNK]
            offsets = pa.array(np.arange(0, (len(ids) + 1) * d, d, dtype=np.int32))
            vec = pa.ListArray.from_arrays(offsets, pa.array(out.reshape(-1), pa.float32()))
            yield pa.RecordBatch.from_arrays([batch.column(0), vec], names=[id_col, vector_col])

    schema = T.StructType([T.StructField(id_col, T.LongType(), False),
                           T.StructField(vector_col, T.ArrayType(T.FloatType(), False), True)])
    return spark.range(0, n, numPartitions=parts).withColumnRenamed("id", id_col).mapInArrow(gen, schema)
