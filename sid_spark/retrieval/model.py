"""A small TIGER-style sequence-to-sequence transformer over SID tokens (Rajput et al. 2023, §3.2).

Encoder input: the user's last `max_history` items, each as its W SID tokens (L level codes, plus the suffix token
when the table has one), most recent item last, left-padded. Decoder: BOS then the next item's W tokens,
teacher-forced in training, beam-searched (constrained to the trie) at inference.

Token ids: 0 = PAD, 1 = BOS, then the `Vocabulary` layout with offset 2 (level-offset codes: level l, code c ->
2 + l * K + c; suffix s -> 2 + L * K + s), so one code value means a different token at each level.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn

from ..vocab import Vocabulary

PAD, BOS, OFFSET = 0, 1, 2


def pick_device(device: str = "auto") -> torch.device:
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def vocabulary_for(levels: int, codebook_size: int, suffix_size: int) -> Vocabulary:
    return Vocabulary(levels=levels, codebook_size=codebook_size, suffix_size=suffix_size, offset=OFFSET)


class SidSeq2Seq(nn.Module):
    def __init__(self, vocab_size: int, width: int, max_history: int, d_model: int, heads: int,
                 encoder_layers: int, decoder_layers: int, mlp: int, dropout: float):
        super().__init__()
        self.width, self.max_history = width, max_history
        self.tok = nn.Embedding(vocab_size, d_model, padding_idx=PAD)
        # encoder positions count from the most recent item (right-aligned history), decoder ones from BOS
        self.enc_pos = nn.Embedding(max_history * width, d_model)
        self.dec_pos = nn.Embedding(width + 1, d_model)
        with warnings.catch_warnings():  # "enable_nested_tensor is True, but norm_first ..." is only a notice
            warnings.simplefilter("ignore")
            self.transformer = nn.Transformer(d_model=d_model, nhead=heads, num_encoder_layers=encoder_layers,
                                              num_decoder_layers=decoder_layers, dim_feedforward=mlp,
                                              dropout=dropout, batch_first=True, norm_first=True)
        self.head = nn.Linear(d_model, vocab_size)

    def encode(self, src: torch.Tensor) -> tuple:
        """src: (B, S) token ids, right-aligned, PAD on the left, at least one item per row -> (memory, pad mask)."""
        pad = src == PAD
        pos = torch.arange(self.max_history * self.width - src.shape[1], self.max_history * self.width,
                           device=src.device)
        x = self.tok(src) + self.enc_pos(pos)[None]
        return self.transformer.encoder(x, src_key_padding_mask=pad), pad

    def decode(self, memory: torch.Tensor, pad: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        """tgt: (B, T) decoder input (BOS first) -> logits (B, T, V)."""
        t = tgt.shape[1]
        y = self.tok(tgt) + self.dec_pos(torch.arange(t, device=tgt.device))[None]
        causal = nn.Transformer.generate_square_subsequent_mask(t, device=tgt.device)
        h = self.transformer.decoder(y, memory, tgt_mask=causal, tgt_is_causal=True, memory_key_padding_mask=pad)
        return self.head(h)

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        memory, pad = self.encode(src)
        return self.decode(memory, pad, tgt_in)


def n_parameters(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def history_tokens(history_idx: np.ndarray, item_tokens: np.ndarray) -> np.ndarray:
    """history_idx: (B, H) row indices into item_tokens, -1 = pad, right-aligned -> (B, H' * W) token ids, with
    H' the longest history in the batch (dynamic padding: short batches cost less)."""
    filled = history_idx >= 0
    longest = int(filled.sum(axis=1).max()) if len(history_idx) else 0
    longest = max(longest, 1)
    h = history_idx[:, history_idx.shape[1] - longest:]
    tok = item_tokens[np.where(h >= 0, h, 0)]  # (B, H', W)
    tok[h < 0] = PAD
    return tok.reshape(len(h), -1)
