"""IAM authentication tokens: who signs them, and what each one costs.

A token is a SigV4-presigned URL made locally (no network). boto3's ``dsql`` client can make
one, but dsqlkit signs it itself (`presign`, byte-identical to botocore's; the tests compare
them) with the credentials boto3's chain finds: botocore's request signer costs ~150 us per
token, ours ~20 us. boto3 itself is not even imported when the credentials are static keys in
the environment or in the shared credentials/config files (a plain profile): that import is
most of a cold start. Anything else (SSO, roles, credential_process, instance roles) goes
through boto3's session, created once under a lock (creating them concurrently on first use
is racy).

Anything with the `TokenProvider` signature can replace boto3, e.g. a function that fetches
tokens from another service.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import hmac
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable
from urllib.parse import quote

from ._errors import ConfigurationError, TokenError
from ._stats import Counters
from ._telemetry import token_signed

if TYPE_CHECKING:
    import boto3

__all__ = [
    "Boto3TokenProvider",
    "EnvTokenProvider",
    "TokenProvider",
    "explain_auth_failure",
    "signing_logs_hidden",
]

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


@contextlib.contextmanager
def signing_logs_hidden() -> Iterator[None]:
    """While inside, this thread's records from botocore's signing loggers are dropped (they
    print the canonical request and signature at DEBUG: together, a token)."""
    _install_log_filters()
    previous = getattr(_signing, "active", False)
    _signing.active = True
    try:
        yield
    finally:
        _signing.active = previous


class Boto3TokenProvider:
    """Signs tokens with the credentials boto3 finds: admin tokens for ``admin``, else DbConnect.

    With no ``session``, static keys in the shared credentials or config file (the profile
    ``profile_name``, ``AWS_PROFILE`` or ``default`` with plain ``aws_access_key_id`` /
    ``aws_secret_access_key`` / ``aws_session_token`` and nothing that makes boto3 fetch
    credentials, such as ``role_arn``, ``credential_process`` or ``sso_*``) are read without
    importing boto3; anything else goes through a ``boto3.Session``. Either way the token is
    signed locally by `presign`, identical to botocore's.

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
        #: Static keys read from the shared files (None: use boto3), looked up once.
        self._static: StaticCredentials | None = None
        self._looked_up = session is not None
        self._credentials: Any = None

    def __repr__(self) -> str:
        source = self.profile_name or ("session" if self.session else "default chain")
        return f"Boto3TokenProvider({source}, expires_in={self.expires_in})"

    @property
    def uses_boto3(self) -> bool:
        """False when tokens are signed from static keys in the shared files, without boto3."""
        return not self._static_credentials()

    def _static_credentials(self) -> StaticCredentials | None:
        if not self._looked_up:
            with self._session_lock:
                if not self._looked_up:
                    self._static = static_profile_credentials(self.profile_name)
                    self._looked_up = True
        return self._static

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

    def _boto3_credentials(self) -> Any:
        """The session's credentials object (botocore refreshes temporary ones), found once."""
        credentials = self._credentials
        if credentials is None:
            session = self._session()
            with self._session_lock:
                if self._credentials is None:
                    self._credentials = session.get_credentials()
                credentials = self._credentials
        return credentials

    def check_credentials(self) -> None:
        """Raise `ConfigurationError` now if no credentials can be found for signing."""
        if self._static_credentials() is not None:
            return
        if self._boto3_credentials() is None:
            raise ConfigurationError(
                "no AWS credentials found to sign DSQL tokens: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, use an AWS profile, run with an IAM role, or pass "
                "boto3_session="
            )

    def client(self, region: str) -> Any:
        """The shared ``dsql`` client for this credentials source and ``region``, built on
        the first call (pools never ask: they sign without it).

        None when the credentials are static keys from the shared files: nothing of boto3 is
        loaded then. Tokens are signed without the client either way.
        """
        if self._static_credentials() is not None:
            return None
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

    def __call__(self, *, host: str, region: str, user: str, now: dt.datetime | None = None) -> str:
        action = "DbConnectAdmin" if user == "admin" else "DbConnect"
        static = self._static_credentials()
        if static is not None:
            key_id, secret, session_token = static
        else:
            _install_log_filters()
            _signing.active = True
            try:
                credentials = self._boto3_credentials()
                if credentials is None:
                    raise TokenError(
                        f"could not sign a DSQL token for user {user!r} in {region}: "
                        "no AWS credentials found"
                    )
                frozen = credentials.get_frozen_credentials()  # refreshes expiring ones
            except TokenError:
                raise
            except Exception as exc:  # refresh failures; never includes the token
                raise TokenError(
                    f"could not sign a DSQL token for user {user!r} in {region}: "
                    f"{type(exc).__name__}: {exc}"
                ) from None
            finally:
                _signing.active = False
            key_id, secret, session_token = frozen.access_key, frozen.secret_key, frozen.token
        return presign(
            host=host,
            region=region,
            action=action,
            key_id=key_id,
            secret=secret,
            session_token=session_token or None,
            expires_in=self.expires_in,
            now=now or dt.datetime.now(dt.timezone.utc),
        )


