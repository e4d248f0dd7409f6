"""Layer 2 of the retriever: leave-one-out examples from user sequences, the popularity counts, the SID table and
its serving export (prefix trie + lookup), all as Spark aggregations; only the bounded training set comes to the
driver, where the one torch process trains on it.
"""
from __future__ import annotations

import logging
from typing import Dict, Optional, Tuple

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from ..errors import InputError
from .train import Catalog, Split

log = logging.getLogger("sid_spark.retrieval")

SPLITS = ("train", "val", "test")


def leave_one_out(seqs: DataFrame, user_col: str = "user_id", items_col: str = "item_ids",
                  max_history: int = 20) -> DataFrame:
    """One row per (user, position >= 1): user, pos, split, history (the <= max_history items before it, oldest
    first), target. TIGER's protocol: the last item is the test target, the second-to-last the validation one,
    and every earlier position a training target (sliding, so a user of n items gives n - 3 training rows)."""
    for c in (user_col, items_col):
        if c not in seqs.columns:
            raise InputError(f"the interactions have no column '{c}' (columns: {', '.join(seqs.columns)})")
    n = F.size(items_col)
    split = F.when(F.col("pos") == n - 1, "test").when(F.col("pos") == n - 2, "val").otherwise("train")
    history = F.expr(f"slice({items_col}, greatest(1, pos - {int(max_history)} + 1), least(pos, {int(max_history)}))")
    return (seqs.select(F.col(user_col).alias("user"), items_col,
                        F.posexplode(items_col).alias("pos", "target"))
            .where(F.col("pos") >= 1)
            .select("user", "pos", split.alias("split"), history.alias("history"), F.col("target").cast("long")))


def popularity(seqs: DataFrame, items_col: str = "item_ids", k: int = 10) -> Tuple[np.ndarray, np.ndarray]:
    """The k most frequent items over the training part of every sequence (all but its last two items):
    (item ids, counts), count descending then id. One groupBy; the driver receives k rows."""
    train = F.expr(f"slice({items_col}, 1, greatest(size({items_col}) - 2, 0))")
    top = (seqs.select(F.explode(train).alias("item")).groupBy("item").count()
           .orderBy(F.desc("count"), F.asc("item")).limit(int(k)).collect())  # driver-ok: k rows
    return np.array([r["item"] for r in top], np.int64), np.array([r["count"] for r in top], np.int64)


def collect_splits(examples: DataFrame, max_history: int, max_examples: int, max_eval_users: int) -> Dict[str, Split]:
    """The examples as padded numpy splits, ordered by (user, pos) whatever the partitioning. A split larger than
    its bound keeps the rows with the smallest hash of (user, pos): a fixed, data-only subset. Two Spark jobs: the
    split sizes (3 rows), then the bounded examples."""
    sizes = {r["split"]: r["count"] for r in examples.groupBy("split").count().collect()}  # driver-ok: 3 rows
    bounds = {"train": max_examples, "val": max_eval_users, "test": max_eval_users}
    parts = []
    for name in SPLITS:
        part = examples.where(F.col("split") == name)
        if sizes.get(name, 0) > bounds[name]:
            log.warning("%s split: %d examples, keeping %d (bound) by hash of (user, pos)", name, sizes[name],
                        bounds[name])
            part = part.orderBy(F.xxhash64("user", "pos"), "user", "pos").limit(int(bounds[name]))
        parts.append(part)
    union = parts[0].unionByName(parts[1]).unionByName(parts[2]) if sizes else examples
    # driver-ok: training examples of the retriever (bounded by --max-examples / max_eval_users)
    pdf = union.select("split", "user", "pos", "history", "target").toPandas()  # driver-ok: bounded, see above
    pdf = pdf.sort_values(["user", "pos"], kind="stable").reset_index(drop=True)
    out: Dict[str, Split] = {}
    for name in SPLITS:
        p = pdf[pdf["split"] == name]
        out[name] = Split(pad_histories(list(p["history"]), max_history), p["target"].to_numpy(np.int64))
    return out


def pad_histories(histories, width: int) -> np.ndarray:
    """Ragged item lists (oldest first) -> (n, width) int64, right-aligned, -1 on the left. Vectorised."""
    lengths = np.array([len(h) for h in histories], np.int64)
    out = np.full((len(histories), width), -1, np.int64)
    if not len(histories) or not lengths.sum():
        return out
    flat = np.concatenate([np.asarray(h, np.int64) for h in histories if len(h)])
    rows = np.repeat(np.arange(len(histories)), lengths)
    cols = width - np.repeat(lengths, lengths) + (np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths))
    out[rows, cols] = flat
    return out


