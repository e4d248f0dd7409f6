"""Greedy encoding of a whole catalog in one pass over its vectors: the `encode` job's path when no level is balanced.

The general route (prepare -> encode -> rejects -> fingerprints) reads the vectors once per output plus once per check.
Here one Spark job reads every row once: it computes the row's reject reason, vector hash and length, encodes the valid
rows, and writes that narrow table (id, sid, reason, hash, length, file: tens of bytes a row) under the staging
directory. Everything else — the structure check, duplicate ids, the SID, rejects and fingerprint tables — is an
aggregation over that small table. Identical copies of an id carry the same SID (a row's codes depend on its vector
alone), so collapsing duplicates after encoding gives exactly what collapsing them before would.

A balanced encode (write_balanced) needs its rows de-duplicated before encoding (capacities depend on N), so its one
read of the input caches the checked rows with their vectors (the same reasons, hashes, lengths and files);
the structure check, duplicates, rejects and fingerprints come from that table, and the balanced levels
(sid_spark.spark.balance) start from its valid rows.
"""
from __future__ import annotations

import logging
import time

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from ..errors import InputError
from .sid_table import FP
from .prepare import FILE, HASH, VEC, _drop_duplicate_ids, check_structure, duplicate_rejects, item_hash, row_reason
from .encode import Quantizer, encode_valid
from .vectors import float_array_column

log = logging.getLogger("sid_spark.encode")

REASON = "reason"
LEN = "_len"
ENCODED = "_encoded"


def write_greedy(spark: SparkSession, model: Quantizer, df: DataFrame, staging: str, rejects: str, fingerprints: str) -> tuple:
    """Write the SIDs (into `staging`, appended beside nothing but hidden folders), the rejects and the fingerprints
    of `df`; returns (items read, SIDs written, rejects written, how the vectors were read: "parquet_direct" or
    "spark"). Structural errors (empty input, files of different dimensions) raise InputError once the pass is done;
    the caller's staging directory then never becomes output.

    The vectors are read once: by pyarrow in the executors for a plain Parquet input (sid_spark.spark.parquet_direct),
    else by Spark's reader; both give the same narrow table."""
    from .parquet_direct import direct_encoded, parquet_files

    cfg = model.config
    id_col = cfg.id_col
    if id_col not in df.columns:
        raise InputError(f"id column '{id_col}' not found (columns: {', '.join(df.columns)})")
    encoded_path = f"{staging}/{ENCODED}"
    write_direct = None
    files = parquet_files(spark, df, id_col, cfg.vector_col)
    if files is not None:
        write_direct = direct_encoded(spark, df, model, id_col, cfg.vector_col, files)
    if write_direct is not None:
        log.info("reading the vectors of %d Parquet file(s) directly in the executors", len(files))
        write_direct(encoded_path)
    else:
        encode_valid(_jvm_checked(df, id_col, cfg.vector_col, model.dim), model, reason_col=REASON) \
            .write.parquet(encoded_path)
    encoded = spark.read.parquet(encoded_path)
    n_read, _ = check_structure(encoded, F.col(LEN))

    ok = encoded.where(F.col(REASON).isNull())
    row_rejects = encoded.where(F.col(REASON).isNotNull()).select(id_col, REASON)
    # The usual case, no id twice, is settled by counting ids (8 bytes a row); only then are SIDs aggregated per id.
    if ok.groupBy(id_col).count().where(F.col("count") > 1).limit(1).count() == 0:
        ok.select(id_col, cfg.sid_col).write.mode("append").parquet(staging)
        ok.select(id_col, FP).write.parquet(fingerprints)
        row_rejects.write.parquet(rejects)
    else:
        per_id = (ok.groupBy(id_col)
                  .agg(F.count(F.lit(1)).alias("_n"), F.min(FP).alias("_vmin"), F.max(FP).alias("_vmax"),
                       F.first(cfg.sid_col).alias(cfg.sid_col))
                  .cache())
        try:
            kept = per_id.where(F.col("_vmin") == F.col("_vmax"))
            kept.select(id_col, cfg.sid_col).write.mode("append").parquet(staging)
            kept.select(id_col, F.col("_vmin").alias(FP)).write.parquet(fingerprints)
            row_rejects.unionByName(duplicate_rejects(per_id, id_col)).write.parquet(rejects)
        finally:
            per_id.unpersist()
    _delete(spark, encoded_path)
    n_sids = spark.read.parquet(staging).count()
    n_rej = spark.read.parquet(rejects).count()
    return n_read, n_sids, n_rej, ("parquet_direct" if write_direct is not None else "spark")


