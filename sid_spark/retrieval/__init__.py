"""Generative retrieval on Semantic IDs (TIGER, Rajput et al. 2023): does a tokenizer help the recommender it is for?

Layer 1 (no Spark): `metrics` (Recall/NDCG@k, leave-one-out), `trie` (prefix -> allowed next tokens, leaf -> items),
`model` (a small encoder-decoder transformer over SID tokens), `beam` (beam search constrained to the trie),
`baselines` (popularity, embedding kNN), `train` (teacher-forced training with early stopping on validation).
Layer 2: `spark` (leave-one-out examples and the serving export as distributed aggregations).
"""
