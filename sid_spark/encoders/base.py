"""The contract every Semantic-ID encoder keeps (pure torch, no Spark).

    enc = get_encoder("fsq", seed=7).fit(x)      # x: (n, d) float32 sample
    codes = enc.encode(x)                        # (n, n_tokens) int64, token t in [0, token_sizes[t])
    x_hat = enc.decode(codes)                    # (n, d) float32
    enc.save("model/"); load_encoder("model/")

Encoding runs in fixed blocks of `block_rows` rows, the last one zero-padded, so every row goes through the very
same GEMM shapes and its codes do not depend on which rows shared its batch (and so not on the partitioning).
"""
from __future__ import annotations

import dataclasses
import io
import json
from dataclasses import dataclass
from typing import ClassVar, Dict, Optional, Tuple

import numpy as np
import torch

from .. import artifact
from ..config import ConfigError
from ..errors import ArtifactError
from ..kernels import kmeans as km

KIND_PREFIX = "encoder:"


@dataclass(frozen=True)
class EncoderParams:
    """Fields every encoder has; subclasses add theirs and extend `check`."""

    seed: int = 42
    block_rows: int = 4096

    def __post_init__(self) -> None:
        self.check()

    def need(self, cond: bool, key: str, msg: str) -> None:
        if not cond:
            raise ConfigError(f"encoder key '{key}': {msg} (got {getattr(self, key)!r})")

    def positive_ints(self, *keys: str) -> None:
        for key in keys:
            v = getattr(self, key)
            self.need(isinstance(v, int) and not isinstance(v, bool) and v >= 1, key, "must be an integer >= 1")

    def check(self) -> None:
        self.need(isinstance(self.seed, int) and not isinstance(self.seed, bool) and self.seed >= 0, "seed",
                  "must be an integer >= 0")
        self.positive_ints("block_rows")

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict) -> "EncoderParams":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown encoder key '{unknown[0]}' for {cls.__name__} "
                              f"(known keys: {', '.join(sorted(known))})")
        return cls(**{k: tuple(tuple(i) if isinstance(i, list) else i for i in v) if isinstance(v, list) else v
                      for k, v in values.items()})


