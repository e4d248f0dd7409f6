"""Train the retriever on one SID table and score it: teacher-forced cross-entropy on the next item's SID tokens,
AdamW, early stopping on validation Recall@10 (the best epoch's weights are kept), then constrained beam search on
the test users. Pure numpy/torch: the Spark side only hands over the examples and the SID table.

    catalog = Catalog.from_sids(item_ids, sid_codes, suffix, codebook_size)
    result = fit_and_score(RetrievalConfig(), catalog, splits, seed=42)   # splits: {"train"|"val"|"test": Split}
"""
from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
import torch
from torch import nn

from .beam import beam_search, leaves_to_items
from .config import RetrievalConfig
from .metrics import ranking_metrics
from .model import BOS, PAD, SidSeq2Seq, history_tokens, n_parameters, pick_device, vocabulary_for
from .trie import SidTrie

log = logging.getLogger("sid_spark.retrieval")


@dataclass
class Split:
    """history: (n, H) item ids, most recent last, -1 padded on the left; target: (n,) item ids."""

    history: np.ndarray
    target: np.ndarray

    def __len__(self) -> int:
        return len(self.target)

    def head(self, n: int) -> "Split":
        return Split(self.history[:n], self.target[:n])


@dataclass
class Catalog:
    """The SID table in the training process: item ids (sorted), their token ids (m, W), the trie, the vocab."""

    item_ids: np.ndarray
    tokens: np.ndarray
    trie: SidTrie
    vocab: object

    @classmethod
    def from_sids(cls, item_ids: np.ndarray, sid: np.ndarray, suffix: Optional[np.ndarray],
                  codebook_size: Optional[int] = None) -> "Catalog":
        item_ids = np.asarray(item_ids, np.int64)
        sid = np.asarray(sid, np.int64)
        order = np.argsort(item_ids, kind="stable")
        item_ids, sid = item_ids[order], sid[order]
        if len(item_ids) > 1 and (np.diff(item_ids) == 0).any():
            raise ValueError("the SID table has an item id twice")
        k = int(codebook_size or int(sid.max()) + 1)
        levels = sid.shape[1]
        suffix_size = 0
        if suffix is not None:
            suffix = np.asarray(suffix, np.int64)[order]
            suffix_size = int(suffix.max()) + 1
        vocab = vocabulary_for(levels, k, suffix_size)
        tokens = vocab.encode(sid, suffix)
        codes = sid if suffix is None else np.concatenate([sid, suffix[:, None]], axis=1)
        trie = SidTrie(codes, item_ids, [k] * levels + ([suffix_size] if suffix is not None else []))
        return cls(item_ids, tokens, trie, vocab)

    @property
    def width(self) -> int:
        return self.tokens.shape[1]

    def index(self, items: np.ndarray) -> np.ndarray:
        """item ids -> row indices, -1 for ids not in the table (or -1 pads)."""
        items = np.asarray(items, np.int64)
        pos = np.clip(np.searchsorted(self.item_ids, items), 0, len(self.item_ids) - 1)
        return np.where((self.item_ids[pos] == items) & (items >= 0), pos, -1)


@dataclass
class Encoded:
    """A split mapped onto the catalog: history rows right-aligned (-1 pad), targets as rows; `keep` says which
    examples survived (target in the table and at least one history item in it)."""

    history: np.ndarray
    target: np.ndarray
    target_items: np.ndarray


def encode_split(catalog: Catalog, split: Split, max_history: int) -> Encoded:
    idx = catalog.index(split.history[:, -max_history:])
    # drop unknown items and close the gaps: a stable sort puts the pads (-1) first, the known items in order last
    order = np.argsort(idx >= 0, axis=1, kind="stable")
    idx = np.take_along_axis(idx, order, axis=1)
    tgt = catalog.index(split.target)
    keep = (tgt >= 0) & (idx >= 0).any(axis=1)
    dropped = int((~keep).sum())
    if dropped:
        log.info("%d examples dropped: target or whole history not in the SID table", dropped)
    return Encoded(idx[keep], tgt[keep], np.asarray(split.target)[keep])


def batches(n: int, size: int, lengths: np.ndarray, rng: np.random.Generator) -> List[np.ndarray]:
    """Shuffled batches of similar history length (less padding), from a seeded generator: same seed, same order."""
    perm = rng.permutation(n)
    out: List[np.ndarray] = []
    chunk = size * 50
    for s in range(0, n, chunk):
        c = perm[s:s + chunk]
        c = c[np.argsort(lengths[c], kind="stable")]
        out.extend(c[i:i + size] for i in range(0, len(c), size))
    return [out[i] for i in rng.permutation(len(out))]


