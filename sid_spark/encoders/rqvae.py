"""RQ-VAE (the seed's eq. 2; TIGER's set-up): an MLP autoencoder whose latent z is quantised by L levels of
residual vector quantisation, r_1 = z, e_l = C_l[argmin ||r_l - c||], r_{l+1} = r_l - e_l, z_q = sum_l e_l.

Loss = ||x - dec(z_q)||^2 + sum_l (||sg[r_l] - e_l||^2 + beta ||r_l - sg[e_l]||^2), beta = 0.25, with the
straight-through estimator z + sg[z_q - z] (eq. 9); every level's codebook starts from k-means on the residuals
of the first (seeded) batch, and codes unused for an epoch are restarted by splitting the largest cluster.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

import numpy as np
import torch
from torch import nn

from ..kernels import kmeans as km
from .base import Encoder
from .common import (AutoEncoder, NeuralParams, kmeans_fit, load_module_state, module_state, nearest, restart_dead,
                     seeded_head, straight_through, train_loop, vq_losses)


@dataclass(frozen=True)
class RQVAEParams(NeuralParams):
    levels: int = 3
    codebook_size: int = 256

    def check(self) -> None:
        super().check()
        self.positive_ints("levels", "codebook_size")
        self.need(self.codebook_size >= 2, "codebook_size", "must be >= 2")


class _Net(nn.Module):
    def __init__(self, d: int, p: RQVAEParams):
        super().__init__()
        self.ae = AutoEncoder(d, p.hidden, p.latent)
        self.codebooks = nn.ParameterList([nn.Parameter(torch.zeros(p.codebook_size, p.latent))
                                           for _ in range(p.levels)])


class RQVAE(Encoder):
    name = "rqvae"
    Params = RQVAEParams

    def _build(self) -> _Net:
        self.net = _Net(self.dim, self.params)
        return self.net

    @property
    def token_sizes(self) -> Tuple[int, ...]:
        return (self.params.codebook_size,) * self.params.levels

    @property
    def device(self) -> torch.device:
        return self.net.codebooks[0].device

    def to(self, device) -> "RQVAE":
        self.net.to(device)
        return self

    def _quantise(self, z: torch.Tensor):
        """(codes (n, L), z_q (n, e), codebook loss, commitment loss) of the residual quantisation of z."""
        r = z
        z_q = torch.zeros_like(z)
        codes, cb_loss, commit = [], 0.0, 0.0
        for cb in self.net.codebooks:
            c = nearest(r, cb)
            e = cb[c]
            a, b = vq_losses(r, e)
            cb_loss, commit = cb_loss + a, commit + b
            z_q = z_q + e
            r = r - e.detach()
            codes.append(c)
        return torch.stack(codes, 1), z_q, cb_loss, commit

    def _fit(self, x: torch.Tensor) -> None:
        p = self.params
        net = self._build().to(x.device)
        net.ae.standardise_on(x)
        with torch.no_grad():
            r = net.ae.encode(seeded_head(x, p, p.init_rows))
            for level, cb in enumerate(net.codebooks):
                cb.data.copy_(kmeans_fit(r, p.codebook_size, (p.seed, level), p.kmeans_iters))
                r = r - cb.data[nearest(r, cb.data)]
        usage = [torch.zeros(p.codebook_size, dtype=torch.int64, device=x.device) for _ in range(p.levels)]

        def step(xb):
            z = net.ae.encode(xb)
            codes, z_q, cb_loss, commit = self._quantise(z)
            recon = net.ae.recon_loss(straight_through(z, z_q), xb)
            for level, u in enumerate(usage):
                u += torch.bincount(codes[:, level], minlength=p.codebook_size)
            return recon + cb_loss + p.beta * commit, {"recon": recon.detach(), "commit": commit.detach()}

        def on_epoch_end(_):
            return {"restarted": [restart_dead(cb, u) for cb, u in zip(net.codebooks, usage)]}

        self.summary = {"history": train_loop(net, x, p, step, on_epoch_end)}

    def _encode_block(self, x: torch.Tensor) -> torch.Tensor:
        z = self.net.ae.encode(x)
        codes, _ = km.residual_encode(z, list(self.net.codebooks), block_rows=z.shape[0], with_residual=False)
        return codes

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            codes = codes.to(self.device, torch.int64)
            return self.net.ae.decode(km.reconstruct(codes, [cb.data for cb in self.net.codebooks]))

    def state(self) -> Dict[str, np.ndarray]:
        return module_state(self.net)

    def load_state(self, arrays: Dict[str, np.ndarray]) -> None:
        self._build()
        load_module_state(self.net, arrays)
        self.net.eval()
