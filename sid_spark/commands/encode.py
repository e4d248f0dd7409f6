"""`sid-spark encode`: SIDs + rejects + manifest, committed atomically."""
from __future__ import annotations

import logging
import time
from typing import Optional

from ..cli import command, extra_args, require, session
from ..config import resolve
from ..errors import SidSparkError
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
                 if k in _explicit_keys(args)}
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

        return encode_with_dedup(spark, model, df, args)
    return write_sids(spark, model, df, args.output, generation=getattr(args, "generation", None))


def _explicit_keys(args) -> set:
    from ..config import load_config_file, parse_overrides

    return set(load_config_file(args.config)) | set(parse_overrides(args.overrides))


def write_sids(spark, model, df, output: str, generation: Optional[str] = None) -> dict:
    """Encode `df` and commit SIDs + rejects + fingerprints + manifest (with the accounting) atomically to `output`.

    Without a balanced level this is one pass over the vectors (sid_spark.spark.single_pass); a balanced level needs
    the valid, de-duplicated rows first (its capacities depend on N), so it goes through prepare."""
    from ..spark.dedup import FINGERPRINTS
    from ..spark.io import REJECTS, commit_output
    from ..spark.prepare import prepare
    from ..spark.single_pass import write_greedy

    t0 = time.time()
    balanced = any(model.config.balance_for(level) == "exact" for level in range(model.levels))

    def write(staging: str) -> dict:
        if balanced:
            prepared = prepare(df, model.config, dim=model.dim)  # once: SIDs, rejects and fingerprints share it
            res = model.encode_prepared(prepared)
            res.sids.write.parquet(staging)
            res.rejects.write.parquet(f"{staging}/{REJECTS}")
            _write_fingerprints(model, prepared.valid, staging)
            n_in = prepared.n_read
            n_sids = spark.read.parquet(staging).count()
            n_rej = spark.read.parquet(f"{staging}/{REJECTS}").count()
        else:
            n_in, n_sids, n_rej = write_greedy(spark, model, df, staging, f"{staging}/{REJECTS}",
                                               f"{staging}/{FINGERPRINTS}")
        if n_in != n_sids + n_rej:
            raise SidSparkError(f"accounting mismatch: read {n_in} items, encoded {n_sids}, rejected {n_rej}")
        return {"kind": "sids", "model_id": model.model_id, "levels": model.levels,
                "codebook_size": int(model.codebooks[0].shape[0]), "id_col": model.config.id_col,
                "sid_col": model.config.sid_col, "items_read": n_in, "items_encoded": n_sids,
                "items_rejected": n_rej, "encode_seconds": time.time() - t0, "generation": generation}

    manifest = commit_output(spark, output, write)
    log.info("items read %d = encoded %d + rejected %d", manifest["items_read"], manifest["items_encoded"],
             manifest["items_rejected"])
    return manifest


def _write_fingerprints(model, valid, staging: str) -> None:
    """(id, vector hash) beside the SIDs, so `encode --existing` can report ids whose vector changed."""
    from ..spark.dedup import FINGERPRINTS, fingerprints

    fingerprints(valid, model.config.id_col).write.parquet(f"{staging}/{FINGERPRINTS}")
