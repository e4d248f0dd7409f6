"""Beam search constrained to the SIDs that exist (TIGER decodes freely and drops invalid SIDs; here the trie masks
every step, so each beam is a SID of the table and maps back to an item).

At step d every beam's allowed next codes come from `SidTrie.expand`; a code outside them scores -inf, so the
top-`beam` continuations are drawn only from real prefixes. A beam's score is the model's log-probability of its
SID (log-softmax over the whole vocabulary, as the model was trained).
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
import torch

from .model import BOS, SidSeq2Seq
from .trie import SidTrie
from ..vocab import Vocabulary


@torch.no_grad()
def beam_search(model: SidSeq2Seq, src: torch.Tensor, trie: SidTrie, vocab: Vocabulary,
                beam: int) -> Tuple[np.ndarray, np.ndarray]:
    """src: (B, S) encoder tokens -> (leaves (B, beam) trie leaf ids, best first, -1 where fewer SIDs exist;
    scores (B, beam) log-probabilities)."""
    model.eval()
    dev = src.device
    b = src.shape[0]
    memory, pad = model.encode(src)
    nodes = np.zeros((b, 1), np.int64)  # every user starts at the root
    scores = torch.zeros((b, 1), device=dev)
    seqs = torch.full((b, 1, 1), BOS, dtype=torch.long, device=dev)
    for d in range(trie.depth):
        width = nodes.shape[1]
        flat = nodes.reshape(-1)
        alive = flat >= 0
        size = trie.level_sizes[d]
        mask = np.zeros((len(flat), size), bool)
        child = np.full((len(flat), size), -1, np.int64)
        if alive.any():
            mask[alive], child[alive] = trie.expand(flat[alive], d)
        rep = torch.arange(b, device=dev).repeat_interleave(width)
        logits = model.decode(memory[rep], pad[rep], seqs.reshape(b * width, -1))[:, -1, :]
        first = vocab.token_id(d, 0)
        logp = torch.log_softmax(logits.float(), dim=-1)[:, first:first + size]
        logp = logp.masked_fill(~torch.from_numpy(mask).to(dev), float("-inf"))
        total = (scores.reshape(-1, 1) + logp).reshape(b, width * size)
        k = min(beam, width * size)
        top, idx = torch.topk(total, k, dim=1)  # ties: torch's order, the same on every run of one build
        idx_np = idx.cpu().numpy()
        src_beam, code = np.divmod(idx_np, size)
        parent = src_beam + np.arange(b)[:, None] * width
        nodes = child.reshape(-1)[parent.reshape(-1) * size + code.reshape(-1)].reshape(b, k)
        nodes[~np.isfinite(top.cpu().numpy())] = -1
        scores = top
        token = torch.from_numpy(code + first).to(dev)
        seqs = torch.cat([seqs.reshape(b, width, -1)[torch.arange(b, device=dev)[:, None],
                                                      torch.from_numpy(src_beam).to(dev)],
                          token[..., None]], dim=2)
    return nodes, scores.cpu().numpy()


def leaves_to_items(trie: SidTrie, leaves: np.ndarray, k: int) -> np.ndarray:
    """(B, beam) leaf ids -> (B, k) item ids, best first, -1 padded. A leaf naming several items (a SID table
    without suffix dedup) contributes all of them, in item-id order, before the next beam."""
    leaves = np.asarray(leaves)
    out = np.full((leaves.shape[0], k), -1, np.int64)
    ok = leaves >= 0
    sizes = np.where(ok, trie.leaf_ptr[np.where(ok, leaves, 0) + 1] - trie.leaf_ptr[np.where(ok, leaves, 0)], 0)
    if (sizes <= 1).all():  # unique SIDs: one gather
        items = np.where(ok, trie.leaf_items[trie.leaf_ptr[np.where(ok, leaves, 0)]], -1)
        # dead beams sort last; live ones keep their order
        order = np.argsort(~ok, axis=1, kind="stable")
        items = np.take_along_axis(items, order, axis=1)[:, :k]
        out[:, :items.shape[1]] = items
        return out
    for r in range(leaves.shape[0]):  # colliding SIDs: variable-length expansion, per query row
        row = [it for leaf in leaves[r] if leaf >= 0 for it in trie.leaf_items[trie.leaf_ptr[leaf]:trie.leaf_ptr[leaf + 1]]]
        row = row[:k]
        out[r, :len(row)] = row
    return out
