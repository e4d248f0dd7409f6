"""FSQ, finite scalar quantisation (the seed's eq. 4): an MLP ending in an affine projection to d_fsq dims,
u = sigmoid(z) * (L_j - 1) per dim j, q = round(u) with the straight-through estimator; no codebook, so no
codebook collapse. Dims are grouped into tokens, each a mixed-radix index: levels [8, 8, 4] -> one token of
8*8*4 = 256 values, token = q_1 + 8 q_2 + 64 q_3. Loss: reconstruction only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

import numpy as np
import torch
from torch import nn

from .base import Encoder
from .common import AutoEncoder, NeuralParams, load_module_state, module_state, train_loop


@dataclass(frozen=True)
class FSQParams(NeuralParams):
    # One list of per-dimension levels per token; d_fsq = total number of dims.
    levels: tuple = ((8, 8, 4), (8, 8, 4), (8, 8, 4))

    def check(self) -> None:
        super().check()
        ok = (isinstance(self.levels, tuple) and len(self.levels) >= 1 and
              all(isinstance(g, tuple) and len(g) >= 1 and all(isinstance(v, int) and v >= 2 for v in g)
                  for g in self.levels))
        self.need(ok, "levels", "must be a list of tokens, each a list of per-dimension levels >= 2")


class _Net(nn.Module):
    def __init__(self, d: int, p: FSQParams, d_fsq: int):
        super().__init__()
        self.ae = AutoEncoder(d, p.hidden, d_fsq)


class FSQ(Encoder):
    name = "fsq"
    Params = FSQParams

    def _setup(self) -> None:
        p = self.params
        flat = [v for g in p.levels for v in g]
        self.net = _Net(self.dim, p, len(flat))
        self._L = torch.tensor(flat, dtype=torch.float32)
        radix, group = [], []
        for t, g in enumerate(p.levels):
            r = 1
            for v in g:
                radix.append(r)
                group.append(t)
                r *= v
        self._radix = torch.tensor(radix, dtype=torch.int64)
        self._group = torch.tensor(group, dtype=torch.int64)

    @property
    def token_sizes(self) -> Tuple[int, ...]:
        return tuple(int(np.prod(g)) for g in self.params.levels)

    @property
    def device(self) -> torch.device:
        return self.net.ae.mean.device

    def to(self, device) -> "FSQ":
        self.net.to(device)
        return self

    def _scaled(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net.ae.encode(x)) * (self._L.to(x.device) - 1)

    def _dequant(self, q: torch.Tensor) -> torch.Tensor:
        """Decoder input: the level index mapped to [-1, 1] per dimension."""
        return 2 * q / (self._L.to(q.device) - 1) - 1

    def _fit(self, x: torch.Tensor) -> None:
        self._setup()
        net = self.net.to(x.device)
        net.ae.standardise_on(x)

        def step(xb):
            u = self._scaled(xb)
            q = u + (torch.round(u) - u).detach()
            recon = net.ae.recon_loss(self._dequant(q), xb)
            return recon, {"recon": recon.detach()}

        self.summary = {"history": train_loop(net, x, self.params, step)}

    def _encode_block(self, x: torch.Tensor) -> torch.Tensor:
        q = torch.round(self._scaled(x)).to(torch.int64)
        tokens = torch.zeros((x.shape[0], self.n_tokens), dtype=torch.int64, device=x.device)
        tokens.index_add_(1, self._group.to(x.device), q * self._radix.to(x.device))
        return tokens

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            codes = codes.to(self.device, torch.int64)
            L = self._L.to(codes.device).to(torch.int64)
            q = (codes[:, self._group.to(codes.device)] // self._radix.to(codes.device)) % L
            return self.net.ae.decode(self._dequant(q.to(torch.float32)))

    def state(self) -> Dict[str, np.ndarray]:
        return module_state(self.net)

    def load_state(self, arrays: Dict[str, np.ndarray]) -> None:
        self._setup()
        load_module_state(self.net, arrays)
        self.net.eval()
