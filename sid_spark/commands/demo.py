"""`sid-spark demo`: the README's end-to-end run on a generated catalog."""
from __future__ import annotations

import json
import logging
import time

from ..cli import command, extra_args, session
from ..config import TokenizerConfig, resolve
from .encode import write_sids

log = logging.getLogger("sid_spark.cli")


@command("demo", "generate a synthetic catalog, train, encode and print a quality summary")
@extra_args((["--items"], {"type": int, "default": 200_000}), (["--dim"], {"type": int, "default": 128}))
def cmd_demo(args) -> dict:
    from ..metrics import evaluate_full
    from ..report import render
    from ..spark.io import write_text
    from ..synthetic import synthetic_catalog
    from ..tokenizer import ResidualKMeansModel, ResidualKMeansTokenizer

    out = args.output or "demo_out"
    settings = resolve(args.config, args.overrides)
    cfg = settings.tokenizer
    spark = session(args, "demo")
    catalog_path = f"{out}/catalog"
    log.info("generating %d x %d synthetic catalog -> %s", args.items, args.dim, catalog_path)
    synthetic_catalog(spark, args.items, args.dim, seed=cfg.seed, id_col=cfg.id_col,
                      vector_col=cfg.vector_col).write.mode("overwrite").parquet(catalog_path)
    df = spark.read.parquet(catalog_path)
    t0 = time.time()
    model = ResidualKMeansTokenizer(cfg).fit(df)
    train_s = time.time() - t0
    model.save(f"{out}/model")
    model = ResidualKMeansModel.load(f"{out}/model")
    manifest = write_sids(spark, model, df, f"{out}/sids")
    sids = spark.read.parquet(f"{out}/sids")
    ev = evaluate_full(spark, sids, sid_col=cfg.sid_col, id_col=cfg.id_col, codebook_size=cfg.codebook_size,
                       embeddings_df=df, vector_col=cfg.vector_col, codebooks=model.codebooks, seed=cfg.seed)
    write_text(spark, f"{out}/metrics.json", json.dumps(ev.metrics, indent=2, sort_keys=True, default=str))
    write_text(spark, f"{out}/report.html", render(ev.metrics, ev.code_counts, title="sid-spark demo"))
    log.info("quality report -> %s/report.html", out)
    summary = {"items": manifest["items_encoded"], "rejected": manifest["items_rejected"],
               "train_seconds": round(train_s, 1), "encode_seconds": round(manifest["encode_seconds"], 1),
               "levels": ev.metrics["levels"], "collision_rate": ev.metrics["collision_rate"],
               "rel_reconstruction_error": ev.metrics["rel_mse"], "report": f"{out}/report.html"}
    print_summary(summary, cfg)
    return summary


def print_summary(summary: dict, cfg: TokenizerConfig) -> None:
    print(f"\nSemantic IDs: {summary['items']} items, {cfg.levels} levels x {cfg.codebook_size} codes "
          f"(rejected {summary['rejected']}; train {summary['train_seconds']}s, encode {summary['encode_seconds']}s)")
    print(f"{'level':>5} {'codes used':>10} {'entropy (bits)':>15} {'largest':>8} {'smallest':>8}")
    for lv in summary["levels"]:
        print(f"{lv['level']:>5} {lv['codes_used']:>10} {lv['entropy_bits']:>15.3f} {lv['max_code_size']:>8} "
              f"{lv['min_code_size']:>8}")
    print(f"collision rate: {summary['collision_rate']:.4f}   "
          f"relative reconstruction error: {summary['rel_reconstruction_error']:.4f}\n")
