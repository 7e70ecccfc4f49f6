"""Token verification against tokens signed by boto3's real DSQL signer (pure logic, no I/O)."""

from __future__ import annotations

import datetime as dt

import pytest

from dsqlkit.testing._sigv4 import Credentials, TokenRejected, verify_token

from ..boto import session as boto3_session

HOST = "abcdefghijklmnopqrstuvwxyz.dsql.us-east-1.on.aws"
REGION = "us-east-1"
KEY_ID, SECRET = "AKIATESTTESTTEST0001", "s3cr3t/s3cr3t+s3cr3t"
TRUSTED = {KEY_ID: Credentials(KEY_ID, SECRET)}


def client(secret: str = SECRET, key_id: str = KEY_ID, region: str = REGION):  # type: ignore[no-untyped-def]
    session = boto3_session(
        aws_access_key_id=key_id, aws_secret_access_key=secret, region_name=region
    )
    return session.client("dsql")


def check(token: str, user: str = "admin", now: dt.datetime | None = None) -> None:
    verify_token(token, host=HOST, region=REGION, user=user, credentials=TRUSTED, now=now)


def reason(token: str, user: str = "admin", now: dt.datetime | None = None) -> str:
    with pytest.raises(TokenRejected) as info:
        check(token, user, now)
    assert "token" in str(info.value)
    return info.value.reason


def test_admin_and_role_tokens_verify() -> None:
    check(client().generate_db_connect_admin_auth_token(HOST, REGION, 900), "admin")
    check(client().generate_db_connect_auth_token(HOST, REGION, 900), "app_user")


def test_host_is_case_insensitive() -> None:
    check(client().generate_db_connect_admin_auth_token(HOST.upper(), REGION, 60))


def test_wrong_secret_is_a_bad_signature() -> None:
    token = client(secret="another-secret").generate_db_connect_admin_auth_token(HOST, REGION)
    assert reason(token) == "bad_signature"


def test_unknown_access_key() -> None:
    token = client(key_id="AKIAUNKNOWNUNKNOWN00").generate_db_connect_admin_auth_token(HOST, REGION)
    assert reason(token) == "unknown_key"


def test_other_host_and_region() -> None:
    other_host = "zyxwvutsrqponmlkjihgfedcba.dsql.us-east-1.on.aws"
    assert reason(client().generate_db_connect_admin_auth_token(other_host, REGION)) == (
        "wrong_host"
    )
    token = client(region="us-west-2").generate_db_connect_admin_auth_token(HOST, "us-west-2")
    assert reason(token) == "wrong_region"


def test_action_must_match_the_user() -> None:
    assert reason(client().generate_db_connect_admin_auth_token(HOST, REGION), "app") == (
        "wrong_action"
    )
    assert reason(client().generate_db_connect_auth_token(HOST, REGION), "admin") == (
        "wrong_action"
    )


def test_expiry_window() -> None:
    token = client().generate_db_connect_admin_auth_token(HOST, REGION, 60)
    now = dt.datetime.now(dt.timezone.utc)
    check(token, now=now + dt.timedelta(seconds=59))
    assert reason(token, now=now + dt.timedelta(seconds=62)) == "expired"
    assert reason(token, now=now - dt.timedelta(minutes=10)) == "not_yet_valid"


def test_tampering_breaks_the_signature() -> None:
    token = client().generate_db_connect_admin_auth_token(HOST, REGION, 60)
    assert reason(token.replace("X-Amz-Expires=60", "X-Amz-Expires=600")) == "bad_signature"
    assert reason(token.replace("Action=DbConnectAdmin", "Action=DbConnect")) == "bad_signature"


@pytest.mark.parametrize(
    "token",
    [
        "",
        "not a token",
        f"{HOST}/?",
        f"{HOST}/?Action=DbConnectAdmin",
        f"{HOST}/?Action=DbConnectAdmin&X-Amz-Algorithm=AWS4-HMAC-SHA1&X-Amz-Credential=a"
        "&X-Amz-Date=20260101T000000Z&X-Amz-Expires=60&X-Amz-SignedHeaders=host&X-Amz-Signature=0",
    ],
)
def test_malformed_tokens(token: str) -> None:
    assert reason(token) in {"malformed", "wrong_host"}


def test_a_token_valid_for_over_a_week_is_refused_naming_the_limit() -> None:
    check(client().generate_db_connect_admin_auth_token(HOST, REGION, 604_800))
    with pytest.raises(TokenRejected) as info:
        check(client().generate_db_connect_admin_auth_token(HOST, REGION, 604_801))
    assert info.value.reason == "expires_too_long"
    assert info.value.detail == "X-Amz-Expires must be less than a week (in seconds)"  # DSQL's
    assert "604800" in str(info.value)  # the endpoint's log names the limit


def test_the_signer_is_returned_with_its_identity() -> None:
    arn = "arn:aws:iam::111122223333:role/app"
    trusted = {KEY_ID: Credentials(KEY_ID, SECRET, arn)}
    token = client().generate_db_connect_auth_token(HOST, REGION, 900)
    signer = verify_token(token, host=HOST, region=REGION, user="app", credentials=trusted)
    assert signer.arn == arn
    assert SECRET not in repr(signer)
