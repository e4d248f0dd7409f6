"""`sid-spark evaluate`: quality metrics of a SID table -> metrics.json, per-code / per-SID Parquet, report.html."""
from __future__ import annotations

import json
import logging

from ..cli import command, extra_args, require, session
from ..config import resolve
from ..errors import InputError

log = logging.getLogger("sid_spark.cli")

# Job keys (conf/evaluate.yaml or --set); every other key belongs to the tokenizer config (vector_col, seed, ...).
JOB_KEYS = {"hit_ks": [10, 50], "knn_queries": 1000, "max_transitions": 100_000, "user_col": "user_id",
            "items_col": "item_ids", "query_block": 4096}


@command("evaluate", "quality metrics of a SID table: metrics.json, count tables and report.html")
@extra_args((["--sids"], {"help": "SID table written by `sid-spark encode` (directory with _manifest.json)"}),
            (["--embeddings"], {"help": "catalog Parquet/table with the id and embedding columns"}),
            (["--interactions"], {"help": "user sequences: user id + item ids list, oldest first"}))
def cmd_evaluate(args) -> dict:
    from ..metrics import evaluate_full
    from ..spark.io import read_input, read_manifest
    from ..storage import guard_output
    from ..artifact import read_artifact
    from ..tokenizer import KIND

    require(args, "sids", "output")
    settings = resolve(args.config, args.overrides, JOB_KEYS)
    cfg, job = settings.tokenizer, settings.extra
    spark = session(args, "evaluate")
    guard_output(spark, args.output, args.sids, args.model, args.embeddings, args.interactions, kind="evaluation")
    sids = read_input(spark, args.sids)
    manifest = read_manifest(spark, args.sids) or {}
    id_col = manifest.get("id_col", cfg.id_col)
    sid_col = manifest.get("sid_col", cfg.sid_col)
    codebooks, model_id = None, None
    if args.model:
        # Only the codebooks are needed: read the arrays, not the training config (which may be of another version).
        art, arrays, _ = read_artifact(args.model, kind=KIND)
        codebooks, model_id = [arrays[f"codebook_{i}"] for i in range(art["levels"])], art["model_id"]
        if manifest.get("model_id") and manifest["model_id"] != model_id:
            raise InputError(f"--model {args.model} is model {model_id} but the SID table was encoded by "
                             f"{manifest['model_id']}")
    k = manifest.get("codebook_size") or ([int(c.shape[0]) for c in codebooks] if codebooks else cfg.codebook_size)
    ev = evaluate_full(spark, sids, sid_col=sid_col, id_col=id_col, codebook_size=k,
                       embeddings_df=read_input(spark, args.embeddings) if args.embeddings else None,
                       vector_col=cfg.vector_col, codebooks=codebooks,
                       interactions_df=read_input(spark, args.interactions) if args.interactions else None,
                       hit_ks=job["hit_ks"], knn_queries=int(job["knn_queries"]),
                       max_transitions=int(job["max_transitions"]), user_col=job["user_col"],
                       items_col=job["items_col"], seed=cfg.seed, query_block=int(job["query_block"]),
                       block_rows=cfg.block_rows, device=cfg.device)
    sources = {"sids": args.sids, "model": model_id or manifest.get("model_id"), "embeddings": args.embeddings,
               "interactions": args.interactions}
    ev.metrics["sources"] = sources
    if manifest.get("drift"):  # the table comes from `encode --existing`: its drift report goes into the report
        ev.metrics["drift"] = manifest["drift"]
    write_evaluation(spark, ev, args.output, sources)
    return {"output": args.output, "n_items": ev.metrics["n_items"], "collision_rate": ev.metrics["collision_rate"],
            "rel_mse": ev.metrics["rel_mse"], "hitrate": ev.metrics["hitrate"]}


def write_evaluation(spark, ev, output: str, sources: dict | None = None, title: str = "Semantic ID quality report"):
    """Commit metrics.json, report.html, per_code/ and per_sid/ (Parquet) atomically to `output`."""
    from ..report import render
    from ..spark.io import commit_output, write_text

    def write(staging: str) -> dict:
        ev.per_code.coalesce(1).write.parquet(f"{staging}/per_code")
        ev.per_sid.write.parquet(f"{staging}/per_sid")
        write_text(spark, f"{staging}/metrics.json", json.dumps(ev.metrics, indent=2, sort_keys=True, default=str))
        write_text(spark, f"{staging}/report.html", render(ev.metrics, ev.code_counts, title=title,
                                                          sources={k: v for k, v in (sources or {}).items() if v}))
        return {"kind": "evaluation", "n_items": ev.metrics["n_items"],
                "files": ["metrics.json", "report.html", "per_code", "per_sid"]}

    return commit_output(spark, output, write, kind="evaluation")
