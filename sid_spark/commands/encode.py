"""`sid-spark encode`: SIDs + rejects + manifest, committed atomically."""
from __future__ import annotations

import logging
from typing import Optional

from ..cli import command, explicit_keys, extra_args, require, session
from ..config import resolve
from .dedup import DEDUP_ARGS

log = logging.getLogger("sid_spark.cli")


@command("encode", "encode a catalog with a trained model into a SID table")
@extra_args((["--existing"], {"help": "SID table of this model to extend: only ids not in it are encoded, its rows "
                                      "are kept as they are (the output is the complete table; it may be the "
                                      "same path: the new table replaces it atomically)"}),
            (["--generation"], {"help": "generation this SID table belongs to, recorded in its manifest "
                                        "(--existing: inherited from the existing table)"}),
            *DEDUP_ARGS)
def cmd_encode(args) -> dict:
    from ..spark.io import read_input
    from ..tokenizer import ResidualKMeansModel

    from ..drift import DRIFT_DEFAULTS

    require(args, "input", "output", "model")
    settings = resolve(args.config, args.overrides, job_keys=DRIFT_DEFAULTS)
    args.job_settings = settings.extra
    spark = session(args, "encode")
    from ..storage import guard_output  # issue 13: no overlap, nothing foreign replaced
    guard_output(spark, args.output, args.input, args.model, max_reject_share=settings.tokenizer.max_reject_share)
    overrides = {k: v for k, v in settings.tokenizer.to_dict().items()
                 if k in explicit_keys(args)}
    if getattr(args, "existing", None):
        # An append extends the table as it was deduplicated (a generation's dedup runs after its full encode).
        from ..spark.io import read_manifest

        existing = read_manifest(spark, args.existing) or {}
        for key in ("dedup", "sid_capacity"):
            if key not in overrides and key in existing:
                overrides[key] = existing[key]
    model = ResidualKMeansModel.load(args.model, **overrides)
    df = read_input(spark, args.input)
    if getattr(args, "existing", None) or model.config.dedup != "none":
        from .dedup import encode_with_dedup  # unique SIDs / incremental encoding (issue 4)

        return encode_with_dedup(spark, model.quantizer(), df, args)
    return write_sids(spark, model, df, args.output, generation=getattr(args, "generation", None))


def write_sids(spark, model, df, output: str, generation: Optional[str] = None) -> dict:
    """Encode `df` with a loaded model and commit the SID table atomically (sid_spark.spark.sid_table)."""
    from ..spark.sid_table import write_encoded

    manifest = write_encoded(spark, model.quantizer(), df, output, generation)
    log.info("items read %d = encoded %d + rejected %d", manifest["items_read"], manifest["items_encoded"],
             manifest["items_rejected"])
    return manifest
