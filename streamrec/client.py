"""Read a user's recommendations from Redis: the small client applications import.

::

    from streamrec.client import RecommendationClient

    client = RecommendationClient("redis://localhost:6379/0")
    recs = client.get("user-42", n=10)       # one GET; popular items if the user is unknown
    if recs is not None:
        print(recs.source, recs.items)        # [("sku-9", 3.1), ...], best first
    shoes = client.get("user-42", n=10, categories=["shoes"], exclude=["sku-9"])
    similar = client.similar("sku-9", n=5)   # the item's nearest items (see RedisKeys.similar)
    session = client.recommend_session(["sku-9", "sku-3"], n=10)  # scored in-process (ONNX)

:class:`AsyncRecommendationClient` is the same for asyncio. Both read what the scorer writes (the
key layout is in ``streamrec.shared.redis_keys``, the list format in
``streamrec.shared.cached_list``), and return no item the catalog hides or that expired.

They are defined in ``streamrec.api.reader``, ``streamrec.api.async_reader`` and (the answers)
``streamrec.api.read_results``, where the HTTP API, which reads with the same code, imports them
from: the services never import the ``streamrec`` package above them.
"""

from streamrec.api.async_reader import AsyncRecommendationClient
from streamrec.api.read_results import (
    DEFAULT_N,
    SOCKET_TIMEOUT_SECONDS,
    Categories,
    ReadSource,
    Recommendations,
    SessionRecommendations,
    SimilarItems,
    decode,
)
from streamrec.api.reader import RecommendationClient
from streamrec.shared.events import resolve_item_id, resolve_user_id

__all__ = [
    "DEFAULT_N",
    "SOCKET_TIMEOUT_SECONDS",
    "AsyncRecommendationClient",
    "Categories",
    "ReadSource",
    "RecommendationClient",
    "Recommendations",
    "SessionRecommendations",
    "SimilarItems",
    "decode",
    "resolve_item_id",
    "resolve_user_id",
]
