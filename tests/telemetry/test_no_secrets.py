"""Nothing secret leaves: a run full of failures, then every byte the exporters received (and
every log record) is searched for tokens, credentials, bound values and statement text."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import psycopg
import pytest
from psycopg_pool import PoolTimeout

from dsqlkit import (
    Boto3TokenProvider,
    CommitOutcomeUnknown,
    Repository,
    TokenError,
    Transaction,
    transactional,
)
from dsqlkit.testing import LocalDsql

from .conftest import Otel


class RecordingProvider:
    """Signs real tokens (boto3 credentials) and remembers every one it handed out."""

    def __init__(self, local: LocalDsql, *, fail_with: str | None = None) -> None:
        self.inner = Boto3TokenProvider(local.boto3_session)
        self.tokens: list[str] = []
        self.fail_with = fail_with

    def __call__(self, *, host: str, region: str, user: str) -> str:
        if self.fail_with is not None:
            raise TokenError(self.fail_with)
        token = self.inner(host=host, region=region, user=user)
        self.tokens.append(token)
        return token


def test_nothing_secret_in_spans_metrics_or_logs(
    local_dsql: LocalDsql, otel: Otel, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    marker = uuid.uuid4().hex
    secret_value = f"secret-value-{marker}"
    secret_literal = f"literal-{marker}"
    provider = RecordingProvider(local_dsql)
    table = "otel_secret_" + marker[:8]
    with psycopg.connect(local_dsql.conninfo(), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (k text PRIMARY KEY, v int NOT NULL)")

    with local_dsql.pool(min_size=1, max_size=1, token_provider=provider,
                         boto3_session=None) as pool:  # fmt: skip
        repo = Repository(pool)
        repo.execute(f"INSERT INTO {table} VALUES (%s, %s)", (secret_value, 1))
        pool.wait()
        local_dsql.drop_connections()  # (before any fault that makes the pool reconnect)
        repo.query(f"SELECT k FROM {table} WHERE k = %s", (secret_value,))

        @transactional(pool, max_attempts=2)
        def bump(tx: Transaction[Any], key: str) -> None:
            tx.execute(f"UPDATE {table} SET v = v + 1 WHERE k = %s", (key,))

        local_dsql.fail_next_commits(1, "OC000")
        bump(secret_value)  # a retried conflict
        local_dsql.fail_next_commits(5, "OC001")
        with pytest.raises(psycopg.errors.SerializationFailure):
            bump(secret_value)  # conflicts exhausted
        local_dsql.reset()  # the conflicts left armed
        local_dsql.drop_next_commit("after")
        with pytest.raises(CommitOutcomeUnknown):
            bump(secret_value)
        with pytest.raises(psycopg.errors.UniqueViolation):  # its message quotes the value
            repo.execute(f"INSERT INTO {table} VALUES (%s, %s)", (secret_value, 2))
        assert repo.scalar(f"SELECT v FROM {table} WHERE k = %s AND '{secret_literal}' <> ''",
                           (secret_value,)) is not None  # fmt: skip

    refused = local_dsql.pool(min_size=1, max_size=1, token_provider=provider, boto3_session=None)
    local_dsql.refuse_connections(0.3, "53400")
    with refused:
        refused.wait(timeout=20)

    bad = RecordingProvider(local_dsql, fail_with=f"provider exploded {secret_value}")
    failing = local_dsql.pool(min_size=1, max_size=1, token_provider=bad, boto3_session=None)
    with pytest.raises(PoolTimeout):
        failing.open(wait=True, timeout=5)
    failing.close()

    spans = otel.spans()
    exported = "\n".join(span.to_json() for span in spans)
    data = otel.reader.get_metrics_data()
    assert data is not None
    exported += data.to_json()
    # botocore's own DEBUG records of this test's direct boto3 signing (LocalDsql.conninfo)
    # are not dsqlkit's: dsqlkit hides them while it signs (see dsqlkit._tokens).
    logged = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("botocore"))
    credentials = local_dsql.boto3_session.get_credentials()
    assert credentials is not None
    assert provider.tokens  # tokens were signed and used
    secrets = [*provider.tokens, credentials.secret_key, credentials.access_key]
    secrets += [token.split("X-Amz-Signature=")[-1] for token in provider.tokens]
    for secret in secrets:
        assert secret not in exported
        assert secret not in logged
    for private in (secret_value, secret_literal, marker):
        assert private not in exported
    # The run really was full of failures, and they were all reported.
    outcomes = {s.attributes.get("dsqlkit.unit.outcome") for s in spans if s.attributes}
    assert {"committed", "conflicts_exhausted", "commit_outcome_unknown", "failed"} <= outcomes
    reasons = {
        e.attributes.get("dsqlkit.connect.failure.reason")
        for s in spans
        for e in s.events
        if e.attributes
    }
    assert "53400" in reasons
    assert any(s.attributes and s.attributes.get("error.type") == "token" for s in spans)
