"""A self-contained report.html for one evaluation: PNG charts (matplotlib, Agg backend) embedded as base64,
so the file opens offline in any browser. Takes the metrics.json content and the K-sized code counts; no Spark.
"""
from __future__ import annotations

import base64
import html
import io
import json
from typing import Dict, List, Optional, Sequence

import numpy as np

from .metrics import formulas as fm

# Chart ids, in page order; tests check that every one is embedded.
CHARTS = ("code_usage", "lorenz", "sid_sizes", "hourglass")


def _figure(width: float = 10.0, height: float = 3.6, ncols: int = 1):
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(width, height), squeeze=False)
    return fig, list(axes[0])


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def chart_code_usage(metrics: dict, code_counts: Sequence[np.ndarray]) -> str:
    """Items per code per level, codes sorted by size; the dashed line is the perfectly even N/K."""
    n_levels = max(1, len(code_counts))
    fig, axes = _figure(3.4 * min(n_levels, 4), 3.2, min(n_levels, 4))
    k = metrics["codebook_size"]
    for level, (ax, counts) in enumerate(zip(axes, code_counts)):
        c = np.sort(np.asarray(counts))[::-1]
        ax.bar(np.arange(len(c)), c, width=1.0, color="#4c72b0")
        ax.axhline(metrics["n_items"] / k, color="#c44e52", ls="--", lw=1, label="N/K")
        lv = metrics["levels"][level]
        ax.set_title(f"level {level + 1}: {lv['codes_used']}/{k} used, H={lv['entropy_norm']:.3f}", fontsize=9)
        ax.set_xlabel("code (sorted by size)")
        ax.set_ylabel("items")
        ax.legend(fontsize=8)
    return _png(fig)


def chart_lorenz(metrics: dict) -> str:
    """Lorenz curve of items per SID (SIDs in use, smallest first)."""
    sizes, mult = zip(*metrics["sid_size_histogram"]) if metrics.get("sid_size_histogram") else ((), ())
    x, y = fm.lorenz_from_histogram(sizes, mult)
    fig, (ax,) = _figure(4.6, 4.2)
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="equality")
    ax.plot(x, y, color="#4c72b0", lw=2, label=f"SIDs (Gini {metrics['sid_gini']:.3f})")
    ax.fill_between(x, y, x, color="#4c72b0", alpha=0.15)
    ax.set_xlabel("share of SIDs (smallest first)")
    ax.set_ylabel("share of items")
    ax.set_title("Lorenz curve of items per SID", fontsize=10)
    ax.legend(fontsize=8)
    return _png(fig)


def chart_sid_sizes(metrics: dict) -> str:
    """How many SIDs hold 1, 2, 3, ... items."""
    hist = metrics.get("sid_size_histogram") or [[1, 0]]
    sizes = np.array([h[0] for h in hist])
    mult = np.array([h[1] for h in hist])
    fig, (ax,) = _figure(5.4, 4.2)
    ax.bar(sizes, mult, width=0.8, color="#55a868")
    ax.set_yscale("log")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("items on the SID")
    ax.set_ylabel("number of SIDs (log)")
    ax.set_title(f"items per SID: collision rate {metrics['collision_rate']:.4f}, "
                 f"max {metrics['max_items_per_sid']}", fontsize=10)
    return _png(fig)


def chart_hourglass(metrics: dict) -> str:
    """Per level: share of items on the top 1% of codes, H(level | prefix) / log2 K, and the mean number of
    children per prefix as a share of K. An hourglass shows as a middle level that is concentrated (high top-1%
    share) and has little conditional entropy."""
    lv = metrics["levels"]
    x = np.arange(1, len(lv) + 1)
    k = metrics["codebook_size"]
    fig, axes = _figure(11, 3.4, 3)
    series = [("top 1% codes: share of items", [r["top1pct_share"] for r in lv], "#c44e52"),
              ("H(level | prefix) / log2 K", [r["cond_entropy_norm"] for r in lv], "#4c72b0"),
              ("mean children per prefix / K", [r["mean_children"] / k for r in lv], "#55a868")]
    for ax, (title, values, color) in zip(axes, series):
        ax.bar(x, values, color=color)
        for xi, v in zip(x, values):
            ax.text(xi, v, f"{v:.3f}", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(x)
        ax.set_xlabel("level")
        ax.set_ylim(0, max(1.0, max(values) * 1.15) if values else 1.0)
        ax.set_title(title, fontsize=10)
    return _png(fig)


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4f}"
    return html.escape(str(v))


