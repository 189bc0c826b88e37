"""The model contract: the ONNX signature and the files of a model version, shared by the trainer
(export) and the scorer (serve).

The registry that stores versions is shared/registry.py. ``docs/architecture.md`` ("Contract 4:
the model (ONNX) and the registry") documents the same contract for people; change both together.
"""

from __future__ import annotations

PADDING_INDEX = 0  # item index 0 is padding; real items are 1..n_items in vocabulary order
ONNX_INPUT_HISTORY = "history"  # int64 [batch, n_history]: item indices, oldest first, left-padded
#                                 with 0 (the most recent item is last); 1 <= n_history <= max_seq_len
#                                 (versions exported before 2026-12 take exactly max_seq_len)
ONNX_INPUT_EXCLUDE = "exclude"  # int64 [batch, n_exclude]: indices never to recommend, 0-padded
ONNX_OUTPUT_SCORES = "scores"  # float32 [batch, top_k]: best first
ONNX_OUTPUT_ITEMS = "items"  # int64 [batch, top_k]: item indices matching `scores`
MODEL_FILE = "model.onnx"
VOCAB_FILE = "items.json"  # JSON list: vocabulary[i-1] is the item id of index i
# float32 [n_items, dim] (numpy .npy): row i - 1 is the embedding of item index i, the vectors the
# model scores items with (SASRec's item table, mf's item factors). Optional: versions exported
# before 2026-12 lack it and get no model-based similar items.
ITEM_EMBEDDINGS_FILE = "item_embeddings.npy"
# int64 [n_items] (numpy .npy): entry i - 1 is how many interactions of item index i the version
# was trained on (its training window, repeats counted): the popularity the scorer's popularity
# penalty uses (shared/debias.py). Optional: versions exported before 2026-12 lack it, and the
# penalty is then off for them.
ITEM_POPULARITY_FILE = "item_popularity.npy"
MANIFEST_FILE = "manifest.json"
PROMOTED_FILE = "PROMOTED"  # text file in the model dir: the version scorers serve
PROMOTIONS_FILE = "promotions.jsonl"  # append-only log of promotions and rollbacks
