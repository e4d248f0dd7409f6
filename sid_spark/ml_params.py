"""pyspark.ml Params for the tokenizers, declared once from `TokenizerConfig`.

Every config key is a typed `Param` named in camelCase (`codebook_size` -> `codebookSize`); the three column keys
take pyspark.ml's names (`id_col` -> `idCol`, `vector_col` -> `inputCol`, `sid_col` -> `outputCol`). Defaults are
the dataclass defaults, so the YAML files, the CLI's `--set` keys and the Params can never disagree. A set of
values is validated by building the `TokenizerConfig`; the error names the Param and its config key.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Dict

from pyspark.ml.param import Param, Params, TypeConverters

from .config import ConfigError, TokenizerConfig

# pyspark.ml's own names for the column keys; every other key is its camelCase spelling.
_RENAMED = {"id_col": "idCol", "vector_col": "inputCol", "sid_col": "outputCol"}
# Older spellings the constructors keep accepting.
_ALIASES = {"vectorCol": "vector_col", "sidCol": "sid_col"}

_DOCS = {
    "id_col": "item id column (its name and type are kept in the output)",
    "vector_col": "embedding column: array<float>, array<double> or a pyspark.ml Vector",
    "sid_col": "output column: the SID, array<int> of one code per level",
    "levels": "number of residual levels L",
    "codebook_size": "codes per level K: one int, or a list with one size per level",
    "seed": "seed of every random choice (sample, seeding, tie-break hash)",
    "batch_size": "rows per mini-batch; a sample no larger trains by full-batch Lloyd",
    "sample_size": "rows (chosen by id hash) to train on; the whole catalog is still encoded",
    "init_factor": "k-means++ seeding rows per level as a multiple of K",
    "max_iter": "mini-batch iterations per level",
    "tol": "stop a level when the relative centroid shift falls below tol",
    "device": "auto (the GPU Spark assigned to the task, else CPU), cpu or cuda",
    "balance": "exact (every code holds N/K +-1) or none, or a list with one mode per level",
    "balance_repair_rounds": "bound on repair rounds per balanced level",
    "balance_exact_steps": "iterations per balanced level, after a greedy warm-up, under the exact balanced assignment",
    "dedup": "collision resolution: none, suffix or reassign",
    "sid_capacity": "items one SID may keep before reassign moves the others",
    "block_rows": "rows per GEMM block (fixed, so SIDs do not depend on partitioning)",
    "arrow_batch_rows": "rows per Arrow batch handed to Python",
}


def param_name(key: str) -> str:
    """The Param name of config key `key`."""
    return _RENAMED.get(key) or re.sub(r"_([a-z])", lambda m: m.group(1).upper(), key)


def _identity(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _converter(f: dataclasses.Field):
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
    return {"int": TypeConverters.toInt, "float": TypeConverters.toFloat,
            "str": TypeConverters.toString}.get(kind, _identity)


CONFIG_FIELDS = [f for f in dataclasses.fields(TokenizerConfig)]
KEY_OF_PARAM: Dict[str, str] = {param_name(f.name): f.name for f in CONFIG_FIELDS}


def config_key(name: str) -> str:
    """A constructor keyword (Param name, old alias or config key) as its config key."""
    if name in KEY_OF_PARAM:
        return KEY_OF_PARAM[name]
    return _ALIASES.get(name, name)


class _ConfigParams(Params):
    """Params that mirror TokenizerConfig keys, plus `config` (the validated TokenizerConfig of the values)."""

    # The config keys that are Params of this class (None: all of them).
    _config_keys = None

    def _param_fields(self):
        """The config fields that are Params here: a subclass may answer a key from its state instead, by
        defining a property of that name (a model's `levels` is the number of its codebooks)."""
        return [f for f in CONFIG_FIELDS if (self._config_keys is None or f.name in self._config_keys)
                and not isinstance(getattr(type(self), param_name(f.name), None), property)]

    def _declare_defaults(self) -> None:
        defaults = TokenizerConfig()
        self._setDefault(**{param_name(f.name): _identity(getattr(defaults, f.name)) for f in self._param_fields()})

    def _set_config_values(self, values: Dict[str, Any]) -> None:
        """Set Params from config keys (or Param names), then validate the whole set."""
        unknown = sorted(k for k in values if config_key(k) not in {f.name for f in CONFIG_FIELDS})
        if unknown:
            raise ConfigError(f"unknown Param '{unknown[0]}' (known: {', '.join(sorted(KEY_OF_PARAM))})")
        own = {f.name for f in self._param_fields()}
        for k, v in values.items():
            if config_key(k) not in own:
                continue
            name = param_name(config_key(k))
            try:
                self._set(**{name: _identity(v)})
            except TypeError as e:
                raise ConfigError(f"Param '{name}' (config key '{config_key(k)}'): {e}") from None
        self._validate()

    def _validate(self) -> TokenizerConfig:
        try:
            return TokenizerConfig.from_dict(self._config_values())
        except ConfigError as e:
            m = re.match(r"config key '(\w+)'", str(e))
            if m:
                raise ConfigError(f"Param '{param_name(m.group(1))}' ({e})") from None
            raise

    def _config_values(self) -> Dict[str, Any]:
        values = {f.name: self.getOrDefault(param_name(f.name)) for f in self._param_fields()}
        values.update({f.name: getattr(self, param_name(f.name)) for f in CONFIG_FIELDS
                       if f.name not in values and isinstance(getattr(type(self), param_name(f.name), None), property)})
        return values

    @property
    def config(self) -> TokenizerConfig:
        """The Params' values as a validated TokenizerConfig (what the execution layer consumes)."""
        return self._validate()

    def getInputCol(self) -> str:
        return self.getOrDefault("inputCol")

    def getOutputCol(self) -> str:
        return self.getOrDefault("outputCol")

    def getIdCol(self) -> str:
        return self.getOrDefault("idCol")

    def setInputCol(self, value: str):
        return self._set_and_check(inputCol=value)

    def setOutputCol(self, value: str):
        return self._set_and_check(outputCol=value)

    def setIdCol(self, value: str):
        return self._set_and_check(idCol=value)

    def _set_and_check(self, **kwargs):
        self._set_config_values(kwargs)
        return self


def _add_params(cls, keys=None) -> None:
    for f in CONFIG_FIELDS:
        if keys is not None and f.name not in keys:
            continue
        name = param_name(f.name)
        doc = _DOCS.get(f.name, f"config key '{f.name}'") + f" (config key '{f.name}')"
        setattr(cls, name, Param(Params._dummy(), name, doc, typeConverter=_converter(f)))
        getter = "get" + name[0].upper() + name[1:]
        setter = "set" + name[0].upper() + name[1:]
        if not hasattr(cls, getter):
            setattr(cls, getter, lambda self, _n=name: self.getOrDefault(_n))
        if not hasattr(cls, setter):
            setattr(cls, setter, lambda self, value, _n=name: self._set_and_check(**{_n: value}))


class HasTokenizerParams(_ConfigParams):
    """Mixin: one Param per TokenizerConfig key."""


_add_params(HasTokenizerParams)

# The keys the other encoders use: columns, sampling, device and seed (the k-means keys mean nothing there).
ENCODER_JOB_KEYS = ("id_col", "vector_col", "sid_col", "seed", "sample_size", "device", "block_rows",
                    "arrow_batch_rows")


class HasEncoderJobParams(_ConfigParams):
    """Mixin of the other encoders' stages: the job keys as Params, plus `encoderName` and `encoderParams`."""

    _config_keys = ENCODER_JOB_KEYS
    encoderName = Param(Params._dummy(), "encoderName", "encoder: vqvae, rqvae, fsq, rqopq, opmq or simhash",
                        typeConverter=TypeConverters.toString)
    encoderParams = Param(Params._dummy(), "encoderParams",
                          "the encoder's own keys (see sid_spark.encoders), a JSON-serialisable dict")

    def getEncoderName(self) -> str:
        return self.getOrDefault("encoderName")

    def getEncoderParams(self) -> dict:
        return dict(self.getOrDefault("encoderParams"))


_add_params(HasEncoderJobParams, ENCODER_JOB_KEYS)
