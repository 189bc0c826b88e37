"""The API's read routes: a user's recommendations, an item's similar items, a session's
recommendations, each read with the async client (services/api/async_reader.py).

Built per application by :func:`read_routes`, since the bound on ``n`` comes from the settings.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoint annotations at runtime, and
# the `n` bound comes from `settings` in the builders' scope, which a string annotation cannot see.

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Path, Query
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from streamrec.api.async_reader import AsyncRecommendationClient
from streamrec.api.read_filters import ReadFilter
from streamrec.api.read_results import DEFAULT_N
from streamrec.shared.events import resolve_item_id, resolve_user_id
from streamrec.shared.settings import Settings


def json_body(content: dict[str, Any]) -> Response:
    """``content`` as a JSON response, encoded once by orjson: returned as a plain dict, FastAPI
    would first walk every item of the list through ``jsonable_encoder``."""
    return Response(orjson.dumps(content), media_type="application/json")


def read_routes(settings: Settings, client: AsyncRecommendationClient) -> APIRouter:
    """GET /users/{user_id}/recommendations, GET /items/{item_id}/similar, POST /recommendations."""
    router = APIRouter()
    _user_recommendations(router, settings, client)
    _similar_items(router, settings, client)
    _session_recommendations(router, settings, client)
    return router


def _user_recommendations(router: APIRouter, settings: Settings, client: AsyncRecommendationClient) -> None:
    @router.get("/users/{user_id}/recommendations")
    async def recommendations(
        user_id: Annotated[str, Path(description="The user id as sent in events.")],
        n: Annotated[
            int, Query(ge=1, le=settings.api_max_n, description="How many items (best first).")
        ] = min(DEFAULT_N, settings.api_max_n),
        category: Annotated[
            list[str] | None, Query(description="Only items of this category (repeatable: any of them).")
        ] = None,
        exclude: Annotated[list[str] | None, Query(description="Never this item (repeatable).")] = None,
    ) -> Any:
        """The user's top ``n`` recommendations (popular items, source "fallback", if unknown),
        never a hidden or expired item; filtered by ``category`` and ``exclude``, and filled with
        popular items of those categories if the user's own list is short (source "mixed")."""
        try:
            user = resolve_user_id(user_id)
            ReadFilter.of(n, category, exclude)  # a 422 for a bad category or item id
        except ValueError as exc:
            return JSONResponse(status_code=422, content={"detail": str(exc)})
        recs = await client.get(user, n=n, categories=category, exclude=exclude)
        if recs is None:
            return JSONResponse(
                status_code=404,
                content={
                    "detail": f"no recommendations for user {user!r} and no popular items yet: "
                    "is the scorer running and have events been published?"
                },
            )
        return json_body(recs.to_dict())


def _similar_items(router: APIRouter, settings: Settings, client: AsyncRecommendationClient) -> None:
    @router.get("/items/{item_id}/similar")
    async def similar(
        item_id: Annotated[str, Path(description="The item id as sent in events.")],
        n: Annotated[
            int, Query(ge=1, le=settings.api_max_n, description="How many items (best first).")
        ] = min(DEFAULT_N, settings.api_max_n),
        category: Annotated[
            list[str] | None, Query(description="Only items of these categories (repeatable).")
        ] = None,
    ) -> Any:
        """The item's nearest items in the served model (co-occurring or popular items as fallback)."""
        try:
            item = resolve_item_id(item_id)
            ReadFilter.of(n, category)  # a 422 for a bad category
        except ValueError as exc:
            return JSONResponse(status_code=422, content={"detail": str(exc)})
        found = await client.similar(item, n=n, categories=category)
        if found is None:
            return JSONResponse(
                status_code=404,
                content={
                    "detail": f"no similar items for item {item!r} and no popular items yet: "
                    "is the scorer running and have events been published?"
                },
            )
        return json_body(found.to_dict())


def _session_recommendations(
    router: APIRouter, settings: Settings, client: AsyncRecommendationClient
) -> None:
    class SessionRequest(BaseModel):
        """An anonymous session: its recent items, oldest first."""

        items: list[str] = Field(max_length=1000, description="Recent item ids, oldest first.")
        n: int = Field(min(DEFAULT_N, settings.api_max_n), ge=1, le=settings.api_max_n)
        category: list[str] | str | None = Field(None, description="Only items of these categories.")
        exclude: list[str] = Field(default_factory=list, max_length=1000, description="Never these items.")

    @router.post("/recommendations")
    async def session_recommendations(body: SessionRequest) -> Any:
        """Recommendations for an anonymous session, scored now with the served model."""
        try:
            recs = await client.recommend_session(
                body.items, n=body.n, categories=body.category, exclude=body.exclude
            )
        except ValueError as exc:  # an item id or category that can never be one
            return JSONResponse(status_code=422, content={"detail": str(exc)})
        if recs is None:
            return JSONResponse(
                status_code=503,
                content={"detail": "no model to score the session and no popular items yet"},
            )
        return json_body(recs.to_dict())
