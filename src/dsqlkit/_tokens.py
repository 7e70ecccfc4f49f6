"""IAM authentication tokens: who signs them, and what each one costs.

A token is a SigV4-presigned URL made locally (no network) by boto3's ``dsql`` client. Making
the *client* is the expensive part (milliseconds, and racy when done concurrently on first
use), so dsqlkit keeps one client per (credentials source, Region), created once under a lock,
and signs every token with it (about 0.1-0.2 ms).

Anything with the `TokenProvider` signature can replace boto3, e.g. a function that fetches
tokens from another service.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable
from urllib.parse import quote

from ._errors import ConfigurationError, TokenError

if TYPE_CHECKING:
    import boto3

__all__ = ["Boto3TokenProvider", "EnvTokenProvider", "TokenProvider"]

_logger = logging.getLogger("dsqlkit.tokens")

#: Default token validity. A token matters only while connecting, so minutes are plenty and
#: keep a leaked token's value low.
DEFAULT_TOKEN_EXPIRES_IN = 300
MAX_TOKEN_EXPIRES_IN = 604_800


@runtime_checkable
class TokenProvider(Protocol):
    """Returns a fresh IAM token (the password) for ``user`` at ``host`` in ``region``.

    Called once per physical connection, from a worker thread (never on an event loop), so
    it may block briefly. It must not log or otherwise expose the token.
    """

    def __call__(self, *, host: str, region: str, user: str) -> str: ...


_clients: dict[tuple[object, str], Any] = {}
_clients_lock = threading.Lock()

#: botocore logs the canonical request and the signature at DEBUG: together, the token.
#: While dsqlkit signs a token, records from these loggers are dropped (this thread only).
_SIGNING_LOGGERS = ("botocore.auth", "botocore.signers", "botocore.hooks")
_signing = threading.local()


class _HideTokenSigning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_signing, "active", False)


_hide_signing = _HideTokenSigning()
_filters_installed = False


def _install_log_filters() -> None:
    global _filters_installed
    if not _filters_installed:
        for name in _SIGNING_LOGGERS:
            logging.getLogger(name).addFilter(_hide_signing)
        _filters_installed = True


class Boto3TokenProvider:
    """Signs tokens with boto3's ``dsql`` client: admin tokens for ``admin``, else DbConnect.

    Args:
        session: the ``boto3.Session`` whose credentials sign; default: boto3's default chain.
        profile_name: a named profile instead of a session.
        expires_in: token validity in seconds (default 300).
    """

    def __init__(
        self,
        session: boto3.Session | None = None,
        *,
        profile_name: str | None = None,
        expires_in: int = DEFAULT_TOKEN_EXPIRES_IN,
    ) -> None:
        if session is not None and profile_name is not None:
            raise ConfigurationError("pass either a boto3 session or a profile_name, not both")
        if not isinstance(expires_in, int) or not 1 <= expires_in <= MAX_TOKEN_EXPIRES_IN:
            raise ConfigurationError(
                f"token expires_in must be 1 to {MAX_TOKEN_EXPIRES_IN} seconds, not {expires_in!r}"
            )
        self.session = session
        self.profile_name = profile_name
        self.expires_in = expires_in
        self._session_lock = threading.Lock()

    def __repr__(self) -> str:
        source = self.profile_name or ("session" if self.session else "default chain")
        return f"Boto3TokenProvider({source}, expires_in={self.expires_in})"

    def _session(self) -> boto3.Session:
        if self.session is None:
            with self._session_lock:
                if self.session is None:
                    import boto3

                    try:
                        self.session = boto3.Session(profile_name=self.profile_name)
                    except Exception as exc:  # botocore's ProfileNotFound and friends
                        raise ConfigurationError(
                            f"cannot use AWS profile {self.profile_name!r}: {exc}"
                        ) from None
        return self.session

    def check_credentials(self) -> None:
        """Raise `ConfigurationError` now if no credentials can be found for signing."""
        if self._session().get_credentials() is None:
            raise ConfigurationError(
                "no AWS credentials found to sign DSQL tokens: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, use an AWS profile, run with an IAM role, or pass "
                "boto3_session="
            )

    def client(self, region: str) -> Any:
        """The shared ``dsql`` client for this credentials source and ``region``."""
        key = (self.session if self.session is not None else self.profile_name, region)
        client = _clients.get(key)
        if client is None:
            session = self._session()
            key = (self.session if self.session is not None else self.profile_name, region)
            with _clients_lock:
                client = _clients.get(key)
                if client is None:
                    client = session.client("dsql", region_name=region)
                    _clients[key] = client
        return client

    def __call__(self, *, host: str, region: str, user: str) -> str:
        client = self.client(region)
        _install_log_filters()
        _signing.active = True
        try:
            if user == "admin":
                token: str = client.generate_db_connect_admin_auth_token(
                    host, region, self.expires_in
                )
            else:
                token = client.generate_db_connect_auth_token(host, region, self.expires_in)
        except Exception as exc:  # NoCredentialsError and friends; never includes the token
            raise TokenError(
                f"could not sign a DSQL token for user {user!r} in {region}: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        finally:
            _signing.active = False
        return token


class EnvTokenProvider:
    """Signs tokens from ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (and
    ``AWS_SESSION_TOKEN``) without loading boto3.

    The same SigV4 presigning botocore does (the test suite checks the tokens are identical),
    in tens of microseconds and without botocore's ~120 ms import: what a Lambda function's
    cold start pays otherwise. The default when those variables are set and no session,
    profile or provider is given. Credentials are read at each signing, so rotated values are
    picked up.

    Args:
        expires_in: token validity in seconds (default 300).
    """

    def __init__(self, *, expires_in: int = DEFAULT_TOKEN_EXPIRES_IN) -> None:
        if not isinstance(expires_in, int) or not 1 <= expires_in <= MAX_TOKEN_EXPIRES_IN:
            raise ConfigurationError(
                f"token expires_in must be 1 to {MAX_TOKEN_EXPIRES_IN} seconds, not {expires_in!r}"
            )
        self.expires_in = expires_in

    def __repr__(self) -> str:
        return f"EnvTokenProvider(expires_in={self.expires_in})"

    @staticmethod
    def available(environ: Any = None) -> bool:
        env = os.environ if environ is None else environ
        return bool(env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"))

    def __call__(self, *, host: str, region: str, user: str, now: dt.datetime | None = None) -> str:
        key_id = os.environ.get("AWS_ACCESS_KEY_ID", "")
        secret = os.environ.get("AWS_SECRET_ACCESS_KEY", "")
        if not key_id or not secret:
            raise TokenError(
                "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY are no longer set; pass boto3_session="
            )
        return presign(
            host=host,
            region=region,
            action="DbConnectAdmin" if user == "admin" else "DbConnect",
            key_id=key_id,
            secret=secret,
            session_token=os.environ.get("AWS_SESSION_TOKEN") or None,
            expires_in=self.expires_in,
            now=now or dt.datetime.now(dt.timezone.utc),
        )


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def presign(
    *,
    host: str,
    region: str,
    action: str,
    key_id: str,
    secret: str,
    session_token: str | None,
    expires_in: int,
    now: dt.datetime,
) -> str:
    """A DSQL token: a SigV4 query-string presigned ``GET https://<host>/?Action=...``."""
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    date = amz_date[:8]
    scope = f"{date}/{region}/dsql/aws4_request"
    params = {
        "Action": action,
        "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
        "X-Amz-Credential": f"{key_id}/{scope}",
        "X-Amz-Date": amz_date,
        "X-Amz-Expires": str(expires_in),
        "X-Amz-SignedHeaders": "host",
    }
    if session_token:
        params["X-Amz-Security-Token"] = session_token
    query = "&".join(
        f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(params.items())
    )
    canonical = "\n".join(["GET", "/", query, f"host:{host}", "", "host", _EMPTY_SHA256])
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = _hmac(_hmac(_hmac(_hmac(("AWS4" + secret).encode(), date), region), "dsql"),
                "aws4_request")  # fmt: skip
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    # botocore signs over the sorted query but writes the security token after the others.
    shown = {k: v for k, v in sorted(params.items()) if k != "X-Amz-Security-Token"}
    if session_token:
        shown["X-Amz-Security-Token"] = session_token
    url_query = "&".join(
        f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in shown.items()
    )
    return f"{host}/?{url_query}&X-Amz-Signature={signature}"


