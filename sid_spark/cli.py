"""Layer 4: the `sid-spark` console script. jobs/*.py call the same `main` under spark-submit.

Exit codes a scheduler can act on: 0 done; 2 bad config or input (one line on stderr, nothing written);
1 anything else (one line on stderr, traceback in the log).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Callable, Dict, List, Optional

from .config import ConfigError, TokenizerConfig, resolve
from .errors import SidSparkError

log = logging.getLogger("sid_spark.cli")

COMMANDS: Dict[str, Callable] = {}


def command(name: str, help_text: str):
    def deco(fn):
        COMMANDS[name] = (fn, help_text)
        return fn
    return deco


def common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", help="Parquet path or table name of the catalog (id + embedding)")
    p.add_argument("--output", help="output directory (written atomically)")
    p.add_argument("--model", help="model artifact directory")
    p.add_argument("--config", help="YAML config file (conf/<job>.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key (repeatable)")
    p.add_argument("--master", default="local[*]", help="Spark master when not under spark-submit (default local[*])")
    p.add_argument("--log-level", default="INFO")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sid-spark", description="Semantic IDs for item catalogs on Spark")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (fn, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        common_args(p)
        for args, kwargs in getattr(fn, "extra_args", []):
            p.add_argument(*args, **kwargs)
    return parser


def extra_args(*specs):
    def deco(fn):
        fn.extra_args = list(specs)
        return fn
    return deco


def require(args, *names: str) -> None:
    for name in names:
        if not getattr(args, name):
            raise ConfigError(f"--{name} is required for `{args.command}`")


def session(args, app: str):
    from .spark.session import get_session

    return get_session(args.master, app_name=f"sid_spark-{app}")


# ---- commands ----------------------------------------------------------------------------------------------
@command("train", "train a residual k-means tokenizer and write the model artifact")
@extra_args((["--resume"], {"action": "store_true", "help": "continue from the levels checkpointed in --model"}))
def cmd_train(args) -> dict:
    from .spark.io import read_input
    from .spark.prepare import prepare
    from .tokenizer import ResidualKMeansTokenizer

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


@command("encode", "encode a catalog with a trained model into a SID table")
def cmd_encode(args) -> dict:
    from .spark.io import read_input
    from .tokenizer import ResidualKMeansModel

    require(args, "input", "output", "model")
    settings = resolve(args.config, args.overrides)
    spark = session(args, "encode")
    overrides = {k: v for k, v in settings.tokenizer.to_dict().items()
                 if k in _explicit_keys(args)}
    model = ResidualKMeansModel.load(args.model, **overrides)
    df = read_input(spark, args.input)
    return write_sids(spark, model, df, args.output)


def _explicit_keys(args) -> set:
    from .config import load_config_file, parse_overrides

    return set(load_config_file(args.config)) | set(parse_overrides(args.overrides))


def write_sids(spark, model, df, output: str) -> dict:
    """Encode `df` and commit SIDs + rejects + manifest (with the accounting) atomically to `output`."""
    from .spark.io import REJECTS, commit_output

    t0 = time.time()
    res = model.encode(df)

    def write(staging: str) -> dict:
        res.sids.write.parquet(staging)
        res.rejects.write.parquet(f"{staging}/{REJECTS}")
        n_sids = spark.read.parquet(staging).count()
        n_rej = spark.read.parquet(f"{staging}/{REJECTS}").count()
        n_in = df.count()
        if n_in != n_sids + n_rej:
            raise SidSparkError(f"accounting mismatch: read {n_in} items, encoded {n_sids}, rejected {n_rej}")
        return {"kind": "sids", "model_id": model.model_id, "levels": model.levels,
                "codebook_size": int(model.codebooks[0].shape[0]), "id_col": model.config.id_col,
                "sid_col": model.config.sid_col, "items_read": n_in, "items_encoded": n_sids,
                "items_rejected": n_rej, "encode_seconds": time.time() - t0}

    from .spark.io import commit_output

    manifest = commit_output(spark, output, write)
    log.info("items read %d = encoded %d + rejected %d", manifest["items_read"], manifest["items_encoded"],
             manifest["items_rejected"])
    return manifest


@command("demo", "generate a synthetic catalog, train, encode and print a quality summary")
@extra_args((["--items"], {"type": int, "default": 200_000}), (["--dim"], {"type": int, "default": 128}))
def cmd_demo(args) -> dict:
    from .quality import collision_rate, level_summary, reconstruction_error
    from .spark.prepare import prepare
    from .synthetic import synthetic_catalog
    from .tokenizer import ResidualKMeansModel, ResidualKMeansTokenizer

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
    levels = level_summary(sids, cfg.sid_col, cfg.levels, cfg.codebook_size)
    vectors = prepare(df, cfg, dim=model.dim).valid
    summary = {"items": manifest["items_encoded"], "rejected": manifest["items_rejected"],
               "train_seconds": round(train_s, 1), "encode_seconds": round(manifest["encode_seconds"], 1),
               "levels": levels, "collision_rate": collision_rate(sids, cfg.sid_col),
               "rel_reconstruction_error": reconstruction_error(sids, vectors, cfg.id_col, cfg.sid_col,
                                                                model.codebooks, model.dim)}
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


# ---- entry point -------------------------------------------------------------------------------------------
def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("py4j").setLevel(logging.WARNING)
    fn, _ = COMMANDS[args.command]
    try:
        result = fn(args)
    except (ConfigError, SidSparkError) as e:
        print(f"sid-spark {args.command}: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # one line for the scheduler, the traceback for the log
        log.exception("failed")
        print(f"sid-spark {args.command}: failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
              file=sys.stderr)
        return 1
    if result is not None:
        print(json.dumps(result, default=str, sort_keys=True), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