# ---- SID tables ----------------------------------------------------------------------------------------------
def sid_codes_column(sids: DataFrame, sid_col: str, suffix_col: Optional[str]):
    """The complete SID as per-level codes: the L codebook codes, then the suffix when the table has one."""
    if suffix_col and suffix_col in sids.columns:
        return F.concat(F.col(sid_col).cast("array<int>"), F.array(F.col(suffix_col).cast("int")))
    return F.col(sid_col).cast("array<int>")


def serving_export(sids: DataFrame, id_col: str = "item_id", sid_col: str = "sid",
                   suffix_col: Optional[str] = "sid_suffix") -> Tuple[DataFrame, DataFrame]:
    """(trie, lookup) of any SID table, as distributed aggregations.

    trie: depth, prefix array<int> (the first `depth` codes), allowed array<int> (sorted codes that follow it in
    the table), items (how many items lie under the prefix). lookup: sid array<int>, suffix (null without a
    suffix column), item_ids array<long> sorted (one id when (sid, suffix) is unique)."""
    for c in (id_col, sid_col):
        if c not in sids.columns:
            raise InputError(f"the SID table has no column '{c}' (columns: {', '.join(sids.columns)})")
    has_suffix = bool(suffix_col) and suffix_col in sids.columns
    codes = sids.select(sid_codes_column(sids, sid_col, suffix_col if has_suffix else None).alias("codes"))
    width = codes.agg(F.max(F.size("codes"))).first()[0]  # driver-ok: one number
    if width is None:
        raise InputError("the SID table is empty")
    per_depth = None
    for d in range(int(width)):
        part = codes.select(F.lit(d).alias("depth"), F.slice("codes", 1, d).alias("prefix"),
                            F.element_at("codes", d + 1).alias("next"))
        per_depth = part if per_depth is None else per_depth.unionByName(part)
    trie = (per_depth.groupBy("depth", "prefix")
            .agg(F.sort_array(F.collect_set("next")).alias("allowed"), F.count(F.lit(1)).alias("items")))
    suffix = F.col(suffix_col).cast("int") if has_suffix else F.lit(None).cast("int")
    lookup = (sids.select(F.col(sid_col).cast("array<int>").alias("sid"), suffix.alias("suffix"),
                          F.col(id_col).cast("long").alias("item_id"))
              .groupBy("sid", "suffix").agg(F.sort_array(F.collect_list("item_id")).alias("item_ids")))
    return trie, lookup


def collect_catalog(sids: DataFrame, id_col: str, sid_col: str, suffix_col: Optional[str],
                    codebook_size: Optional[int] = None) -> Catalog:
    """The SID table in the training process (the trie and item lookup the decoder is constrained by)."""
    has_suffix = bool(suffix_col) and suffix_col in sids.columns
    cols = [F.col(id_col).cast("long").alias("id"), F.col(sid_col).cast("array<int>").alias("sid")]
    if has_suffix:
        cols.append(F.col(suffix_col).cast("long").alias("suffix"))
    # driver-ok: the catalog's SIDs in the retriever's one process (its trie and output lookup; catalog-sized
    # like the model's own token table)
    pdf = sids.select(*cols).toPandas()  # driver-ok: see above
    if not len(pdf):
        raise InputError("the SID table is empty")
    sid = np.stack(pdf["sid"].to_numpy()).astype(np.int64)
    return Catalog.from_sids(pdf["id"].to_numpy(np.int64), sid,
                             pdf["suffix"].to_numpy(np.int64) if has_suffix else None, codebook_size)


def collect_embeddings(catalog_df: DataFrame, id_col: str, vector_col: str) -> Tuple[np.ndarray, np.ndarray]:
    """(ids, (m, d) float32) for the kNN baseline."""
    # driver-ok: the embedding-kNN baseline's item matrix (one process scores it, like the retriever)
    vectors = catalog_df.select(F.col(id_col).cast("long").alias("id"), F.col(vector_col).alias("v"))
    pdf = vectors.toPandas()  # driver-ok: see above
    return pdf["id"].to_numpy(np.int64), np.stack(pdf["v"].to_numpy()).astype(np.float32)
