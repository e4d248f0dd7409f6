"""The seed's Table 1, measured: every encoder and residual k-means (unbalanced and balanced) on one catalog at
comparable token budgets, each scored by the same metrics, rendered as comparison.md and comparison.html.

    rows = run_comparison(spark, df, interactions_df=seqs, encoders=ALL, cfg=TokenizerConfig(...))
"""
from __future__ import annotations

import html
import json
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession

from .config import ConfigError, TokenizerConfig
from .encoder_tokenizer import EncoderTokenizer
from .metrics import evaluate
from .metrics.spark_metrics import _reconstruction
from .spark.encode_generic import reconstruction_error
from .spark.prepare import VEC, Prepared, prepare
from .tokenizer import ResidualKMeansTokenizer

log = logging.getLogger("sid_spark.compare")

# Every entry spends 3 tokens of 256 values (24 bits) except VQ-VAE, which by definition has one codebook.
DEFAULT_SPECS: Dict[str, dict] = {
    "rkmeans": {"balance": "none"},
    "rkmeans_balanced": {"balance": "exact"},
    "vqvae": {"codebook_size": 256},
    "rqvae": {"levels": 3, "codebook_size": 256, "hidden": [512, 256, 128], "latent": 32},
    "fsq": {"levels": [[8, 8, 4], [8, 8, 4], [8, 8, 4]], "hidden": [512, 256, 128]},
    "rqopq": {"rk_levels": 1, "codebook_size": 256, "opq_subspaces": 2, "opq_codebook_size": 256},
    "opmq": {"experts": 3, "subspace_dim": 8, "codebook_size": 256, "hidden": [512, 256, 128], "latent": 32},
    "simhash": {"tokens": 3, "bits": 8},
}
ALL = tuple(DEFAULT_SPECS)
_NEURAL = ("vqvae", "rqvae", "fsq", "opmq")


@dataclass
class Row:
    name: str
    tokens: str = ""
    rel_error: Optional[float] = None
    utilization: List[float] = field(default_factory=list)
    entropy_bits: List[float] = field(default_factory=list)
    collision_rate: Optional[float] = None
    sid_gini: Optional[float] = None
    hitrate_10: Optional[float] = None
    train_seconds: Optional[float] = None
    encode_items_per_s: Optional[float] = None
    n_items: int = 0
    error: str = ""
    extra: dict = field(default_factory=dict)
    retrieval_recall_10: Optional[float] = None  # generative retriever on this tokenizer's SIDs (opt-in)
    retrieval_ndcg_10: Optional[float] = None


def parse_encoders(text: str | Sequence[str]) -> List[str]:
    names = list(ALL) if text in ("all", ["all"], ("all",)) else (
        [t.strip() for t in text.split(",") if t.strip()] if isinstance(text, str) else list(text))
    unknown = [n for n in names if n not in DEFAULT_SPECS]
    if unknown:
        raise ConfigError(f"unknown encoder {unknown[0]!r} in --encoders (known: all, {', '.join(ALL)})")
    return names


def spec_for(name: str, cfg: TokenizerConfig, overrides: Optional[dict] = None, epochs: Optional[int] = None) -> dict:
    spec = dict(DEFAULT_SPECS[name])
    if name in _NEURAL and epochs is not None:
        spec["epochs"] = epochs
    spec.update((overrides or {}).get(name, {}))
    if not name.startswith("rkmeans"):
        spec.setdefault("seed", cfg.seed)
    return spec


