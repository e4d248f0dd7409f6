"""Layer 3 for the other encoders: the same fit / transform / save / load contract as ResidualKMeansTokenizer.

    model = EncoderTokenizer("fsq", epochs=20, seed=7).fit(df)   # trains on a hash-drawn sample (sampleSize)
    sids = model.transform(df)                                     # df + array<int> column "sid"
    model.save("model/"); EncoderModel.load("model/")

Column names, seed, sample size and device come from a TokenizerConfig (its k-means keys are unused here);
every other keyword is the encoder's own (see sid_spark.encoders).
"""
from __future__ import annotations

import time
from typing import Optional

from pyspark.sql import DataFrame

from .config import TokenizerConfig
from .encoders import ENCODERS, Encoder, get_encoder
from .encoders import base as encoder_base
from .spark.encode_generic import collect_sample, encode_rows, reconstruction_error
from .spark.prepare import Prepared, prepare
from .tokenizer import EncodeResult, _config_from_params

# Keys that belong to the job (columns, sampling, device) rather than to the encoder.
JOB_KEYS = ("id_col", "vector_col", "sid_col", "sample_size", "device", "idCol", "vectorCol", "sidCol",
            "sampleSize")


class EncoderTokenizer:
    """Estimator: one of ENCODERS, trained with torch on a sample Spark draws from the catalog by id hash."""

    def __init__(self, encoder: str, config: Optional[TokenizerConfig] = None, **params):
        job = {k: params.pop(k) for k in list(params) if k in JOB_KEYS}
        seed = params.get("seed", config.seed if config is not None else TokenizerConfig().seed)
        self.encoder = get_encoder(encoder, **{**params, "seed": seed})
        # balance means nothing here ("none" keeps TokenizerConfig quiet); codebook_size makes the sampler
        # refuse a catalog smaller than the largest token vocabulary, as the core refuses N < K.
        self.config = _config_from_params(config, {**job, "seed": seed, "balance": "none",
                                                   "codebook_size": max(self.encoder.token_sizes)})

    def fit(self, df: DataFrame) -> "EncoderModel":
        return self.fit_prepared(prepare(df, self.config))

    def fit_prepared(self, prepared: Prepared) -> "EncoderModel":
        t0 = time.time()
        x, n = collect_sample(prepared, self.config)
        t1 = time.time()
        self.encoder.fit(x, device=_train_device(self.config.device))
        self.encoder.to("cpu")
        self.encoder.summary.update({"n_items": n, "n_sample": int(x.shape[0]), "sample_seconds": t1 - t0,
                                     "train_seconds": time.time() - t1})
        return EncoderModel(self.config, self.encoder)


def _train_device(pref: str) -> str:
    import torch

    if pref == "cpu" or (pref == "auto" and not torch.cuda.is_available()):
        return "cpu"
    return "cuda"


class EncoderModel:
    """A fitted encoder plus the column conventions it encodes with."""

    def __init__(self, config: TokenizerConfig, encoder: Encoder):
        self.config = config
        self.encoder = encoder

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

    def encode(self, df: DataFrame) -> EncodeResult:
        """Every valid row of `df` gets a SID; the others land in `rejects` with a reason."""
        return self.encode_prepared(prepare(df, self.config, dim=self.dim))

    def encode_prepared(self, prepared: Prepared) -> EncodeResult:
        cfg = self.config
        return EncodeResult(sids=encode_rows(prepared.valid, self.encoder, cfg.id_col, cfg.sid_col, cfg.device),
                            rejects=prepared.rejects)

    def transform(self, df: DataFrame) -> DataFrame:
        return df.join(self.encode(df).sids, on=self.config.id_col, how="left")

    def reconstruction_error(self, df: DataFrame) -> float:
        return reconstruction_error(prepare(df, self.config, dim=self.dim).valid, self.encoder, self.config.device)

    def save(self, path: str) -> str:
        return self.encoder.save(path, {"config.json": self.config.to_dict()})

    @classmethod
    def load(cls, path: str, **overrides) -> "EncoderModel":
        enc, _, docs = encoder_base.load(path, ENCODERS)
        cfg = TokenizerConfig.from_dict({**docs.get("config.json", {}), **overrides})
        return cls(cfg, enc)
