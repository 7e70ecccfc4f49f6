"""Verification of DSQL IAM tokens: SigV4 query-string signatures, checked from first principles.

A DSQL token is a presigned ``GET https://<host>/?Action=DbConnect[Admin]&X-Amz-...`` URL without
its scheme. The endpoint recomputes the signature with the secret it shares with the test's
``boto3.Session`` (AWS Signature Version 4, query-string form, payload hash of the empty body) and
checks every claim the token makes: host, region, service, action and validity window.

This is written independently of botocore on purpose: a verifier that called botocore's own
signer would agree with any bug in it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from dataclasses import dataclass, field
from urllib.parse import quote, unquote

ALGORITHM = "AWS4-HMAC-SHA256"
SERVICE = "dsql"
#: botocore signs DSQL tokens with the hash of an empty body, not UNSIGNED-PAYLOAD.
EMPTY_PAYLOAD_HASH = hashlib.sha256(b"").hexdigest()
#: The longest validity SigV4 presigned URLs allow (7 days).
MAX_EXPIRES = 604_800
#: Accepted clock difference for a token whose X-Amz-Date lies in the future.
CLOCK_SKEW = dt.timedelta(minutes=5)


class TokenRejected(Exception):
    """The token does not authenticate; ``reason`` is a short machine-readable label.

    ``detail`` is what the client may be told beyond DSQL's one-line refusal (``None``:
    nothing, as for a bad signature).
    """

    def __init__(self, reason: str, explanation: str, detail: str | None = None) -> None:
        super().__init__(explanation)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Credentials:
    """Signing credentials the endpoint trusts, and the IAM identity (ARN) they belong to."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    arn: str = ""


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def _uri_encode(value: str) -> str:
    """RFC 3986 encoding as SigV4 canonical query strings require."""
    return quote(value, safe="-_.~")


def signing_key(secret: str, date: str, region: str) -> bytes:
    key = _hmac(("AWS4" + secret).encode(), date)
    key = _hmac(key, region)
    key = _hmac(key, SERVICE)
    return _hmac(key, "aws4_request")


def verify_token(
    token: str,
    *,
    host: str,
    region: str,
    user: str,
    credentials: dict[str, Credentials],
    now: dt.datetime | None = None,
) -> Credentials:
    """The credentials that signed ``token``; `TokenRejected` unless it is valid for ``user``.

    ``credentials`` maps access key ids to the credentials the endpoint trusts.
    """
    now = now or dt.datetime.now(dt.timezone.utc)
    token_host, sep, query = token.partition("/?")
    if not sep or not query:
        raise TokenRejected("malformed", "the password is not a DSQL IAM token")
    if token_host.lower() != host.lower():
        raise TokenRejected("wrong_host", f"token was signed for host {token_host!r}")

    params: dict[str, str] = {}
    for pair in query.split("&"):
        key, eq, value = pair.partition("=")
        if not eq:
            raise TokenRejected("malformed", "token query string is malformed")
        params[unquote(key)] = unquote(value)
    try:
        action = params["Action"]
        algorithm = params["X-Amz-Algorithm"]
        credential = params["X-Amz-Credential"]
        amz_date = params["X-Amz-Date"]
        expires = int(params["X-Amz-Expires"])
        signed_headers = params["X-Amz-SignedHeaders"]
        signature = params["X-Amz-Signature"]
    except (KeyError, ValueError):
        raise TokenRejected("malformed", "token lacks a required SigV4 parameter") from None

    if algorithm != ALGORITHM or signed_headers != "host":
        raise TokenRejected("malformed", "token is not a SigV4 presigned URL signing 'host'")
    scope = credential.split("/")
    if len(scope) != 5 or scope[3] != SERVICE or scope[4] != "aws4_request":
        raise TokenRejected("malformed", "token credential scope is not for the dsql service")
    key_id, date, token_region = scope[0], scope[1], scope[2]
    if token_region != region:
        raise TokenRejected("wrong_region", f"token was signed for region {token_region!r}")
    known = credentials.get(key_id)
    if known is None:
        raise TokenRejected("unknown_key", "token was signed with an unknown access key")

    signed_at = _parse_amz_date(amz_date)
    if signed_at is None or not amz_date.startswith(date):
        raise TokenRejected("malformed", "token X-Amz-Date is invalid")
    if expires > MAX_EXPIRES:
        message = (
            f"token X-Amz-Expires is {expires} seconds, over the maximum of {MAX_EXPIRES} "
            "seconds (one week)"
        )
        # DSQL's words, as AWS's connector tests expect them.
        raise TokenRejected(
            "expires_too_long",
            message,
            detail="X-Amz-Expires must be less than a week (in seconds)",
        )
    if expires < 1:
        raise TokenRejected("malformed", "token X-Amz-Expires is out of range")

    canonical_query = "&".join(
        f"{_uri_encode(k)}={_uri_encode(v)}"
        for k, v in sorted(params.items())
        if k != "X-Amz-Signature"
    )
    canonical_request = "\n".join(
        ["GET", "/", canonical_query, f"host:{token_host.lower()}", "", "host", EMPTY_PAYLOAD_HASH]
    )
    string_to_sign = "\n".join(
        [
            ALGORITHM,
            amz_date,
            f"{date}/{region}/{SERVICE}/aws4_request",
            hashlib.sha256(canonical_request.encode()).hexdigest(),
        ]
    )
    expected = hmac.new(
        signing_key(known.secret_access_key, date, region),
        string_to_sign.encode(),
        hashlib.sha256,
    ).hexdigest()
    if not hmac.compare_digest(expected, signature):
        raise TokenRejected("bad_signature", "token signature does not match")

    # Only a correctly signed token gets told about time and action.
    if signed_at - CLOCK_SKEW > now:
        raise TokenRejected("not_yet_valid", "token X-Amz-Date is in the future")
    if now > signed_at + dt.timedelta(seconds=expires):
        raise TokenRejected("expired", "token has expired")
    wanted = "DbConnectAdmin" if user == "admin" else "DbConnect"
    if action != wanted:
        raise TokenRejected(
            "wrong_action", f"user {user!r} needs a {wanted} token, not {action or 'none'}"
        )
    return known


def _parse_amz_date(value: str) -> dt.datetime | None:
    try:
        return dt.datetime.strptime(value, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.timezone.utc)
    except ValueError:
        return None
