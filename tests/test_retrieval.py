"""Generative retrieval on SIDs: ranking metrics, leave-one-out split, trie, constrained beam search, determinism,
and a tiny end-to-end `sid-spark retrieval` run. Everything is toy-sized; torch runs on one thread."""
import json
import math
from collections import defaultdict

import numpy as np
import pytest
import torch

from sid_spark.config import ConfigError
from sid_spark.retrieval.baselines import embedding_knn, popularity_ranking
from sid_spark.retrieval.beam import beam_search, leaves_to_items
from sid_spark.retrieval.config import RetrievalConfig
from sid_spark.retrieval.metrics import ndcg_at_k, ranking_metrics, recall_at_k, target_rank
from sid_spark.retrieval.model import history_tokens
from sid_spark.retrieval.train import Catalog, Split, build_model, fit_and_score
from sid_spark.retrieval.trie import SidTrie

TINY = dict(d_model=16, heads=2, encoder_layers=1, decoder_layers=1, mlp=32, dropout=0.1, train_batch=32,
            val_users=50, eval_batch=64, torch_threads=1)


# ---- metrics ---------------------------------------------------------------------------------------------------
def test_metrics_on_hand_computed_rankings():
    ranked = np.array([[3, 1, 2], [5, 6, 7], [9, 8, 0], [4, 4, 4]])
    target = np.array([1, 7, 4, 4])
    rank = target_rank(ranked, target)
    assert rank.tolist() == [1, 2, -1, 0]  # the repeated 4 counts once, at its first place
    assert recall_at_k(rank, 1) == pytest.approx(1 / 4)
    assert recall_at_k(rank, 2) == pytest.approx(2 / 4)
    assert recall_at_k(rank, 3) == pytest.approx(3 / 4)
    assert ndcg_at_k(rank, 1) == pytest.approx(1 / 4)
    assert ndcg_at_k(rank, 3) == pytest.approx((1 / math.log2(3) + 1 / math.log2(4) + 1.0) / 4)
    m = ranking_metrics(ranked, target, (2,))
    assert m == {"recall@2": pytest.approx(0.5), "ndcg@2": pytest.approx((1 / math.log2(3) + 1) / 4)}


def test_baselines_by_hand():
    assert popularity_ranking([5, 3, 9, 1], [2, 7, 2, 1], 3).tolist() == [3, 5, 9]  # tie 5/9 by id
    e = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.7, 0.7]], np.float32)
    ids = np.array([10, 11, 12, 13])
    out = embedding_knn(np.array([10, 12, 99]), ids, e, 2)
    assert out.tolist() == [[11, 13], [13, 11], [-1, -1]]


def test_config_presets_and_bad_values():
    t = RetrievalConfig.from_dict({"preset": "tiger"})
    assert (t.encoder_layers, t.decoder_layers, t.heads, t.d_model, t.mlp, t.dropout) == (4, 4, 6, 128, 1024, 0.1)
    assert t.model_dim % t.heads == 0 and t.model_dim >= 128
    assert RetrievalConfig.from_dict({"preset": "tiger", "epochs": 3}).epochs == 3
    with pytest.raises(ConfigError, match="beam_width"):
        RetrievalConfig(beam_width=5)
    with pytest.raises(ConfigError, match="unknown retrieval key 'layers'"):
        RetrievalConfig.from_dict({"layers": 2})


# ---- trie -------------------------------------------------------------------------------------------------------
def brute_prefixes(codes):
    table = defaultdict(set)
    for row in codes.tolist():
        for d in range(len(row)):
            table[tuple(row[:d])].add(row[d])
    return {k: tuple(sorted(v)) for k, v in table.items()}


def toy_codes(rng, n=200, levels=3, k=5, suffix=True):
    sid = rng.integers(0, k, (n, levels))
    if not suffix:
        return sid, None
    _, inv = np.unique(sid, axis=0, return_inverse=True)
    suf = np.zeros(n, np.int64)
    seen = defaultdict(int)
    for i, g in enumerate(inv.reshape(-1).tolist()):
        suf[i] = seen[g]
        seen[g] += 1
    return sid, suf


def test_trie_equals_brute_force_build():
    rng = np.random.default_rng(3)
    sid, suf = toy_codes(rng)
    codes = np.concatenate([sid, suf[:, None]], 1)
    items = rng.permutation(1000)[:len(codes)]
    trie = SidTrie(codes, items, [5, 5, 5, int(suf.max()) + 1])
    assert trie.prefix_table() == brute_prefixes(codes)
    for row, item in zip(codes.tolist(), items.tolist()):
        assert trie.lookup(row).tolist() == [item]
    assert trie.allowed((9,)).size == 0 and trie.lookup([9, 9, 9, 9]).size == 0
    # without suffix: a SID names every item that has it, in id order
    t2 = SidTrie(sid, items, [5, 5, 5])
    for row in np.unique(sid, axis=0).tolist():
        assert t2.lookup(row).tolist() == sorted(items[(sid == row).all(1)].tolist())


