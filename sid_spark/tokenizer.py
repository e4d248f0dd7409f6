"""Layer 3: the pyspark.ml-style API users import.

    model = ResidualKMeansTokenizer(levels=3, codebookSize=256, seed=7).fit(df)
    sids = model.transform(df)          # df + array<int> column "sid"
    model.save("model/"); ResidualKMeansModel.load("model/")
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import List, Optional

import numpy as np
from pyspark.sql import DataFrame

from . import artifact
from .config import TokenizerConfig
from .errors import ArtifactError
from .spark.prepare import Prepared, prepare
from .spark.runner import QuantizerState, encode_rows
from .spark.train import TrainResult, train_residual_kmeans

log = logging.getLogger("sid_spark")

KIND = "residual_kmeans"

# camelCase parameter names (pyspark.ml style) accepted by the API, mapped to config keys.
_PARAM_ALIASES = {"codebookSize": "codebook_size", "idCol": "id_col", "vectorCol": "vector_col",
                  "sidCol": "sid_col", "batchSize": "batch_size", "sampleSize": "sample_size",
                  "maxIter": "max_iter", "initFactor": "init_factor",
                  "blockRows": "block_rows", "sidCapacity": "sid_capacity"}


def _config_from_params(config: Optional[TokenizerConfig], params: dict) -> TokenizerConfig:
    values = config.to_dict() if config is not None else {}
    values.update({_PARAM_ALIASES.get(k, k): v for k, v in params.items()})
    return TokenizerConfig.from_dict(values)


@dataclass
class EncodeResult:
    sids: DataFrame  # id, sid array<int>
    rejects: DataFrame  # id, reason


class ResidualKMeansTokenizer:
    """Estimator: residual mini-batch k-means, trained level by level on Spark."""

    def __init__(self, config: Optional[TokenizerConfig] = None, **params):
        self.config = _config_from_params(config, params)

    def fit(self, df: DataFrame) -> "ResidualKMeansModel":
        prepared = prepare(df, self.config)
        return self.fit_prepared(prepared)

    def fit_prepared(self, prepared: Prepared, start: Optional[TrainResult] = None,
                     on_level=None) -> "ResidualKMeansModel":
        cfg = self.config
        result = train_residual_kmeans(prepared, cfg, lambda level: cfg.balance_for(level) == "exact",
                                       start=start, on_level=on_level)
        return ResidualKMeansModel(cfg, result.codebooks, result.prices,
                                   summary={"n_items": result.n_items, "n_sample": result.n_sample,
                                            "history": result.history})


class ResidualKMeansModel:
    """Codebooks (and per-code prices of balanced levels) that turn vectors into SIDs."""

    def __init__(self, config: TokenizerConfig, codebooks: List[np.ndarray],
                 prices: Optional[List[Optional[np.ndarray]]] = None, summary: Optional[dict] = None,
                 model_id: Optional[str] = None):
        self.config = config
        self.codebooks = [np.ascontiguousarray(c, dtype=np.float32) for c in codebooks]
        self.prices = list(prices) if prices is not None else [None] * len(self.codebooks)
        self.summary = summary or {}
        self.model_id = model_id or artifact.arrays_id(self._arrays())

    @property
    def dim(self) -> int:
        return int(self.codebooks[0].shape[1])

    @property
    def levels(self) -> int:
        return len(self.codebooks)

    def state(self) -> QuantizerState:
        return QuantizerState(tuple(self.codebooks), tuple(self.prices), self.config.block_rows, self.config.device)

    def encode(self, df: DataFrame) -> EncodeResult:
        """Every valid row of `df` gets a SID; the others land in `rejects` with a reason."""
        prepared = prepare(df, self.config, dim=self.dim)
        return self.encode_prepared(prepared)

    def encode_prepared(self, prepared: Prepared) -> EncodeResult:
        from .spark.balance import encode_balanced

        cfg = self.config
        if any(cfg.balance_for(lvl) == "exact" for lvl in range(self.levels)):
            sids = encode_balanced(prepared.valid, self, cfg)
        else:
            sids = encode_rows(prepared.valid, cfg.id_col, cfg.sid_col, self.state(), self.dim)
        return EncodeResult(sids=sids, rejects=prepared.rejects)

    def transform(self, df: DataFrame) -> DataFrame:
        """`df` with the SID column added (null for rows that cannot be encoded; see `encode` for why)."""
        sids = self.encode(df).sids
        return df.join(sids, on=self.config.id_col, how="left")

    # ---- persistence -------------------------------------------------------------------------------------
    def _arrays(self) -> dict:
        arrays = {f"codebook_{i}": c for i, c in enumerate(self.codebooks)}
        arrays.update({f"prices_{i}": p for i, p in enumerate(self.prices) if p is not None})
        return arrays

    def save(self, path: str) -> str:
        meta = {"dimension": self.dim, "levels": self.levels, "codebook_size": int(self.codebooks[0].shape[0]),
                "seed": self.config.seed}
        self.model_id = artifact.write_artifact(path, KIND, self._arrays(), meta,
                                                {"config.json": self.config.to_dict(), "summary.json": self.summary})
        return self.model_id

    @classmethod
    def load(cls, path: str, **overrides) -> "ResidualKMeansModel":
        manifest, arrays, docs = artifact.read_artifact(path, kind=KIND)
        if "config.json" not in docs:
            raise ArtifactError(f"model artifact {path!r} has no config.json")
        cfg = TokenizerConfig.from_dict({**docs["config.json"], **overrides})
        levels = manifest["levels"]
        codebooks = [arrays[f"codebook_{i}"] for i in range(levels)]
        prices = [arrays.get(f"prices_{i}") for i in range(levels)]
        return cls(cfg, codebooks, prices, docs.get("summary.json"), model_id=manifest["model_id"])
