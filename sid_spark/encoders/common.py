"""Pieces the encoders share: k-means on a sample, MLPs, vector quantisation with a straight-through estimator,
dead-code restart, and a seeded mini-batch training loop. Pure torch."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, List, Sequence

import numpy as np
import torch
from torch import nn

from ..kernels import kmeans as km
from .base import EncoderParams


def kmeans_fit(x: torch.Tensor, k: int, seed: Sequence[int], iters: int = 20, init_rows: int = 0) -> torch.Tensor:
    """Full-batch Lloyd on x: (n, d) from a k-means++ seeding of the first `init_rows` rows (all when 0);
    empty codes are re-seeded by splitting the largest cluster. Returns (k, d) float32."""
    if x.shape[0] < k:
        raise ValueError(f"k-means needs at least {k} rows, got {x.shape[0]}")
    head = x if init_rows <= 0 else x[: max(k, init_rows)]
    return lloyd(x, km.kmeans_pp(head, k, np.random.default_rng(list(seed))), iters)


def lloyd(x: torch.Tensor, c: torch.Tensor, iters: int) -> torch.Tensor:
    """`iters` full-batch Lloyd steps from centroids c: (k, d), stopping early once they no longer move."""
    k = c.shape[0]
    for _ in range(iters):
        codes = km.nearest(x, c)
        counts, sums = km.partial_stats(x, codes, k)
        new = km.lloyd_update(c, counts, sums)
        new, _, _ = km.split_empty(new, counts)
        shift = km.centroid_shift(c, new)
        c = new
        if shift < 1e-6:
            break
    return c


def mlp(dims: Sequence[int]) -> nn.Sequential:
    """Linear layers with ReLU between them (none after the last)."""
    layers: List[nn.Module] = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class AutoEncoder(nn.Module):
    """MLP encoder d -> latent and decoder latent -> d around a standardisation of x by the sample's mean and
    overall RMS (stored as buffers), so training behaves the same whatever the scale of the embeddings."""

    def __init__(self, d: int, hidden: Sequence[int], latent: int):
        super().__init__()
        self.enc = mlp([d, *hidden, latent])
        self.dec = mlp([latent, *reversed(hidden), d])
        self.register_buffer("mean", torch.zeros(d))
        self.register_buffer("scale", torch.ones(()))

    def standardise_on(self, x: torch.Tensor) -> None:
        with torch.no_grad():
            self.mean.copy_(x.mean(0))
            self.scale.copy_(((x - self.mean) ** 2).sum(1).mean().sqrt().clamp_min(1e-12))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.enc((x - self.mean) / self.scale)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.dec(z) * self.scale + self.mean

    def recon_loss(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """||x - dec(z)||^2 in standardised units (batch mean), so beta and the other weights mean the same
        whatever the embeddings' scale."""
        return ((self.dec(z) - (x - self.mean) / self.scale) ** 2).sum(1).mean()


def nearest(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Codes (n,) int64 of the nearest codeword, one GEMM over the whole batch (ties to the lower code)."""
    return km.nearest(z.detach(), codebook.detach(), block_rows=max(1, z.shape[0]))


def vq_losses(z: torch.Tensor, e: torch.Tensor):
    """The seed's eq. (1) terms: codebook ||sg[z] - e||^2 and commitment ||z - sg[e]||^2, batch means."""
    return ((z.detach() - e) ** 2).sum(1).mean(), ((z - e.detach()) ** 2).sum(1).mean()


def straight_through(z: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Forward q, backward the identity to z (the seed's eq. 9)."""
    return z + (q - z).detach()


def restart_dead(codebook: nn.Parameter, usage: torch.Tensor) -> int:
    """Codes no row chose since the last restart are re-seeded by splitting the largest cluster (faiss
    split_clusters) — deterministic, never left dead. Returns how many were restarted."""
    with torch.no_grad():
        new, _, n = km.split_empty(codebook.data, usage, eps=1e-2)
        codebook.data.copy_(new)
    usage.zero_()
    return n


@dataclass(frozen=True)
class NeuralParams(EncoderParams):
    """MLP autoencoder training knobs shared by VQ-VAE, RQ-VAE, FSQ and OPMQ."""

    hidden: tuple = (512, 256, 128)
    latent: int = 32
    epochs: int = 20
    batch_size: int = 512
    lr: float = 1e-3
    weight_decay: float = 0.0
    beta: float = 0.25
    # Rows of the (seeded) shuffled sample that seed the codebooks by k-means (TIGER: the first batch).
    init_rows: int = 4096
    kmeans_iters: int = 20

    def check(self) -> None:
        super().check()
        self.positive_ints("latent", "epochs", "batch_size", "init_rows", "kmeans_iters")
        self.need(all(isinstance(h, int) and h >= 1 for h in self.hidden), "hidden", "must be a list of integers >= 1")
        self.need(isinstance(self.lr, (int, float)) and self.lr > 0, "lr", "must be a number > 0")
        self.need(isinstance(self.beta, (int, float)) and self.beta >= 0, "beta", "must be a number >= 0")
        self.need(isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0, "weight_decay",
                  "must be a number >= 0")


def train_loop(module: nn.Module, x: torch.Tensor, p: NeuralParams, step: Callable[[torch.Tensor], tuple],
               on_epoch_end: Callable[[int], dict] | None = None) -> List[dict]:
    """Adam over seeded shuffles of x. `step(xb)` returns (loss, {name: float}); history is one dict per epoch."""
    gen = torch.Generator(device="cpu").manual_seed(p.seed)
    opt = torch.optim.Adam(module.parameters(), lr=p.lr, weight_decay=p.weight_decay)
    n = x.shape[0]
    history = []
    for epoch in range(p.epochs):
        t0 = time.time()
        perm = torch.randperm(n, generator=gen).to(x.device)
        totals: dict = {}
        batches = 0
        for start in range(0, n, p.batch_size):
            xb = x[perm[start:start + p.batch_size]]
            if xb.shape[0] < 2:
                continue
            loss, parts = step(xb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            for k, v in parts.items():
                totals[k] = totals.get(k, 0.0) + float(v)
            batches += 1
        rec = {"epoch": epoch + 1, **{k: v / max(batches, 1) for k, v in totals.items()},
               "seconds": time.time() - t0}
        if on_epoch_end is not None:
            rec.update(on_epoch_end(epoch))
        history.append(rec)
    return history


def seeded_head(x: torch.Tensor, p: EncoderParams, rows: int) -> torch.Tensor:
    """The first `rows` rows of a seeded shuffle of x (the k-means initialisation batch)."""
    gen = torch.Generator(device="cpu").manual_seed(p.seed + 1)
    idx = torch.randperm(x.shape[0], generator=gen)[:rows].to(x.device)
    return x[idx]


def module_state(module: nn.Module, prefix: str = "") -> dict:
    return {prefix + k: v.detach().cpu().numpy().copy() for k, v in module.state_dict().items()}


def load_module_state(module: nn.Module, arrays: dict, prefix: str = "") -> None:
    sd = {k[len(prefix):]: torch.from_numpy(np.asarray(v)) for k, v in arrays.items() if k.startswith(prefix)}
    module.load_state_dict(sd)
