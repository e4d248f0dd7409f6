"""Quality formulas over small count vectors (numpy only, no Spark).

Everything here takes K-sized per-code counts or a histogram of SID sizes (size -> number of SIDs of that size,
at most sqrt(2N) rows) and returns plain floats, so the Spark side only ever hands the driver K-sized results.

Definitions (documented in the README's "Quality metrics" section):
- entropy  H = -sum p log2 p over the codes in use, p = count / N; normalised by log2 K.
- Gini (seed's Lorenz formula)  G = (2/n) sum_{i=1..n} (i/n - L(i)), counts sorted ascending, L(i) the share of
  items held by the i smallest; equal to the usual mean-absolute-difference Gini. Per code it runs over all K
  codes (a dead code counts as 0 items); per SID over the N_d SIDs in use.
"""
from __future__ import annotations

import math
from typing import Dict, Sequence, Tuple

import numpy as np


def entropy_bits(counts: Sequence[float]) -> float:
    """-sum p log2 p of a count vector (zeros ignored); 0 for an empty or all-zero vector."""
    c = np.asarray(counts, dtype=np.float64)
    c = c[c > 0]
    if c.size == 0:
        return 0.0
    p = c / c.sum()
    return float(-(p * np.log2(p)).sum())


def entropy_from_moments(n: float, sum_c_log2_c: float) -> float:
    """Entropy of a distribution given only N = sum c and S = sum c log2 c (what a Spark aggregate returns):
    H = log2 N - S / N."""
    if n <= 0:
        return 0.0
    return max(0.0, float(math.log2(n) - sum_c_log2_c / n))


def gini(counts: Sequence[float]) -> float:
    """Lorenz-curve Gini G = (2/n) sum_i (i/n - L(i)) of `counts` (sorted ascending inside)."""
    c = np.sort(np.asarray(counts, dtype=np.float64))
    n, total = c.size, c.sum()
    if n == 0 or total <= 0:
        return 0.0
    i = np.arange(1, n + 1, dtype=np.float64)
    lorenz = np.cumsum(c) / total
    return float((2.0 / n) * (i / n - lorenz).sum())


def _histogram_runs(sizes: Sequence[int], n_with_size: Sequence[int]) -> Tuple[np.ndarray, np.ndarray]:
    s = np.asarray(sizes, dtype=np.float64)
    m = np.asarray(n_with_size, dtype=np.float64)
    order = np.argsort(s, kind="stable")
    s, m = s[order], m[order]
    keep = m > 0
    return s[keep], m[keep]


def gini_from_histogram(sizes: Sequence[int], n_with_size: Sequence[int]) -> float:
    """The same Lorenz Gini over n = sum m_s groups, where m_s groups hold s items each.

    A run of m equal sizes s starting after a groups and C items adds, in closed form,
    sum_{j=1..m} ((a+j)/n - (C + j s)/N) = m a/n + m(m+1)/(2n) - m C/N - s m(m+1)/(2N).
    """
    s, m = _histogram_runs(sizes, n_with_size)
    n, total = m.sum(), (s * m).sum()
    if n == 0 or total <= 0:
        return 0.0
    a = np.concatenate([[0.0], np.cumsum(m)[:-1]])
    c_before = np.concatenate([[0.0], np.cumsum(s * m)[:-1]])
    tri = m * (m + 1) / 2
    acc = (m * a + tri) / n - (m * c_before + s * tri) / total
    return float((2.0 / n) * acc.sum())


def lorenz_from_histogram(sizes: Sequence[int], n_with_size: Sequence[int]) -> Tuple[np.ndarray, np.ndarray]:
    """Vertices of the (piecewise-linear) Lorenz curve: x = share of groups, y = share of items, from (0, 0)."""
    s, m = _histogram_runs(sizes, n_with_size)
    n, total = m.sum(), (s * m).sum()
    if n == 0 or total <= 0:
        return np.array([0.0, 1.0]), np.array([0.0, 1.0])
    return (np.concatenate([[0.0], np.cumsum(m) / n]), np.concatenate([[0.0], np.cumsum(s * m) / total]))


def top_share(counts: Sequence[float], fraction: float = 0.01) -> float:
    """Share of items on the ceil(fraction * K) largest codes (at least one code)."""
    c = np.sort(np.asarray(counts, dtype=np.float64))[::-1]
    total = c.sum()
    if c.size == 0 or total <= 0:
        return 0.0
    top = max(1, int(math.ceil(fraction * c.size)))
    return float(c[:top].sum() / total)


def level_metrics(counts: Sequence[int], codebook_size: int) -> Dict[str, float]:
    """Per-level usage metrics of the (K,) items-per-code vector of one level (zeros for dead codes)."""
    c = np.asarray(counts, dtype=np.int64)
    k = int(codebook_size)
    if c.size < k:
        c = np.concatenate([c, np.zeros(k - c.size, np.int64)])
    used = int((c > 0).sum())
    h = entropy_bits(c)
    return {"codes_used": used, "utilization": used / k, "dead_codes": int(c.size - used),
            "entropy_bits": h, "entropy_norm": h / math.log2(k), "gini": gini(c),
            "max_code_size": int(c.max()) if c.size else 0, "min_code_size": int(c.min()) if c.size else 0,
            "top1pct_share": top_share(c, 0.01)}


def sid_metrics(sizes: Sequence[int], n_with_size: Sequence[int]) -> Dict[str, float]:
    """Per-SID metrics from the histogram of items per SID (size s -> m_s SIDs hold s items each)."""
    s, m = _histogram_runs(sizes, n_with_size)
    n_items, n_sids = float((s * m).sum()), float(m.sum())
    shared = float((s * m)[s >= 2].sum())
    return {"n_items": int(n_items), "n_sids": int(n_sids),
            "collision_rate": 1.0 - n_sids / n_items if n_items else 0.0,
            "items_in_collision": shared / n_items if n_items else 0.0,
            "n_items_in_collision": int(shared),
            "max_items_per_sid": int(s.max()) if s.size else 0,
            "sid_gini": gini_from_histogram(s, m)}


def hourglass(prefix_entropy_bits: Sequence[float], distinct_prefixes: Sequence[int],
              codebook_size: int) -> list:
    """Per level l (1-based): H(s_l | s_<l) = H(prefix_l) - H(prefix_{l-1}) and the mean number of distinct
    children per prefix D_l / D_{l-1}, from the entropies H(prefix_l) and counts D_l of the length-l prefixes.
    codebook_size: one K, or one per level."""
    out = []
    h_prev, d_prev = 0.0, 1
    for lvl, (h, d) in enumerate(zip(prefix_entropy_bits, distinct_prefixes)):
        k = codebook_size[min(lvl, len(codebook_size) - 1)] if isinstance(codebook_size, (list, tuple)) \
            else codebook_size
        cond = max(0.0, float(h) - h_prev)
        out.append({"cond_entropy_bits": cond, "cond_entropy_norm": cond / math.log2(k),
                    "mean_children": float(d) / d_prev if d_prev else 0.0, "distinct_prefixes": int(d)})
        h_prev, d_prev = float(h), int(d)
    return out
