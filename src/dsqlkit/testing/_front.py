"""The local endpoint's own process: ``python -m dsqlkit.testing._front``.

It runs apart from the test process so that its TLS handshakes and relaying never hold the
test's GIL or stall the test's event loop (the pool benchmarks measure exactly that).

It talks with `dsqlkit.testing.LocalDsql` over stdin and stdout in the control protocol of
`._control`. End of stdin (the parent exited or was killed) shuts everything down: sessions,
PostgreSQL, and the work directory.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import ssl
import sys
import threading
import time
from pathlib import Path
from typing import Any

from . import _control as control
from ._context import EndpointConfig
from ._control import Op
from ._faults import CommitFault, ErrorShare, StatementFault
from ._internal import MACHINERY_CHECK, resolve
from ._internal import SCHEMA as INTERNAL_SCHEMA
from ._listener import Endpoint, record_server_name
from ._postgres import EmbeddedPostgres
from ._sigv4 import Credentials

_logger = logging.getLogger("dsqlkit.testing")


def make_tls_context(workdir: Path, host: str) -> ssl.SSLContext:
    """A throwaway CA (written to ``ca.pem``) and a server certificate for ``host``."""
    return make_tls_contexts(workdir, [host])[0]


def make_tls_contexts(workdir: Path, hosts: list[str]) -> list[ssl.SSLContext]:
    """A throwaway CA (written to ``ca.pem``) and a server certificate for each of ``hosts``."""
    import trustme

    ca = trustme.CA(key_type=trustme.KeyType.ECDSA)
    ca.cert_pem.write_to_path(str(workdir / "ca.pem"))
    contexts = []
    for host in hosts:
        server = ca.issue_cert(host, key_type=trustme.KeyType.ECDSA)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        server.configure_cert(context)
        context.set_alpn_protocols(["postgresql"])
        context.sni_callback = record_server_name
        contexts.append(context)
    return contexts


def sql_resource(name: str) -> str:
    """One of the SQL files shipped with this package (``bootstrap.sql``, ``identity.sql``)."""
    from importlib.resources import files

    return files(__package__).joinpath(name).read_text(encoding="utf-8")


def bootstrap(server: EmbeddedPostgres, *, dsql_rules: bool = True) -> None:
    """Create the endpoint's server-side objects; with the rules, DSQL's server identity."""
    import psycopg

    conninfo = backend_conninfo(server)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(resolve(sql_resource("bootstrap.sql")).encode())
        if dsql_rules:
            conn.execute(resolve(sql_resource("identity.sql")).encode())


def backend_conninfo(server: EmbeddedPostgres) -> str:
    """The endpoint's own connection to its PostgreSQL server (the Unix socket, as postgres)."""
    return f"host={server.socket_dir} port={server.port} user=postgres dbname=postgres"


def machinery_present(conninfo: str) -> bool:
    """Whether the server-side objects fault injection relies on are all there."""
    import psycopg

    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute(MACHINERY_CHECK.encode()).fetchone()
    return bool(row and row[0])


def credentials_from(config: dict[str, Any]) -> dict[str, Credentials]:
    """Trusted credentials from the configuration: ``{key: secret}`` or ``{key: {...}}``."""
    trusted = {}
    for key_id, value in config["credentials"].items():
        if isinstance(value, str):
            trusted[key_id] = Credentials(key_id, value)
        else:
            trusted[key_id] = Credentials(key_id, value["secret"], value.get("arn", ""))
    return trusted


class Controller:
    """Applies control requests to the endpoints (one per Region), on their event loop."""

    def __init__(self, endpoint: Endpoint | list[Endpoint], backend: str = "") -> None:
        self.endpoints = endpoint if isinstance(endpoint, list) else [endpoint]
        #: The first endpoint (the only one of a single-Region cluster).
        self.endpoint = self.endpoints[0]
        #: Conninfo of the endpoint's own connection to PostgreSQL ("": no checks).
        self.backend = backend

    async def _require_machinery(self) -> None:
        """Refuse to arm a fault the server can no longer inject (its objects are gone)."""
        if self.backend and not await asyncio.to_thread(machinery_present, self.backend):
            raise RuntimeError(
                "the endpoint's fault-injection objects are gone from its PostgreSQL server "
                f"(schema {INTERNAL_SCHEMA}), so this fault cannot be injected; start a new "
                "LocalDsql"
            )

    def _target(self, request: dict[str, Any]) -> Endpoint:
        index = int(request.get("endpoint", 0))
        if not 0 <= index < len(self.endpoints):
            raise ValueError(f"no endpoint number {index}: there are {len(self.endpoints)}")
        return self.endpoints[index]

    async def handle(self, op: Op, request: dict[str, Any]) -> dict[str, Any]:
        endpoint = self._target(request)
        faults = endpoint.faults
        if op is Op.COUNTERS:
            counters = endpoint.counters.snapshot(len(endpoint.sessions))
            counters["impaired"] = endpoint.impairment
            return {"counters": counters}
        if op is Op.DROP_CONNECTIONS:
            return {"dropped": await endpoint.drop_all()}
        if op is Op.REFUSE_CONNECTIONS:
            faults.refuse_until = time.monotonic() + float(request["seconds"])
            faults.refuse_code = str(request["code"])
            return {}
        if op in (Op.COMMIT_FAULT, Op.STATEMENT_FAULT) or (
            op is Op.IMPAIR and request.get("kind") == "errors"
        ):
            await self._require_machinery()
        if op is Op.COMMIT_FAULT:
            faults.commit_faults.append(
                CommitFault(
                    action=request["action"],
                    remaining=int(request.get("count", 1)),
                    code=str(request.get("code", "OC000")),
                    backend_pid=request.get("backend_pid"),
                )
            )
            return {}
        if op is Op.STATEMENT_FAULT:
            faults.statement_faults.append(
                StatementFault(
                    remaining=int(request.get("count", 1)),
                    backend_pid=request.get("backend_pid"),
                )
            )
            return {}
        if op is Op.IMPAIR:
            kind = request["kind"]
            errors = None
            if kind == "errors":
                errors = ErrorShare(
                    share=float(request["share"]),
                    kinds=tuple(request["errors"]),
                    statements=bool(request["statements"]),
                    commits=bool(request["commits"]),
                    committed=float(request["committed"]),
                    seed=request.get("seed"),
                )
            affected = await endpoint.impair(kind, live=request["live"], errors=errors)
            return {"affected": affected}
        if op is Op.HEAL:
            await endpoint.heal()
            return {}
        if op is Op.ADD_IDENTITY:
            for each in self.endpoints:
                each.add_identity(
                    Credentials(request["access_key_id"], request["secret"], request["arn"])
                )
            return {}
        if op is Op.SET_MAX_CONNECTION_AGE:
            for each in self.endpoints:
                each.config.max_connection_age = float(request["seconds"])
            return {}
        if op is Op.SET_TRANSACTION_AGE_LIMIT:
            for each in self.endpoints:
                each.config.transaction_age_limit = float(request["seconds"])
            return {}
        if op is Op.RESET:
            for each in self.endpoints:
                await each.heal()
                each.faults.reset()
                each.config.max_connection_age = float(request["max_connection_age"])
                each.config.transaction_age_limit = float(request["transaction_age_limit"])
            return {}
        raise ValueError(f"unknown operation {op!r}")


