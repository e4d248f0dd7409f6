"""Model artifacts: a directory of arrays + config, with a manifest written last (its presence = complete).

Layout:  codebooks.npz (codebook_0.., prices_0..), config.json, summary.json, manifest.json
The manifest holds the format version, kind, dimension, seed, library versions, a sha256 per file and a
model_id (a hash of the arrays) that SID tables record so later steps can refuse a different model.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import shutil
import uuid
from pathlib import Path
from typing import Dict, Optional

import numpy as np

from .errors import ArtifactError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def arrays_id(arrays: Dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(name.encode())
        h.update(str(a.dtype).encode() + str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def library_versions() -> dict:
    import pyspark
    import torch

    return {"sid_spark": _own_version(), "python": platform.python_version(), "numpy": np.__version__,
            "torch": torch.__version__, "pyspark": pyspark.__version__}


def _own_version() -> str:
    try:
        from importlib.metadata import version

        return version("sid_spark")
    except Exception:
        return "0+unknown"


def write_artifact(path: str | os.PathLike, kind: str, arrays: Dict[str, np.ndarray], meta: dict,
                   extra_json: Optional[Dict[str, dict]] = None) -> str:
    """Write into a staging directory beside `path`, manifest last, then swap it in by rename. Returns model_id."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.staging-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        (staging / "codebooks.npz").write_bytes(buf.getvalue())
        for name, obj in (extra_json or {}).items():
            (staging / name).write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
        model_id = arrays_id(arrays)
        files = sorted(p.name for p in staging.iterdir())
        manifest = {"format_version": FORMAT_VERSION, "kind": kind, "model_id": model_id, **meta,
                    "versions": library_versions(), "files": {f: _sha256(staging / f) for f in files}}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        _swap_in(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return model_id


def _swap_in(staging: Path, target: Path) -> None:
    if target.exists():
        old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(target, old)
        os.rename(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(staging, target)


def read_artifact(path: str | os.PathLike, kind: Optional[str] = None):
    """(manifest, arrays, json files) of a complete, uncorrupted artifact; ArtifactError otherwise."""
    root = Path(path)
    if not root.is_dir():
        raise ArtifactError(f"model artifact {str(root)!r} does not exist")
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise ArtifactError(f"model artifact {str(root)!r} is incomplete: no {MANIFEST} (was training interrupted?)")
    try:
        manifest = json.loads(mpath.read_text())
    except ValueError as e:
        raise ArtifactError(f"model artifact {str(root)!r}: {MANIFEST} is not valid JSON ({e})") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"model artifact {str(root)!r} has format {manifest.get('format_version')}, "
                            f"this sid_spark reads {FORMAT_VERSION}")
    if kind is not None and manifest.get("kind") != kind:
        raise ArtifactError(f"model artifact {str(root)!r} holds a {manifest.get('kind')!r} model, not {kind!r}")
    for name, digest in manifest.get("files", {}).items():
        f = root / name
        if not f.is_file():
            raise ArtifactError(f"model artifact {str(root)!r} is missing {name}")
        if _sha256(f) != digest:
            raise ArtifactError(f"model artifact {str(root)!r}: checksum mismatch on {name} (corrupted)")
    with np.load(root / "codebooks.npz") as z:
        arrays = {k: z[k] for k in z.files}
    if arrays_id(arrays) != manifest.get("model_id"):
        raise ArtifactError(f"model artifact {str(root)!r}: arrays do not match model_id (corrupted)")
    docs = {p.name: json.loads(p.read_text()) for p in root.glob("*.json") if p.name != MANIFEST}
    return manifest, arrays, docs