def test_serving_export_equals_brute_force(spark):
    from sid_spark.retrieval.spark import serving_export

    rng = np.random.default_rng(4)
    sid, suf = toy_codes(rng, n=120)
    rows = [(int(i), [int(c) for c in s], int(x)) for i, s, x in zip(range(100, 220), sid, suf)]
    df = spark.createDataFrame(rows, "item_id long, sid array<int>, sid_suffix int").repartition(3)
    trie, lookup = serving_export(df)
    got = {tuple(r["prefix"]): tuple(r["allowed"]) for r in trie.collect()}
    assert got == brute_prefixes(np.concatenate([sid, suf[:, None]], 1))
    root = trie.where("depth = 0").collect()
    assert len(root) == 1 and root[0]["items"] == 120
    look = {(tuple(r["sid"]), r["suffix"]): list(r["item_ids"]) for r in lookup.collect()}
    assert look == {(tuple(s), x): [i] for i, s, x in rows}


# ---- constrained decoding ---------------------------------------------------------------------------------------
def test_constrained_decoding_only_emits_sids_of_the_table():
    torch.manual_seed(0)
    rng = np.random.default_rng(5)
    # 30 SIDs in a space of 8^3 = 512: an unconstrained decoder would almost always miss the table
    sid = rng.choice(512, 30, replace=False)
    sid = np.stack([sid // 64, (sid // 8) % 8, sid % 8], 1)
    cat = Catalog.from_sids(np.arange(30) + 7, sid, None, 8)
    cfg = RetrievalConfig(**TINY, beam_width=40)
    model = build_model(cfg, cat)
    hist = rng.integers(-1, 30, (16, 20))
    hist[:, -1] = rng.integers(0, 30, 16)
    hist = np.sort(hist, axis=1)  # pads (-1) on the left
    src = torch.from_numpy(history_tokens(hist, cat.tokens))
    leaves, scores = beam_search(model, src, cat.trie, cat.vocab, beam=40)
    valid = set(map(tuple, sid.tolist()))
    live = leaves >= 0
    assert live.sum(axis=1).tolist() == [30] * 16  # 40 beams, only 30 SIDs exist: the rest stay empty
    items = leaves_to_items(cat.trie, leaves, 40)
    for row in items:
        got = [int(i) for i in row if i >= 0]
        assert len(got) == len(set(got)) == 30
        assert all(tuple(sid[i - 7]) in valid for i in got)
    assert (np.diff(scores[:, :30], axis=1) <= 1e-6).all()  # best first
    assert np.isinf(scores[:, 30:]).all()


# ---- training ---------------------------------------------------------------------------------------------------
def toy_problem(seed=0, n_items=40, users=120):
    """Items 1..n in SID order; each user walks the catalog in steps of 1, so the next item is learnable."""
    rng = np.random.default_rng(seed)
    sid, suf = toy_codes(rng, n=n_items, levels=2, k=4)
    cat = Catalog.from_sids(np.arange(1, n_items + 1), sid, suf, 4)

    def split(n):
        start = rng.integers(1, n_items - 8, n)
        length = rng.integers(1, 6, n)
        h = np.full((n, 20), -1)
        for r in range(n):
            h[r, 20 - length[r]:] = np.arange(start[r], start[r] + length[r])
        return Split(h, start + length)

    return cat, {"train": split(users * 3), "val": split(users), "test": split(users)}


def test_fit_is_deterministic_with_a_seed():
    cat, splits = toy_problem()
    cfg = RetrievalConfig(**TINY, epochs=2)
    a = fit_and_score(cfg, cat, splits, seed=7, device="cpu")
    b = fit_and_score(cfg, cat, splits, seed=7, device="cpu")
    c = fit_and_score(cfg, cat, splits, seed=8, device="cpu")
    assert np.array_equal(a["_ranked"], b["_ranked"])
    assert a["train_loss"] == b["train_loss"] and a["recall@10"] == b["recall@10"]
    assert a["train_loss"] != c["train_loss"]
    assert a["epochs"] == 2 and a["parameters"] > 0 and a["test_users"] == 120
    ranked = a["_ranked"]
    assert ((ranked >= 1) & (ranked <= 40)).all()  # every decoded SID maps back to a catalog item
    assert all(len(set(r)) == len(r) for r in ranked.tolist())


# ---- Spark: split, end to end -----------------------------------------------------------------------------------
def test_leave_one_out_split_on_a_toy_log(spark):
    from sid_spark.retrieval.spark import collect_splits, leave_one_out, popularity

    seqs = spark.createDataFrame([(1, [10, 11, 12, 13, 14]), (2, [1, 2]), (3, [7]), (4, [5, 6, 5])],
                                 "user_id int, item_ids array<int>").repartition(2)
    ex = leave_one_out(seqs, max_history=2)
    got = sorted((r["user"], r["pos"], r["split"], list(r["history"]), r["target"]) for r in ex.collect())
    assert got == [(1, 1, "train", [10], 11), (1, 2, "train", [10, 11], 12), (1, 3, "val", [11, 12], 13),
                   (1, 4, "test", [12, 13], 14), (2, 1, "test", [1], 2), (4, 1, "val", [5], 6),
                   (4, 2, "test", [5, 6], 5)]
    splits = collect_splits(ex, 2, max_examples=10, max_eval_users=10)
    assert splits["test"].history.tolist() == [[12, 13], [-1, 1], [5, 6]]
    assert splits["test"].target.tolist() == [14, 2, 5]
    assert splits["val"].history.tolist() == [[11, 12], [-1, 5]]
    bounded = collect_splits(ex, 2, max_examples=1, max_eval_users=2)
    assert len(bounded["train"]) == 1 and len(bounded["test"]) == 2
    # popularity counts only the training part (all but the last two items): 10, 11, 12, 5
    items, counts = popularity(seqs, k=3)
    assert items.tolist() == [5, 10, 11] and counts.tolist() == [1, 1, 1]


def test_retrieval_cli_end_to_end(spark, tmp_path):
    from sid_spark.cli import main

    rng = np.random.default_rng(1)
    n = 40
    sid, suf = toy_codes(rng, n=n, levels=2, k=4)
    spark.createDataFrame([(i + 1, [int(c) for c in s], int(x)) for i, (s, x) in enumerate(zip(sid, suf))],
                          "item_id long, sid array<int>, sid_suffix int").write.parquet(str(tmp_path / "sids"))
    emb = rng.standard_normal((n, 6)).astype(np.float32)
    spark.createDataFrame([(i + 1, [float(v) for v in e]) for i, e in enumerate(emb)],
                          "item_id long, embedding array<float>").write.parquet(str(tmp_path / "emb"))
    seqs = [(u, [int(x) for x in rng.integers(1, n + 1, int(rng.integers(3, 9)))]) for u in range(60)]
    spark.createDataFrame(seqs, "user_id int, item_ids array<int>").write.parquet(str(tmp_path / "seqs"))
    out = tmp_path / "out"
    sets = [f"{k}={v}" for k, v in {**TINY, "epochs": 1}.items()]
    rc = main(["retrieval", "--sids", f"toy={tmp_path / 'sids'}", "--interactions", str(tmp_path / "seqs"),
               "--embeddings", str(tmp_path / "emb"), "--output", str(out), "--master", "local[2]",
               *sum([["--set", s] for s in sets], [])])
    assert rc == 0
    rows = {r["name"]: r for r in json.loads((out / "retrieval.json").read_text())}
    assert set(rows) == {"popularity", "embedding_knn", "toy"}
    for r in rows.values():
        for key in ("recall@5", "recall@10", "ndcg@5", "ndcg@10"):
            assert 0.0 <= r[key] <= 1.0
        assert r["recall@5"] <= r["recall@10"] and r["ndcg@5"] <= r["ndcg@10"] <= r["recall@10"]
        assert r["test_users"] == 60
    assert rows["toy"]["epochs"] == 1 and rows["toy"]["parameters"] > 0 and isinstance(rows["toy"]["seconds"], float)
    assert (out / "_manifest.json").exists() and (out / "retrieval.md").exists()
    assert "Generative retrieval" in (out / "retrieval.html").read_text()
    trie = spark.read.parquet(str(out / "toy" / "trie"))
    assert {tuple(r["prefix"]): tuple(r["allowed"]) for r in trie.collect()} == \
        brute_prefixes(np.concatenate([sid, suf[:, None]], 1))
    assert spark.read.parquet(str(out / "toy" / "lookup")).count() == n


def test_retrieval_cli_rejects_bad_keys(tmp_path):
    from sid_spark.cli import main

    assert main(["retrieval", "--sids", "a", "--interactions", "b", "--output", str(tmp_path / "o"),
                 "--set", "beam_width=3"]) == 2
    assert not (tmp_path / "o").exists()
