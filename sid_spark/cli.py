"""Layer 4: the `sid-spark` console script. jobs/*.py call the same `main` under spark-submit.

Exit codes a scheduler can act on: 0 done; 2 bad config or input (one line on stderr, nothing written);
1 anything else (one line on stderr, traceback in the log).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Callable, Dict, List, Optional

from .config import ConfigError
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


def explicit_keys(args) -> set:
    """The tokenizer keys this run sets itself (its --config file and --set pairs), as opposed to defaults: these
    override what a loaded model artifact recorded."""
    from .config import load_config_file, parse_overrides

    return set(load_config_file(args.config)) | set(parse_overrides(args.overrides))


def session(args, app: str):
    from .config import has_scheme, resolve
    from .spark.session import get_session

    if has_scheme(getattr(args, "config", None)):  # the config file is read through this session's FileSystem
        get_session(args.master, app_name=f"sid_spark-{app}")
    try:  # only the key itself: compare's per-encoder --set overrides are not tokenizer keys
        own = [o for o in (args.overrides or []) if o.strip().startswith("arrow_batch_rows=")]
        rows = resolve(getattr(args, "config", None), own).tokenizer.arrow_batch_rows
    except Exception:  # a bad config is reported by the command itself, with its own message
        rows = None
    return get_session(args.master, app_name=f"sid_spark-{app}", arrow_batch_rows=rows)


# ---- entry point -------------------------------------------------------------------------------------------
def load_commands() -> None:
    """Every module of sid_spark.commands registers its subcommand with @command."""
    import importlib
    import pkgutil

    from . import commands

    for mod in sorted(m.name for m in pkgutil.iter_modules(commands.__path__)):
        importlib.import_module(f"{commands.__name__}.{mod}")


def main(argv: Optional[List[str]] = None) -> int:
    load_commands()
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("py4j").setLevel(logging.WARNING)
    fn, _ = COMMANDS[args.command]
    try:
        from .config import has_scheme

        if has_scheme(getattr(args, "config", None)):  # `--config hdfs:///conf/x.yaml`: the session reads it
            session(args, args.command)
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
