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
    from .. import checkpoint
    from ..spark.io import read_input
    from ..spark.prepare import prepare
    from ..tokenizer import ResidualKMeansTokenizer

    require(args, "input", "model")
    settings = resolve(args.config, args.overrides)
    spark = session(args, "train")
    df = read_input(spark, args.input)
    t0 = time.time()
    cfg = settings.tokenizer
    tok = ResidualKMeansTokenizer(cfg)
    prepared = prepare(df, cfg)
    start = None
    if args.resume:
        start = checkpoint.latest(args.model, cfg, prepared.dim, prepared.n_read)
        log.info("resume: %s", f"{len(start.codebooks)} level(s) from checkpoint" if start else
                 "no checkpoint found, starting from level 1")
    else:
        checkpoint.clear(args.model)

    def on_level(result) -> None:
        checkpoint.write_level(args.model, result, cfg, prepared.n_read)

    model = tok.fit_prepared(prepared, start=start, on_level=on_level)
    model.summary["train_seconds"] = time.time() - t0
    model.summary["accounting"] = accounting = training_accounting(prepared, model.summary["n_items"])
    log.info("items read %d = used %d + rejected %d %s", accounting["items_read"], accounting["items_valid"],
             accounting["items_rejected"], accounting["rejected_by_reason"])
    model_id = model.save(args.model)  # swaps the whole directory in: the checkpoints go with the old one
    log.info("model %s written to %s (%.1fs)", model_id, args.model, model.summary["train_seconds"])
    return {"model": args.model, "model_id": model_id, "train_seconds": model.summary["train_seconds"],
            **accounting}


def training_accounting(prepared, n_valid: int) -> dict:
    """items read = items used + items rejected, with the rejects counted by reason (one row per reason)."""
    by_reason = {r["reason"]: int(r["count"])
                 for r in prepared.rejects.groupBy("reason").count().collect()}  # driver-ok: one row per reason
    n_rej = sum(by_reason.values())
    if prepared.n_read is not None and prepared.n_read != n_valid + n_rej:
        raise SidSparkError(f"accounting mismatch: read {prepared.n_read} items, used {n_valid}, rejected {n_rej}")
    return {"items_read": prepared.n_read, "items_valid": n_valid, "items_rejected": n_rej,
            "rejected_by_reason": dict(sorted(by_reason.items()))}
