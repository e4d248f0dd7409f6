"""Layer 3 for the other encoders: the same fit / transform / save / load contract as ResidualKMeansTokenizer.

    model = EncoderTokenizer("fsq", epochs=20, seed=7).fit(df)   # trains on a hash-drawn sample (sampleSize)
    sids = model.transform(df)                                     # df + array<int> column "sid"
    model.save("model/"); EncoderModel.load("model/")

Column names, seed, sample size and device come from a TokenizerConfig (its k-means keys are unused here);
every other keyword is the encoder's own (see sid_spark.encoders).
"""
from __future__ import annotations

import time
from typing import Any, Dict, Optional

from pyspark.ml import Estimator, Model
from pyspark.ml.util import MLReadable, MLReader, MLWritable, MLWriter
from pyspark.sql import DataFrame

from .config import TokenizerConfig
from .encoders import ENCODERS, Encoder, get_encoder
from .encoders import base as encoder_base
from .ml_params import ENCODER_JOB_KEYS, HasEncoderJobParams, config_key
from .spark.encode_generic import collect_sample, encode_rows, reconstruction_error
from .spark.prepare import Prepared, prepare
from .tokenizer import EncodeResult, _ArtifactReader, _ArtifactWriter, _ParamsOnlyReader, _ParamsOnlyWriter


def _split(params: Dict[str, Any]):
    """(job keys, the encoder's own keys) of constructor keywords."""
    job = {k: v for k, v in params.items() if config_key(k) in ENCODER_JOB_KEYS}
    return job, {k: v for k, v in params.items() if k not in job}


class _EncoderStage(HasEncoderJobParams):
    """What the estimator and the model share: the config of the job keys (balance means nothing here; the
    largest token vocabulary stands for codebook_size, so the sampler refuses a catalog smaller than it)."""

    def _token_size(self) -> int:
        raise NotImplementedError

    def _config_values(self) -> Dict[str, Any]:
        return {**super()._config_values(), "balance": "none", "codebook_size": self._token_size()}


class EncoderTokenizer(Estimator, _EncoderStage, MLReadable, MLWritable):
    """Estimator: one of ENCODERS, trained with torch on a sample Spark draws from the catalog by id hash.

    `EncoderTokenizer(encoder, config=None, **params)`: job keys (idCol, inputCol, outputCol, seed, sampleSize,
    device, ...) become Params; every other keyword is the encoder's own and lands in `encoderParams`."""

    def __init__(self, encoder: str = "fsq", config: Optional[TokenizerConfig] = None,
                 encoderParams: Optional[dict] = None, **params):
        super().__init__()
        self._declare_defaults()
        job, own = _split(params)
        values = {k: v for k, v in (config.to_dict() if config is not None else {}).items()
                  if k in ENCODER_JOB_KEYS}
        self._set(encoderName=encoder, encoderParams={**(encoderParams or {}), **own})
        self._set_config_values({**values, **job})

    def _new_encoder(self) -> Encoder:
        return get_encoder(self.getEncoderName(), **{**self.getEncoderParams(), "seed": self.getOrDefault("seed")})

    def _token_size(self) -> int:
        return max(self._new_encoder().token_sizes)

    @property
    def encoder(self) -> Encoder:
        """A new, unfitted encoder of these Params (validates the encoder's keys)."""
        return self._new_encoder()

    def _fit(self, dataset: DataFrame) -> "EncoderModel":
        return self.fit_prepared(prepare(dataset, self.config))

    def fit_prepared(self, prepared: Prepared) -> "EncoderModel":
        t0 = time.time()
        encoder = self._new_encoder()
        x, n = collect_sample(prepared, self.config)
        t1 = time.time()
        encoder.fit(x, device=_train_device(self.config.device))
        encoder.to("cpu")
        encoder.summary.update({"n_items": n, "n_sample": int(x.shape[0]), "sample_seconds": t1 - t0,
                                "train_seconds": time.time() - t1})
        return self._copyValues(EncoderModel(self.config, encoder))

    def write(self) -> MLWriter:
        return _ParamsOnlyWriter(self)

    @classmethod
    def read(cls) -> MLReader:
        return _EncoderParamsReader(cls)


def _train_device(pref: str) -> str:
    import torch

    if pref == "cpu" or (pref == "auto" and not torch.cuda.is_available()):
        return "cpu"
    return "cuda"


class EncoderModel(Model, _EncoderStage, MLReadable, MLWritable):
    """A fitted encoder plus the column conventions it encodes with."""

    def __init__(self, config: Optional[TokenizerConfig] = None, encoder: Optional[Encoder] = None):
        super().__init__()
        self.encoder = encoder
        self._declare_defaults()
        if encoder is not None:
            self._set(encoderName=encoder.name, encoderParams=encoder.params.to_dict())
        if config is not None:
            self._set_config_values({k: v for k, v in config.to_dict().items() if k in ENCODER_JOB_KEYS})

    def _token_size(self) -> int:
        return max(self.encoder.token_sizes)

    @property
    def model_id(self) -> str:
        return self.encoder.model_id

    @property
    def dim(self) -> int:
        return int(self.encoder.dim)

    @property
    def levels(self) -> int:
        return self.encoder.n_tokens

    @property
    def summary(self) -> dict:
        return self.encoder.summary

    def copy(self, extra=None) -> "EncoderModel":
        that = super().copy(extra)
        that.encoder = self.encoder
        return that

    def encode(self, df: DataFrame) -> EncodeResult:
        """Every valid row of `df` gets a SID; the others land in `rejects` with a reason."""
        return self.encode_prepared(prepare(df, self.config, dim=self.dim))

    def encode_prepared(self, prepared: Prepared) -> EncodeResult:
        cfg = self.config
        return EncodeResult(sids=encode_rows(prepared.valid, self.encoder, cfg.id_col, cfg.sid_col, cfg.device),
                            rejects=prepared.rejects)

    def _transform(self, dataset: DataFrame) -> DataFrame:
        return dataset.join(self.encode(dataset).sids, on=self.config.id_col, how="left")

    def reconstruction_error(self, df: DataFrame) -> float:
        return reconstruction_error(prepare(df, self.config, dim=self.dim).valid, self.encoder, self.config.device)

    # ---- persistence -------------------------------------------------------------------------------------
    def write(self) -> MLWriter:
        return _ArtifactWriter(self)

    @classmethod
    def read(cls) -> MLReader:
        return _ArtifactReader(cls)

    def save(self, path: str) -> str:
        """Write the artifact at `path`, replacing a previous sid_spark model there. Returns the model_id."""
        self.write().overwrite().save(path)
        return self.model_id

    def _save_artifact(self, path: str) -> str:
        return self.encoder.save(path, {"config.json": self.config.to_dict()})

    @classmethod
    def load(cls, path: str, **overrides) -> "EncoderModel":
        enc, _, docs = encoder_base.load(path, ENCODERS)
        cfg = TokenizerConfig.from_dict({**docs.get("config.json", {}), **overrides})
        return cls(cfg, enc)


class _EncoderParamsReader(_ParamsOnlyReader):
    def load(self, path: str):
        from pyspark.ml.util import DefaultParamsReader

        metadata = DefaultParamsReader.loadMetadata(path, self.sparkSession)
        values = dict(metadata["paramMap"])
        instance = self.cls(values.pop("encoderName"), encoderParams=values.pop("encoderParams", {}), **values)
        instance._resetUid(metadata["uid"])
        return instance
