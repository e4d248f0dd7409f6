"""Layer 3: the pyspark.ml API users import.

    tok = ResidualKMeansTokenizer(levels=3, codebookSize=256, seed=7)      # a pyspark.ml Estimator
    model = tok.fit(df)                                                    # a pyspark.ml Model
    sids = model.transform(df)                                             # df + array<int> column "sid"
    model.write().overwrite().save("hdfs:///models/m1")                    # MLWritable, any Hadoop scheme
    ResidualKMeansModel.load("hdfs:///models/m1")                          # MLReadable
    Pipeline(stages=[tok]).fit(df).save(path); PipelineModel.load(path)    # inside a Pipeline

Params are declared once from `TokenizerConfig` (`sid_spark.ml_params`); `model.config` is the validated config the
execution layer consumes. The saved folder is a sid_spark artifact (`sid_spark.artifact`: arrays, config, summary,
manifest written last) plus pyspark.ml's `metadata/` so `PipelineModel.load` finds the class.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import numpy as np
from pyspark.ml import Estimator, Model
from pyspark.ml.util import DefaultParamsWriter, MLReadable, MLReader, MLWritable, MLWriter
from pyspark.sql import DataFrame

from . import artifact
from .config import TokenizerConfig
from .errors import ArtifactError
from .ml_params import HasTokenizerParams
from .spark.prepare import Prepared, prepare
from .spark.encode import Quantizer, encode_valid
from .spark.train import TrainResult, train_residual_kmeans

log = logging.getLogger("sid_spark")

KIND = "residual_kmeans"


@dataclass
class EncodeResult:
    sids: DataFrame  # id, sid array<int>
    rejects: DataFrame  # id, reason


class ResidualKMeansSummary:
    """Training summary, in the spirit of pyspark.ml's KMeansSummary: per level the code sizes seen by the last
    iteration, the training cost (mean squared residual of that pass), the iterations run, and the full history.

    It is also the `summary.json` of the artifact: item access (`summary["history"]`) reads and writes that
    document, so jobs can add their own figures (train seconds, accounting) before saving."""

    def __init__(self, data: Optional[Dict[str, Any]] = None):
        self._data: Dict[str, Any] = dict(data or {})

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._data[key] = value

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def get(self, key: str, default: Any = None) -> Any:
        return self._data.get(key, default)

    def to_dict(self) -> Dict[str, Any]:
        return dict(self._data)

    @property
    def history(self) -> List[dict]:
        return list(self._data.get("history", []))

    def _last_of_level(self) -> Dict[int, dict]:
        last: Dict[int, dict] = {}
        for h in self.history:
            last[int(h["level"])] = h
        return last

    @property
    def numLevels(self) -> int:
        return len(self._last_of_level())

    @property
    def numIter(self) -> List[int]:
        """Iterations run, per level."""
        return [int(h["iter"]) for _, h in sorted(self._last_of_level().items())]

    @property
    def trainingCost(self) -> List[float]:
        """Mean squared residual of each level's last pass."""
        return [float(h["mse"]) for _, h in sorted(self._last_of_level().items())]

    @property
    def clusterSizes(self) -> List[Optional[List[int]]]:
        """Per level, the code sizes of the last pass (None where training did not record them)."""
        return [h.get("counts") for _, h in sorted(self._last_of_level().items())]

    @property
    def codeSizeRange(self) -> List[tuple]:
        """Per level, (smallest, largest) code of the last pass."""
        return [(int(h["min_count"]), int(h["max_count"])) for _, h in sorted(self._last_of_level().items())]

    @property
    def numItems(self) -> Optional[int]:
        return self._data.get("n_items")

    @property
    def numSample(self) -> Optional[int]:
        return self._data.get("n_sample")


def _config_of(config: Optional[TokenizerConfig], params: dict) -> Dict[str, Any]:
    values = config.to_dict() if config is not None else {}
    values.update(params)
    return values


