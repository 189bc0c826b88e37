"""The recommendation models. Every model maps a user's recent items to a score per item.

A model subclasses :class:`SequenceRecommender` and implements one method, ``logits(history)``:
item indices ``[B, max_seq_len]`` (left-padded with 0, most recent last) -> scores
``[B, n_items + 1]`` (column 0 is padding and meaningless). Training uses ``logits``; the shared
``forward(history, exclude)`` is what gets exported to ONNX: it masks excluded items and padding
inside the graph and returns the ``top_k`` best as (scores, items), the serving contract of
shared/contracts.py.

Models are chosen by name with ``settings.model``; see :data:`MODELS`.
"""

from __future__ import annotations

import torch
from torch import nn

from streamrec.shared.contracts import PADDING_INDEX
from streamrec.shared.settings import Settings

# nanoGPT-style small init: N(0, 0.02) keeps initial logits near 0 so the first softmax is ~uniform.
INIT_STD = 0.02


class SequenceRecommender(nn.Module):
    """Base of all models: a fixed catalogue of ``n_items`` items and a top-k serving head."""

    def __init__(self, n_items: int, max_seq_len: int, top_k: int) -> None:
        super().__init__()
        if n_items < 1:
            raise ValueError("a model needs at least one item")
        self.n_items = n_items
        self.max_seq_len = max_seq_len
        self.top_k = min(top_k, n_items)

    @classmethod
    def from_settings(cls, n_items: int, settings: Settings) -> SequenceRecommender:
        """Build the model with the hyper-parameters in ``settings``."""
        raise NotImplementedError

    def logits(self, history: torch.Tensor) -> torch.Tensor:
        """Scores of every item index: LongTensor [B, L] -> FloatTensor [B, n_items + 1]."""
        raise NotImplementedError

    def forward(self, history: torch.Tensor, exclude: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The serving head: top-k (scores [B, k] float32, items [B, k] int64), best first.

        ``exclude`` [B, E] holds item indices never to return (0 = padding, itself never returned).
        Masking happens before top-k, so the k results are the best *allowed* items. If fewer than
        k items are allowed, the tail has score -inf.
        """
        scores = self.logits(history)
        scores = scores.scatter(1, exclude, float("-inf"))
        scores[:, PADDING_INDEX] = float("-inf")
        return torch.topk(scores, self.top_k, dim=1)


class MeanEmbeddingMF(SequenceRecommender):
    """Matrix factorisation without a user table: a user is the mean of their items' embeddings.

    ``score(user, item) = mean(emb[h] for h in history) · emb[item] + bias[item]``. Because the user
    vector is computed from the history, a new user is served as soon as they have one event, and
    a user's list follows their latest items without retraining. One table is used for both the
    history and the candidates (weight tying): an item is recommended next to the items it
    co-occurs with. The bias learns popularity (it is all that is left for an empty history).
    """

    def __init__(self, n_items: int, max_seq_len: int, top_k: int, dim: int, item_bias: bool = True) -> None:
        super().__init__(n_items, max_seq_len, top_k)
        self.item_emb = nn.Embedding(n_items + 1, dim, padding_idx=PADDING_INDEX)
        self.item_bias = nn.Parameter(torch.zeros(n_items + 1)) if item_bias else None
        nn.init.normal_(self.item_emb.weight, std=INIT_STD)
        with torch.no_grad():
            self.item_emb.weight[PADDING_INDEX].zero_()

    @classmethod
    def from_settings(cls, n_items: int, settings: Settings) -> MeanEmbeddingMF:
        """Build the model with the hyper-parameters in ``settings``."""
        return cls(n_items, settings.max_seq_len, settings.top_n, settings.embedding_dim)

    def user_vectors(self, history: torch.Tensor) -> torch.Tensor:
        """Masked mean of the history's item embeddings: [B, L] -> [B, dim] (zeros if empty)."""
        embedded = self.item_emb(history)  # padding rows are zero vectors (padding_idx)
        count = (history != PADDING_INDEX).sum(dim=1, keepdim=True).clamp(min=1).to(embedded.dtype)
        return embedded.sum(dim=1) / count

    def logits(self, history: torch.Tensor) -> torch.Tensor:
        """Dot product of the user vector with every item embedding, plus the item bias."""
        scores = self.user_vectors(history) @ self.item_emb.weight.T
        if self.item_bias is not None:
            scores = scores + self.item_bias
        return scores


# Model name (settings.model) -> class. Add a model by subclassing SequenceRecommender.
MODELS: dict[str, type[SequenceRecommender]] = {"mf": MeanEmbeddingMF}


def build_model(settings: Settings, n_items: int) -> SequenceRecommender:
    """A freshly initialised model of the family ``settings.model`` for ``n_items`` items."""
    try:
        model_class = MODELS[settings.model]
    except KeyError:
        raise ValueError(f"unknown model {settings.model!r}; known: {', '.join(sorted(MODELS))}") from None
    return model_class.from_settings(n_items, settings)
