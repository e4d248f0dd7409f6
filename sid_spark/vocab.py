"""The token vocabulary a generative retriever is trained on: one token per (level, code), plus the suffix level.

Layout (ids are dense and ordered): ``offset + level * K + code`` for the L codebook levels, then
``offset + L * K + s`` for suffix value s in [0, suffix_size). Token strings are ``<a_17>``, ``<b_203>``, … with
one letter per level and the next letter for the suffix level (``<d_0>`` for L = 3). Ids below `offset` are left
to the model's own special tokens (pad, bos, eos, …).

    vocab = Vocabulary(levels=3, codebook_size=256, suffix_size=4)
    vocab.save("sids/_vocab.json"); Vocabulary.load("sids/_vocab.json") == vocab
    vocab.encode(np.array([[17, 203, 88]]), np.array([1]))   # -> [[17, 459, 600, 769]]
    with_token_ids(sid_df, vocab, "sid", "sid_suffix")        # + column sid_tokens array<int>
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from typing import List, Optional, Tuple

import numpy as np

FORMAT = "sid_spark.vocab/1"
LETTERS = "abcdefghijklmnopqrstuvwxyz"
_TOKEN = re.compile(r"^<([a-z])_(\d+)>$")


class VocabError(ValueError):
    """A vocabulary file or token does not fit this vocabulary."""


@dataclass(frozen=True)
class Vocabulary:
    levels: int
    codebook_size: int
    suffix_size: int = 0  # 0: the SIDs carry no suffix token
    offset: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.levels <= len(LETTERS) - 1:
            raise VocabError(f"levels must be in 1..{len(LETTERS) - 1} (got {self.levels})")
        if self.codebook_size < 1 or self.suffix_size < 0 or self.offset < 0:
            raise VocabError(f"bad sizes: codebook_size={self.codebook_size}, suffix_size={self.suffix_size}, "
                             f"offset={self.offset}")

    # ---- ids ---------------------------------------------------------------------------------------------
    @property
    def has_suffix(self) -> bool:
        return self.suffix_size > 0

    @property
    def size(self) -> int:
        """Number of SID tokens (the model's vocabulary is offset + size)."""
        return self.levels * self.codebook_size + self.suffix_size

    def level_size(self, level: int) -> int:
        return self.suffix_size if level == self.levels else self.codebook_size

    def token_id(self, level: int, code: int) -> int:
        """Level `levels` is the suffix level."""
        if not 0 <= level <= self.levels or not 0 <= code < self.level_size(level):
            raise VocabError(f"(level {level}, code {code}) is outside this vocabulary")
        return self.offset + level * self.codebook_size + code

    def token_str(self, level: int, code: int) -> str:
        self.token_id(level, code)
        return f"<{LETTERS[level]}_{code}>"

    def lookup(self, token_id: int) -> Tuple[int, int]:
        """token id -> (level, code)."""
        i = int(token_id) - self.offset
        if not 0 <= i < self.size:
            raise VocabError(f"token id {token_id} is outside this vocabulary")
        level, code = divmod(i, self.codebook_size)
        if level >= self.levels:  # the suffix level
            level, code = self.levels, i - self.levels * self.codebook_size
        return level, code

    def parse(self, token: str) -> int:
        """'<b_203>' -> token id."""
        m = _TOKEN.match(token)
        if not m:
            raise VocabError(f"{token!r} is not a SID token")
        return self.token_id(LETTERS.index(m.group(1)), int(m.group(2)))

    def tokens(self) -> List[dict]:
        """Every token in id order: {"id", "level", "code", "token"} (level == levels is the suffix level)."""
        return [{"id": self.token_id(level, code), "level": level, "code": code,
                 "token": self.token_str(level, code)}
                for level in range(self.levels + 1) for code in range(self.level_size(level))]

    # ---- whole SIDs, vectorised --------------------------------------------------------------------------
    def encode(self, sid: np.ndarray, suffix: Optional[np.ndarray] = None) -> np.ndarray:
        """(n, L) codes (+ (n,) suffix) -> (n, L [+1]) int64 token ids."""
        sid = np.asarray(sid, dtype=np.int64)
        if sid.ndim != 2 or sid.shape[1] != self.levels:
            raise VocabError(f"expected SIDs of shape (n, {self.levels}), got {sid.shape}")
        if sid.size and (sid.min() < 0 or sid.max() >= self.codebook_size):
            raise VocabError("a SID code is outside [0, codebook_size)")
        ids = self.offset + np.arange(self.levels) * self.codebook_size + sid
        if suffix is None:
            if self.has_suffix:
                raise VocabError("this vocabulary has a suffix level: pass the suffix")
            return ids
        suffix = np.asarray(suffix, dtype=np.int64).reshape(-1, 1)
        if suffix.size and (suffix.min() < 0 or suffix.max() >= self.suffix_size):
            raise VocabError(f"a suffix is outside [0, {self.suffix_size})")
        return np.concatenate([ids, self.offset + self.levels * self.codebook_size + suffix], axis=1)

    def decode(self, ids: np.ndarray) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """(n, L [+1]) token ids -> (codes (n, L), suffix (n,) or None); every id must sit at its own level."""
        ids = np.asarray(ids, dtype=np.int64)
        width = self.levels + (1 if self.has_suffix else 0)
        if ids.ndim != 2 or ids.shape[1] != width:
            raise VocabError(f"expected token ids of shape (n, {width}), got {ids.shape}")
        rel = ids - self.offset - np.arange(width) * self.codebook_size
        bad = (rel < 0) | (rel >= np.array([self.level_size(lv) for lv in range(width)]))
        if bad.any():
            raise VocabError("a token id is not a token of its level")
        return rel[:, : self.levels], (rel[:, self.levels] if self.has_suffix else None)

    # ---- persistence -------------------------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, **asdict(self), "size": self.size, "tokens": self.tokens()}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "Vocabulary":
        data = json.loads(text)
        if data.get("format") != FORMAT:
            raise VocabError(f"not a sid_spark vocabulary (format {data.get('format')!r})")
        vocab = cls(int(data["levels"]), int(data["codebook_size"]), int(data["suffix_size"]), int(data["offset"]))
        if data.get("tokens") is not None and data["tokens"] != vocab.tokens():
            raise VocabError("vocabulary file: the token list does not match its header (edited by hand?)")
        return vocab

    def save(self, path: str) -> None:
        """Write the vocabulary file (any Hadoop filesystem: through sid_spark.storage)."""
        from . import storage

        storage.write_text(str(path), self.to_json())

    @classmethod
    def load(cls, path: str) -> "Vocabulary":
        from . import storage

        text = storage.read_text(str(path))
        if text is None:
            raise VocabError(f"vocabulary file {str(path)!r} does not exist")
        return cls.from_json(text)

    # ---- Spark -------------------------------------------------------------------------------------------
    def token_column(self, sid_col: str, suffix_col: Optional[str] = None):
        """SQL column: the SID as flat token ids, array<int> (no UDF: one `transform` over the array)."""
        from pyspark.sql import functions as F

        levels = F.transform(F.col(sid_col), lambda code, i: F.lit(self.offset) + i * self.codebook_size + code)
        if suffix_col is None:
            return levels
        suffix = F.lit(self.offset + self.levels * self.codebook_size) + F.col(suffix_col)
        return F.concat(levels, F.array(suffix.cast("int")))


def with_token_ids(df, vocab: Vocabulary, sid_col: str = "sid", suffix_col: Optional[str] = "sid_suffix",
                   out_col: str = "sid_tokens"):
    """`df` + `out_col` array<int> of flat token ids; `suffix_col` None (or absent from df) for SIDs without one."""
    if suffix_col is not None and suffix_col not in df.columns:
        suffix_col = None
    if (suffix_col is not None) != vocab.has_suffix:
        raise VocabError("the vocabulary's suffix level and the table's suffix column disagree")
    return df.withColumn(out_col, vocab.token_column(sid_col, suffix_col))
