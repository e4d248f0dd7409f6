"""The one encode function of the execution layer, and what it needs of a trained model.

`encode_valid` is what every route to a SID goes through: the API's `model.encode`/`transform`, the `encode`
command (balanced or greedy, with or without dedup), and the incremental append for its greedy levels. Rows come
validated by the one validation (`prepare.row_reason`): either prepared valid rows, or, for the greedy single-pass
writer, every row with its reject reason beside it (rejects get a null SID).

`Quantizer` is the execution layer's view of a residual k-means model: codebooks, prices and settings, plain
arrays and a frozen config. The API layer (sid_spark.tokenizer) builds it; nothing here imports the API.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from pyspark.sql import DataFrame

from ..config import TokenizerConfig
from .quantize import QuantizerState, encode_checked_rows, encode_rows


@dataclass(frozen=True)
class Quantizer:
    codebooks: tuple  # (K_l, d) float32 per level
    prices: tuple  # (K_l,) float32 or None per level
    config: TokenizerConfig
    model_id: str
    n_items: Optional[int] = None  # items the codebooks were trained on (drift compares against it)

    @property
    def levels(self) -> int:
        return len(self.codebooks)

    @property
    def dim(self) -> int:
        return int(self.codebooks[0].shape[1])

    @property
    def codebook_sizes(self) -> list:
        return [int(c.shape[0]) for c in self.codebooks]

    @property
    def balanced(self) -> bool:
        return any(self.config.balance_for(level) == "exact" for level in range(self.levels))

    def state(self) -> QuantizerState:
        cfg = self.config
        return QuantizerState(tuple(np.ascontiguousarray(c, np.float32) for c in self.codebooks),
                              tuple(self.prices), cfg.block_rows, cfg.device)


def encode_valid(rows: DataFrame, q: Quantizer, stats: Optional[dict] = None,
                 reason_col: Optional[str] = None) -> DataFrame:
    """(id, sid) for every row of `rows` (id, _vec, _id_hash), exactly balanced at the balanced levels, greedy
    (price-adjusted nearest code) at the others.

    reason_col (greedy models only): `rows` holds every row read with its reject reason; rejects pass through with
    a null SID, so one pass validates, encodes and keeps the rejects (the single-pass writer)."""
    cfg = q.config
    if q.balanced:
        if reason_col is not None:
            raise ValueError("a balanced encode needs the prepared valid rows (its capacities depend on N)")
        from .balance import encode_balanced

        return encode_balanced(rows, q, stats)
    if reason_col is not None:
        return encode_checked_rows(rows, cfg.id_col, cfg.sid_col, reason_col, q.state(), q.dim)
    return encode_rows(rows, cfg.id_col, cfg.sid_col, q.state(), q.dim)