class Encoder:
    """Base class: subclasses set `name`, `Params`, and implement `_fit`, `_encode_block`, `decode`,
    `state` / `load_state` (the arrays that are the model) and `token_sizes`."""

    name: ClassVar[str] = "base"
    Params: ClassVar[type] = EncoderParams

    def __init__(self, params: Optional[EncoderParams] = None, **values):
        if params is None:
            params = self.Params.from_dict(values)
        elif values:
            params = self.Params.from_dict({**params.to_dict(), **values})
        self.params = params
        self.dim: Optional[int] = None
        self.summary: dict = {}

    # ---- to implement ----------------------------------------------------------------------------------
    def _fit(self, x: torch.Tensor) -> None:
        raise NotImplementedError

    def _encode_block(self, x: torch.Tensor) -> torch.Tensor:
        """(block_rows, d) float32 -> (block_rows, n_tokens) int64."""
        raise NotImplementedError

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def state(self) -> Dict[str, np.ndarray]:
        raise NotImplementedError

    def load_state(self, arrays: Dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    @property
    def token_sizes(self) -> Tuple[int, ...]:
        raise NotImplementedError

    def to(self, device: torch.device | str) -> "Encoder":
        """Move the model's tensors to `device` (CPU-only encoders keep numpy-free tensors and override)."""
        return self

    # ---- the shared contract ------------------------------------------------------------------------------
    @property
    def n_tokens(self) -> int:
        return len(self.token_sizes)

    @property
    def fitted(self) -> bool:
        return self.dim is not None

    def fit(self, x, device: str | torch.device = "cpu") -> "Encoder":
        """Train on a sample x: (n, d) float32 (numpy or torch). Deterministic given params.seed."""
        xt = km.as_tensor(x, device)
        if xt.ndim != 2 or xt.shape[0] < 2:
            raise ValueError(f"fit needs an (n >= 2, d) matrix, got shape {tuple(xt.shape)}")
        self.dim = int(xt.shape[1])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.params.seed)
            self._fit(xt)
        return self

    def encode(self, x) -> torch.Tensor:
        """(n, d) -> (n, n_tokens) int64 codes, computed in fixed padded blocks of params.block_rows rows."""
        self._need_fitted()
        dev = self.device
        xt = km.as_tensor(x, dev)
        if xt.ndim != 2 or xt.shape[1] != self.dim:
            raise ValueError(f"expected vectors of dimension {self.dim}, got shape {tuple(xt.shape)}")
        out = torch.empty((xt.shape[0], self.n_tokens), dtype=torch.int64, device=dev)
        b = self.params.block_rows
        with torch.no_grad():
            for start, stop in km._blocks(xt.shape[0], b):
                out[start:stop] = self._encode_block(km._padded(xt, start, stop, b))[: stop - start]
        return out

    def reconstruct(self, x) -> torch.Tensor:
        with torch.no_grad():
            return self.decode(self.encode(x))

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def _need_fitted(self) -> None:
        if not self.fitted:
            raise RuntimeError(f"{self.name} encoder is not fitted")

    @property
    def kind(self) -> str:
        return KIND_PREFIX + self.name

    def _arrays(self) -> Dict[str, np.ndarray]:
        return {k: np.ascontiguousarray(v) for k, v in self.state().items()}

    @property
    def model_id(self) -> str:
        return artifact.arrays_id(self._arrays())

    def meta(self) -> dict:
        return {"encoder": self.name, "dimension": self.dim, "n_tokens": self.n_tokens,
                "token_sizes": list(self.token_sizes), "seed": self.params.seed}

    def save(self, path: str, extra_json: Optional[Dict[str, dict]] = None) -> str:
        """Write the artifact (arrays, params.json, summary.json, manifest last). Returns model_id."""
        self._need_fitted()
        docs = {"params.json": self.params.to_dict(), "summary.json": self.summary, **(extra_json or {})}
        return artifact.write_artifact(path, self.kind, self._arrays(), self.meta(), docs)

    def to_bytes(self) -> bytes:
        """Compact form for a Spark broadcast: the params, dimension and arrays in one npz blob."""
        self._need_fitted()
        buf = io.BytesIO()
        header = json.dumps({"encoder": self.name, "dim": self.dim, "params": self.params.to_dict()})
        np.savez(buf, __header__=np.frombuffer(header.encode(), dtype=np.uint8), **self._arrays())
        return buf.getvalue()


def from_arrays(cls, params: dict, dim: int, arrays: Dict[str, np.ndarray]) -> Encoder:
    enc = cls(cls.Params.from_dict(params))
    enc.dim = int(dim)
    with torch.random.fork_rng(devices=[]):  # building the modules draws initial weights: keep the caller's RNG
        enc.load_state(arrays)
    return enc


def from_bytes(blob: bytes, registry: dict) -> Encoder:
    with np.load(io.BytesIO(blob)) as z:
        arrays = {k: z[k] for k in z.files}
    header = json.loads(arrays.pop("__header__").tobytes().decode())
    return from_arrays(registry[header["encoder"]], header["params"], header["dim"], arrays)


def load(path: str, registry: dict, name: Optional[str] = None) -> Tuple[Encoder, dict, dict]:
    """(encoder, manifest, json docs) of the artifact at `path`; `name` insists on one encoder."""
    manifest, arrays, docs = artifact.read_artifact(path, kind=None if name is None else KIND_PREFIX + name)
    kind = str(manifest.get("kind", ""))
    if not kind.startswith(KIND_PREFIX) or kind[len(KIND_PREFIX):] not in registry:
        raise ArtifactError(f"model artifact {path!r} holds a {kind!r} model, not one of the encoders "
                            f"({', '.join(sorted(registry))})")
    if "params.json" not in docs:
        raise ArtifactError(f"model artifact {path!r} has no params.json")
    enc = from_arrays(registry[kind[len(KIND_PREFIX):]], docs["params.json"], manifest["dimension"], arrays)
    enc.summary = docs.get("summary.json", {})
    return enc, manifest, docs
