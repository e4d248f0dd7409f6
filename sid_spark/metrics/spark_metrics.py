"""Quality metrics of a SID table as Spark aggregations: the driver only sees K-sized or sample-sized results.

What each pass costs (N items, L levels, K codes, Q queries):
- code usage: one posexplode + groupBy(level, code)          -> L*K rows to the driver
- prefixes / per SID: one explode of the L prefixes + groupBy  -> L rows + the histogram of SID sizes
- reconstruction: one mapInArrow pass over (embedding, sid)    -> L+1 sums per partition
- neighbourhoods: one catalog scan per block of `query_block` queries, a blocked GEMM + running top-k per
  partition (NeighbourSearch), merged per query by a window -> Q * 2 * max(hit_ks) rows, kept distributed.
  Meant for query samples of 10^3..10^5 (the queries of one block are broadcast: query_block * d floats).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from ..errors import InputError
from ..spark.runner import Totals, aggregate_blocks, code_matrix, map_blocks
from ..spark.prepare import HASH, VEC, item_hash
from ..spark.vectors import arrow_matrix, float_array_column
from . import formulas as fm
from .neighbours import RANKINGS, NeighbourSearch, normalise

log = logging.getLogger("sid_spark.metrics")

SALT_RECALL, SALT_USERS = 2, 3


@dataclass
class Evaluation:
    metrics: dict  # the metrics.json content
    code_counts: list  # per level, (K,) int64 items per code (zeros for dead codes)
    per_code: Optional[DataFrame] = None  # level, code, count (all L*K codes)
    per_sid: Optional[DataFrame] = None  # sid, count (SIDs in use)
    extras: dict = field(default_factory=dict)


def evaluate(spark: SparkSession, sids_df: DataFrame, *, sid_col: str = "sid", id_col: str = "item_id",
             codebook_size: int, embeddings_df: Optional[DataFrame] = None, vector_col: str = "embedding",
             codebooks: Optional[Sequence[np.ndarray]] = None, interactions_df: Optional[DataFrame] = None,
             hit_ks: Sequence[int] = (10, 50), knn_queries: int = 1000, **options) -> dict:
    """The metrics.json content for one SID table (see `evaluate_full` for the options)."""
    return evaluate_full(spark, sids_df, sid_col=sid_col, id_col=id_col, codebook_size=codebook_size,
                         embeddings_df=embeddings_df, vector_col=vector_col, codebooks=codebooks,
                         interactions_df=interactions_df, hit_ks=hit_ks, knn_queries=knn_queries,
                         **options).metrics


def evaluate_full(spark: SparkSession, sids_df: DataFrame, *, sid_col: str = "sid", id_col: str = "item_id",
                  codebook_size: int, embeddings_df: Optional[DataFrame] = None, vector_col: str = "embedding",
                  codebooks: Optional[Sequence[np.ndarray]] = None, interactions_df: Optional[DataFrame] = None,
                  hit_ks: Sequence[int] = (10, 50), knn_queries: int = 1000, max_transitions: int = 100_000,
                  user_col: str = "user_id", items_col: str = "item_ids", seed: int = 0,
                  query_block: int = 4096, block_rows: int = 4096, device: str = "auto") -> Evaluation:
    """Every metric of the README's "Quality metrics" section.

    sids_df: (id_col, sid_col array<int>). embeddings_df: (id_col, vector_col) enables the neighbourhood metrics
    (and, with `codebooks`, the reconstruction). interactions_df: (user_col, items_col list oldest first)
    enables HitRate on each user's last transition; at most `max_transitions` users are kept (those with the
    smallest hash of the user id). Recall@K runs on the `knn_queries` items with the smallest item hash.
    """
    hit_ks = sorted({int(k) for k in hit_ks})
    sids = sids_df.select(id_col, sid_col).where(F.col(sid_col).isNotNull() & (F.size(sid_col) > 0)).persist()
    try:
        head = sids.agg(F.count(F.lit(1)).alias("n"), F.max(F.size(sid_col)).alias("L"),
                        F.min(F.size(sid_col)).alias("L0")).first()  # driver-ok: one row
        n, levels = int(head["n"]), int(head["L"] or 0)
        # codebook_size: one K, or one per level (the largest is the headline figure)
        per_level = list(codebook_size) if isinstance(codebook_size, (list, tuple)) else None
        sizes = [int(per_level[min(lvl, len(per_level) - 1)]) if per_level else int(codebook_size)
                 for lvl in range(levels)]
        codebook_size = max(sizes) if sizes else int(max(per_level) if per_level else codebook_size)
        metrics = {"n_items": n, "n_levels": levels, "codebook_size": int(codebook_size)}
        if per_level:
            metrics["codebook_sizes"] = sizes
        if n == 0:
            return Evaluation(metrics=metrics, code_counts=[])
        if head["L0"] != levels:
            log.warning("SID arrays have %s..%s tokens; level l counts only items with more than l tokens",
                        head["L0"], levels)
        code_counts = _code_counts(sids, sid_col, levels, codebook_size)
        level_rows = [{"level": lvl + 1, **fm.level_metrics(c, sizes[lvl])} for lvl, c in enumerate(code_counts)]
        prefix = _prefix_stats(sids, sid_col, levels)
        glass = fm.hourglass([p["entropy_bits"] for p in prefix], [p["distinct"] for p in prefix],
                             sizes if per_level else codebook_size)
        for row, g in zip(level_rows, glass):
            row.update(g)
        metrics["levels"] = level_rows

        per_sid = sids.groupBy(sid_col).agg(F.count(F.lit(1)).alias("count"))
        hist = per_sid.groupBy("count").agg(F.count(F.lit(1)).alias("n_sids")).orderBy("count") \
            .collect()  # driver-ok: one row per distinct SID size, at most sqrt(2N) rows
        sizes, mult = [int(r["count"]) for r in hist], [int(r["n_sids"]) for r in hist]
        sid = fm.sid_metrics(sizes, mult)
        metrics.update({k: v for k, v in sid.items() if k != "n_items"})
        metrics["sid_size_histogram"] = [[s, m] for s, m in zip(sizes, mult)]

        vectors = None
        metrics["rel_mse"] = None
        metrics["residual_rel"] = None
        if embeddings_df is not None:
            vectors, dim = _vectors(embeddings_df, id_col, vector_col,
                                    int(codebooks[0].shape[1]) if codebooks else None)
            if codebooks:
                rel = _reconstruction(sids, vectors, id_col, sid_col, codebooks, dim)
                metrics["residual_rel"] = rel
                metrics["rel_mse"] = rel[-1] if rel else None
        metrics["hitrate"] = None
        metrics["knn_recall"] = None
        if vectors is not None and (knn_queries > 0 or interactions_df is not None):
            metrics.update(_neighbourhoods(sids, vectors, id_col, sid_col, dim, levels, interactions_df,
                                           hit_ks, knn_queries, max_transitions, user_col, items_col, seed,
                                           query_block, block_rows, device))
        per_code = spark.createDataFrame(  # driver-ok: L*K rows
            [(lvl + 1, code, int(c)) for lvl, cc in enumerate(code_counts) for code, c in enumerate(cc)],
            "level int, code int, count long")
        metrics["params"] = {"hit_ks": hit_ks, "knn_queries": knn_queries, "max_transitions": max_transitions,
                             "seed": seed}
        return Evaluation(metrics=metrics, code_counts=code_counts, per_code=per_code, per_sid=per_sid)
    finally:
        sids.unpersist()


# ---- usage -----------------------------------------------------------------------------------------------
def _code_counts(sids: DataFrame, sid_col: str, levels: int, k: int) -> list:
    rows = (sids.select(F.posexplode(sid_col).alias("level", "code"))
            .groupBy("level", "code").agg(F.count(F.lit(1)).alias("count")).collect())  # driver-ok: L*K rows
    size = max([k] + [int(r["code"]) + 1 for r in rows])  # a suffix token may exceed K
    out = [np.zeros(size, np.int64) for _ in range(levels)]
    for r in rows:
        out[r["level"]][r["code"]] = r["count"]
    return out


def _prefix_stats(sids: DataFrame, sid_col: str, levels: int) -> list:
    """Per prefix length l: D_l distinct prefixes, H(prefix_l) in bits, largest prefix group."""
    exploded = sids.select(F.explode(F.sequence(F.lit(1), F.lit(levels))).alias("l"), sid_col).where(
        F.size(sid_col) >= F.col("l")).select("l", F.slice(sid_col, F.lit(1), F.col("l")).alias("prefix"))
    groups = exploded.groupBy("l", "prefix").agg(F.count(F.lit(1)).alias("c"))
    rows = groups.groupBy("l").agg(F.count(F.lit(1)).alias("distinct"), F.sum("c").alias("n"),
                                   F.sum(F.col("c") * F.log2(F.col("c"))).alias("s"),
                                   F.max("c").alias("largest")).collect()  # driver-ok: L rows
    by_l = {int(r["l"]): r for r in rows}
    return [{"distinct": int(by_l[l]["distinct"]), "largest": int(by_l[l]["largest"]),
             "entropy_bits": fm.entropy_from_moments(float(by_l[l]["n"]), float(by_l[l]["s"]))}
            for l in range(1, levels + 1)]


# ---- reconstruction --------------------------------------------------------------------------------------
def _vectors(embeddings_df: DataFrame, id_col: str, vector_col: str, dim: Optional[int] = None):
    from ..spark.prepare import infer_dimension, row_reason

    rows = embeddings_df.select(F.col(id_col), float_array_column(embeddings_df, vector_col).alias(VEC))
    dim = dim or infer_dimension(rows)
    return rows.where(row_reason(id_col, dim).isNull()), dim  # the encoder's own validation: one rule for a row


def _reconstruction(sids: DataFrame, vectors: DataFrame, id_col: str, sid_col: str, codebooks, dim: int) -> list:
    """Sum ||x - sum_{j<=l} C_j[s_j]||^2 / sum ||x||^2 after each level l (the last one is rel_mse)."""
    cbs_np = [np.ascontiguousarray(c, np.float32) for c in codebooks]
    n_cb = len(cbs_np)
    joined = vectors.join(sids, on=id_col).where(F.size(sid_col) >= n_cb).select(VEC, sid_col)

    def kernel(cbs, x, batch):
        sid = batch.column(batch.schema.get_field_index(sid_col))
        starts = sid.offsets.to_numpy()[:-1].astype(np.int64)
        values = torch.from_numpy(sid.values.to_numpy().astype(np.int64))
        acc = np.zeros(n_cb + 1, np.float64)
        acc[0] = float((x.double() ** 2).sum())
        r = x
        for level, cb in enumerate(cbs):
            r = r - cb[values[torch.from_numpy(starts + level)]]
            acc[level + 1] = float((r.double() ** 2).sum())
        return Totals(acc)

    sums = aggregate_blocks(joined, kernel, lambda: Totals(np.zeros(n_cb + 1)), dim=dim, device="cpu",
                            setup=lambda dev: [torch.from_numpy(c) for c in cbs_np]).values
    total = sums
    if total[0] <= 0:
        return []
    return [float(v / total[0]) for v in total[1:]]


# ---- neighbourhoods --------------------------------------------------------------------------------------
def id_key(col: Column, dtype: T.DataType) -> Column:
    """A long key for an id column: the id itself when that is lossless (integers, decimals of scale 0 that fit),
    else its 64-bit hash (strings, decimals with a scale, ...): never a cast that truncates or turns into null."""
    if isinstance(dtype, (T.ByteType, T.ShortType, T.IntegerType, T.LongType)) or (
            isinstance(dtype, T.DecimalType) and dtype.scale == 0 and dtype.precision <= 18):
        return col.cast("long")
    return F.xxhash64(col)


def _neighbourhoods(sids, vectors, id_col, sid_col, dim, levels, interactions_df, hit_ks, knn_queries,
                    max_transitions, user_col, items_col, seed, query_block, block_rows, device) -> dict:
    kmax = max(hit_ks)
    id_type = vectors.schema[id_col].dataType
    catalog = (vectors.join(sids.where(F.size(sid_col) == levels), on=id_col)
               .select(id_key(F.col(id_col), id_type).alias("id"), VEC, sid_col,
                       item_hash(id_col, seed).alias(HASH))
               .persist())
    out = {}
    try:
        row = catalog.agg(F.count(F.lit(1)).alias("n"), F.countDistinct("id").alias("keys")).first()  # driver-ok
        n_catalog = int(row["n"])
        if int(row["keys"]) != n_catalog:  # two ids, one key (a 64-bit hash collision, or repeated ids)
            raise InputError(f"{n_catalog - int(row['keys'])} of {n_catalog} items share an id key with another "
                             f"item ({id_col} of type {id_type.simpleString()}): the neighbourhood metrics "
                             f"cannot tell them apart")
        recall_ids = (catalog.select("id", item_hash("id", seed, SALT_RECALL).alias("_o"))
                      .orderBy("_o", "id").limit(int(knn_queries)).select("id"))
        queries = recall_ids
        transitions = None
        n_users = 0
        if interactions_df is not None:
            transitions, n_users = _transitions(interactions_df, user_col, items_col, seed, max_transitions,
                                                id_type)
            known = catalog.select("id")
            transitions = (transitions.join(known.withColumnRenamed("id", "a"), "a", "left_semi")
                           .join(known.withColumnRenamed("id", "b"), "b", "left_semi").persist())
            queries = queries.union(transitions.select(F.col("a").alias("id")))
        queries = queries.distinct()
        q = (catalog.join(queries, "id", "left_semi").select("id", VEC, sid_col)
             .orderBy("id").toArrow())  # driver-ok: the query sample, <= knn_queries + max_transitions rows
        n_q = q.num_rows
        log.info("neighbourhoods: %d catalog items, %d queries, top-%d", n_catalog, n_q, kmax)
        q_vec = normalise(arrow_matrix(q.column(VEC), dim)) if n_q else np.zeros((0, dim), np.float32)
        q_ids = q.column("id").to_numpy().astype(np.int64)
        q_codes = (code_matrix(q.column(sid_col), levels)
                   if n_q else np.zeros((0, levels), np.int64))
        parts = [_topk_pass(catalog, sid_col, dim, levels, q_vec[s:s + query_block], q_ids[s:s + query_block],
                            q_codes[s:s + query_block], kmax, block_rows, device)
                 for s in range(0, n_q, query_block)]
        if not parts:
            return {}
        cands = parts[0]
        for p in parts[1:]:
            cands = cands.unionByName(p)
        w = Window.partitionBy("q", "ranking").orderBy(F.col("key").desc(), F.col("item"))
        lists = (cands.withColumn("rank", F.row_number().over(w) - 1).where(F.col("rank") < kmax)
                 .select("q", "ranking", "item", "rank").persist())

        n_rq = min(int(knn_queries), n_catalog)
        if n_rq:
            emb = lists.where(F.col("ranking") == 0).join(recall_ids.withColumnRenamed("id", "q"), "q", "left_semi")
            sidl = lists.where(F.col("ranking") == 1).select("q", "item", F.col("rank").alias("srank"))
            both = emb.join(sidl, ["q", "item"])
            agg = both.agg(*[F.sum(((F.col("rank") < k) & (F.col("srank") < k)).cast("long")).alias(f"r{k}")
                             for k in hit_ks]).first()  # driver-ok: one row
            out["knn_recall"] = {"n_queries": int(n_rq), "catalog_items": int(n_catalog),
                                 "recall": {str(k): float((agg[f"r{k}"] or 0) / (n_rq * min(k, n_catalog - 1)))
                                            for k in hit_ks}}
        if transitions is not None:
            n_t = transitions.count()
            joined = transitions.join(lists.select(F.col("q").alias("a"), F.col("item").alias("b"), "ranking",
                                                   "rank"), ["a", "b"])
            agg = joined.agg(*[F.sum(((F.col("ranking") == r) & (F.col("rank") < k)).cast("long")).alias(f"h{r}_{k}")
                               for r in RANKINGS for k in hit_ks]).first()  # driver-ok: one row
            hits = {name: {str(k): float((agg[f"h{r}_{k}"] or 0) / n_t) if n_t else None for k in hit_ks}
                    for r, name in RANKINGS.items()}
            out["hitrate"] = {"n_users": n_users, "n_transitions": int(n_t), "skipped": int(n_users - n_t),
                              **hits}
            transitions.unpersist()
        lists.unpersist()
    finally:
        catalog.unpersist()
    return out


def _transitions(interactions_df: DataFrame, user_col: str, items_col: str, seed: int, max_users: int,
                 id_type: T.DataType = T.LongType()):
    """Each user's last transition a -> b (second-to-last -> last item, as `id_key`s of the catalog's id type
    `id_type`); repeats a == b are left out."""
    def key(pos: int) -> Column:
        return id_key(F.element_at(items_col, pos).cast(id_type), id_type)

    t = (interactions_df.where(F.size(items_col) >= 2)
         .select(F.col(user_col).alias("user"), key(-2).alias("a"), key(-1).alias("b"))
         .where(F.col("a") != F.col("b")))
    n = t.count()
    if n > max_users:
        t = (t.withColumn("_o", F.xxhash64(F.lit(int(seed)), F.lit(SALT_USERS), F.col("user")))
             .orderBy("_o", "user").limit(int(max_users)).drop("_o"))
        n = int(max_users)
    return t.select("a", "b"), int(n)


def _topk_pass(catalog: DataFrame, sid_col: str, dim: int, levels: int, q_vec, q_ids, q_codes, k: int,
               block_rows: int, device: str) -> DataFrame:
    """One scan of the catalog for one broadcast block of queries: each partition's top-k of both rankings."""
    schema = T.StructType([T.StructField("ranking", T.ByteType()), T.StructField("q", T.LongType()),
                           T.StructField("item", T.LongType()), T.StructField("key", T.DoubleType())])

    def setup(dev):
        return NeighbourSearch(q_vec, q_ids, q_codes, k, block_rows, device=dev)

    def kernel(search, x, b):
        codes = code_matrix(b.column(2), levels)
        search.add(normalise(x.numpy()), b.column(0).to_numpy(), b.column(3).to_numpy(), codes)

    def finish(search):
        r, qq, item, key = search.result()
        return {"ranking": r, "q": qq, "item": item, "key": key}

    return map_blocks(catalog.select("id", VEC, sid_col, HASH), schema, kernel, dim=dim, setup=setup,
                      device=device, finish=finish, on_device=False)  # NeighbourSearch moves its own blocks