def _jvm_checked(df: DataFrame, id_col: str, vec_col: str, dim: int) -> DataFrame:
    """(id, _vec or null for a rejected row, reason, fp, len, file) through Spark's reader and SQL."""
    rows = df.select(F.col(id_col), float_array_column(df, vec_col).alias(VEC), F.input_file_name().alias(FILE))
    return (rows.withColumn(REASON, row_reason(id_col, dim))
            .select(id_col, F.when(F.col(REASON).isNull(), F.col(VEC)).alias(VEC), REASON,
                    F.xxhash64(VEC).alias(FP), F.size(VEC).alias(LEN), FILE))


def write_balanced(spark: SparkSession, model: Quantizer, df: DataFrame, staging: str, rejects: str,
                   fingerprints: str) -> tuple:
    """write_greedy's contract for a model with a balanced level: the input is read once (directly for plain
    Parquet, else by Spark), into a cached table of checked rows; everything else reads that table."""
    from ..storage import cache_with
    from .balance import _Chain, encode_balanced
    from .parquet_direct import direct_checked, one_file_per_batch, parquet_files

    cfg = model.config
    id_col = cfg.id_col
    if id_col not in df.columns:
        raise InputError(f"id column '{id_col}' not found (columns: {', '.join(df.columns)})")
    chain = _Chain(model)
    checked = None
    files = parquet_files(spark, df, id_col, cfg.vector_col)
    if files is not None:
        checked = direct_checked(spark, df, id_col, cfg.vector_col, model.dim, files,
                                 stage=lambda schema: chain.partition(schema, REASON, packed=True))
    route = "parquet_direct" if checked is not None else "spark"
    if checked is None:
        checked = chain.map(_jvm_checked(df, id_col, cfg.vector_col, model.dim), REASON, packed=True)
    else:
        log.info("reading the vectors of %d Parquet file(s) directly in the executors", len(files))
    started = time.perf_counter()
    # The checked rows are cached, not checkpointed: their lineage is the read and the chain map, so a lost
    # executor costs a recomputation of its partitions; the job that computes them is the structure check's.
    with one_file_per_batch(spark):
        checked, (n_read, _) = cache_with(checked, lambda rows: check_structure(rows, F.col(LEN)))
    levels: list = []  # the balanced levels' narrow tables, cached like the checked rows
    try:
        chain_cols = [f.name for f in chain.fields()]
        ok = checked.where(F.col(REASON).isNull()).select(id_col, VEC, FP, *chain_cols)
        valid, dup_rejects, n_valid = _drop_duplicate_ids(ok, id_col, fp=FP)
        narrow = valid is ok  # no duplicated id: the valid rows are a filter of the cached ones
        log.info("read, checked and chained %d rows (%.0f s): %d valid and distinct, the rest rejected", n_read,
                 time.perf_counter() - started, n_valid)
        valid = valid.withColumn(HASH, item_hash(id_col, cfg.seed))
        encode_balanced(valid, model, chained=True, n=n_valid, narrow=narrow, cached=levels).write.parquet(staging)
        checked.where(F.col(REASON).isNotNull()).select(id_col, REASON).unionByName(dup_rejects) \
            .write.parquet(rejects)
        valid.select(id_col, FP).write.parquet(fingerprints)
    finally:
        for table in levels:
            table.unpersist()
        checked.unpersist()
    n_sids = spark.read.parquet(staging).count()
    n_rej = spark.read.parquet(rejects).count()
    return n_read, n_sids, n_rej, route


def _delete(spark: SparkSession, path: str) -> None:
    jvm = spark.sparkContext._jvm
    p = jvm.org.apache.hadoop.fs.Path(path)  # local-ok: a Hadoop Path (any scheme)
    p.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()).delete(p, True)
