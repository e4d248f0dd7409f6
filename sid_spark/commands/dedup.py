"""`sid-spark dedup`: make the SIDs of an encoded table unique (suffix | reassign), committed atomically.

Also the dedup-aware half of `sid-spark encode` (a dedup mode other than none, or `--existing`)."""
from __future__ import annotations

import json
import logging
import time

from ..cli import command, extra_args, require, session
from ..config import ConfigError, resolve

log = logging.getLogger("sid_spark.cli")

DEDUP_ARGS = (
    (["--alternatives"], {"type": int, "default": 64,
                          "help": "reassign: nearest alternative last-level codes tried per item (default 64)"}),
    (["--max-rounds"], {"type": int, "default": 100,
                        "help": "reassign: most rounds before the rest gets a suffix (default 100)"}),
)


@command("dedup", "make every SID of an encoded table unique: suffix (TIGER) or reassign (FORGE)")
@extra_args((["--sids"], {"help": "SID table written by `sid-spark encode` (dedup=none) with this --model"}),
            (["--generation"], {"help": "generation recorded in the manifest (default: the --sids table's)"}),
            *DEDUP_ARGS)
def cmd_dedup(args) -> dict:
    from ..spark.dedup import check_same_model, dedup_sids, fingerprints, write_sid_table
    from ..spark.io import read_input, read_manifest
    from ..spark.prepare import prepare
    from ..tokenizer import ResidualKMeansModel
    from .encode import _explicit_keys

    require(args, "input", "sids", "output", "model")
    settings = resolve(args.config, args.overrides)
    overrides = {k: v for k, v in settings.tokenizer.to_dict().items() if k in _explicit_keys(args)}
    model = ResidualKMeansModel.load(args.model, **overrides)
    cfg = model.config
    if cfg.dedup == "none":
        raise ConfigError("config key 'dedup' is 'none': set it to suffix or reassign (--set dedup=suffix)")
    spark = session(args, "dedup")
    from ..storage import guard_output  # issue 13: no overlap, nothing foreign replaced
    guard_output(spark, args.output, args.input, args.sids, args.model,
                 max_reject_share=settings.tokenizer.max_reject_share)
    from ..spark.io import output_checkpoints

    with output_checkpoints(spark, args.output):  # a lost executor mid dedup costs a recomputation
        source = read_manifest(spark, args.sids)
        check_same_model(source, model, f"SID table {args.sids!r}")
        sids = read_input(spark, args.sids)
        vectors = prepare(read_input(spark, args.input), cfg, dim=model.dim).valid
        res = dedup_sids(sids, vectors, model, alternatives=args.alternatives, max_rounds=args.max_rounds)
        report = res.report()
        log.info("dedup=%s: %d items, %d moved, %d suffixed, largest suffix %d, rounds %d, rel. error %.5f -> %.5f",
                 res.mode, report["items_resolved"], report["items_moved"], report["items_suffixed"],
                 report["largest_suffix"], report["rounds"], report["rel_error_before"], report["rel_error_after"])
        report["source_sids"] = args.sids
        report["generation"] = args.generation or source.get("generation")
        return write_sid_table(spark, args.output, model, res.sids, report, fps=fingerprints(vectors, cfg.id_col)
                               .join(sids.select(cfg.id_col), on=cfg.id_col, how="left_semi"))


def encode_with_dedup(spark, model, df, args) -> dict:
    """`sid-spark encode` when the model's dedup mode is not none or `--existing` is given."""
    from ..spark.io import output_checkpoints

    with output_checkpoints(spark, args.output):  # a lost executor mid encode/dedup costs a recomputation
        return _encode_with_dedup(spark, model, df, args)


def _encode_with_dedup(spark, model, df, args) -> dict:
    from pyspark.sql import functions as F

    from ..drift import check_thresholds, spark_drift
    from ..spark.dedup import (FINGERPRINTS, encode_incremental, fingerprints, resolve_collisions,
                               write_sid_table)
    from ..spark.io import _fs_exists, read_input, read_manifest
    from ..spark.prepare import prepare

    cfg = model.config
    alternatives = getattr(args, "alternatives", 64)
    max_rounds = getattr(args, "max_rounds", 100)
    job = check_thresholds(getattr(args, "job_settings", None) or {})
    generation = getattr(args, "generation", None)
    t0 = time.time()
    n_in = df.count()
    files = {}
    if getattr(args, "existing", None):
        existing_manifest = read_manifest(spark, args.existing)
        old_gen = (existing_manifest or {}).get("generation")
        if generation is not None and old_gen is not None and str(old_gen) != str(generation):
            raise ConfigError(f"--existing {args.existing!r} belongs to generation {old_gen!r}, not {generation!r}: "
                              "a generation's table only grows from its own tables")
        generation = generation if generation is not None else old_gen
        existing = read_input(spark, args.existing)
        fp_path = args.existing.rstrip("/") + "/" + FINGERPRINTS
        fps = spark.read.parquet(fp_path) if _fs_exists(spark, fp_path) else None
        inc = encode_incremental(model, df, existing, existing_manifest, fps,
                                 alternatives=alternatives, max_rounds=max_rounds,
                                 append_slack=job["append_slack"] or 0.0)
        res, rejects, fps_out = inc.result, inc.rejects, inc.fingerprints
        accounting = (existing.select(cfg.id_col),
                      inc.new_valid.select(cfg.id_col).unionByName(inc.old_valid.select(cfg.id_col)))
        report = res.report()
        report.update({"existing": args.existing, "items_existing": inc.n_old,
                       "changed_vector_checked": inc.changed_checked, "append": _append_stats(inc.stats)})
        if res.detail is None:
            report["items_resolved"] = inc.n_new
        drift = spark_drift(model, existing, inc.new_sids, inc.new_valid, inc.old_valid, rejects, inc.old_counts,
                            n_in, {k: v for k, v in job.items() if k.startswith("drift_")})
        report["drift"] = drift
        report["retrain_recommended"] = drift["retrain_recommended"]
        files["_metrics.json"] = json.dumps({"drift": drift, "append": report["append"]}, indent=2,
                                           sort_keys=True, default=str)
        log.info("drift: retrain_recommended=%s %s", drift["retrain_recommended"], "; ".join(drift["reasons"]))
    else:
        enc = model.encode(df)
        vectors = prepare(df, cfg, dim=model.dim).valid
        items = enc.sids.join(vectors.select(cfg.id_col, F.col("_vec"), F.col("_h")), on=cfg.id_col)
        res = resolve_collisions(items, model, cfg.dedup, cfg.sid_capacity, alternatives=alternatives,
                                 max_rounds=max_rounds)
        rejects, fps_out = enc.rejects, fingerprints(vectors, cfg.id_col)
        accounting = (None, vectors.select(cfg.id_col))
        report = res.report()
        report["items_existing"] = 0
    report.update({"items_read": n_in, "items_encoded": report["items_resolved"],
                   "encode_seconds": time.time() - t0, "generation": generation})
    manifest = write_sid_table(spark, args.output, model, res.sids, report, rejects, fps_out, files=files,
                               accounting=accounting)
    log.info("items read %d = new %d + rejected %d + already present %d; table holds %d", n_in,
             manifest["items_encoded"], manifest["items_rejected"], manifest["items_already_present"],
             manifest["items"])
    return manifest


def _append_stats(stats: dict) -> dict:
    return {k: v for k, v in stats.items() if k in ("capacity", "overflow", "repair_rounds", "fallback_items")}
