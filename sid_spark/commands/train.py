"""`sid-spark train`."""
from __future__ import annotations

import logging
import time

from ..cli import command, extra_args, require, session
from ..config import resolve

log = logging.getLogger("sid_spark.cli")


@command("train", "train a residual k-means tokenizer and write the model artifact")
@extra_args((["--resume"], {"action": "store_true", "help": "continue from the levels checkpointed in --model"}))
def cmd_train(args) -> dict:
    from ..spark.io import read_input
    from ..spark.prepare import prepare
    from ..tokenizer import ResidualKMeansTokenizer

    require(args, "input", "model")
    settings = resolve(args.config, args.overrides)
    spark = session(args, "train")
    df = read_input(spark, args.input)
    t0 = time.time()
    tok = ResidualKMeansTokenizer(settings.tokenizer)
    model = tok.fit_prepared(prepare(df, settings.tokenizer))
    model.summary["train_seconds"] = time.time() - t0
    model_id = model.save(args.model)
    log.info("model %s written to %s (%.1fs)", model_id, args.model, model.summary["train_seconds"])
    return {"model": args.model, "model_id": model_id, "train_seconds": model.summary["train_seconds"]}
