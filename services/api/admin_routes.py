"""The API's admin route: ``DELETE /users/{user_id}`` erases a user (README, "Erasing a user")."""

# No `from __future__ import annotations`: FastAPI reads the endpoint annotations at runtime.

from typing import Annotated, Any

from fastapi import APIRouter, Header, Path
from fastapi.responses import JSONResponse

from streamrec.api.admin import admin_refusal
from streamrec.api.forget_requests import ForgetRequests
from streamrec.shared.kafka_config import PublishError
from streamrec.shared.logs import get_logger
from streamrec.shared.settings import Settings

log = get_logger("streamrec.api.app")  # the API's logger, as before the routes left app.py


def admin_routes(settings: Settings, forget_requests: ForgetRequests) -> APIRouter:
    """DELETE /users/{user_id}: needs the admin token; 202 once Kafka took the request."""
    router = APIRouter()

    @router.delete("/users/{user_id}", status_code=202)
    def forget_user(
        user_id: Annotated[str, Path(description="The user id as sent in events.")],
        authorization: Annotated[str | None, Header(description="Bearer <admin token>")] = None,
    ) -> Any:
        """Erase the user everywhere (README, "Erasing a user"); 202 once Kafka took the request."""
        # A plain def: FastAPI runs it in a thread, so waiting for Kafka's ack blocks no read.
        if refusal := admin_refusal(authorization, settings.api_admin_token):
            status, detail = refusal
            headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
            return JSONResponse(status_code=status, content={"detail": detail}, headers=headers)
        try:
            request = forget_requests.send(user_id)
        except ValueError as exc:
            return JSONResponse(status_code=422, content={"detail": str(exc)})
        except PublishError as exc:
            log.warning("forget request not sent", extra={"error": str(exc)})
            return JSONResponse(
                status_code=503, content={"detail": "the control topic (Kafka) is unavailable"}
            )
        return {
            "user_id": request.user_id,
            "status": "accepted",
            "requested_at": request.requested_at,
            "topic": settings.topic_control,
        }

    return router
