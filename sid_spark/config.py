"""Job and tokenizer configuration: frozen dataclasses validated at start-up.

A bad value fails here, naming the key, not forty minutes into a job.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import yaml

BALANCE_MODES = ("exact", "none")
DEVICES = ("auto", "cpu", "cuda")
DEDUP_MODES = ("none", "suffix", "reassign")
MAX_CODEBOOK_SIZE = 16384


class ConfigError(ValueError):
    """A configuration key is unknown or has a bad value."""


@dataclass(frozen=True)
class TokenizerConfig:
    id_col: str = "item_id"
    vector_col: str = "embedding"
    sid_col: str = "sid"
    levels: int = 3
    # Codes per level K: one int, or a list with one size per level (each 2..MAX_CODEBOOK_SIZE).
    codebook_size: Any = 256
    seed: int = 42
    # Rows per mini-batch; a sample smaller than this trains by full-batch Lloyd.
    batch_size: int = 65536
    # Rows drawn (by a hash of the id) to train on; the whole catalog is still encoded.
    sample_size: int = 1_000_000
    # Rows per level for the k-means++ seeding, as a multiple of codebook_size.
    init_factor: int = 50
    max_iter: int = 30
    tol: float = 1e-4
    device: str = "auto"
    # "exact" (every code of every level holds N/K items, +-1) or "none"; a list gives one mode per level.
    balance: Any = "exact"
    # Upper bound on repair rounds per level; leftovers are then placed by a single global ranking pass.
    balance_repair_rounds: int = 16
    # Iterations per balanced level after its greedy warm-up, each slot's rows assigned exactly balanced (every code
    # m/K +-1, as the encode does to the catalog) before the centres move to their means (train.fit_level).
    balance_exact_steps: int = 16
    dedup: str = "none"
    sid_capacity: int = 1
    # Rows per torch GEMM block: fixed so that every row sees the same kernel whatever the partitioning.
    block_rows: int = 4096
    arrow_batch_rows: int = 16384
    # Largest share of the rows read that may be rejected; above it the job stops (exit 2) and keeps the previous
    # output (a catalog of the wrong dimension, what an embedding-model change produces, is 100% rejected).
    max_reject_share: float = 0.5

    def __post_init__(self) -> None:
        def need(cond: bool, key: str, msg: str) -> None:
            if not cond:
                raise ConfigError(f"config key '{key}': {msg} (got {getattr(self, key)!r})")

        for key in ("id_col", "vector_col", "sid_col"):
            need(isinstance(getattr(self, key), str) and getattr(self, key) != "", key, "must be a non-empty string")
        for key in ("levels", "batch_size", "sample_size", "init_factor", "max_iter",
                    "block_rows", "arrow_batch_rows", "sid_capacity"):
            v = getattr(self, key)
            need(isinstance(v, int) and not isinstance(v, bool) and v >= 1, key, "must be an integer >= 1")
        need(isinstance(self.seed, int) and not isinstance(self.seed, bool) and self.seed >= 0, "seed",
             "must be an integer >= 0")
        sizes = list(self.codebook_size) if isinstance(self.codebook_size, (list, tuple)) else [self.codebook_size]
        need(len(sizes) >= 1 and all(isinstance(v, int) and not isinstance(v, bool) and 2 <= v <= MAX_CODEBOOK_SIZE
                                     for v in sizes), "codebook_size",
             f"must be an integer in [2, {MAX_CODEBOOK_SIZE}] or a list of them, one per level")
        if isinstance(self.codebook_size, (list, tuple)):
            need(len(sizes) == self.levels, "codebook_size",
                 f"a list must have one size per level ({self.levels})")
            object.__setattr__(self, "codebook_size", tuple(sizes))
        need(isinstance(self.tol, (int, float)) and self.tol >= 0, "tol", "must be a number >= 0")
        need(isinstance(self.max_reject_share, (int, float)) and not isinstance(self.max_reject_share, bool)
             and 0 <= self.max_reject_share <= 1, "max_reject_share", "must be a number in [0, 1]")
        need(self.device in DEVICES, "device", f"must be one of {DEVICES}")
        need(self.dedup in DEDUP_MODES, "dedup", f"must be one of {DEDUP_MODES}")
        for key in ("balance_repair_rounds", "balance_exact_steps"):
            v = getattr(self, key)
            need(isinstance(v, int) and not isinstance(v, bool) and v >= 0, key, "must be an integer >= 0")
        modes = self.balance if isinstance(self.balance, (list, tuple)) else [self.balance]
        need(all(m in BALANCE_MODES for m in modes), "balance",
             f"must be one of {BALANCE_MODES} or a list of them, one per level")
        if isinstance(self.balance, (list, tuple)):
            need(len(self.balance) == self.levels, "balance", f"a list must have one mode per level ({self.levels})")
            object.__setattr__(self, "balance", tuple(self.balance))

    def codebook_size_for(self, level: int) -> int:
        """K of `level` (0-based)."""
        return self.codebook_size[level] if isinstance(self.codebook_size, tuple) else self.codebook_size

    @property
    def codebook_sizes(self) -> tuple:
        """K of every level."""
        return tuple(self.codebook_size_for(level) for level in range(self.levels))

    def balance_for(self, level: int) -> str:
        """Balance mode of `level` (0-based)."""
        return self.balance[level] if isinstance(self.balance, tuple) else self.balance

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if isinstance(d["balance"], tuple):
            d["balance"] = list(d["balance"])
        if isinstance(d["codebook_size"], tuple):
            d["codebook_size"] = list(d["codebook_size"])
        return d

    def replace(self, **changes: Any) -> "TokenizerConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "TokenizerConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown config key '{unknown[0]}' (known keys: {', '.join(sorted(known))})")
        return cls(**dict(values))


def parse_value(text: str) -> Any:
    """A `--set key=value` value, read as YAML so numbers, booleans and lists come out typed. `1e-3` is a number
    too (YAML 1.1, which PyYAML reads, wants `1.0e-3`)."""
    value = yaml.safe_load(text) if text != "" else ""
    if isinstance(value, str) and _EXPONENT.fullmatch(value.strip()):
        return float(value)
    return value


_EXPONENT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _split_pair(pair: str) -> tuple[str, Any]:
    key, sep, value = pair.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects key=value, got {pair!r}")
    return key.strip(), parse_value(value)


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """The one `--set` grammar: `key=value`, the value read as YAML (see parse_value)."""
    return dict(_split_pair(pair) for pair in pairs or [])


def split_sections(pairs: list[str] | None, sections) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """`--set <section>.<key>=value` for a known section (an encoder's name, `metrics`, `retrieval`, `encoder`)
    -> {section: {key: value}}; every other pair is returned as it came, for parse_overrides."""
    per: dict[str, dict[str, Any]] = {}
    rest = []
    for pair in pairs or []:
        key, sep, _ = pair.partition("=")
        name, dot, sub = key.strip().partition(".")
        if sep and dot and sub and name in sections:
            k, v = _split_pair(pair)
            per.setdefault(name, {})[k.partition(".")[2]] = v
        else:
            rest.append(pair)
    return per, rest


def has_scheme(path: str | Path | None) -> bool:
    """`hdfs:///conf/x.yaml`, `viewfs://c/x.yaml`, `file:/x.yaml`: a URI a Hadoop FileSystem resolves."""
    return bool(path) and re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:/", str(path)) is not None


def load_config_file(path: str | Path | None) -> dict[str, Any]:
    """The YAML mapping at `path`. A URI (`hdfs:///conf/train.yaml`, any scheme Spark reaches) is read through
    Hadoop's FileSystem of the session (`cli.main` starts it first); a plain path is a file on the driver's disk
    (a checkout's conf/, or what `spark-submit --files` ships), not the cluster's default filesystem."""
    if path is None:
        return {}
    if has_scheme(path):
        from . import storage

        try:
            text = storage.read_text(str(path))
        except Exception as e:  # py4j: no filesystem for the scheme, permission denied
            raise ConfigError(f"config file {str(path)!r} cannot be read ({str(e).splitlines()[0][:200]})") from None
        if text is None:
            raise ConfigError(f"config file {str(path)!r} does not exist")
    else:
        p = Path(path)  # local-ok: a scheme-less --config is a file on the driver's disk
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist")
        text = p.read_text()
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of key: value")
    return data


@dataclass(frozen=True)
class JobSettings:
    """Everything a job reads from its YAML file and --set overrides, split into the tokenizer part and the rest."""

    tokenizer: TokenizerConfig
    extra: dict = field(default_factory=dict)


def resolve(config_path: str | None, overrides: list[str] | None, job_keys: Mapping[str, Any] = ()) -> JobSettings:
    """Merge file and overrides; keys in `job_keys` (with their defaults) belong to the job, the rest to the tokenizer."""
    merged = {**load_config_file(config_path), **parse_overrides(overrides)}
    job_defaults = dict(job_keys)
    extra = {k: merged.pop(k) for k in list(merged) if k in job_defaults}
    return JobSettings(TokenizerConfig.from_dict(merged), {**job_defaults, **extra})
