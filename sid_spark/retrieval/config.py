"""Retriever settings: a frozen dataclass validated at start-up, and the two presets.

`small` (default): sized to finish on Amazon Beauty in well under 20 minutes per SID table on 2 CPU cores, so that
tokenizers are compared at one model budget. `tiger`: TIGER's own size (Rajput et al. 2023, §4: 4 encoder and 4
decoder layers, 6 heads, d_model 128, MLP 1024, dropout 0.1), meant for a GPU. Any key can be overridden.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any, Mapping

from ..config import ConfigError

PRESETS = {
    # 3 epochs over every Beauty example (131,413) + validation on 2,000 users + test on 22,363: measured at
    # 7-10 minutes per table on the 2-core machine (README, "Generative retrieval").
    "small": {"d_model": 64, "heads": 4, "encoder_layers": 2, "decoder_layers": 2, "mlp": 256, "dropout": 0.1,
              "epochs": 3, "patience": 2, "train_batch": 256, "lr": 2e-3, "val_users": 2_000},
    "tiger": {"d_model": 128, "heads": 6, "encoder_layers": 4, "decoder_layers": 4, "mlp": 1024, "dropout": 0.1,
              "epochs": 200, "patience": 10, "train_batch": 256, "lr": 1e-3, "val_users": 5_000},
}


@dataclass(frozen=True)
class RetrievalConfig:
    preset: str = "small"
    d_model: int = 64
    # nn.Transformer needs d_model % heads == 0; TIGER's 128 with 6 heads (T5 heads of 64 dims) becomes 132 here.
    heads: int = 4
    encoder_layers: int = 2
    decoder_layers: int = 2
    mlp: int = 256
    dropout: float = 0.1
    epochs: int = 3
    patience: int = 2  # epochs without a better validation Recall@10 before stopping
    train_batch: int = 256
    lr: float = 2e-3
    beam_width: int = 10
    max_history: int = 20  # items of history the encoder sees (TIGER: 20)
    max_examples: int = 2_000_000  # bound on training examples brought to the one training process
    max_eval_users: int = 100_000  # bound on validation/test users (a hash-ordered subset beyond it)
    val_users: int = 2_000  # validation users scored each epoch for early stopping
    eval_batch: int = 512
    # CPU threads for torch; 0 leaves torch's default. On a shared, oversubscribed machine 1 is much faster.
    torch_threads: int = 0
    ks: tuple = (5, 10)

    def __post_init__(self) -> None:
        def need(cond: bool, key: str, msg: str) -> None:
            if not cond:
                raise ConfigError(f"config key '{key}': {msg} (got {getattr(self, key)!r})")

        need(self.preset in PRESETS, "preset", f"must be one of {tuple(PRESETS)}")
        for key in ("d_model", "heads", "encoder_layers", "decoder_layers", "mlp", "epochs", "patience",
                    "train_batch", "beam_width", "max_history", "max_examples", "max_eval_users", "val_users",
                    "eval_batch"):
            v = getattr(self, key)
            need(isinstance(v, int) and not isinstance(v, bool) and v >= 1, key, "must be an integer >= 1")
        need(isinstance(self.torch_threads, int) and self.torch_threads >= 0, "torch_threads", "must be >= 0")
        need(isinstance(self.dropout, (int, float)) and 0 <= self.dropout < 1, "dropout", "must be in [0, 1)")
        need(isinstance(self.lr, (int, float)) and self.lr > 0, "lr", "must be a number > 0")
        ks = tuple(self.ks) if isinstance(self.ks, (list, tuple)) else (self.ks,)
        need(all(isinstance(k, int) and k >= 1 for k in ks) and ks, "ks", "must be integers >= 1")
        object.__setattr__(self, "ks", ks)
        need(self.beam_width >= max(ks), "beam_width", f"must be >= the largest k ({max(ks)})")

    @property
    def model_dim(self) -> int:
        """d_model rounded up to a multiple of heads (nn.Transformer needs d_model % heads == 0)."""
        return -(-self.d_model // self.heads) * self.heads

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["ks"] = list(d["ks"])
        return d

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "RetrievalConfig":
        """Preset values first, then the given keys (so `preset=tiger, epochs=5` is TIGER's size for 5 epochs)."""
        values = dict(values)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown retrieval key '{unknown[0]}' (known keys: {', '.join(sorted(known))})")
        preset = values.get("preset", "small")
        if preset not in PRESETS:
            raise ConfigError(f"config key 'preset': must be one of {tuple(PRESETS)} (got {preset!r})")
        return cls(**{**PRESETS[preset], **values})