def build_model(cfg: RetrievalConfig, catalog: Catalog) -> SidSeq2Seq:
    return SidSeq2Seq(vocab_size=catalog.vocab.offset + catalog.vocab.size, width=catalog.width,
                      max_history=cfg.max_history, d_model=cfg.model_dim, heads=cfg.heads,
                      encoder_layers=cfg.encoder_layers, decoder_layers=cfg.decoder_layers, mlp=cfg.mlp,
                      dropout=cfg.dropout)


def rank(model: SidSeq2Seq, catalog: Catalog, enc: Encoded, cfg: RetrievalConfig, device: torch.device,
         k: Optional[int] = None) -> np.ndarray:
    """(n, k) item ids ranked by constrained beam search, best first."""
    k = k or max(cfg.ks)
    out = np.full((len(enc.target), k), -1, np.int64)
    lengths = (enc.history >= 0).sum(axis=1)
    order = np.argsort(lengths, kind="stable")  # similar lengths together: less padding
    for s in range(0, len(order), cfg.eval_batch):
        rows = order[s:s + cfg.eval_batch]
        src = torch.from_numpy(history_tokens(enc.history[rows], catalog.tokens)).to(device)
        leaves, _ = beam_search(model, src, catalog.trie, catalog.vocab, cfg.beam_width)
        out[rows] = leaves_to_items(catalog.trie, leaves, k)
    return out


@dataclass
class FitResult:
    model: SidSeq2Seq
    epochs: int
    best_epoch: int
    val_history: List[float] = field(default_factory=list)
    loss_history: List[float] = field(default_factory=list)
    train_seconds: float = 0.0


def fit(cfg: RetrievalConfig, catalog: Catalog, train: Encoded, val: Encoded, seed: int,
        device: torch.device) -> FitResult:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = build_model(cfg, catalog).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    loss_fn = nn.CrossEntropyLoss(ignore_index=PAD)
    tgt_tokens = catalog.tokens[train.target]  # (n, W)
    lengths = (train.history >= 0).sum(axis=1)
    val_sub = Encoded(val.history[:cfg.val_users], val.target[:cfg.val_users], val.target_items[:cfg.val_users])
    best, best_state, best_epoch, bad = -1.0, None, 0, 0
    res = FitResult(model, 0, 0)
    t0 = time.time()
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        total, seen = 0.0, 0
        for rows in batches(len(train.target), cfg.train_batch, lengths, rng):
            src = torch.from_numpy(history_tokens(train.history[rows], catalog.tokens)).to(device)
            tgt = torch.from_numpy(tgt_tokens[rows]).to(device)
            tgt_in = torch.cat([torch.full((len(rows), 1), BOS, dtype=torch.long, device=device), tgt[:, :-1]], 1)
            logits = model(src, tgt_in)
            loss = loss_fn(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            total += loss.item() * len(rows)
            seen += len(rows)
        ranked = rank(model, catalog, val_sub, cfg, device)
        score = ranking_metrics(ranked, val_sub.target_items, (10,))["recall@10"] if len(val_sub.target) else 0.0
        res.loss_history.append(total / max(seen, 1))
        res.val_history.append(score)
        res.epochs = epoch
        log.info("epoch %d: loss %.4f, validation recall@10 %.4f (%.0fs)", epoch, res.loss_history[-1], score,
                 time.time() - t0)
        if score > best:
            best, best_epoch, bad = score, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad += 1
            if bad >= cfg.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    res.best_epoch = best_epoch
    res.train_seconds = time.time() - t0
    return res


def fit_and_score(cfg: RetrievalConfig, catalog: Catalog, splits: Dict[str, Split], seed: int,
                  device: str = "auto") -> dict:
    """Train on splits["train"], stop early on splits["val"], score splits["test"]: one retrieval.json row."""
    t0 = time.time()
    dev = pick_device(device)
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    enc = {name: encode_split(catalog, s, cfg.max_history) for name, s in splits.items()}
    res = fit(cfg, catalog, enc["train"], enc["val"], seed, dev)
    t1 = time.time()
    ranked = rank(res.model, catalog, enc["test"], cfg, dev)
    row = ranking_metrics(ranked, enc["test"].target_items, cfg.ks)
    row.update({"parameters": n_parameters(res.model), "epochs": res.epochs, "best_epoch": res.best_epoch,
                "val_recall@10": res.val_history, "train_loss": [round(x, 5) for x in res.loss_history],
                "train_examples": len(enc["train"].target), "test_users": len(enc["test"].target),
                "train_seconds": round(res.train_seconds, 2), "test_seconds": round(time.time() - t1, 2),
                "seconds": round(time.time() - t0, 2), "device": dev.type, "tokens_per_item": catalog.width,
                "sids": catalog.trie.n_leaves, "items": len(catalog.item_ids)})
    row["_ranked"] = ranked
    return row
