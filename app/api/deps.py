"""Annotated dependencies shared by the routes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from app.auth import Principal, authenticate
from app.db import get_sessionmaker
from app.queue import JobQueue
from app.settings import Settings
from app.storage import Storage


async def get_settings_dep(request: Request) -> Settings:
    # async: FastAPI would run a plain def in its thread pool, a thread hop per request for nothing.
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    session = get_sessionmaker(request.app.state.settings.resolved_database_url)()
    try:
        yield session
    finally:
        session.close()


async def get_storage(request: Request) -> Storage:
    return request.app.state.storage


async def get_queue(request: Request) -> JobQueue:
    return request.app.state.queue


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
SessionDep = Annotated[Session, Depends(get_session)]
StorageDep = Annotated[Storage, Depends(get_storage)]
QueueDep = Annotated[JobQueue, Depends(get_queue)]
# Who is asking (app.auth). Every /v1 router also depends on it, so no route is ever public by
# omission; naming it in a route only hands the principal over (FastAPI runs it once).
PrincipalDep = Annotated[Principal, Depends(authenticate)]


async def take_job_token(request: Request) -> None:
    """Per-client rate limit on job creation (app.admission): 429 with Retry-After beyond it."""
    from app.admission import client_identity

    request.app.state.job_limiter.take(client_identity(request))


JobRate = Depends(take_job_token)
