"""Input validation and preparation: every row ends up valid or in the rejects table with a reason."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from ..config import TokenizerConfig
from ..errors import InputError
from .vectors import float_array_column

VEC = "_vec"
HASH = "_id_hash"  # item_hash of the id: samples, mini-batches and every tie-break
FILE = "_file"

# Reasons a row is rejected; the README's "Failure behaviour" table documents each.
NULL_ID = "null_id"
NULL_VECTOR = "null_vector"
EMPTY_VECTOR = "empty_vector"
WRONG_DIMENSION = "wrong_dimension"
NON_FINITE = "non_finite"
NULL_ELEMENT = "null_element"
# An all-zero vector is finite but carries no information: it is what a failed embedding call usually leaves
# behind, and encoding it would pile every such item onto one SID. Rejected, not encoded.
ZERO_VECTOR = "zero_vector"
DUPLICATE_ID = "duplicate_id"
CONFLICTING_DUPLICATE_ID = "conflicting_duplicate_id"


@dataclass
class Prepared:
    valid: DataFrame  # id_col, _vec array<float>, _id_hash long
    rejects: DataFrame  # id_col, reason string
    dim: int
    n_read: Optional[int] = None  # rows read from the input (items read = valid + rejected)
    n_valid: Optional[int] = None  # rows of `valid`, counted by the duplicate check's aggregation


def item_hash(id_col: str, seed: int, salt: int = 0):
    """Stable 64-bit hash of the item id: mini-batch membership, samples and tie-breaks depend on it alone,
    never on the partitioning."""
    return F.xxhash64(F.lit(int(seed)), F.lit(int(salt)), F.col(id_col))


def row_reason(id_col: str, dim: int):
    """Why a row (id_col, _vec) cannot be encoded at dimension `dim`, or null when it can."""
    size = F.size(VEC)
    # Built-in array functions, not lambdas: Spark evaluates higher-order functions (exists/forall) element by
    # element in the interpreter, which tripled the cost of reading the vectors; these are code-generated.
    # array_contains(v, NaN) is null exactly when v holds a null and no NaN (a vector with both is non_finite);
    # array_max ranks NaN above +inf and skips nulls.
    hi, lo = F.array_max(VEC), F.array_min(VEC)
    null_element = F.array_contains(F.col(VEC), F.lit(float("nan")).cast("float")).isNull()
    bad_value = F.isnan(hi) | (hi == F.lit(float("inf"))) | (lo == F.lit(float("-inf")))
    all_zero = (hi == F.lit(0.0)) & (lo == F.lit(0.0))
    reason = (F.when(F.col(id_col).isNull(), F.lit(NULL_ID))
              .when(F.col(VEC).isNull(), F.lit(NULL_VECTOR))
              .when(size == 0, F.lit(EMPTY_VECTOR))
              .when(size != F.lit(dim), F.lit(WRONG_DIMENSION))
              .when(null_element, F.lit(NULL_ELEMENT))
              .when(bad_value, F.lit(NON_FINITE))
              .when(all_zero, F.lit(ZERO_VECTOR)))
    return reason


def prepare(df: DataFrame, cfg: TokenizerConfig, dim: Optional[int] = None) -> Prepared:
    """Split `df` into valid rows (id, float vector, hash) and rejected rows (id, reason).

    Structural problems (missing column, wrong type, empty input, input files of different dimensions) raise
    InputError after one aggregation pass, before any heavy work; a second, eager pass counts duplicated ids
    (shuffling only id and vector hash) so that `valid` needs no shuffle when there are none. dim=None (training)
    takes the input's dimension; a given dim (encoding with a model) rejects rows of another length.
    """
    if cfg.id_col not in df.columns:
        raise InputError(f"id column '{cfg.id_col}' not found (columns: {', '.join(df.columns)})")
    vec = float_array_column(df, cfg.vector_col)
    rows = df.select(F.col(cfg.id_col), vec.alias(VEC))
    n_read, input_dim = check_structure(df.select(vec.alias(VEC), F.input_file_name().alias(FILE)))
    if dim is None:
        if input_dim is None:
            raise InputError("input has no rows with a non-empty vector")
        dim = input_dim
    reason = row_reason(cfg.id_col, dim)
    checked = rows.withColumn("reason", reason)
    row_rejects = checked.where(F.col("reason").isNotNull()).select(cfg.id_col, "reason")
    clean = checked.where(F.col("reason").isNull()).drop("reason")

    valid, dup_rejects, n_valid = _drop_duplicate_ids(clean, cfg.id_col)
    valid = valid.select(cfg.id_col, VEC, item_hash(cfg.id_col, cfg.seed).alias(HASH))
    return Prepared(valid=valid, rejects=row_rejects.unionByName(dup_rejects), dim=dim, n_read=n_read,
                    n_valid=n_valid)


# Above this many duplicated ids the anti-join against them is a shuffle join rather than a broadcast one.
BROADCAST_DUPLICATES = 1_000_000


def _drop_duplicate_ids(clean: DataFrame, id_col: str, fp: Optional[str] = None):
    """(rows with one copy per id, rejects for the other copies, number of rows kept).

    Identical copies collapse to one (the others are rejected as duplicate_id); differing copies are all
    rejected — no vector is chosen arbitrarily for an id. Duplicates are found by shuffling (id, 64-bit vector
    hash) only, never the vectors; the usual case, no duplicated id, costs that one small aggregation and leaves
    the valid rows a narrow transformation of the input, so every later pass reads it without a shuffle.
    """
    vh = F.xxhash64(VEC) if fp is None else F.col(fp)  # fp: a column already holding xxhash64(_vec)
    per_id = (clean.groupBy(id_col)
              .agg(F.count(F.lit(1)).alias("_n"), F.min(vh).alias("_vmin"), F.max(vh).alias("_vmax")))
    same = F.col("_vmin") == F.col("_vmax")
    # One aggregation counts both the duplicated ids and the rows kept (one per id whose copies agree), so
    # training needs no extra pass over the vectors to know N.
    counts = per_id.agg(F.count(F.when(F.col("_n") > 1, 1)).alias("dup"),
                        F.count(F.when(same, 1)).alias("kept")).first()  # driver-ok: one row
    n_dup_ids, n_kept = int(counts["dup"] or 0), int(counts["kept"] or 0)
    if n_dup_ids == 0:
        return clean, clean.select(id_col, F.lit(DUPLICATE_ID).alias("reason")).limit(0), n_kept
    dups = per_id.where(F.col("_n") > 1)
    ids = dups.select(id_col, same.alias("_same"))
    if n_dup_ids <= BROADCAST_DUPLICATES:
        ids = F.broadcast(ids)
    single = clean.join(ids, id_col, "left_anti")
    collapsed = clean.join(ids.where(F.col("_same")).select(id_col), id_col, "left_semi").dropDuplicates([id_col])
    return single.unionByName(collapsed), duplicate_rejects(dups, id_col), n_kept


def duplicate_rejects(per_id: DataFrame, id_col: str) -> DataFrame:
    """(id, reason) rows for ids seen _n > 1 times with vector hashes _vmin.._vmax: n-1 duplicate_id rejects when
    every copy is the same vector (one is kept), n conflicting_duplicate_id rejects when they differ."""
    same = F.col("_vmin") == F.col("_vmax")
    return per_id.where(F.col("_n") > 1).select(
        id_col,
        F.explode(F.when(same, F.array_repeat(F.lit(DUPLICATE_ID), (F.col("_n") - 1).cast("int")))
                  .otherwise(F.array_repeat(F.lit(CONFLICTING_DUPLICATE_ID), F.col("_n").cast("int")))).alias("reason"))


def check_structure(rows: DataFrame, length: Optional[Column] = None) -> tuple:
    """One aggregation pass over (_vec, _file) — or (_file, `length`), a precomputed size(_vec) — giving
    (rows read, input dimension or None), or a structural error.

    A file's dimension is its most common non-empty vector length (ties to the shorter); rows of another length
    in it are row-level rejects, but two files of different dimensions stop the job. A DataFrame that was not
    read from files counts as one file.
    """
    length = F.size(VEC) if length is None else length
    per_length = rows.groupBy(FILE, length.alias("_len")).count()
    usable = F.col("_len") > 0
    per_file = per_length.groupBy(FILE).agg(
        F.sum("count").alias("_rows"),
        F.max_by(F.when(usable, F.col("_len")), F.when(usable, F.struct(F.col("count"), -F.col("_len")))).alias("_dim"))
    stats = per_file.agg(F.sum("_rows").alias("n"), F.min("_dim").alias("lo"), F.max("_dim").alias("hi"),
                         F.min_by(FILE, "_dim").alias("lo_file"),
                         F.max_by(FILE, "_dim").alias("hi_file")).first()  # driver-ok: one row
    n = 0 if stats is None or stats["n"] is None else int(stats["n"])
    if n == 0:
        raise InputError("input is empty: 0 rows read")
    if stats["lo"] is not None and stats["lo"] != stats["hi"]:
        raise InputError(f"input mixes vector dimensions: {stats['lo_file'] or 'a file'} holds {stats['lo']}-d "
                         f"vectors, {stats['hi_file'] or 'another'} holds {stats['hi']}-d; one input must have one "
                         f"dimension")
    return n, None if stats["lo"] is None else int(stats["lo"])


def infer_dimension(rows: DataFrame) -> int:
    """One aggregation pass: the common vector length, or a structural error."""
    stats = rows.where(F.col(VEC).isNotNull() & (F.size(VEC) > 0)).agg(
        F.min(F.size(VEC)).alias("lo"), F.max(F.size(VEC)).alias("hi")).first()  # driver-ok: one row
    if stats is None or stats["lo"] is None:
        raise InputError("input has no rows with a non-empty vector")
    if stats["lo"] != stats["hi"]:
        raise InputError(f"input mixes vector dimensions {stats['lo']}..{stats['hi']}: one input must have one dimension")
    return int(stats["lo"])
