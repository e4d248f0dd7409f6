"""SimHash LSH (the seed's Q4): h random hyperplanes per token, drawn standard normal from the seed; bit
b_i = [x . w_i > 0] and token = sum_i 2^(i-1) b_i (h = 8 -> 0..255), for L tokens. No training: the planes
depend on the seed and the dimension only.

Hashing has no decoder; to put a reconstruction error beside the others', `fit` solves a linear least-squares
map from the +-1 bits (and a bias) back to x on the sample. Only that measurement uses it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

import numpy as np
import torch

from .base import Encoder, EncoderParams


@dataclass(frozen=True)
class SimHashParams(EncoderParams):
    tokens: int = 3
    bits: int = 8

    def check(self) -> None:
        super().check()
        self.positive_ints("tokens", "bits")
        self.need(self.bits <= 30, "bits", "must be <= 30 (a token is an int32)")


class SimHash(Encoder):
    name = "simhash"
    Params = SimHashParams

    @property
    def token_sizes(self) -> Tuple[int, ...]:
        return (2 ** self.params.bits,) * self.params.tokens

    @property
    def device(self) -> torch.device:
        return self.planes.device

    def to(self, device) -> "SimHash":
        self.planes, self.decoder = self.planes.to(device), self.decoder.to(device)
        return self

    def make_planes(self, dim: int) -> torch.Tensor:
        """(L*h, d) standard-normal hyperplanes, a function of (seed, dim) only."""
        gen = torch.Generator(device="cpu").manual_seed(self.params.seed)
        return torch.randn((self.params.tokens * self.params.bits, dim), generator=gen)

    def _signs(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.planes.T > 0)

    def _fit(self, x: torch.Tensor) -> None:
        self.planes = self.make_planes(self.dim).to(x.device)
        b = self._design(self._signs(x))
        sol = torch.linalg.lstsq(b.double().cpu(), x.double().cpu()).solution
        self.decoder = sol.to(torch.float32).to(x.device)

    def _design(self, bits: torch.Tensor) -> torch.Tensor:
        """+-1 bits with a column of ones: the linear decoder's input."""
        ones = torch.ones((bits.shape[0], 1), dtype=torch.float32, device=bits.device)
        return torch.cat([bits.to(torch.float32) * 2 - 1, ones], 1)

    def _encode_block(self, x: torch.Tensor) -> torch.Tensor:
        h = self.params.bits
        bits = self._signs(x).to(torch.int64).reshape(x.shape[0], self.params.tokens, h)
        weights = 2 ** torch.arange(h, device=x.device, dtype=torch.int64)
        return (bits * weights).sum(-1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        codes = codes.to(self.device, torch.int64)
        h = self.params.bits
        bits = (codes.unsqueeze(-1) >> torch.arange(h, device=codes.device)) & 1
        return self._design(bits.reshape(codes.shape[0], -1)) @ self.decoder

    def state(self) -> Dict[str, np.ndarray]:
        return {"planes": self.planes.cpu().numpy(), "decoder": self.decoder.cpu().numpy()}

    def load_state(self, arrays: Dict[str, np.ndarray]) -> None:
        self.planes = torch.from_numpy(np.asarray(arrays["planes"]))
        self.decoder = torch.from_numpy(np.asarray(arrays["decoder"]))
