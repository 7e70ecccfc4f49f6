"""A FastAPI service on one asyncio pool: health check, OCC-retried writes, reads.

- The lifespan builds an `AsyncDsqlConnectionPool` from the environment, opens it before the
  first request, creates the table if needed and closes the pool on shutdown.
- ``GET /health`` pings the database (503 when it cannot be reached).
- ``POST /notes`` inserts a note as one OCC-retried transaction and returns it (201).
- ``GET /notes`` lists the 50 newest notes.

Configuration comes from the environment: DSQL_ENDPOINT (or DSQL_CLUSTER_ID with AWS_REGION),
DSQL_USER (default admin); credentials from the default AWS chain. Run it with
``pip install 'dsqlkit[examples]' uvicorn`` and, from the repository root,
``DSQL_ENDPOINT=<cluster-id>.dsql.<region>.on.aws uvicorn examples.fastapi_service:app``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import Depends, FastAPI, HTTPException, Request
from pydantic import BaseModel, Field

import dsqlkit

SCHEMA = """
CREATE TABLE IF NOT EXISTS notes (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    body text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
)
"""


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Build and open the pool before serving: the first request then finds a connection
    # ready, and a misconfigured endpoint fails the start-up instead of every request.
    pool: dsqlkit.AsyncDsqlConnectionPool[Any] = dsqlkit.AsyncDsqlConnectionPool.from_env(
        min_size=1, max_size=4, open=False
    )
    try:
        await pool.open(wait=True)
        repo = dsqlkit.AsyncRepository(pool)
        await repo.execute(SCHEMA)  # DDL runs alone, in its own (autocommit) transaction
        app.state.repo = repo
        yield
    finally:
        await pool.close()


app = FastAPI(title="dsqlkit notes", lifespan=lifespan)


def repository(request: Request) -> dsqlkit.AsyncRepository:
    repo: dsqlkit.AsyncRepository = request.app.state.repo
    return repo


Repo = Annotated[dsqlkit.AsyncRepository, Depends(repository)]


class NoteIn(BaseModel):
    body: str = Field(min_length=1, max_length=10_000)


class Note(BaseModel):
    id: UUID
    body: str
    created_at: datetime


@app.get("/health")
async def health(repo: Repo) -> dict[str, Any]:
    try:
        ping = await repo.ping(timeout=2.0)
    except dsqlkit.DatabaseUnavailable as exc:
        raise HTTPException(status_code=503, detail=str(exc)) from exc
    return {"latency_ms": round(ping.latency_ms, 2), "server_version": ping.server_version}


@app.post("/notes", status_code=201)
async def create_note(note: NoteIn, repo: Repo) -> Note:
    # A write that returns rows goes through transaction(): it is re-run on an OCC conflict
    # (nothing committed), never after a connection lost mid-COMMIT (CommitOutcomeUnknown).
    async def insert(tx: dsqlkit.AsyncTransaction[Any]) -> Any:
        return await tx.query_one(
            "INSERT INTO notes (body) VALUES (%s) RETURNING id, body, created_at", (note.body,)
        )

    return Note(**await repo.transaction(insert))


@app.get("/notes")
async def list_notes(repo: Repo) -> list[Note]:
    rows = await repo.query(
        "SELECT id, body, created_at FROM notes ORDER BY created_at DESC, id LIMIT 50"
    )
    return [Note(**row) for row in rows]