_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


@dataclass
class TokenStats:
    """Counters of a `TokenMinter`; read through the pool's ``get_stats()``."""

    minted: int = 0
    mint_ms: float = 0.0
    failures: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def pop(self, reset: bool) -> dict[str, int]:
        with self.lock:
            values = {
                "tokens_minted": self.minted,
                "tokens_mint_ms": round(self.mint_ms),
                "tokens_failed": self.failures,
            }
            if reset:
                self.minted, self.mint_ms, self.failures = 0, 0.0, 0
        return values


class TokenMinter:
    """Mints one token for one endpoint, counting how many and how long it took."""

    def __init__(self, provider: TokenProvider, *, host: str, region: str, user: str) -> None:
        self.provider = provider
        self.host = host
        self.region = region
        self.user = user
        self.stats = TokenStats()

    def __call__(self) -> str:
        start = time.perf_counter()
        try:
            token = self.provider(host=self.host, region=self.region, user=self.user)
        except Exception:
            with self.stats.lock:
                self.stats.failures += 1
            raise
        elapsed = (time.perf_counter() - start) * 1000
        with self.stats.lock:
            self.stats.minted += 1
            self.stats.mint_ms += elapsed
        _logger.debug("minted a token for %s in %s (%.3f ms)", self.user, self.region, elapsed)
        return token
