"""`sid-spark train-encoder` / `encode-encoder`: the other encoders (VQ-VAE, RQ-VAE, FSQ, RQ-OPQ, OPMQ,
SimHash) through the same train -> artifact -> SID table path as residual k-means.

Encoder keys are given as `--set encoder.<key>=<value>` (e.g. `--set encoder.epochs=30`); the rest are
tokenizer keys (columns, seed, sample_size, device)."""
from __future__ import annotations

import logging
import time

from ..cli import command, extra_args, require, session
from ..config import resolve, split_sections

log = logging.getLogger("sid_spark.cli")


def _split(pairs):
    """`--set encoder.<key>=value` -> the encoder's keys; the rest are tokenizer keys."""
    per, rest = split_sections(pairs, {"encoder"})
    return per.get("encoder", {}), rest


@command("train-encoder", "train one of the other encoders (--encoder NAME) and write its model artifact")
@extra_args((["--encoder"], {"help": "vqvae, rqvae, fsq, rqopq, opmq or simhash"}))
def cmd_train_encoder(args) -> dict:
    from ..encoder_tokenizer import EncoderTokenizer
    from ..spark.io import read_input
    from ..spark.prepare import prepare
    from ..storage import check_no_overlap

    require(args, "input", "model", "encoder")
    enc_params, rest = _split(args.overrides)
    settings = resolve(args.config, rest)
    tok = EncoderTokenizer(args.encoder, settings.tokenizer, **enc_params)
    spark = session(args, "train-encoder")
    check_no_overlap(args.model, args.input, spark=spark)
    df = read_input(spark, args.input)
    t0 = time.time()
    model = tok.fit_prepared(prepare(df, tok.config))
    model_id = model.save(args.model)
    log.info("%s model %s written to %s (%.1fs)", args.encoder, model_id, args.model, time.time() - t0)
    return {"model": args.model, "model_id": model_id, "encoder": args.encoder,
            "train_seconds": model.summary.get("train_seconds")}


@command("encode-encoder", "encode a catalog with a trained encoder artifact (--model) into a SID table")
def cmd_encode_encoder(args) -> dict:
    from ..encoder_tokenizer import EncoderModel
    from ..spark.sid_table import check_read_balance
    from ..spark.io import REJECTS, commit_output, read_input
    from ..storage import guard_output

    require(args, "input", "output", "model")
    _, rest = _split(args.overrides)
    from ..config import load_config_file, parse_overrides

    explicit = {**load_config_file(args.config), **parse_overrides(rest)}
    model = EncoderModel.load(args.model, **explicit)
    spark = session(args, "encode-encoder")
    guard_output(spark, args.output, args.input, args.model, kind="sids",
                 max_reject_share=model.config.max_reject_share)
    df = read_input(spark, args.input)
    t0 = time.time()
    res = model.encode(df)

    def write(staging: str) -> dict:
        res.sids.write.parquet(staging)
        res.rejects.write.parquet(f"{staging}/{REJECTS}")
        n_sids = spark.read.parquet(staging).count()
        n_rej = spark.read.parquet(f"{staging}/{REJECTS}").count()
        n_in = df.count()
        check_read_balance(n_in, n_sids, n_rej)
        return {"kind": "sids", "encoder": model.encoder.name, "model_id": model.model_id, "levels": model.levels,
                "token_sizes": list(model.encoder.token_sizes), "id_col": model.config.id_col,
                "sid_col": model.config.sid_col, "items_read": n_in, "items_encoded": n_sids,
                "items_rejected": n_rej, "encode_seconds": time.time() - t0}

    return commit_output(spark, args.output, write)