#: (access key id, secret access key, session token or None).
StaticCredentials = tuple[str, str, "str | None"]

#: Profile settings that cannot change which credentials boto3 finds for a profile. A profile
#: with any other setting (role_arn, source_profile, credential_process, sso_*, login_session,
#: web_identity_token_file, aws_security_token, ...) is left to boto3.
_INERT_SETTINGS = frozenset({
    "aws_access_key_id", "aws_secret_access_key", "aws_session_token", "region", "output",
    "cli_pager", "cli_history", "cli_timestamp_format", "cli_binary_format", "cli_auto_prompt",
    "retry_mode", "max_attempts", "ca_bundle", "parameter_validation", "tcp_keepalive",
    "defaults_mode", "endpoint_url", "use_fips_endpoint", "use_dualstack_endpoint",
    "sts_regional_endpoints", "s3", "services", "aws_account_id",
})  # fmt: skip
#: Environment variables that put another credentials source before the shared files.
_CHAIN_VARIABLES = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
    "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN",
)  # fmt: skip


def static_profile_credentials(
    profile_name: str | None = None, environ: Mapping[str, str] | None = None
) -> StaticCredentials | None:
    """The static keys boto3 would find for a profile in the shared files, or None.

    Reads ``AWS_SHARED_CREDENTIALS_FILE`` (``~/.aws/credentials``) and ``AWS_CONFIG_FILE``
    (``~/.aws/config``) the way botocore does. None whenever boto3 could find anything else
    first (or fail): environment keys (unless the profile is explicit), web identity, a role,
    a credential process, SSO, a missing profile, partial keys or an unreadable file.
    """
    import configparser  # only here: most processes never read a profile

    env = os.environ if environ is None else environ
    if not profile_name and any(env.get(name) for name in _CHAIN_VARIABLES):
        return None  # an explicit profile makes botocore skip the environment variables
    name = profile_name or env.get("AWS_DEFAULT_PROFILE") or env.get("AWS_PROFILE") or "default"
    try:
        credentials_file = _read_ini(
            env.get("AWS_SHARED_CREDENTIALS_FILE") or "~/.aws/credentials"
        ).get(name)
        config_sections = _read_ini(env.get("AWS_CONFIG_FILE") or "~/.aws/config")
    except (OSError, configparser.Error, UnicodeDecodeError):
        return None
    named = [values for section, values in config_sections.items()
             if _profile_of(section) == name]  # fmt: skip
    if len(named) > 1:
        return None
    config = named[0] if named else None
    merged = {**(config or {}), **(credentials_file or {})}
    if not merged or not set(merged) <= _INERT_SETTINGS:
        return None
    for source in (credentials_file, config):
        if source and ("aws_access_key_id" in source or "aws_secret_access_key" in source):
            key_id = source.get("aws_access_key_id", "")
            secret = source.get("aws_secret_access_key", "")
            if not key_id or not secret:
                return None  # partial keys: boto3 raises a clear error
            return key_id, secret, source.get("aws_session_token") or None
    return None


def _profile_of(section: str) -> str | None:
    if section == "default":
        return "default"
    words = section.split(None, 1)
    if len(words) == 2 and words[0] == "profile":
        return words[1].strip().strip('"')
    return None


