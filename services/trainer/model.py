"""The recommendation models. Every model maps a user's recent items to a score per item.

A model subclasses :class:`SequenceRecommender` and implements one method, ``logits(history)``:
item indices ``[B, max_seq_len]`` (left-padded with 0, most recent last) -> scores
``[B, n_items + 1]`` (column 0 is padding and meaningless). Training uses ``logits``; the shared
``forward(history, exclude)`` is what gets exported to ONNX: it masks excluded items and padding
inside the graph and returns the ``top_k`` best as (scores, items), the serving contract of
shared/model_contract.py.

Models are chosen by name with ``settings.model``; see :data:`MODELS`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from streamrec.shared.model_contract import PADDING_INDEX
from streamrec.shared.settings import Settings

# nanoGPT-style small init: N(0, 0.02) keeps initial logits near 0 so the first softmax is ~uniform.
INIT_STD = 0.02
RATING_INIT_STD = 0.1  # RatingMF's factors (as the rating task's biased MF)


class SequenceRecommender(nn.Module):
    """Base of all models: a fixed catalogue of ``n_items`` items and a top-k serving head."""

    # True if the model implements ``prefix_logits``: the training loop then feeds whole windows of
    # a user's sequence and learns every next item in it in one pass (see train.py).
    all_positions: bool = False
    # True if ``logits`` are predicted ratings, fitted to events' values (train_rating.py), not
    # next-item scores: train.train() hands such a model to the rating loop.
    predicts_ratings: bool = False
    item_emb: nn.Embedding  # [n_items + 1, dim]; row 0 is padding. Every model has one.

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

    def item_embeddings(self) -> np.ndarray | None:
        """The item vectors the output scores use, float32 [n_items, dim] (row i - 1 = item index i):
        what the registry's item_embeddings.npy holds, for similar items. None for a model without
        an item table (hand-written test models)."""
        table = getattr(self, "item_emb", None)
        if table is None:
            return None
        return table.weight[PADDING_INDEX + 1 :].detach().to(torch.float32).cpu().numpy()

    def start_from(self, item_vectors: torch.Tensor) -> None:
        """Replace the initial item embeddings by ``item_vectors`` [n_items + 1, dim] (a warm start)."""
        with torch.no_grad():
            self.item_emb.weight.copy_(item_vectors)
            self.item_emb.weight[PADDING_INDEX].zero_()

    def prefix_logits(self, history: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Next-item scores after each position of one pass over ``history`` [B, T] (a training window):
        row n of the result [N, n_items] scores the next item after (b, t), the n-th True entry of the
        bool mask ``positions`` [B, T]. Column j is item j + 1: there is no padding column, so the
        training softmax needs no slicing (a copy of the largest tensor of the step). At the last
        position this equals ``logits(history)[:, 1:]``."""
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


class SelfAttention(nn.Module):
    """Multi-head self-attention under a given [B, 1, T, T] bool mask (True = may attend)."""

    def __init__(self, dim: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"embedding_dim {dim} is not divisible by {n_heads} heads")
        self.n_heads = n_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """[B, T, dim] -> [B, T, dim], or [B, 1, dim] for the last query only if ``last_only``."""
        batch, _, dim = x.shape
        q, k, v = self.qkv(x).split(dim, dim=2)
        if last_only:
            q, mask = q[:, -1:], mask[:, :, -1:]
        # [B, T, dim] -> [B, heads, T, dim / heads]
        q, k, v = (t.view(batch, t.shape[1], self.n_heads, -1).transpose(1, 2) for t in (q, k, v))
        # No dropout on the attention weights: it would force torch's slow unfused attention on CPU
        # (2.5x the step time); the embeddings and the residual branches are dropped out instead.
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).reshape(batch, q.shape[2], dim)
        return self.resid_drop(self.proj(y))


