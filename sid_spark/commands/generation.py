"""`sid-spark generation`: the registry of model generations under one root.

    <root>/gen=<g>/model        the generation's model artifact (written once, by the retrain)
    <root>/gen=<g>/sids         its SID table: the retrain's full encode, then grown in place by daily appends
    <root>/gen=<g>/eval         evaluation of the retrain
    <root>/_generations.json    {"current": g, "generations": [{generation, model, sids, model_id, ...}, ...]}

A published generation is never written again: `--begin g` refuses a g already in the registry (a retrain
always goes to a new generation), `--publish g` checks that the SID table was written by that generation's
model and records it. Downstream models read `current` (or keep their own pinned generation).
"""
from __future__ import annotations

import json
import time

from ..cli import command, extra_args
from ..config import ConfigError
from ..errors import ArtifactError

REGISTRY = "_generations.json"


def generation_paths(root: str, generation: str) -> dict:
    base = f"{root.rstrip('/')}/gen={generation}"
    return {"root": base, "model": f"{base}/model", "sids": f"{base}/sids", "eval": f"{base}/eval"}


def read_registry(spark, root: str) -> dict:
    from ..spark.io import read_text

    text = read_text(spark, f"{root.rstrip('/')}/{REGISTRY}")
    return json.loads(text) if text else {"current": None, "generations": []}


def _check_name(generation: str) -> str:
    if not generation or "/" in generation or generation.startswith((".", "_")):
        raise ConfigError(f"--generation must be a plain name (got {generation!r})")
    return generation


@command("generation", "generations of model + SID table under --root: begin a new one, publish it, show current")
@extra_args((["--root"], {"help": "root folder of the generations (any Hadoop filesystem)"}),
            (["--generation"], {"help": "generation name, e.g. 3 or 2026-03-04"}),
            (["--begin"], {"action": "store_true", "help": "check that --generation is new (never published)"}),
            (["--publish"], {"action": "store_true",
                             "help": "record --generation's model and SID table and make it current"}))
def cmd_generation(args) -> dict:
    from ..cli import session
    from ..spark.io import read_manifest, read_text, write_text

    if not args.root:
        raise ConfigError("--root is required for `generation`")
    spark = session(args, "generation")
    registry = read_registry(spark, args.root)
    known = {str(g["generation"]): g for g in registry["generations"]}
    if not (args.begin or args.publish):
        return registry
    gen = _check_name(args.generation or "")
    paths = generation_paths(args.root, gen)
    if args.begin:
        if gen in known:
            raise ArtifactError(f"generation {gen!r} is already published under {args.root!r} (model "
                                f"{known[gen]['model_id']}): a retrain writes a new generation, never over one")
        return {"generation": gen, **paths, "new": True}
    model_text = read_text(spark, f"{paths['model']}/manifest.json")
    if model_text is None:
        raise ArtifactError(f"generation {gen!r} has no model at {paths['model']!r}")
    model_id = json.loads(model_text)["model_id"]
    sids = read_manifest(spark, paths["sids"])
    if sids is None:
        raise ArtifactError(f"generation {gen!r} has no committed SID table at {paths['sids']!r}")
    if sids.get("model_id") != model_id:
        raise ArtifactError(f"{paths['sids']!r} was written by model {sids.get('model_id')!r}, not by this "
                            f"generation's model {model_id!r}")
    if str(sids.get("generation")) != gen:
        raise ArtifactError(f"{paths['sids']!r} records generation {sids.get('generation')!r}, not {gen!r}")
    if gen in known and known[gen]["model_id"] != model_id:
        raise ArtifactError(f"generation {gen!r} was published with model {known[gen]['model_id']}")
    entry = {"generation": gen, "model": paths["model"], "sids": paths["sids"], "model_id": model_id,
             "items": sids.get("items"), "dedup": sids.get("dedup", "none"),
             "published_at": known.get(gen, {}).get("published_at") or time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                     time.gmtime())}
    registry["generations"] = [g for g in registry["generations"] if str(g["generation"]) != gen] + [entry]
    registry["current"] = gen
    write_text(spark, f"{args.root.rstrip('/')}/{REGISTRY}", json.dumps(registry, indent=2, sort_keys=True))
    return entry