def run_comparison(spark: SparkSession, df: DataFrame, cfg: TokenizerConfig,
                   encoders: Sequence[str] = ALL, interactions_df: Optional[DataFrame] = None,
                   overrides: Optional[dict] = None, epochs: Optional[int] = None,
                   metrics_options: Optional[dict] = None, retrieval: Optional[dict] = None) -> List[Row]:
    """One Row per encoder; an encoder that fails gets a row with its error, and the others still run.

    `retrieval` (RetrievalConfig keys, {} for the defaults) with `interactions_df` adds the generative-retrieval
    column: one leave-one-out split for every encoder, and the same retriever budget trained on each one's SIDs."""
    prepared = prepare(df, cfg)
    prepared.valid.persist(StorageLevel.MEMORY_AND_DISK)
    rows = []
    scorer = RetrievalScorer(interactions_df, cfg, retrieval) \
        if retrieval is not None and interactions_df is not None else None
    try:
        for name in encoders:
            log.info("compare: %s", name)
            try:
                rows.append(_one(spark, name, prepared, cfg, spec_for(name, cfg, overrides, epochs),
                                 interactions_df, metrics_options or {}, scorer))
                # A long comparison's finished rows survive in the log even if a later encoder kills the job.
                log.info("compare row: %s", json.dumps(rows[-1].__dict__, default=str, sort_keys=True))
            except Exception as e:  # one failing encoder must not hide the others' numbers
                log.exception("compare: %s failed", name)
                rows.append(Row(name=name, error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"))
    finally:
        prepared.valid.unpersist()
    return rows


class RetrievalScorer:
    """The generative-retrieval column: the leave-one-out split is built once; every tokenizer's SIDs get a
    suffix that makes them unique (the item's rank inside its SID by id hash: TIGER's scheme, the order carries
    no meaning) and the same retriever budget (sid_spark.retrieval)."""

    def __init__(self, interactions_df: DataFrame, cfg: TokenizerConfig, options: dict):
        from .retrieval import spark as rs
        from .retrieval.config import RetrievalConfig

        opts = dict(options)
        self.user_col, self.items_col = opts.pop("user_col", "user_id"), opts.pop("items_col", "item_ids")
        self.rcfg, self.cfg = RetrievalConfig.from_dict(opts), cfg
        examples = rs.leave_one_out(interactions_df, self.user_col, self.items_col, self.rcfg.max_history)
        self.splits = rs.collect_splits(examples, self.rcfg.max_history, self.rcfg.max_examples,
                                        self.rcfg.max_eval_users)

    def score(self, sids: DataFrame, codebook_size) -> dict:
        from pyspark.sql import Window
        from pyspark.sql import functions as F

        from .retrieval import spark as rs
        from .retrieval.train import fit_and_score

        id_col, sid_col = self.cfg.id_col, self.cfg.sid_col
        by_sid = Window.partitionBy(sid_col).orderBy(F.xxhash64(id_col), id_col)
        unique = sids.select(id_col, sid_col, (F.row_number().over(by_sid) - 1).alias("_suffix"))
        catalog = rs.collect_catalog(unique, id_col, sid_col, "_suffix", codebook_size)
        row = fit_and_score(self.rcfg, catalog, self.splits, seed=self.cfg.seed, device=self.cfg.device)
        row.pop("_ranked")
        return row


def _one(spark, name: str, prepared: Prepared, cfg: TokenizerConfig, spec: dict, interactions_df,
         metrics_options: dict, scorer: Optional[RetrievalScorer] = None) -> Row:
    t0 = time.time()
    if name.startswith("rkmeans"):
        model = ResidualKMeansTokenizer(cfg, **spec).fit_prepared(prepared)
        sizes = [int(c.shape[0]) for c in model.codebooks]
    else:
        model = EncoderTokenizer(name, cfg, **spec).fit_prepared(prepared)
        sizes = list(model.encoder.token_sizes)
    train_s = time.time() - t0
    sids = model.encode_prepared(prepared).sids.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        t1 = time.time()
        n = sids.count()
        encode_s = time.time() - t1
        if name.startswith("rkmeans"):
            rel = (_reconstruction(sids, prepared.valid, cfg.id_col, cfg.sid_col, model.codebooks, model.dim)
                   or [math.nan])[-1]
        else:
            rel = reconstruction_error(prepared.valid, model.encoder, cfg.device)
        row = Row(name=name, tokens=" x ".join(_runs(sizes)), rel_error=rel, train_seconds=train_s,
                  encode_items_per_s=n / encode_s if encode_s > 0 else None, n_items=n)
        _score(spark, row, sids, prepared, cfg, max(sizes), interactions_df, metrics_options)
        if scorer is not None:
            got = scorer.score(sids, max(sizes))
            row.retrieval_recall_10, row.retrieval_ndcg_10 = got.get("recall@10"), got.get("ndcg@10")
            row.extra["retrieval"] = {k: v for k, v in got.items() if not k.startswith("_")}
        return row
    finally:
        sids.unpersist()


def _runs(sizes: Sequence[int]) -> List[str]:
    out, i = [], 0
    while i < len(sizes):
        j = i
        while j < len(sizes) and sizes[j] == sizes[i]:
            j += 1
        out.append(f"{j - i}x{sizes[i]}" if j - i > 1 else str(sizes[i]))
        i = j
    return out


def _score(spark, row: Row, sids: DataFrame, prepared: Prepared, cfg: TokenizerConfig, k: int,
           interactions_df, options: dict) -> None:
    """Usage, entropy, collisions, SID Gini and HitRate@10 (SID ranking) from sid_spark.metrics.evaluate."""
    vectors = prepared.valid.select(cfg.id_col, VEC) if interactions_df is not None else None
    m = evaluate(spark, sids, sid_col=cfg.sid_col, id_col=cfg.id_col, codebook_size=k,
                 embeddings_df=vectors, vector_col=VEC, interactions_df=interactions_df,
                 **{"hit_ks": (10,), **options})
    levels = m.get("levels", [])
    row.utilization = [lv["utilization"] for lv in levels]
    row.entropy_bits = [lv["entropy_bits"] for lv in levels]
    row.collision_rate = m.get("collision_rate")
    row.sid_gini = m.get("sid_gini")
    hr = m.get("hitrate") or {}
    row.hitrate_10 = (hr.get("sid") or {}).get("10")
    row.extra = {"gini_per_level": [lv.get("gini") for lv in levels],
                 "cond_entropy_bits": [lv.get("cond_entropy_bits") for lv in levels],
                 "hitrate_embedding_10": (hr.get("embedding") or {}).get("10"),
                 "n_sids": m.get("n_sids")}


# ---- rendering ---------------------------------------------------------------------------------------------
HEADER = ["encoder", "tokens", "rel. recon. error", "utilization / level", "entropy bits / level",
          "collision rate", "SID Gini", "HitRate@10", "train s", "encode items/s"]


def _f(v, fmt="{:.4f}") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return fmt.format(v)


RETRIEVAL_HEADER = ["retrieval R@10", "retrieval N@10"]


def _header(rows: Sequence[Row]) -> List[str]:
    """HEADER, plus the retrieval columns when any row was scored by the retriever."""
    scored = any(r.retrieval_recall_10 is not None for r in rows)
    return HEADER[:-2] + (RETRIEVAL_HEADER if scored else []) + HEADER[-2:]


def _cells(r: Row, header: Sequence[str] = HEADER) -> List[str]:
    if r.error:
        return [r.name, r.tokens, f"failed: {r.error}"] + [""] * (len(header) - 3)
    retrieval = [_f(r.retrieval_recall_10), _f(r.retrieval_ndcg_10)] if len(header) > len(HEADER) else []
    return [r.name, r.tokens, _f(r.rel_error), " / ".join(_f(u, "{:.3f}") for u in r.utilization),
            " / ".join(_f(h, "{:.2f}") for h in r.entropy_bits), _f(r.collision_rate), _f(r.sid_gini),
            _f(r.hitrate_10), *retrieval, _f(r.train_seconds, "{:.1f}"), _f(r.encode_items_per_s, "{:,.0f}")]


def to_markdown(rows: Sequence[Row], title: str = "Semantic-ID encoders compared") -> str:
    header = _header(rows)
    lines = [f"# {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in _cells(r, header)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def to_html(rows: Sequence[Row], title: str = "Semantic-ID encoders compared") -> str:
    header = _header(rows)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in _cells(r, header)) + "</tr>\n"
                   for r in rows)
    return (f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            "<style>table{border-collapse:collapse;font-family:sans-serif}td,th{border:1px solid #ccc;"
            "padding:4px 8px;text-align:right}td:first-child{text-align:left}</style></head>\n"
            f"<body><h1>{html.escape(title)}</h1>\n<table><thead><tr>{head}</tr></thead>\n<tbody>\n{body}"
            "</tbody></table></body></html>\n")