def _read_ini(path: str) -> dict[str, dict[str, str]]:
    """Sections of an INI file as botocore reads them; {} when the file does not exist."""
    import configparser

    path = os.path.expanduser(os.path.expandvars(path))
    if not os.path.isfile(path):
        return {}
    parser = configparser.RawConfigParser()
    parser.read([path])
    return {section: dict(parser.items(section)) for section in parser.sections()}


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
    """A DSQL token: a SigV4 query-string presigned ``GET https://<host>/?Action=...``.

    Byte-identical to botocore's ``generate_db_connect_auth_token`` for the same inputs,
    including a host in upper or mixed case: botocore signs the host as URL parsing gives it
    (lower-cased), and keeps the host as given at the front of the token.
    """
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
    query = "&".join(f"{_quote(k)}={_quote(v)}" for k, v in sorted(params.items()))
    canonical = "\n".join(["GET", "/", query, f"host:{host.lower()}", "", "host", _EMPTY_SHA256])
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = _signing_key(secret, date, region)
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    # botocore signs over the sorted query but writes the security token after the others.
    shown = {k: v for k, v in sorted(params.items()) if k != "X-Amz-Security-Token"}
    if session_token:
        shown["X-Amz-Security-Token"] = session_token
    url_query = "&".join(f"{_quote(k)}={_quote(v)}" for k, v in shown.items())
    return f"{host}/?{url_query}&X-Amz-Signature={signature}"


_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


@functools.lru_cache(maxsize=64)
def _quote(value: str) -> str:
    """SigV4's URI encoding; most values (names, action, credential scope) repeat."""
    return quote(value, safe="-_.~")


@functools.lru_cache(maxsize=8)
def _signing_key(secret: str, date: str, region: str) -> bytes:
    """SigV4's derived key: changes once a day per credentials and Region, so it is cached."""
    return _hmac(_hmac(_hmac(_hmac(("AWS4" + secret).encode(), date), region), "dsql"),
                 "aws4_request")  # fmt: skip


class TokenStats(Counters):
    """Counters of a `TokenMinter` (``tokens_*`` in the pool's ``get_stats()``)."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(("tokens_minted", "tokens_mint_us", "tokens_failed"))

    def pop(self, reset: bool) -> dict[str, int]:
        """The counters as ``get_stats()`` shows them (mint time in whole milliseconds)."""
        values = self.snapshot(reset)
        return {
            "tokens_minted": values["tokens_minted"],
            "tokens_mint_ms": round(values["tokens_mint_us"] / 1000),
            "tokens_failed": values["tokens_failed"],
        }


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
            self.stats.add("tokens_failed")
            token_signed(time.perf_counter() - start, self.region, False)
            raise
        elapsed = time.perf_counter() - start
        self.stats.add("tokens_minted")
        self.stats.add("tokens_mint_us", round(elapsed * 1e6))
        token_signed(elapsed, self.region, True)
        _logger.debug("minted a token for %s in %s (%.3f s)", self.user, self.region, elapsed)
        return token


def explain_auth_failure(*, user: str, host: str, region: str, signer: object) -> str:
    """What ``IAM authentication failed for user "<user>"`` can mean, and what to check.

    DSQL answers all of these causes with the same words, so the message lists them in the
    order they are met in practice, filled in for this user, host, Region and token signer.
    It never contains the token (nor anything from which it could be rebuilt).
    """
    admin = user == "admin"
    action = "dsql:DbConnectAdmin" if admin else "dsql:DbConnect"
    cluster_id = host.split(".", 1)[0]
    lines = [
        f'IAM authentication failed for user "{user}" at {host}: DSQL refused the token '
        f"({action.split(':')[1]}, signed for {host} in {region} by {signer!r}). DSQL gives "
        "this one answer for each of these causes; check them in order:",
        "  - credentials: expired, revoked or not the ones you expect (tokens are signed "
        "locally, so stale or wrong credentials still produce one); `aws sts "
        "get-caller-identity` run with the same environment or profile shows who signs",
        f"  - permission: that identity needs {action} on arn:aws:dsql:{region}:<account>:"
        f"cluster/{cluster_id}"
        + (
            " (the admin role needs DbConnectAdmin; DbConnect is not enough)"
            if admin
            else " (DbConnectAdmin is only for the admin role)"
        ),
    ]
    if not admin:
        lines += [
            f'  - role mapping: the role "{user}" must be mapped to that identity: as admin, '
            f"AWS IAM GRANT {user} TO '<the identity's IAM role ARN>' (mappings are listed "
            "in sys.iam_pg_role_mappings)",
            f'  - user: the role "{user}" must exist (as admin: CREATE ROLE {user} WITH LOGIN) '
            "and be spelled as created; user='admin' is the built-in administrator",
        ]
    lines.append(
        f"  - endpoint: the token must name this cluster's real host and Region ({host}, "
        f"{region}): check region=, cluster_id= and the host name, and that this machine's "
        "clock is right (a token is valid from its signing time for token_expires_in seconds)"
    )
    return "\n".join(lines)
