"""SID tables: the one module that knows what a SID table on disk is and writes one.

A SID table is a folder of Parquet rows (id, sid array<int>[, <sid>_suffix int]) with, beside them, `_rejects`
(id, reason), `_fingerprints` (id, 64-bit vector hash: `encode --existing` finds changed vectors with it),
`_vocab.json` (the token vocabulary) and `_manifest.json`, written last by `io.commit_output` (its presence means
the table is complete). Every writer here counts what it wrote and refuses a table whose accounting does not
balance: items read = encoded + rejected (+ already present, for an append).

    write_encoded(spark, quantizer, df, output)          # encode a catalog: greedy single pass or balanced
    write_sid_table(spark, output, quantizer, sids, ...)  # a deduplicated or appended table
"""
from __future__ import annotations

import logging
import time
from typing import Optional

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from ..errors import SidSparkError
from ..vocab import Vocabulary
from .encode import Quantizer, encode_valid
from .io import REJECTS, commit_output, write_text
from .prepare import VEC, prepare

FINGERPRINTS = "_fingerprints"
VOCAB = "_vocab.json"
FP = "_fp"  # the fingerprint column: xxhash64 of the prepared vector
log = logging.getLogger("sid_spark.sid_table")

CHANGED_VECTOR = "changed_vector"  # reject reason: an id already in the table came back with another vector


def suffix_col_name(sid_col: str) -> str:
    """The disambiguating token's column beside `sid_col` (the unique key is (sid, suffix))."""
    return f"{sid_col}_suffix"


def fingerprints(valid: DataFrame, id_col: str) -> DataFrame:
    """(id, _fp): a 64-bit hash of each prepared vector, kept beside a SID table to detect changed vectors."""
    return valid.select(id_col, F.xxhash64(VEC).alias(FP))


def table_manifest(q: Quantizer) -> dict:
    """What every SID table's manifest says of the model that wrote it."""
    cfg = q.config
    return {"kind": "sids", "model_id": q.model_id, "levels": q.levels, "codebook_size": q.codebook_sizes[0],
            "id_col": cfg.id_col, "sid_col": cfg.sid_col}


def check_read_balance(n_read: int, n_encoded: int, n_rejected: int) -> None:
    """items read = encoded + rejected, each counted from the data written; else nothing is committed."""
    if n_read != n_encoded + n_rejected:
        raise SidSparkError(f"accounting mismatch: read {n_read} items, encoded {n_encoded}, rejected {n_rejected}")


def write_encoded(spark: SparkSession, q: Quantizer, df: DataFrame, output: str,
                  generation: Optional[str] = None) -> dict:
    """Encode `df` and commit SIDs + rejects + fingerprints + manifest (with the accounting) atomically to `output`.

    Both routes read the input once (sid_spark.spark.single_pass): without a balanced level that pass encodes; with
    one, it materializes the checked rows, since the capacities depend on the valid, de-duplicated N."""
    from .single_pass import write_balanced, write_greedy

    t0 = time.time()

    def write(staging: str) -> dict:
        run = write_balanced if q.balanced else write_greedy
        n_in, n_sids, n_rej, read = run(spark, q, df, staging, f"{staging}/{REJECTS}", f"{staging}/{FINGERPRINTS}")
        check_read_balance(n_in, n_sids, n_rej)
        return {**table_manifest(q), "items_read": n_in, "items_encoded": n_sids, "items_rejected": n_rej,
                "encode_seconds": time.time() - t0, "generation": generation, "vector_read": read}

    return commit_output(spark, output, write)


def count_written(table: DataFrame, rejects: DataFrame, id_col: str, existing_ids: Optional[DataFrame],
                  valid_ids: DataFrame) -> dict:
    """Items encoded and already present, counted from a written SID table (one aggregation): encoded = rows
    whose id is not in `existing_ids` (the table extended; None: nothing); already present = rows from the
    existing table whose id is among the input's `valid_ids` and not rejected as changed_vector."""
    old = (existing_ids.select(id_col).distinct().withColumn("_old", F.lit(True)) if existing_ids is not None
           else None)
    inp = valid_ids.select(id_col).distinct().withColumn("_in", F.lit(True))
    changed = (rejects.where(F.col("reason") == CHANGED_VECTOR).select(id_col).distinct()
               .withColumn("_changed", F.lit(True)))
    rows = table.select(id_col)
    if old is None:
        rows = rows.withColumn("_old", F.lit(None).cast("boolean"))
    else:
        rows = rows.join(old, on=id_col, how="left")
    rows = rows.join(inp, on=id_col, how="left").join(changed, on=id_col, how="left")
    is_old = F.coalesce(F.col("_old"), F.lit(False))
    present = is_old & F.coalesce(F.col("_in"), F.lit(False)) & F.col("_changed").isNull()
    row = rows.agg(F.sum((~is_old).cast("long")).alias("new"),  # driver-ok: one row
                   F.sum(present.cast("long")).alias("present")).first()
    return {"items_encoded": int(row["new"] or 0), "items_already_present": int(row["present"] or 0)}