class ResidualKMeansTokenizer(Estimator, HasTokenizerParams, MLReadable, MLWritable):
    """Estimator: residual mini-batch k-means, trained level by level on Spark.

    `ResidualKMeansTokenizer(config=None, **params)`: keyword Params by Param name (`codebookSize`) or config key
    (`codebook_size`); a TokenizerConfig gives the starting values."""

    def __init__(self, config: Optional[TokenizerConfig] = None, **params):
        super().__init__()
        self._declare_defaults()
        self._set_config_values(_config_of(config, params))

    def setParams(self, **params) -> "ResidualKMeansTokenizer":
        self._set_config_values(params)
        return self

    def _fit(self, dataset: DataFrame) -> "ResidualKMeansModel":
        return self.fit_prepared(prepare(dataset, self.config))

    def fit_prepared(self, prepared: Prepared, start: Optional[TrainResult] = None,
                     on_level=None) -> "ResidualKMeansModel":
        cfg = self.config
        result = train_residual_kmeans(prepared, cfg, lambda level: cfg.balance_for(level) == "exact",
                                       start=start, on_level=on_level)
        model = ResidualKMeansModel(cfg, result.codebooks, result.prices,
                                    summary={"n_items": result.n_items, "n_sample": result.n_sample,
                                             "history": result.history})
        return self._copyValues(model)

    # An Estimator holds only Params: pyspark.ml's default metadata is its whole persisted form.
    def write(self) -> MLWriter:
        return _ParamsOnlyWriter(self)

    @classmethod
    def read(cls) -> MLReader:
        return _ParamsOnlyReader(cls)


class ResidualKMeansModel(Model, HasTokenizerParams, MLReadable, MLWritable):
    """Codebooks (and per-code prices of balanced levels) that turn vectors into SIDs."""

    def __init__(self, config: Optional[TokenizerConfig] = None, codebooks: Optional[List[np.ndarray]] = None,
                 prices: Optional[List[Optional[np.ndarray]]] = None, summary: Optional[dict] = None,
                 model_id: Optional[str] = None):
        super().__init__()
        self.codebooks = [np.ascontiguousarray(c, dtype=np.float32) for c in (codebooks or [])]
        self.prices = list(prices) if prices is not None else [None] * len(self.codebooks)
        self._declare_defaults()
        if config is not None:
            self._set_config_values(config.to_dict())
        self._summary = summary if isinstance(summary, ResidualKMeansSummary) else ResidualKMeansSummary(summary)
        self.model_id = model_id or (artifact.arrays_id(self._arrays()) if self.codebooks else None)

    @property
    def summary(self) -> ResidualKMeansSummary:
        return self._summary

    @property
    def hasSummary(self) -> bool:
        return bool(self._summary.history)

    @property
    def dim(self) -> int:
        return int(self.codebooks[0].shape[1])

    @property
    def levels(self) -> int:
        """L, the number of codebooks (the `levels` Param of the estimator that trained them)."""
        return len(self.codebooks) if self.codebooks else TokenizerConfig().levels

    @property
    def codebook_sizes(self) -> List[int]:
        return [int(c.shape[0]) for c in self.codebooks]

    def clusterCenters(self) -> List[np.ndarray]:
        """The codebooks, one (K_l, d) array per level (pyspark.ml's KMeansModel name)."""
        return list(self.codebooks)

    def copy(self, extra=None) -> "ResidualKMeansModel":
        that = super().copy(extra)
        that.codebooks, that.prices = list(self.codebooks), list(self.prices)
        return that

    def encode(self, df: DataFrame) -> EncodeResult:
        """Every valid row of `df` gets a SID; the others land in `rejects` with a reason."""
        prepared = prepare(df, self.config, dim=self.dim)
        return self.encode_prepared(prepared)

    def encode_prepared(self, prepared: Prepared) -> EncodeResult:
        return EncodeResult(sids=encode_valid(prepared.valid, self.quantizer()), rejects=prepared.rejects)

    def quantizer(self, config: Optional[TokenizerConfig] = None) -> Quantizer:
        """What the execution layer needs of this model (codebooks, prices, settings), as plain data; `config`
        replaces the model's settings (the codebooks stay)."""
        return Quantizer(tuple(self.codebooks), tuple(self.prices), config or self.config, self.model_id,
                         self.summary.get("n_items") if self.summary is not None else None)

    def _transform(self, dataset: DataFrame) -> DataFrame:
        """`dataset` with the SID column added (null for rows that cannot be encoded; see `encode` for why)."""
        sids = self.encode(dataset).sids
        return dataset.join(sids, on=self.config.id_col, how="left")

    # ---- persistence -------------------------------------------------------------------------------------
    def _arrays(self) -> dict:
        arrays = {f"codebook_{i}": c for i, c in enumerate(self.codebooks)}
        arrays.update({f"prices_{i}": p for i, p in enumerate(self.prices) if p is not None})
        return arrays

    def write(self) -> MLWriter:
        return _ArtifactWriter(self)

    @classmethod
    def read(cls) -> MLReader:
        return _ArtifactReader(cls)

    def save(self, path: str) -> str:
        """Write the artifact at `path`, replacing a previous sid_spark model there (reruns are idempotent).
        Returns the model_id. `write().save(path)` is pyspark.ml's stricter form: it refuses an existing path."""
        self.write().overwrite().save(path)
        return self.model_id

    def _save_artifact(self, path: str) -> str:
        cfg = self.config
        meta = {"dimension": self.dim, "levels": self.levels, "codebook_size": self.codebook_sizes[0],
                "codebook_sizes": self.codebook_sizes, "seed": cfg.seed, "uid": self.uid}
        self.model_id = artifact.write_artifact(path, KIND, self._arrays(), meta,
                                                {"config.json": cfg.to_dict(), "summary.json": self.summary.to_dict()})
        return self.model_id

    @classmethod
    def load(cls, path: str, **overrides) -> "ResidualKMeansModel":
        """The model saved at `path`; `overrides` change config keys that do not touch the codebooks
        (device, block_rows, dedup, ...)."""
        manifest, arrays, docs = artifact.read_artifact(path, kind=KIND)
        if "config.json" not in docs:
            raise ArtifactError(f"model artifact {path!r} has no config.json")
        cfg = TokenizerConfig.from_dict({**docs["config.json"], **overrides})
        levels = manifest["levels"]
        codebooks = [arrays[f"codebook_{i}"] for i in range(levels)]
        prices = [arrays.get(f"prices_{i}") for i in range(levels)]
        model = cls(cfg, codebooks, prices, docs.get("summary.json"), model_id=manifest["model_id"])
        if manifest.get("uid"):
            model._resetUid(manifest["uid"])
        return model