def endpoint_specs(config: dict[str, Any]) -> list[dict[str, Any]]:
    """One ``{"host", "region", "port"}`` per endpoint (an older configuration has one)."""
    specs = config.get("endpoints")
    if specs:
        return list(specs)
    return [{"host": config["host"], "region": config["region"], "port": config.get("port", 0)}]


async def serve(
    config: dict[str, Any], server: EmbeddedPostgres, lines: asyncio.Queue[str | None]
) -> None:
    workdir = Path(config["workdir"])
    endpoints: list[Endpoint] = []
    try:
        bootstrap(server, dsql_rules=bool(config.get("dsql_rules", True)))
        specs = endpoint_specs(config)
        contexts = make_tls_contexts(workdir, [spec["host"] for spec in specs])
        credentials = credentials_from(config)
        # An older configuration has one identity: it is the default one.
        default_key = str(config.get("default_access_key") or next(iter(credentials), ""))
        for spec, tls in zip(specs, contexts, strict=True):
            endpoint = Endpoint(
                EndpointConfig(
                    host=spec["host"],
                    region=spec["region"],
                    # One dict for all: an identity added later is trusted everywhere.
                    credentials=credentials,
                    backend_socket=str(server.socket_path),
                    max_connection_age=float(config["max_connection_age"]),
                    dsql_rules=bool(config.get("dsql_rules", True)),
                    transaction_age_limit=float(config.get("transaction_age_limit", 300.0)),
                    default_access_key=default_key,
                    strict_iam=bool(config.get("strict_iam", False)),
                    require_sni=bool(config.get("require_sni", False)),
                ),
                tls,
            )
            endpoints.append(endpoint)
            await endpoint.start(int(spec.get("port", 0)))
        _reply(
            control.answer(
                port=endpoints[0].port,
                ports=[endpoint.port for endpoint in endpoints],
                ca_file=str(workdir / "ca.pem"),
                backend_port=server.port,
                backend_socket_dir=str(server.socket_dir),
                postgres_pid=server.pid,
            )
        )
        controller = Controller(endpoints, backend_conninfo(server))
        while (line := await lines.get()) is not None:
            try:
                op, request = control.read_request(line)
                if op is Op.SHUTDOWN:
                    break
                _reply(control.answer(**(await controller.handle(op, request))))
            except Exception as exc:
                _reply(control.failure(exc))
    except Exception as exc:
        _logger.exception("local endpoint failed")
        _reply(control.failure(exc))
    finally:
        for endpoint in endpoints:
            await endpoint.close()


def _reply(line: str) -> None:
    sys.stdout.write(line)
    sys.stdout.flush()


def _read_stdin(loop: asyncio.AbstractEventLoop, lines: asyncio.Queue[str | None]) -> None:
    for line in sys.stdin:
        loop.call_soon_threadsafe(lines.put_nowait, line)
    loop.call_soon_threadsafe(lines.put_nowait, None)  # parent gone: shut down


async def _main() -> None:
    config = control.read_configuration(sys.stdin.readline())
    workdir = Path(config["workdir"])
    logging.basicConfig(
        filename=str(workdir / "endpoint.log"),
        level=logging.DEBUG if config.get("debug") else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    lines: asyncio.Queue[str | None] = asyncio.Queue()
    server = EmbeddedPostgres(
        workdir, settings={"dsqlkit.row_limit": str(config.get("row_limit", 3000))}
    )
    try:
        # Start PostgreSQL before any other thread exists: it is forked with a pre-exec hook.
        server.start()
        threading.Thread(
            target=_read_stdin, args=(asyncio.get_running_loop(), lines), daemon=True
        ).start()
        await serve(config, server, lines)
    except Exception as exc:
        _logger.exception("local endpoint failed to start")
        _reply(control.failure(exc))
    finally:
        server.stop()
        if config.get("remove_workdir", True):
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(_main())
