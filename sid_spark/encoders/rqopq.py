"""RQ-OPQ (OneSearch; the seed's eq. 5): residual k-means for the first levels, then optimised product
quantisation of the last residual r: a learned orthogonal rotation R (d x d) and M sub-codebooks, one per
d/M-dim slice of r R; each sub-codebook adds a token.

OPQ is trained by alternation (Ge et al. 2013, non-parametric OPQ): with R fixed, k-means in every subspace of
y = r R; with the codes fixed, R = U V^T from the SVD U S V^T = r^T y_hat (orthogonal Procrustes), which
minimises ||r R - y_hat||_F over orthogonal R.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

import numpy as np
import torch

from ..kernels import kmeans as km
from .base import Encoder, EncoderParams
from .common import kmeans_fit, lloyd


@dataclass(frozen=True)
class RQOPQParams(EncoderParams):
    rk_levels: int = 2
    codebook_size: int = 256
    opq_subspaces: int = 2
    opq_codebook_size: int = 256
    opq_iters: int = 10
    kmeans_iters: int = 20
    # Rows seeding each k-means++ (a multiple of K, as the core's init_factor).
    init_rows: int = 12800

    def check(self) -> None:
        super().check()
        self.positive_ints("codebook_size", "opq_subspaces", "opq_codebook_size", "opq_iters", "kmeans_iters",
                           "init_rows")
        self.need(isinstance(self.rk_levels, int) and self.rk_levels >= 0, "rk_levels", "must be an integer >= 0")
        self.need(self.codebook_size >= 2, "codebook_size", "must be >= 2")
        self.need(self.opq_codebook_size >= 2, "opq_codebook_size", "must be >= 2")


class RQOPQ(Encoder):
    name = "rqopq"
    Params = RQOPQParams

    @property
    def token_sizes(self) -> Tuple[int, ...]:
        p = self.params
        return (p.codebook_size,) * p.rk_levels + (p.opq_codebook_size,) * p.opq_subspaces

    @property
    def device(self) -> torch.device:
        return self.rotation.device

    def to(self, device) -> "RQOPQ":
        self.codebooks = [c.to(device) for c in self.codebooks]
        self.rotation = self.rotation.to(device)
        self.sub_codebooks = [c.to(device) for c in self.sub_codebooks]
        return self

    def _slices(self):
        ds = self.dim // self.params.opq_subspaces
        return [slice(m * ds, (m + 1) * ds) for m in range(self.params.opq_subspaces)]

    def _pq_codes(self, y: torch.Tensor) -> torch.Tensor:
        return torch.stack([km.nearest(y[:, s].contiguous(), c, block_rows=max(1, y.shape[0]))
                            for s, c in zip(self._slices(), self.sub_codebooks)], 1)

    def _pq_decode(self, codes: torch.Tensor) -> torch.Tensor:
        return torch.cat([c[codes[:, m]] for m, c in enumerate(self.sub_codebooks)], 1)

    def _fit(self, x: torch.Tensor) -> None:
        p = self.params
        if self.dim % p.opq_subspaces:
            raise ValueError(f"dimension {self.dim} is not divisible by opq_subspaces={p.opq_subspaces}")
        r = x.clone()
        self.codebooks = []
        for level in range(p.rk_levels):
            cb = kmeans_fit(r, p.codebook_size, (p.seed, level), p.kmeans_iters, p.init_rows)
            r -= cb[km.nearest(r, cb)]
            self.codebooks.append(cb)
        self.rotation = torch.eye(self.dim, device=x.device)
        self.sub_codebooks = []
        history = []
        r64 = r.to(torch.float64)
        for it in range(p.opq_iters):
            y = r @ self.rotation
            if it == 0:
                self.sub_codebooks = [kmeans_fit(y[:, s].contiguous(), p.opq_codebook_size,
                                                 (p.seed, p.rk_levels, m), p.kmeans_iters, p.init_rows)
                                      for m, s in enumerate(self._slices())]
            else:
                self.sub_codebooks = [lloyd(y[:, s].contiguous(), c, 4)
                                      for s, c in zip(self._slices(), self.sub_codebooks)]
            y_hat = self._pq_decode(self._pq_codes(y)).to(torch.float64)
            u, _, vh = torch.linalg.svd(r64.T @ y_hat)
            self.rotation = (u @ vh).to(torch.float32)
            err = float(((r @ self.rotation - y_hat.to(torch.float32)) ** 2).sum(dtype=torch.float64))
            history.append({"opq_iter": it + 1, "rel_error": err / float((x.double() ** 2).sum())})
        # Last codebook refresh under the final rotation, so the stored pair is consistent.
        y = r @ self.rotation
        self.sub_codebooks = [lloyd(y[:, s].contiguous(), c, 4) for s, c in zip(self._slices(), self.sub_codebooks)]
        self.summary = {"history": history}

    def _encode_block(self, x: torch.Tensor) -> torch.Tensor:
        codes, r = km.residual_encode(x, self.codebooks, block_rows=x.shape[0])
        return torch.cat([codes, self._pq_codes(r @ self.rotation)], 1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        codes = codes.to(self.device, torch.int64)
        L = self.params.rk_levels
        out = self._pq_decode(codes[:, L:]) @ self.rotation.T
        if L:
            out = out + km.reconstruct(codes[:, :L], self.codebooks)
        return out

    def state(self) -> Dict[str, np.ndarray]:
        arrays = {f"codebook_{i}": c.cpu().numpy() for i, c in enumerate(self.codebooks)}
        arrays.update({f"opq_codebook_{m}": c.cpu().numpy() for m, c in enumerate(self.sub_codebooks)})
        arrays["rotation"] = self.rotation.cpu().numpy()
        return arrays

    def load_state(self, arrays: Dict[str, np.ndarray]) -> None:
        p = self.params
        self.codebooks = [torch.from_numpy(np.asarray(arrays[f"codebook_{i}"])) for i in range(p.rk_levels)]
        self.sub_codebooks = [torch.from_numpy(np.asarray(arrays[f"opq_codebook_{m}"]))
                              for m in range(p.opq_subspaces)]
        self.rotation = torch.from_numpy(np.asarray(arrays["rotation"]))
