"""Training checkpoints: the levels trained so far, written atomically after every level, so that
`train --resume` continues where a crashed run stopped and ends with the same model as an uninterrupted run.

Layout:  <model>/_checkpoints/level_<n>/   (an artifact of kind "train_checkpoint": n codebooks, their prices,
the training history, the config and the input's row count; its manifest is written last). Saving the final
model swaps the whole <model> directory in, which removes the checkpoints with it.
"""
from __future__ import annotations

import dataclasses
import logging
import re
from typing import Optional

import numpy as np

from . import artifact, storage
from .config import TokenizerConfig
from .errors import ArtifactError, InputError
from .spark.train import TrainResult

log = logging.getLogger("sid_spark.checkpoint")

CHECKPOINTS = "_checkpoints"
KIND = "train_checkpoint"
_CORE = ("codebooks", "prices", "n_items", "n_sample", "history")
_LEVEL_DIR = re.compile(r"^level_(\d+)$")
# Keys that do not change the codebooks of the levels already trained: a resumed run may differ in these.
_FREE_KEYS = ("levels", "balance", "device", "sid_col", "dedup", "sid_capacity", "arrow_batch_rows",
              "max_reject_share")


def checkpoint_root(model_path: str) -> str:
    return storage.join(str(model_path), CHECKPOINTS)


def write_level(model_path: str, result: TrainResult, cfg: TokenizerConfig, n_read: Optional[int],
                fingerprint: Optional[str] = None) -> str:
    """Checkpoint the len(result.codebooks) levels of `result` (atomically: staging dir + rename, manifest last)."""
    done = len(result.codebooks)
    arrays = {f"codebook_{i}": np.ascontiguousarray(c) for i, c in enumerate(result.codebooks)}
    arrays.update({f"prices_{i}": np.ascontiguousarray(p) for i, p in enumerate(result.prices) if p is not None})
    meta = {"levels_done": done, "dimension": int(result.codebooks[0].shape[1]), "seed": cfg.seed,
            "n_read": n_read, "input_fingerprint": fingerprint}
    state = {"n_items": result.n_items, "n_sample": result.n_sample, "history": result.history,
             "extra": {f.name: getattr(result, f.name) for f in dataclasses.fields(result) if f.name not in _CORE}}
    path = storage.join(checkpoint_root(model_path), f"level_{done}")
    artifact.write_artifact(path, KIND, arrays, meta, {"config.json": cfg.to_dict(), "state.json": state})
    log.info("checkpoint: %d level(s) written to %s", done, path)
    return path


def latest(model_path: str, cfg: TokenizerConfig, dim: int, n_read: Optional[int],
           fingerprint: Optional[str] = None) -> Optional[TrainResult]:
    """The most advanced complete checkpoint under `model_path`, checked against this run; None if there is none.

    Incomplete or corrupted checkpoints (a crash while writing one) are skipped for the previous level; a
    checkpoint written for another config or another input stops the job (resuming it would give a model
    that no uninterrupted run gives).
    """
    root = checkpoint_root(model_path)
    if not storage.is_dir(root):
        return None
    found = sorted(((int(m.group(1)), storage.join(root, name)) for name in storage.list_names(root)
                    if (m := _LEVEL_DIR.match(name))), reverse=True)
    for done, path in found:
        try:
            manifest, arrays, docs = artifact.read_artifact(path, kind=KIND)
        except ArtifactError as e:
            log.warning("skipping checkpoint %s: %s", path, e)
            continue
        _check_compatible(path, manifest, docs.get("config.json", {}), cfg, dim, n_read, fingerprint)
        done = min(int(manifest["levels_done"]), cfg.levels)
        state = docs.get("state.json", {})
        history = [h for h in state.get("history", []) if h.get("level", 0) <= done]
        result = TrainResult(codebooks=[arrays[f"codebook_{i}"] for i in range(done)],
                             prices=[arrays.get(f"prices_{i}") for i in range(done)],
                             n_items=int(state.get("n_items", 0)), n_sample=int(state.get("n_sample", 0)),
                             history=history)
        # Other per-level lists of TrainResult (e.g. each balanced level's final eps) round-trip as JSON.
        for f in dataclasses.fields(result):
            value = state.get("extra", {}).get(f.name)
            if f.name not in _CORE and isinstance(value, list):
                setattr(result, f.name, value[:done])
        return result
    return None


def _check_compatible(path: str, manifest: dict, saved: dict, cfg: TokenizerConfig, dim: int,
                      n_read: Optional[int], fingerprint: Optional[str] = None) -> None:
    now = cfg.to_dict()
    for key in sorted(set(now) | set(saved)):
        if key not in _FREE_KEYS and saved.get(key) != now.get(key):
            raise InputError(f"cannot resume from {path}: config key '{key}' was {saved.get(key)!r}, now "
                             f"{now.get(key)!r} (rerun without --resume to start over)")
    done = int(manifest["levels_done"])
    saved_cfg = TokenizerConfig.from_dict(saved)
    for level in range(min(done, cfg.levels)):
        if saved_cfg.balance_for(level) != cfg.balance_for(level):
            raise InputError(f"cannot resume from {path}: level {level + 1} was trained with balance="
                             f"{saved_cfg.balance_for(level)!r}, now {cfg.balance_for(level)!r}")
    if manifest.get("dimension") != dim:
        raise InputError(f"cannot resume from {path}: it holds {manifest.get('dimension')}-d codebooks, the input "
                         f"is {dim}-d")
    if n_read is not None and manifest.get("n_read") not in (None, n_read):
        raise InputError(f"cannot resume from {path}: it was trained on an input of {manifest.get('n_read')} rows, "
                         f"this input has {n_read} (rerun without --resume to start over)")
    if fingerprint is not None and manifest.get("input_fingerprint") not in (None, fingerprint):
        raise InputError(f"cannot resume from {path}: it was trained on another input of the same size (content "
                         f"fingerprint {manifest.get('input_fingerprint')}, this input {fingerprint}; rerun without "
                         f"--resume to start over)")


def clear(model_path: str) -> None:
    """Drop every checkpoint under `model_path` (a fresh, non-resumed run)."""
    root = checkpoint_root(model_path)
    if storage.exists(root):
        storage.delete(root)
