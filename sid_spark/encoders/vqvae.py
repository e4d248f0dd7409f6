"""VQ-VAE (the seed's eq. 1): MLP encoder/decoder and one codebook — RQ-VAE with a single level.

Loss = ||x - x_hat||^2 + ||sg[z] - e||^2 + beta ||z - sg[e]||^2 (beta = 0.25), straight-through estimator
(eq. 9), codebook initialised by k-means on the first batch (TIGER), dead codes restarted.
"""
from __future__ import annotations

from dataclasses import dataclass

from .rqvae import RQVAE, RQVAEParams


@dataclass(frozen=True)
class VQVAEParams(RQVAEParams):
    levels: int = 1

    def check(self) -> None:
        super().check()
        self.need(self.levels == 1, "levels", "a VQ-VAE has one codebook (use rqvae for several levels)")


class VQVAE(RQVAE):
    name = "vqvae"
    Params = VQVAEParams
