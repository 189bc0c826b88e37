"""streamrec: streaming, real-time recommendations.

The two things applications use: ``Publisher`` (send events) and ``RecommendationClient``
(read recommendations). Imported lazily so that ``streamrec --help`` stays fast.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Publisher", "RecommendationClient"]


def __getattr__(name: str) -> Any:
    if name == "Publisher":
        from streamrec.publisher import Publisher

        return Publisher
    if name == "RecommendationClient":
        from streamrec.client import RecommendationClient

        return RecommendationClient
    raise AttributeError(f"module 'streamrec' has no attribute {name!r}")
