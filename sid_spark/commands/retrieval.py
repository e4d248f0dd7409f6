"""`sid-spark retrieval`: train a TIGER-style generative retriever on each SID table and score it against
popularity and embedding kNN on the same leave-one-out test users -> retrieval.json (+ retrieval.md, retrieval.html,
the serving export of every table), committed atomically."""
from __future__ import annotations

import json
import logging
import time
from dataclasses import fields

from ..cli import command, extra_args, require, session
from ..config import ConfigError, resolve

log = logging.getLogger("sid_spark.cli")

# Job keys (conf/*.yaml or --set): every RetrievalConfig field (None = the preset's value), the sequence columns,
# and whether to write the serving export. Every other key belongs to the tokenizer config (id_col, sid_col,
# vector_col, seed, device).
def _job_keys() -> dict:
    from ..retrieval.config import RetrievalConfig

    keys = {f.name: None for f in fields(RetrievalConfig)}
    keys.update({"user_col": "user_id", "items_col": "item_ids", "export": True})
    return keys


def parse_sids(text: str) -> list:
    """'a/sids,b/sids' or 'rk=a/sids,rkb=b/sids' -> [(name, path)]; the name defaults to the path's last part."""
    out = []
    for part in [p.strip() for p in (text or "").split(",") if p.strip()]:
        name, sep, path = part.partition("=")
        if not sep:
            path, name = part, part.rstrip("/").rsplit("/", 1)[-1]
        out.append((name.strip(), path.strip()))
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise ConfigError(f"--sids: two tables share the name {sorted(n for n in names if names.count(n) > 1)[0]!r} "
                          "(name them: name=path)")
    return out


def to_markdown(rows: list) -> str:
    head = "| model | recall@5 | recall@10 | ndcg@5 | ndcg@10 | parameters | epochs | seconds |"
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        f = lambda k: f"{r[k]:.4f}" if isinstance(r.get(k), float) else "-"  # noqa: E731
        lines.append(f"| {r['name']} | {f('recall@5')} | {f('recall@10')} | {f('ndcg@5')} | {f('ndcg@10')} | "
                     f"{r.get('parameters', '-')} | {r.get('epochs', '-')} | {r.get('seconds', '-')} |")
    return "\n".join(lines) + "\n"


@command("retrieval", "train a generative retriever on SID tables; Recall/NDCG@k vs popularity and kNN")
@extra_args((["--sids"], {"help": "SID table(s), comma-separated, optionally name=path"}),
            (["--interactions"], {"help": "user sequences: user id + item ids list, oldest first"}),
            (["--embeddings"], {"help": "catalog (id + embedding) for the embedding-kNN baseline"}))
def cmd_retrieval(args) -> dict:
    import numpy as np

    from ..retrieval import spark as rs
    from ..retrieval.baselines import embedding_knn, popularity_ranking
    from ..retrieval.config import RetrievalConfig
    from ..retrieval.metrics import ranking_metrics
    from ..report import retrieval_section
    from ..retrieval.train import fit_and_score
    from ..spark.sid_table import suffix_col_name
    from ..spark.io import commit_output, read_input, read_manifest, write_text

    require(args, "sids", "interactions", "output")
    tables = parse_sids(args.sids)
    settings = resolve(args.config, args.overrides, _job_keys())
    cfg, job = settings.tokenizer, settings.extra
    rcfg = RetrievalConfig.from_dict({k: v for k, v in job.items()
                                      if k not in ("user_col", "items_col", "export") and v is not None})
    spark = session(args, "retrieval")
    seqs = read_input(spark, args.interactions)
    kmax = max(rcfg.ks)
    t0 = time.time()
    examples = rs.leave_one_out(seqs, job["user_col"], job["items_col"], rcfg.max_history)
    splits = rs.collect_splits(examples, rcfg.max_history, rcfg.max_examples, rcfg.max_eval_users)
    test = splits["test"]
    log.info("examples: %s (%.1fs)", {k: len(v) for k, v in splits.items()}, time.time() - t0)

    rows = []
    ranked = popularity_ranking(*rs.popularity(seqs, job["items_col"], kmax), kmax)
    rows.append({"name": "popularity", "kind": "baseline", "test_users": len(test),
                 **ranking_metrics(np.tile(ranked, (len(test), 1)), test.target, rcfg.ks)})
    if args.embeddings:
        t1 = time.time()
        ids, emb = rs.collect_embeddings(read_input(spark, args.embeddings), cfg.id_col, cfg.vector_col)
        last = test.history[:, -1]
        rows.append({"name": "embedding_knn", "kind": "baseline", "test_users": len(test),
                     **ranking_metrics(embedding_knn(last, ids, emb, kmax), test.target, rcfg.ks),
                     "seconds": round(time.time() - t1, 2)})

    exports = {}
    for name, path in tables:
        sids = read_input(spark, path)
        manifest = read_manifest(spark, path) or {}
        id_col, sid_col = manifest.get("id_col", cfg.id_col), manifest.get("sid_col", cfg.sid_col)
        sfx = suffix_col_name(sid_col)
        catalog = rs.collect_catalog(sids, id_col, sid_col, sfx, manifest.get("codebook_size"))
        log.info("%s: %d items, %d SIDs of %d tokens; training", name, len(catalog.item_ids),
                 catalog.trie.n_leaves, catalog.width)
        row = fit_and_score(rcfg, catalog, splits, seed=cfg.seed, device=cfg.device)
        row.pop("_ranked")
        rows.append({"name": name, "kind": "generative", "sids": path, **row})
        log.info("%s: %s", name, {k: row[k] for k in ("recall@5", "recall@10", "ndcg@5", "ndcg@10", "seconds")})
        if job["export"]:
            exports[name] = rs.serving_export(sids, id_col, sid_col, sfx)

    def write(staging: str) -> dict:
        for name, (trie, lookup) in exports.items():
            trie.write.parquet(f"{staging}/{name}/trie")
            lookup.write.parquet(f"{staging}/{name}/lookup")
        write_text(spark, f"{staging}/retrieval.json", json.dumps(rows, indent=2, sort_keys=True, default=str))
        write_text(spark, f"{staging}/retrieval.md", to_markdown(rows))
        write_text(spark, f"{staging}/retrieval.html", "<!DOCTYPE html><html><head><meta charset='utf-8'>"
                   "<title>Generative retrieval</title></head><body>" + retrieval_section(rows) + "</body></html>")
        return {"kind": "retrieval", "sids": dict(tables), "interactions": args.interactions,
                "embeddings": args.embeddings, "config": rcfg.to_dict(), "seed": cfg.seed,
                "files": ["retrieval.json", "retrieval.md", "retrieval.html", *[f"{n}/trie" for n in exports],
                          *[f"{n}/lookup" for n in exports]],
                "seconds": round(time.time() - t0, 2)}

    manifest = commit_output(spark, args.output, write)
    print(to_markdown(rows))
    return {"output": args.output, "rows": [{k: r.get(k) for k in ("name", "recall@10", "ndcg@10")} for r in rows],
            "seconds": manifest["seconds"]}
