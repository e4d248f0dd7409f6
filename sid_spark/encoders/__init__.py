"""Semantic-ID encoders besides residual k-means, all with one contract (see `base.Encoder`):
VQ-VAE, RQ-VAE, FSQ, RQ-OPQ, OPMQ and SimHash LSH. Pure torch; Spark lives in sid_spark.spark.encode_generic."""
from __future__ import annotations

from typing import Dict, Optional, Type

from ..config import ConfigError
from . import base
from .base import Encoder, EncoderParams
from .fsq import FSQ
from .opmq import OPMQ
from .rqopq import RQOPQ
from .rqvae import RQVAE
from .simhash import SimHash
from .vqvae import VQVAE

ENCODERS: Dict[str, Type[Encoder]] = {cls.name: cls for cls in (VQVAE, RQVAE, FSQ, RQOPQ, OPMQ, SimHash)}


def get_encoder(name: str, **params) -> Encoder:
    """A new, unfitted encoder; unknown names and keys fail naming them."""
    if name not in ENCODERS:
        raise ConfigError(f"unknown encoder {name!r} (known: {', '.join(ENCODERS)})")
    return ENCODERS[name](**params)


def load_encoder(path: str, name: Optional[str] = None) -> Encoder:
    return base.load(path, ENCODERS, name)[0]


def encoder_from_bytes(blob: bytes) -> Encoder:
    return base.from_bytes(blob, ENCODERS)


__all__ = ["ENCODERS", "Encoder", "EncoderParams", "get_encoder", "load_encoder", "encoder_from_bytes",
           "VQVAE", "RQVAE", "FSQ", "RQOPQ", "OPMQ", "SimHash"]