def check_accounting(out: dict) -> None:
    """items read = encoded + rejected + already present, each counted from the data written."""
    read, enc, rej, present = (out[k] for k in ("items_read", "items_encoded", "items_rejected",
                                                "items_already_present"))
    if read != enc + rej + present:
        raise SidSparkError(f"accounting mismatch: read {read} items, but the table written holds {enc} encoded "
                            f"+ {rej} rejected + {present} already present = {enc + rej + present}; nothing "
                            f"committed")


def write_sid_table(spark: SparkSession, output: str, model: Quantizer, sids: DataFrame, manifest: dict,
                    rejects: Optional[DataFrame] = None, fps: Optional[DataFrame] = None,
                    files: Optional[dict] = None, accounting: Optional[tuple] = None) -> dict:
    """Commit `sids` (+ _rejects, _fingerprints, _vocab.json, `files` {name: text}) atomically with a manifest
    written last. A table with a suffix column is checked unique on (sid, suffix) before it is committed.

    `accounting` (existing_ids or None, the input's valid ids), with `rejects` and manifest["items_read"]: the
    manifest's items encoded and already present are counted from the table written, and a table where
    read != encoded + rejected + already present is not committed (SidSparkError)."""
    cfg = model.config
    sfx = suffix_col_name(cfg.sid_col)
    has_suffix = sfx in sids.columns

    def write(staging: str) -> dict:
        sids.write.parquet(staging)
        if rejects is not None:
            rejects.write.parquet(f"{staging}/{REJECTS}")
        if fps is not None:
            fps.write.parquet(f"{staging}/{FINGERPRINTS}")
        back = spark.read.parquet(staging)
        key = [cfg.sid_col, sfx] if has_suffix else [cfg.sid_col]
        row = back.agg(F.count(F.lit(1)).alias("n"), F.countDistinct(*key).alias("u"),  # driver-ok: one row
                       F.countDistinct(cfg.id_col).alias("ids"),
                       (F.max(sfx) if has_suffix else F.lit(None)).alias("largest")).first()
        if row["ids"] != row["n"]:
            raise SidSparkError(f"SID table would hold {row['n'] - row['ids']} repeated ids")
        if has_suffix and row["u"] != row["n"]:
            raise SidSparkError(f"internal error: {row['n'] - row['u']} SIDs are not unique after dedup")
        largest = int(row["largest"]) if row["largest"] is not None else None
        vocab = Vocabulary(model.levels, int(model.codebooks[0].shape[0]),
                           suffix_size=(largest + 1) if has_suffix else 0)
        write_text(spark, f"{staging}/{VOCAB}", vocab.to_json())
        for name, text in (files or {}).items():
            write_text(spark, f"{staging}/{name}", text)
        out = {**table_manifest(model), "suffix_col": sfx if has_suffix else None, "dedup": manifest.get("dedup", "none"),
               "sid_capacity": cfg.sid_capacity, "items": int(row["n"]), "unique_sids": int(row["u"]),
               "largest_suffix_in_table": largest, "vocab": VOCAB, "vocab_size": vocab.size,
               "fingerprints": FINGERPRINTS if fps is not None else None}
        out.update(manifest)
        if rejects is not None:
            written_rejects = spark.read.parquet(f"{staging}/{REJECTS}")
            out["items_rejected"] = written_rejects.count()
            if accounting is not None and "items_read" in out:
                existing_ids, valid_ids = accounting
                out.update(count_written(back, written_rejects, cfg.id_col, existing_ids, valid_ids))
                check_accounting(out)
        return out

    return commit_output(spark, output, write)


def write_deduplicated(spark: SparkSession, q: Quantizer, sids_path: str, catalog: DataFrame, output: str,
                       generation: Optional[str] = None, alternatives: Optional[int] = None,
                       max_rounds: Optional[int] = None) -> dict:
    """`sid-spark dedup`: the SID table at `sids_path` (written by this model with dedup=none) made unique under
    q.config.dedup, with the vectors of `catalog`, committed to `output` (reliable checkpoints beside it)."""
    from .dedup import DEFAULT_ALTERNATIVES, DEFAULT_MAX_ROUNDS, check_same_model, dedup_sids
    from .io import output_checkpoints, read_input, read_manifest

    cfg = q.config
    with output_checkpoints(spark, output):  # a lost executor mid dedup costs a recomputation
        source = read_manifest(spark, sids_path)
        check_same_model(source, q, f"SID table {sids_path!r}")
        sids = read_input(spark, sids_path)
        vectors = prepare(catalog, cfg, dim=q.dim).valid
        res = dedup_sids(sids, vectors, q, alternatives=DEFAULT_ALTERNATIVES if alternatives is None else alternatives,
                         max_rounds=DEFAULT_MAX_ROUNDS if max_rounds is None else max_rounds)
        report = res.report()
        log.info("dedup=%s: %d items, %d moved, %d suffixed, largest suffix %d, rounds %d, rel. error %.5f -> %.5f",
                 res.mode, report["items_resolved"], report["items_moved"], report["items_suffixed"],
                 report["largest_suffix"], report["rounds"], report["rel_error_before"], report["rel_error_after"])
        report["source_sids"] = sids_path
        report["generation"] = generation or source.get("generation")
        return write_sid_table(spark, output, q, res.sids, report, fps=fingerprints(vectors, cfg.id_col)
                               .join(sids.select(cfg.id_col), on=cfg.id_col, how="left_semi"))


