"""`sid-spark train`."""
from __future__ import annotations

import logging
import time

from ..cli import command, extra_args, require, session
from ..config import resolve
from ..errors import SidSparkError

log = logging.getLogger("sid_spark.cli")


@command("train", "train a residual k-means tokenizer and write the model artifact")
@extra_args((["--resume"], {"action": "store_true", "help": "continue from the levels checkpointed in --model"}))
def cmd_train(args) -> dict:
    from .. import artifact, checkpoint, storage
    from ..spark.io import read_input
    from ..spark.prepare import prepare
    from ..tokenizer import KIND, ResidualKMeansTokenizer

    require(args, "input", "model")
    settings = resolve(args.config, args.overrides)
    spark = session(args, "train")
    storage.check_no_overlap(args.model, args.input, spark=spark)
    artifact.check_replaceable(args.model, KIND)
    df = read_input(spark, args.input)
    t0 = time.time()
    cfg = settings.tokenizer
    tok = ResidualKMeansTokenizer(cfg)
    prepared = prepare(df, cfg)
    fingerprint = input_fingerprint(df, cfg)
    start = None
    if args.resume:
        start = checkpoint.latest(args.model, cfg, prepared.dim, prepared.n_read, fingerprint)
        log.info("resume: %s", f"{len(start.codebooks)} level(s) from checkpoint" if start else
                 "no checkpoint found, starting from level 1")
    else:
        checkpoint.clear(args.model)

    def on_level(result) -> None:
        checkpoint.write_level(args.model, result, cfg, prepared.n_read, fingerprint)

    model = tok.fit_prepared(prepared, start=start, on_level=on_level)
    model.summary["train_seconds"] = time.time() - t0
    model.summary["accounting"] = accounting = training_accounting(prepared, model.summary["n_items"])
    log.info("items read %d = used %d + rejected %d %s", accounting["items_read"], accounting["items_valid"],
             accounting["items_rejected"], accounting["rejected_by_reason"])
    storage.check_reject_share(args.model, accounting["items_read"], accounting["items_rejected"],
                               cfg.max_reject_share)
    model_id = model.save(args.model)  # swaps the whole directory in: the checkpoints go with the old one
    log.info("model %s written to %s (%.1fs)", model_id, args.model, model.summary["train_seconds"])
    return {"model": args.model, "model_id": model_id, "train_seconds": model.summary["train_seconds"],
            **accounting}


def input_fingerprint(df, cfg) -> str:
    """A content fingerprint of the input's (id, vector) rows, whatever their order or partitioning: the xor and
    the 32-bit-limb sums of xxhash64(id, vector) (one aggregation, a K-free single row)."""
    from pyspark.sql import functions as F

    from ..spark.vectors import float_array_column

    h = F.xxhash64(F.col(cfg.id_col), float_array_column(df, cfg.vector_col))
    row = df.agg(F.bit_xor(h).alias("x"), F.sum(F.shiftrightunsigned(h, 32)).alias("hi"),
                 F.sum(h.bitwiseAND(F.lit(0xFFFFFFFF))).alias("lo")).first()  # driver-ok: one row
    return f"{(row['x'] or 0) & 0xFFFFFFFFFFFFFFFF:016x}-{row['hi'] or 0:x}-{row['lo'] or 0:x}"


def training_accounting(prepared, n_valid: int) -> dict:
    """items read = items used + items rejected, with the rejects counted by reason (one row per reason)."""
    by_reason = {r["reason"]: int(r["count"])
                 for r in prepared.rejects.groupBy("reason").count().collect()}  # driver-ok: one row per reason
    n_rej = sum(by_reason.values())
    if prepared.n_read is not None and prepared.n_read != n_valid + n_rej:
        raise SidSparkError(f"accounting mismatch: read {prepared.n_read} items, used {n_valid}, rejected {n_rej}")
    return {"items_read": prepared.n_read, "items_valid": n_valid, "items_rejected": n_rej,
            "rejected_by_reason": dict(sorted(by_reason.items()))}
