"""OPMQ (STORE; the seed's eqs. 6-8): K parallel experts on the MLP latent z. Expert k projects z to its own
subspace, u_k = V_k z (V_k: s x e), and quantises there with its own codebook, e_k = C_k[argmin ||u_k - c||];
the decoder sees the sum of the experts' back-projections, z_q = sum_k V_k^T e_k. Each expert adds one token.

Loss = ||x - dec(z_q)||^2 + sum_k (||sg[u_k] - e_k||^2 + beta ||u_k - sg[e_k]||^2) + lambda ||V V^T - I||_F^2,
V = [V_1; ...; V_K] (K*s x e, K*s <= e) — the orthogonality term keeps the experts' subspaces apart.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

import numpy as np
import torch
from torch import nn

from .base import Encoder
from .common import (AutoEncoder, NeuralParams, kmeans_fit, load_module_state, module_state, nearest, restart_dead,
                     seeded_head, straight_through, train_loop, vq_losses)


@dataclass(frozen=True)
class OPMQParams(NeuralParams):
    experts: int = 3
    subspace_dim: int = 8
    codebook_size: int = 256
    ortho_weight: float = 1.0

    def check(self) -> None:
        super().check()
        self.positive_ints("experts", "subspace_dim", "codebook_size")
        self.need(self.codebook_size >= 2, "codebook_size", "must be >= 2")
        self.need(self.experts * self.subspace_dim <= self.latent, "subspace_dim",
                  f"experts * subspace_dim must be <= latent ({self.latent}) for orthogonal subspaces")
        self.need(isinstance(self.ortho_weight, (int, float)) and self.ortho_weight >= 0, "ortho_weight",
                  "must be a number >= 0")


class _Net(nn.Module):
    def __init__(self, d: int, p: OPMQParams):
        super().__init__()
        self.ae = AutoEncoder(d, p.hidden, p.latent)
        # Orthonormal rows to start (a seeded QR), so the experts begin in disjoint subspaces.
        q, _ = torch.linalg.qr(torch.randn(p.latent, p.experts * p.subspace_dim))
        self.proj = nn.Parameter(q.T.reshape(p.experts, p.subspace_dim, p.latent).contiguous())
        self.codebooks = nn.ParameterList([nn.Parameter(torch.zeros(p.codebook_size, p.subspace_dim))
                                           for _ in range(p.experts)])


class OPMQ(Encoder):
    name = "opmq"
    Params = OPMQParams

    def _build(self) -> _Net:
        self.net = _Net(self.dim, self.params)
        return self.net

    @property
    def token_sizes(self) -> Tuple[int, ...]:
        return (self.params.codebook_size,) * self.params.experts

    @property
    def device(self) -> torch.device:
        return self.net.proj.device

    def to(self, device) -> "OPMQ":
        self.net.to(device)
        return self

    def _project(self, z: torch.Tensor) -> torch.Tensor:
        """(n, e) -> (K, n, s): every expert's coordinates, one batched GEMM."""
        return torch.einsum("kse,ne->kns", self.net.proj, z)

    def _back(self, e: torch.Tensor) -> torch.Tensor:
        """(K, n, s) -> (n, e): sum_k V_k^T e_k."""
        return torch.einsum("kse,kns->ne", self.net.proj, e)

    def ortho_penalty(self) -> torch.Tensor:
        v = self.net.proj.reshape(-1, self.net.proj.shape[-1])
        return ((v @ v.T - torch.eye(v.shape[0], device=v.device)) ** 2).sum()

    def _fit(self, x: torch.Tensor) -> None:
        p = self.params
        net = self._build().to(x.device)
        net.ae.standardise_on(x)
        with torch.no_grad():
            u = self._project(net.ae.encode(seeded_head(x, p, p.init_rows)))
            for k, cb in enumerate(net.codebooks):
                cb.data.copy_(kmeans_fit(u[k].contiguous(), p.codebook_size, (p.seed, k), p.kmeans_iters))
        usage = [torch.zeros(p.codebook_size, dtype=torch.int64, device=x.device) for _ in range(p.experts)]

        def step(xb):
            u = self._project(net.ae.encode(xb))
            es, cb_loss, commit = [], 0.0, 0.0
            for k, cb in enumerate(net.codebooks):
                c = nearest(u[k], cb)
                e = cb[c]
                a, b = vq_losses(u[k], e)
                cb_loss, commit = cb_loss + a, commit + b
                es.append(straight_through(u[k], e))
                usage[k] += torch.bincount(c, minlength=p.codebook_size)
            recon = net.ae.recon_loss(self._back(torch.stack(es)), xb)
            ortho = self.ortho_penalty()
            loss = recon + cb_loss + p.beta * commit + p.ortho_weight * ortho
            return loss, {"recon": recon.detach(), "commit": commit.detach(), "ortho": ortho.detach()}

        def on_epoch_end(_):
            return {"restarted": [restart_dead(cb, u) for cb, u in zip(net.codebooks, usage)]}

        self.summary = {"history": train_loop(net, x, p, step, on_epoch_end)}

    def _encode_block(self, x: torch.Tensor) -> torch.Tensor:
        u = self._project(self.net.ae.encode(x))
        return torch.stack([nearest(u[k].contiguous(), cb) for k, cb in enumerate(self.net.codebooks)], 1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            codes = codes.to(self.device, torch.int64)
            e = torch.stack([cb[codes[:, k]] for k, cb in enumerate(self.net.codebooks)])
            return self.net.ae.decode(self._back(e))

    def state(self) -> Dict[str, np.ndarray]:
        return module_state(self.net)

    def load_state(self, arrays: Dict[str, np.ndarray]) -> None:
        self._build()
        load_module_state(self.net, arrays)
        self.net.eval()