def _table(headers: List[str], rows: List[list]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render(metrics: dict, code_counts: Sequence[np.ndarray], title: str = "Semantic ID quality report",
           sources: Optional[Dict[str, str]] = None) -> str:
    charts = {"code_usage": ("Code usage per level", chart_code_usage(metrics, code_counts)),
              "lorenz": ("Lorenz curve of items per SID", chart_lorenz(metrics)),
              "sid_sizes": ("Distribution of items per SID", chart_sid_sizes(metrics)),
              "hourglass": ("Hourglass per level", chart_hourglass(metrics))}
    summary = [["items", metrics["n_items"]], ["levels x codebook size",
                                              f"{metrics['n_levels']} x {metrics['codebook_size']}"],
               ["distinct SIDs", metrics.get("n_sids")], ["collision rate", metrics.get("collision_rate")],
               ["items sharing their SID", metrics.get("items_in_collision")],
               ["largest SID (items)", metrics.get("max_items_per_sid")], ["SID Gini", metrics.get("sid_gini")],
               ["relative reconstruction error", metrics.get("rel_mse")]]
    levels = [[r["level"], r["codes_used"], r["utilization"], r["dead_codes"], r["entropy_bits"],
               r["entropy_norm"], r["gini"], r["max_code_size"], r["min_code_size"], r["top1pct_share"],
               r["cond_entropy_bits"], r["mean_children"],
               (metrics.get("residual_rel") or [None] * len(metrics["levels"]))[r["level"] - 1]]
              for r in metrics["levels"]]
    parts = [f"<h1>{html.escape(title)}</h1>"]
    if sources:
        parts.append("<p class='src'>" + " · ".join(f"<b>{html.escape(k)}</b>: {html.escape(str(v))}"
                                                    for k, v in sources.items()) + "</p>")
    parts.append("<h2>Summary</h2>" + _table(["metric", "value"], summary))
    parts.append("<h2>Per level</h2>" + _table(
        ["level", "codes used", "utilization", "dead", "entropy (bits)", "entropy / log2 K", "Gini",
         "largest", "smallest", "top-1% share", "H(l | prefix)", "children / prefix", "residual (rel.)"], levels))
    hr, rc = metrics.get("hitrate"), metrics.get("knn_recall")
    if hr or rc:
        ks = sorted({int(k) for part in (hr or {}, ) for k in (part.get("embedding") or {})} |
                    {int(k) for k in ((rc or {}).get("recall") or {})})
        rows = []
        if hr:
            rows.append(["embedding HitRate"] + [hr["embedding"].get(str(k)) for k in ks])
            rows.append(["SID HitRate"] + [hr["sid"].get(str(k)) for k in ks])
        if rc:
            rows.append(["Recall of SID retrieval vs embedding kNN"] + [rc["recall"].get(str(k)) for k in ks])
        note = []
        if hr:
            note.append(f"HitRate on {hr['n_transitions']} last transitions ({hr['skipped']} skipped)")
        if rc:
            note.append(f"Recall on {rc['n_queries']} sampled queries")
        parts.append("<h2>Neighbourhoods</h2>" + _table(["measure"] + [f"@{k}" for k in ks], rows)
                     + f"<p class='src'>{html.escape('; '.join(note))}</p>")
    if metrics.get("drift"):
        parts.append(drift_section(metrics["drift"]))
    for cid in CHARTS:
        name, b64 = charts[cid]
        parts.append(f"<h2>{html.escape(name)}</h2><img id='chart-{cid}' alt='{html.escape(name)}' "
                     f"src='data:image/png;base64,{b64}'>")
    parts.append("<h2>metrics.json</h2><details><summary>show</summary><pre>"
                 + html.escape(json.dumps(metrics, indent=2, sort_keys=True, default=str)) + "</pre></details>")
    style = ("body{font-family:system-ui,sans-serif;margin:24px;max-width:1150px;color:#222}"
             "table{border-collapse:collapse;margin:8px 0;font-size:13px}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f2f2f2}"
             "td:first-child{text-align:left}img{max-width:100%;border:1px solid #eee}.src{color:#666;font-size:12px}"
             "pre{font-size:11px;background:#f8f8f8;padding:8px}")
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>" + html.escape(title) + "</title><style>"
            + style + "</style></head><body>" + "\n".join(parts) + "</body></html>")