class Block(nn.Module):
    """A pre-norm transformer block: x + attention(LN(x)), then x + feed-forward(LN(x))."""

    def __init__(self, dim: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, n_heads, dropout)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """[B, T, dim] -> [B, T, dim]; only the last position, [B, 1, dim], if ``last_only``.

        Every position's keys and values are still computed, but the query, the residual and the
        feed-forward run for one position: what serving needs from the last block."""
        attended = self.attn(self.ln_1(x), mask, last_only)
        x = (x[:, -1:] if last_only else x) + attended
        return x + self.mlp(self.ln_2(x))


class SASRec(SequenceRecommender):
    """Self-attentive sequential recommendation (Kang & McAuley, 2018), with a full-softmax head.

    A causal transformer reads the user's last ``max_seq_len`` items; the hidden state at the last
    position is the user vector, scored against every item embedding (the input table, tied). Every
    position only sees itself and earlier real items, so position t holds "the user after item t":
    training predicts the next item at all positions at once (``prefix_logits``). Positions are
    counted from the right (the most recent item always has the last position embedding), so a
    history cut to its real items gives exactly the scores of the same history left-padded.
    """

    all_positions = True

    def __init__(
        self,
        n_items: int,
        max_seq_len: int,
        top_k: int,
        dim: int,
        n_blocks: int,
        n_heads: int,
        dropout: float,
    ) -> None:
        super().__init__(n_items, max_seq_len, top_k)
        self.item_emb = nn.Embedding(n_items + 1, dim, padding_idx=PADDING_INDEX)
        self.pos_emb = nn.Parameter(torch.zeros(max_seq_len, dim))
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(dim, n_heads, dropout) for _ in range(n_blocks))
        self.ln_f = nn.LayerNorm(dim)
        self.item_bias = nn.Parameter(torch.zeros(n_items + 1))
        self.apply(self._init_weights)
        nn.init.normal_(self.pos_emb, std=INIT_STD)
        with torch.no_grad():
            self.item_emb.weight[PADDING_INDEX].zero_()

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=INIT_STD)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=INIT_STD)

    @classmethod
    def from_settings(cls, n_items: int, settings: Settings) -> SASRec:
        """Build the model with the hyper-parameters in ``settings``."""
        return cls(
            n_items,
            settings.max_seq_len,
            settings.top_n,
            settings.embedding_dim,
            settings.n_blocks,
            settings.n_heads,
            settings.dropout,
        )

    def hidden(self, history: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """Hidden state after each position: [B, T] (T <= max_seq_len, left-padded) -> [B, T, dim].

        With ``last_only`` the last block computes only the last position ([B, 1, dim]): the same
        numbers for it, at about 60% of the cost of all positions (serving needs no other)."""
        length = history.shape[1]
        is_item = history != PADDING_INDEX
        x = self.item_emb(history) + self.pos_emb[self.max_seq_len - length :]
        x = self.drop(x) * is_item[..., None]
        # Query t may attend to key s if s <= t and s is a real item. It may always attend to itself,
        # so that padding queries (whose outputs nobody reads) have a key and softmax gives no NaN.
        causal = torch.ones(length, length, dtype=torch.bool, device=history.device).tril()
        itself = torch.eye(length, dtype=torch.bool, device=history.device)
        mask = causal & (is_item[:, None, :] | itself)  # [B, T query, T key]
        last = len(self.blocks) - 1
        for number, block in enumerate(self.blocks):
            x = block(x, mask[:, None], last_only=last_only and number == last)
        return self.ln_f(x)

    def logits(self, history: torch.Tensor) -> torch.Tensor:
        """The last position's hidden state scored against every item embedding, plus the item bias."""
        return torch.addmm(
            self.item_bias, self.hidden(history, last_only=True)[:, -1], self.item_emb.weight.T
        )

    def prefix_logits(self, history: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Every position's hidden state, scored only where ``positions`` is True (saves memory)."""
        real = slice(PADDING_INDEX + 1, None)
        return torch.addmm(
            self.item_bias[real], self.hidden(history)[positions], self.item_emb.weight[real].T
        )


class RatingMF(SequenceRecommender):
    """Rating prediction from the history alone: asymmetric SVD, the implicit part of SVD++
    (Paterek 2007; Koren 2008), trained on events' values (ratings) by train_rating.py.

    ``rating(user, i) = mu + b_i + q_i · |N|^-1/2 Σ_{j in N} y_j`` with ``N`` the items of the
    history (rated or not; padding left out). The user factor comes from the history, so there is
    no user table: a new user is served from their first event (an empty history predicts
    ``mu + b_i``). The user bias ``b_u`` of SVD is left out: it shifts all of a user's predictions
    equally and would change no ranking. ``q`` is ``item_emb`` (similar items use it); ``y`` is a
    table of its own. ``logits`` are the predicted ratings, so the served top-k are the items with
    the highest predicted rating.
    """

    predicts_ratings = True

    def __init__(self, n_items: int, max_seq_len: int, top_k: int, dim: int) -> None:
        super().__init__(n_items, max_seq_len, top_k)
        self.item_emb = nn.Embedding(n_items + 1, dim, padding_idx=PADDING_INDEX)  # q
        self.history_emb = nn.Embedding(n_items + 1, dim, padding_idx=PADDING_INDEX)  # y
        self.item_bias = nn.Parameter(torch.zeros(n_items + 1))  # b_i
        self.register_buffer("mean", torch.zeros(()))  # mu, set from the training ratings
        for table in (self.item_emb, self.history_emb):
            # Larger than INIT_STD: the gradient of q·y is proportional to the factors themselves.
            nn.init.normal_(table.weight, std=RATING_INIT_STD)
            with torch.no_grad():
                table.weight[PADDING_INDEX].zero_()

    @classmethod
    def from_settings(cls, n_items: int, settings: Settings) -> RatingMF:
        """Build the model with the hyper-parameters in ``settings``."""
        return cls(n_items, settings.max_seq_len, settings.top_n, settings.embedding_dim)

    def user_vectors(self, history: torch.Tensor) -> torch.Tensor:
        """``|N|^-1/2 Σ_{j in N} y_j``: [B, L] -> [B, dim] (zeros for an empty history)."""
        count = (history != PADDING_INDEX).sum(dim=1, keepdim=True).clamp(min=1)
        return self.history_emb(history).sum(dim=1) * count.to(torch.float32).rsqrt()

    def logits(self, history: torch.Tensor) -> torch.Tensor:
        """The predicted rating of every item."""
        return torch.addmm(self.item_bias + self.mean, self.user_vectors(history), self.item_emb.weight.T)

    def predict(
        self, history: torch.Tensor, items: torch.Tensor, owners: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predicted ratings of ``items`` [B] by the users ``owners`` [B] (rows of ``history``
        [U, L]: each user's history once), [B], and the squared norm of the parameters each
        prediction used (b_i, q_i and every y_j of the user's history), [B]: its L2 term."""
        q, b = self.item_emb(items), self.item_bias[items]
        prediction = self.mean + b + (self.user_vectors(history)[owners] * q).sum(-1)
        penalty = b**2 + (q**2).sum(-1) + (self.history_emb(history) ** 2).sum((1, 2))[owners]
        return prediction, penalty


# Model name (settings.model) -> class. Add a model by subclassing SequenceRecommender.
MODELS: dict[str, type[SequenceRecommender]] = {
    "mf": MeanEmbeddingMF,
    "sasrec": SASRec,
    "rating-mf": RatingMF,
}


def build_model(settings: Settings, n_items: int) -> SequenceRecommender:
    """A freshly initialised model of the family ``settings.model`` for ``n_items`` items."""
    try:
        model_class = MODELS[settings.model]
    except KeyError:
        raise ValueError(f"unknown model {settings.model!r}; known: {', '.join(sorted(MODELS))}") from None
    return model_class.from_settings(n_items, settings)


def predicts_ratings(model_name: str) -> bool:
    """Whether the family ``model_name`` is fitted to events' values (ratings) rather than next items;
    False for a name that is not a model."""
    model_class = MODELS.get(model_name)
    return model_class is not None and model_class.predicts_ratings
