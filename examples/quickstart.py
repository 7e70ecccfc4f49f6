"""Quickstart: start a local DSQL endpoint, connect with an IAM token over verified TLS.

Run it with `nox -s demo` (or `python examples/quickstart.py` with `dsqlkit[local]` installed).
"""

from __future__ import annotations

import time

import psycopg

from dsqlkit.testing import LocalDsql


def main() -> None:
    started = time.perf_counter()
    with LocalDsql() as local:
        print(
            f"local DSQL endpoint {local.host} on 127.0.0.1:{local.port} "
            f"(ready in {time.perf_counter() - started:.2f}s)"
        )
        # conninfo() mints a fresh IAM token with boto3 and sets sslmode=verify-full.
        with psycopg.connect(local.conninfo(sslnegotiation="direct")) as conn:
            user, tz, version = conn.execute(
                "SELECT current_user, current_setting('TimeZone'), version()"
            ).fetchone() or ("?", "?", "?")
            tls = "verified TLS" if conn.pgconn.ssl_in_use else "NO TLS"
            print(f"connected as {user} over {tls}, TimeZone={tz}")
            print(f"server: {version}")
        counters = local.counters()
        print(
            f"endpoint counters: accepted={counters['connections_accepted']} "
            f"authenticated={counters['connections_authenticated']}"
        )


if __name__ == "__main__":
    main()