def drift_section(drift: dict) -> str:
    """The "Drift of the last append" section, from the drift report `encode --existing` writes into the SID
    table's manifest (sid_spark.drift): per level the largest and smallest code against N/K and the new items'
    spread, then collisions, quantisation error, rejects and the retrain flag with its reasons."""
    levels = [[i + 1, lv["codes"], "exact" if lv["balanced"] else "none", lv["items"], lv["expected"],
               lv["largest"], lv["largest_vs_expected"], lv["smallest"], lv["smallest_vs_expected"],
               lv["new_items"], lv["new_codes_used"], lv["new_largest_share"]]
              for i, lv in enumerate(drift.get("levels", []))]
    flag = bool(drift.get("retrain_recommended"))
    rows = [["retrain recommended", "yes" if flag else "no"],
            ["new items' collision rate", drift.get("new_collision_rate")],
            ["published items' collision rate", drift.get("published_collision_rate")],
            ["new items' mean quantisation error", drift.get("new_error")],
            ["published items' mean quantisation error", drift.get("published_error")],
            ["error ratio (new / published)", drift.get("error_ratio")],
            ["rows rejected", drift.get("items_rejected")], ["reject rate", drift.get("reject_rate")],
            ["items the codebooks were trained on", drift.get("items_trained_on")],
            ["share of items not trained on", drift.get("unseen_fraction")]]
    rows += [[f"rejected: {reason}", n] for reason, n in (drift.get("reject_reasons") or {}).items()]
    reasons = drift.get("reasons") or []
    why = ("<p class='src'>retrain because: " + html.escape("; ".join(reasons)) + "</p>") if reasons else ""
    return ("<h2 id='drift'>Drift of the last append</h2>" + _table(["measure", "value"], rows) + why
            + _table(["level", "codes", "balance", "items", "N/K", "largest", "largest / (N/K)", "smallest",
                      "smallest / (N/K)", "new items", "codes the new items use", "new items' largest share"],
                     levels))


def write_report(path: str, metrics: dict, code_counts: Sequence[np.ndarray], **kwargs) -> str:
    """Render and write report.html to `path` (any Hadoop filesystem: through sid_spark.storage); returns the HTML."""
    from . import storage

    text = render(metrics, code_counts, **kwargs)
    storage.write_text(str(path), text)
    return text


def retrieval_section(rows: List[dict]) -> str:
    """The "Generative retrieval" section: one row per tokenizer and baseline of `sid-spark retrieval`'s
    retrieval.json (Recall/NDCG@k on the leave-one-out test users)."""
    keys = ["recall@5", "recall@10", "ndcg@5", "ndcg@10"]
    body = [[r.get("name"), *[r.get(k) for k in keys], r.get("parameters"), r.get("epochs"), r.get("seconds")]
            for r in rows]
    return "<h2>Generative retrieval</h2>" + _table(["model", *keys, "parameters", "epochs", "seconds"], body)
