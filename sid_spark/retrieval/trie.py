"""The SIDs that exist, as a prefix trie: what a decoder may emit next, and which item a complete SID names.

    trie = SidTrie(codes, items, level_sizes)   # codes: (n, W) int per-level codes (W = L, or L + 1 with a suffix)
    trie.allowed((17, 203))                     # -> sorted codes that follow the prefix (17, 203) in the table
    trie.lookup((17, 203, 88, 0))               # -> item ids with that complete SID (one when (sid, suffix) is unique)

Nodes at depth d are the distinct length-d prefixes in lexicographic order (depth 0: the root, node 0). The
children of a node are contiguous and sorted by code, so each depth is a CSR table: node i's children are
`child_code[d][ptr[d][i]:ptr[d][i+1]]`, with node ids `ptr[d][i]...` at depth d + 1. Memory is O(n * W), not
O(n * K): the trie of a catalog of millions fits where a dense (node, code) table would not.
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

import numpy as np


class SidTrie:
    def __init__(self, codes: np.ndarray, items: np.ndarray, level_sizes: Sequence[int]):
        codes = np.asarray(codes, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        if codes.ndim != 2 or codes.shape[0] != items.shape[0] or codes.shape[0] == 0:
            raise ValueError(f"codes must be (n, W) with n = len(items) > 0; got {codes.shape}, {items.shape}")
        self.depth = codes.shape[1]
        self.level_sizes = [int(s) for s in level_sizes]
        if len(self.level_sizes) != self.depth:
            raise ValueError(f"{len(self.level_sizes)} level sizes for SIDs of {self.depth} tokens")
        if codes.min() < 0 or (codes >= np.array(self.level_sizes)).any():
            raise ValueError("a SID code is outside its level's range")
        self.ptr, self.child_code = [], []
        parent = np.zeros(len(codes), np.int64)  # node id of each row's prefix at the current depth
        n_nodes = 1
        for d in range(self.depth):
            key = parent * self.level_sizes[d] + codes[:, d]  # (parent, code) -> one sortable int
            uniq, inverse = np.unique(key, return_inverse=True)
            par, code = np.divmod(uniq, self.level_sizes[d])
            self.ptr.append(np.searchsorted(par, np.arange(n_nodes + 1)).astype(np.int64))
            self.child_code.append(code.astype(np.int64))
            parent, n_nodes = inverse.reshape(-1).astype(np.int64), len(uniq)
        # leaves: complete SIDs -> item ids, ties in item-id order
        order = np.lexsort((items, parent))
        self.leaf_items = items[order]
        self.leaf_ptr = np.searchsorted(parent[order], np.arange(n_nodes + 1)).astype(np.int64)
        self.n_leaves = n_nodes

    # ---- walking -------------------------------------------------------------------------------------------
    def node(self, prefix: Sequence[int]) -> int:
        """Node id of a prefix at depth len(prefix), -1 if no SID in the table starts with it."""
        n = 0
        for d, c in enumerate(prefix):
            lo, hi = self.ptr[d][n], self.ptr[d][n + 1]
            j = lo + np.searchsorted(self.child_code[d][lo:hi], c)
            if j >= hi or self.child_code[d][j] != c:
                return -1
            n = int(j)
        return n

    def allowed(self, prefix: Sequence[int]) -> np.ndarray:
        """Sorted codes that may follow `prefix` (empty when the prefix is complete or absent)."""
        d = len(prefix)
        n = self.node(prefix)
        if n < 0 or d >= self.depth:
            return np.zeros(0, np.int64)
        return self.child_code[d][self.ptr[d][n]:self.ptr[d][n + 1]]

    def lookup(self, sid: Sequence[int]) -> np.ndarray:
        """Item ids of a complete SID (empty when it is not in the table)."""
        if len(sid) != self.depth:
            raise ValueError(f"a complete SID has {self.depth} tokens, got {len(sid)}")
        n = self.node(sid)
        return self.leaf_items[self.leaf_ptr[n]:self.leaf_ptr[n + 1]] if n >= 0 else np.zeros(0, np.int64)

    def expand(self, nodes: np.ndarray, d: int) -> Tuple[np.ndarray, np.ndarray]:
        """For nodes (B,) at depth d: mask (B, level_sizes[d]) of allowed codes and child (B, level_sizes[d])
        node ids at depth d + 1 (-1 where not allowed). Vectorised over the batch."""
        nodes = np.asarray(nodes, dtype=np.int64)
        lo, hi = self.ptr[d][nodes], self.ptr[d][nodes + 1]
        counts = hi - lo
        rows = np.repeat(np.arange(len(nodes)), counts)
        pos = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts) + np.repeat(lo, counts)
        child = np.full((len(nodes), self.level_sizes[d]), -1, np.int64)
        child[rows, self.child_code[d][pos]] = pos
        return child >= 0, child

    def leaf_to_items(self, leaves: np.ndarray) -> list:
        return [self.leaf_items[self.leaf_ptr[n]:self.leaf_ptr[n + 1]] for n in np.asarray(leaves)]

    # ---- views ---------------------------------------------------------------------------------------------
    def prefix_table(self) -> Dict[Tuple[int, ...], Tuple[int, ...]]:
        """{prefix: allowed next codes} for every prefix of every SID (the serving export, in memory)."""
        out: Dict[Tuple[int, ...], Tuple[int, ...]] = {}
        frontier = [((), 0)]
        for d in range(self.depth):
            nxt = []
            for prefix, n in frontier:
                lo, hi = self.ptr[d][n], self.ptr[d][n + 1]
                out[prefix] = tuple(int(c) for c in self.child_code[d][lo:hi])
                nxt.extend((prefix + (int(self.child_code[d][j]),), int(j)) for j in range(lo, hi))
            frontier = nxt
        return out
