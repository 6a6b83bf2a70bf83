"""Access to the lifespan's services from a request (FastAPI dependency)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import Request

if TYPE_CHECKING:
    from rag.services import Services


def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services
