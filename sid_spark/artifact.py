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
from typing import Dict, Optional

import numpy as np

from . import storage
from .errors import ArtifactError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


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
    """Write into a staging directory beside `path` (any Hadoop filesystem), manifest last, then swap it in by
    rename. An existing `path` is replaced only when it is an artifact of the same kind (or holds nothing but
    training checkpoints). Returns model_id."""
    from .spark.io import commit_output

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    blobs = {"codebooks.npz": buf.getvalue()}
    for name, obj in (extra_json or {}).items():
        blobs[name] = json.dumps(obj, indent=2, sort_keys=True, default=str).encode("utf-8")
    model_id = arrays_id(arrays)
    spark = storage.session()

    def write(staging: str) -> dict:
        storage.mkdirs(staging, spark)
        for name, data in sorted(blobs.items()):
            storage.write_bytes(storage.join(staging, name), data, spark, must_have_parent=True)
        return {"format_version": FORMAT_VERSION, "kind": kind, "model_id": model_id, **meta,
                "versions": library_versions(), "files": {f: _sha256(data) for f, data in sorted(blobs.items())}}

    commit_output(spark, str(path), write, kind=kind, manifest_name=MANIFEST, allowed=(CHECKPOINTS,))
    return model_id


CHECKPOINTS = "_checkpoints"  # sid_spark.checkpoint's folder inside a model being trained


def check_replaceable(path: str, kind: str) -> None:
    """InputError (before any work) when `path` holds something that is not an artifact of `kind`."""
    storage.check_replaceable(str(path), MANIFEST, kind, (CHECKPOINTS,))


def read_artifact(path: str | os.PathLike, kind: Optional[str] = None):
    """(manifest, arrays, json files) of a complete, uncorrupted artifact; ArtifactError otherwise."""
    root = str(path)
    spark = storage.session()
    if not storage.is_dir(root, spark):
        from .spark.io import recover_output

        recover_output(spark, root)  # a writer killed between its two renames: put the previous one back
    if not storage.is_dir(root, spark):
        raise ArtifactError(f"model artifact {root!r} does not exist")
    names = storage.list_names(root, spark)
    if MANIFEST not in names:
        raise ArtifactError(f"model artifact {root!r} is incomplete: no {MANIFEST} (was training interrupted?)")
    try:
        manifest = json.loads(storage.read_bytes(storage.join(root, MANIFEST), spark).decode("utf-8"))
    except ValueError as e:
        raise ArtifactError(f"model artifact {root!r}: {MANIFEST} is not valid JSON ({e})") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"model artifact {root!r} has format {manifest.get('format_version')}, "
                            f"this sid_spark reads {FORMAT_VERSION}")
    if kind is not None and manifest.get("kind") != kind:
        raise ArtifactError(f"model artifact {root!r} holds a {manifest.get('kind')!r} model, not {kind!r}")
    blobs = {}
    for name, digest in manifest.get("files", {}).items():
        if name not in names:
            raise ArtifactError(f"model artifact {root!r} is missing {name}")
        try:
            blobs[name] = storage.read_bytes(storage.join(root, name), spark)
        except Exception as e:  # e.g. Hadoop's own checksum (a .crc beside the file) caught the corruption first
            raise ArtifactError(f"model artifact {root!r}: checksum mismatch on {name} (corrupted; the filesystem "
                                f"says: {str(e).splitlines()[0][:160] if str(e) else type(e).__name__})") from None
        if _sha256(blobs[name]) != digest:
            raise ArtifactError(f"model artifact {root!r}: checksum mismatch on {name} (corrupted)")
    if "codebooks.npz" not in blobs:
        raise ArtifactError(f"model artifact {root!r} is missing codebooks.npz")
    with np.load(io.BytesIO(blobs["codebooks.npz"])) as z:
        arrays = {k: z[k] for k in z.files}
    if arrays_id(arrays) != manifest.get("model_id"):
        raise ArtifactError(f"model artifact {root!r}: arrays do not match model_id (corrupted)")
    docs = {name: json.loads(data.decode("utf-8")) for name, data in blobs.items() if name.endswith(".json")}
    return manifest, arrays, docs
