"""Issue 19 item 9: tokens signed for a host in any case are byte-identical to botocore's.

botocore signs the lower-cased host (``urlsplit(...).hostname``); a provider called directly
with ``HOST.DSQL.US-EAST-1.ON.AWS`` must sign the same string. Randomised inputs, fixed time
and credentials per case (the seed is printed by the parametrisation).
"""

from __future__ import annotations

import datetime as dt
import random
import string
from typing import Any

import botocore.auth
import pytest

from dsqlkit import Boto3TokenProvider, EnvTokenProvider
from dsqlkit._tokens import presign

from ..boto import session as boto3_session

REGIONS = ("us-east-1", "eu-west-2", "ap-northeast-1", "us-gov-west-1", "il-central-1")


def _case(rng: random.Random, text: str) -> str:
    return "".join(c.upper() if rng.random() < 0.5 else c for c in text)


def _inputs(seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    cluster = "".join(rng.choices(string.ascii_lowercase + string.digits, k=26))
    region = rng.choice(REGIONS)
    host = f"{cluster}.dsql.{region}.on.aws"
    if rng.random() < 0.3:
        host = rng.choice(["db.example.com", "dsql-tunnel.internal", "vpce-0ab.example.aws"])
    return {
        "host": _case(rng, host) if seed % 4 else host.upper(),
        "region": region,
        "user": rng.choice(["admin", "app", "Reporting_Role"]),
        "key_id": "AKIA" + "".join(rng.choices(string.ascii_uppercase + string.digits, k=16)),
        "secret": "".join(rng.choices(string.ascii_letters + string.digits + "/+", k=40)),
        "session_token": rng.choice([None, "IQoJb3JpZ2luX2Vj" + str(seed) + "+/=="]),
        "expires_in": rng.choice([1, 60, 300, 900, 3600, 604_800]),
        "now": dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
        + dt.timedelta(seconds=rng.randrange(0, 400 * 86400)),
    }


def _botocore(monkeypatch: pytest.MonkeyPatch, case: dict[str, Any]) -> str:
    now = case["now"].replace(tzinfo=None)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda remove_tzinfo=True: now)
    client: Any = boto3_session(
        aws_access_key_id=case["key_id"],
        aws_secret_access_key=case["secret"],
        aws_session_token=case["session_token"],
    ).client("dsql", region_name=case["region"])
    generate = (
        client.generate_db_connect_admin_auth_token
        if case["user"] == "admin"
        else client.generate_db_connect_auth_token
    )
    return str(generate(case["host"], case["region"], case["expires_in"]))


@pytest.mark.parametrize("seed", range(24))
def test_presign_matches_botocore_for_any_host_case(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    case = _inputs(seed)
    expected = _botocore(monkeypatch, case)
    ours = presign(
        host=case["host"],
        region=case["region"],
        action="DbConnectAdmin" if case["user"] == "admin" else "DbConnect",
        key_id=case["key_id"],
        secret=case["secret"],
        session_token=case["session_token"],
        expires_in=case["expires_in"],
        now=case["now"],
    )
    assert ours == expected


@pytest.mark.parametrize("seed", range(100, 108))
def test_providers_called_directly_match_botocore(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    case = _inputs(seed)
    expected = _botocore(monkeypatch, case)
    session = boto3_session(
        aws_access_key_id=case["key_id"],
        aws_secret_access_key=case["secret"],
        aws_session_token=case["session_token"],
    )
    boto = Boto3TokenProvider(session, expires_in=case["expires_in"])
    call = {"host": case["host"], "region": case["region"], "user": case["user"]}
    assert boto(**call, now=case["now"]) == expected
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", case["key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", case["secret"])
    if case["session_token"]:
        monkeypatch.setenv("AWS_SESSION_TOKEN", case["session_token"])
    else:
        monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    env = EnvTokenProvider(expires_in=case["expires_in"])
    assert env(**call, now=case["now"]) == expected