def write_unique(spark: SparkSession, q: Quantizer, df: DataFrame, output: str, existing: Optional[str] = None,
                 generation: Optional[str] = None, alternatives: Optional[int] = None,
                 max_rounds: Optional[int] = None, job: Optional[dict] = None) -> dict:
    """`sid-spark encode` with a dedup mode or `--existing`: encode `df` and resolve collisions (suffix |
    reassign), or extend the published table at `existing` (its rows never change; the drift of the append goes
    in the manifest and `_metrics.json`); committed to `output` with the accounting checked."""
    from .io import output_checkpoints

    with output_checkpoints(spark, output):  # a lost executor mid encode/dedup costs a recomputation
        return _write_unique(spark, q, df, output, existing, generation, alternatives, max_rounds, job or {})


def _write_unique(spark, q, df, output, existing_path, generation, alternatives, max_rounds, job) -> dict:
    import json

    from ..config import ConfigError
    from ..drift import spark_drift
    from .dedup import DEFAULT_ALTERNATIVES, DEFAULT_MAX_ROUNDS, resolve_collisions
    from .incremental import encode_incremental
    from .io import _fs_exists, read_input, read_manifest
    from .prepare import HASH

    cfg = q.config
    alternatives = DEFAULT_ALTERNATIVES if alternatives is None else alternatives
    max_rounds = DEFAULT_MAX_ROUNDS if max_rounds is None else max_rounds
    t0 = time.time()
    n_in = df.count()
    files = {}
    if existing_path:
        existing_manifest = read_manifest(spark, existing_path)
        old_gen = (existing_manifest or {}).get("generation")
        if generation is not None and old_gen is not None and str(old_gen) != str(generation):
            raise ConfigError(f"--existing {existing_path!r} belongs to generation {old_gen!r}, not "
                              f"{generation!r}: a generation's table only grows from its own tables")
        generation = generation if generation is not None else old_gen
        existing = read_input(spark, existing_path)
        fp_path = existing_path.rstrip("/") + "/" + FINGERPRINTS
        fps = spark.read.parquet(fp_path) if _fs_exists(spark, fp_path) else None
        inc = encode_incremental(q, df, existing, existing_manifest, fps, alternatives=alternatives,
                                 max_rounds=max_rounds, append_slack=job.get("append_slack") or 0.0)
        res, rejects, fps_out = inc.result, inc.rejects, inc.fingerprints
        accounting = (existing.select(cfg.id_col),
                      inc.new_valid.select(cfg.id_col).unionByName(inc.old_valid.select(cfg.id_col)))
        report = res.report()
        append = {k: v for k, v in inc.stats.items() if k in ("capacity", "overflow", "repair_rounds",
                                                              "fallback_items")}
        report.update({"existing": existing_path, "items_existing": inc.n_old,
                       "changed_vector_checked": inc.changed_checked, "append": append})
        if res.detail is None:
            report["items_resolved"] = inc.n_new
        drift = spark_drift(q, existing, inc.new_sids, inc.new_valid, inc.old_valid, rejects, inc.old_counts,
                            n_in, {k: v for k, v in job.items() if k.startswith("drift_")})
        report["drift"] = drift
        report["retrain_recommended"] = drift["retrain_recommended"]
        files["_metrics.json"] = json.dumps({"drift": drift, "append": append}, indent=2, sort_keys=True,
                                           default=str)
        log.info("drift: retrain_recommended=%s %s", drift["retrain_recommended"], "; ".join(drift["reasons"]))
    else:
        prepared = prepare(df, cfg, dim=q.dim)
        vectors = prepared.valid
        items = encode_valid(vectors, q).join(vectors.select(cfg.id_col, VEC, HASH), on=cfg.id_col)
        res = resolve_collisions(items, q, cfg.dedup, cfg.sid_capacity, alternatives=alternatives,
                                 max_rounds=max_rounds)
        rejects, fps_out = prepared.rejects, fingerprints(vectors, cfg.id_col)
        accounting = (None, vectors.select(cfg.id_col))
        report = res.report()
        report["items_existing"] = 0
    report.update({"items_read": n_in, "items_encoded": report["items_resolved"],
                   "encode_seconds": time.time() - t0, "generation": generation})
    manifest = write_sid_table(spark, output, q, res.sids, report, rejects, fps_out, files=files,
                               accounting=accounting)
    log.info("items read %d = new %d + rejected %d + already present %d; table holds %d", n_in,
             manifest["items_encoded"], manifest["items_rejected"], manifest["items_already_present"],
             manifest["items"])
    return manifest
