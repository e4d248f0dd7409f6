"""`sid-spark compare`: every encoder and residual k-means on one catalog -> comparison.md / .html / .json."""
from __future__ import annotations

import json
import logging
import time

from ..cli import command, extra_args, require, session
from ..config import resolve, split_sections
from ..errors import InputError

log = logging.getLogger("sid_spark.cli")


def split_encoder_overrides(pairs):
    """`--set rqvae.epochs=5` goes to one encoder, `--set metrics.knn_queries=200` to sid_spark.metrics.evaluate,
    `--set retrieval.epochs=3` to the retriever of `--retrieval`, every other `--set` to the tokenizer config."""
    from ..compare import DEFAULT_SPECS

    return split_sections(pairs, set(DEFAULT_SPECS) | {"metrics", "retrieval"})


@command("compare", "run every encoder + residual k-means on one catalog and write the comparison table")
@extra_args((["--interactions"], {"help": "Parquet path or table of user sequences (user_id, item_ids) for HitRate"}),
            (["--encoders"], {"default": "all", "help": "comma-separated encoder names, or all"}),
            (["--epochs"], {"type": int, "default": None, "help": "epochs of the neural encoders"}),
            (["--retrieval"], {"action": "store_true",
                               "help": "add the generative-retrieval column (needs --interactions; retriever "
                                       "keys as --set retrieval.<key>=value)"}))
def cmd_compare(args) -> dict:
    from ..compare import parse_encoders, run_comparison, to_html, to_markdown
    from ..spark.io import commit_output, read_input, write_text
    from ..storage import guard_output

    require(args, "input", "output")
    per_encoder, rest = split_encoder_overrides(args.overrides)
    settings = resolve(args.config, rest)
    names = parse_encoders(args.encoders)
    spark = session(args, "compare")
    guard_output(spark, args.output, args.input, args.interactions, kind="comparison")
    df = read_input(spark, args.input)
    inter = read_input(spark, args.interactions) if args.interactions else None
    t0 = time.time()
    metrics_options = per_encoder.pop("metrics", {})
    retrieval = per_encoder.pop("retrieval", {})
    if args.retrieval and inter is None:
        raise InputError("--retrieval needs --interactions (the user sequences the retriever learns from)")
    if retrieval and not args.retrieval:
        raise InputError("--set retrieval.* given without --retrieval")
    rows = run_comparison(spark, df, settings.tokenizer, names, inter, per_encoder, args.epochs, metrics_options,
                          retrieval if args.retrieval else None)

    def write(staging: str) -> dict:
        write_text(spark, f"{staging}/comparison.md", to_markdown(rows))
        write_text(spark, f"{staging}/comparison.html", to_html(rows))
        write_text(spark, f"{staging}/comparison.json",
                   json.dumps([r.__dict__ for r in rows], indent=2, sort_keys=True, default=str))
        return {"kind": "comparison", "encoders": names, "input": args.input, "interactions": args.interactions,
                "seconds": time.time() - t0, "failed": [r.name for r in rows if r.error]}

    manifest = commit_output(spark, args.output, write, kind="comparison")
    print(to_markdown(rows))
    return manifest