# ---- pyspark.ml persistence ----------------------------------------------------------------------------------
def _exists(path: str) -> bool:
    from . import storage

    return storage.exists(path)


class _ArtifactWriter(MLWriter):
    """Writes a model as a sid_spark artifact (atomic, manifest last) plus pyspark.ml's `metadata/`.

    Unlike pyspark.ml's default, `overwrite()` never deletes the target first: the artifact writer stages the new
    folder beside it and swaps it in, and refuses a target that is not a sid_spark artifact."""

    def __init__(self, instance):
        super().__init__()
        self.instance = instance

    def save(self, path: str) -> None:
        if not self.shouldOverwrite and _exists(path):
            raise ArtifactError(f"path {path!r} already exists; use write().overwrite().save(path) to replace it")
        self.saveImpl(path)

    def saveImpl(self, path: str) -> None:
        self.instance._save_artifact(path)
        DefaultParamsWriter.saveMetadata(self.instance, path, self.sparkSession,
                                         extraMetadata={"model_id": self.instance.model_id})


class _ArtifactReader(MLReader):
    def __init__(self, cls):
        super().__init__()
        self.cls = cls

    def load(self, path: str):
        return self.cls.load(path)


class _ParamsOnlyWriter(DefaultParamsWriter):
    def save(self, path: str) -> None:
        if not self.shouldOverwrite and _exists(path):
            raise ArtifactError(f"path {path!r} already exists; use write().overwrite().save(path) to replace it")
        super().save(path)


class _ParamsOnlyReader(MLReader):
    def __init__(self, cls):
        super().__init__()
        self.cls = cls

    def load(self, path: str):
        from pyspark.ml.util import DefaultParamsReader

        metadata = DefaultParamsReader.loadMetadata(path, self.sparkSession)
        values = dict(metadata["paramMap"])
        instance = self.cls(**values)
        instance._resetUid(metadata["uid"])
        return instance
