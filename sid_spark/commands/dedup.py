"""`sid-spark dedup`: make the SIDs of an encoded table unique (suffix | reassign), committed atomically.

Also the dedup-aware half of `sid-spark encode` (a dedup mode other than none, or `--existing`)."""
from __future__ import annotations

import logging

from ..cli import command, explicit_keys, extra_args, require, session
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
    from ..spark.io import read_input
    from ..spark.sid_table import write_deduplicated
    from ..storage import guard_output
    from ..tokenizer import ResidualKMeansModel

    require(args, "input", "sids", "output", "model")
    settings = resolve(args.config, args.overrides)
    overrides = {k: v for k, v in settings.tokenizer.to_dict().items() if k in explicit_keys(args)}
    q = ResidualKMeansModel.load(args.model, **overrides).quantizer()
    if q.config.dedup == "none":
        raise ConfigError("config key 'dedup' is 'none': set it to suffix or reassign (--set dedup=suffix)")
    spark = session(args, "dedup")
    # issue 13: no overlap, nothing foreign replaced
    guard_output(spark, args.output, args.input, args.sids, args.model,
                 max_reject_share=settings.tokenizer.max_reject_share)
    return write_deduplicated(spark, q, args.sids, read_input(spark, args.input), args.output,
                              generation=args.generation, alternatives=args.alternatives, max_rounds=args.max_rounds)


def encode_with_dedup(spark, q, df, args) -> dict:
    """`sid-spark encode` when the model's dedup mode is not none or `--existing` is given (q: the model's
    Quantizer)."""
    from ..drift import check_thresholds
    from ..spark.sid_table import write_unique

    return write_unique(spark, q, df, args.output, existing=getattr(args, "existing", None),
                        generation=getattr(args, "generation", None),
                        alternatives=getattr(args, "alternatives", None), max_rounds=getattr(args, "max_rounds", None),
                        job=check_thresholds(getattr(args, "job_settings", None) or {}))
