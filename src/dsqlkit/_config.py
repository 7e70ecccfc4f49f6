"""Where and how to connect: the DSQL endpoint, the Region, and TLS settings.

Everything here is pure and runs before any network I/O, so bad input fails at construction
with a `ConfigurationError` that says how to fix it.
"""

from __future__ import annotations

import functools
import os
import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._errors import ConfigurationError

__all__ = [
    "DsqlEndpoint",
    "InsecureTLSWarning",
    "TLSSettings",
    "check_connection_kwargs",
    "default_ca_bundle",
    "endpoint_from_env",
    "parse_conninfo",
    "resolve_address",
    "split_port",
    "unknown_arguments",
]

CLUSTER_ID = re.compile(r"[a-z0-9]{26}")
DSQL_HOST = re.compile(
    r"(?P<cluster>[a-z0-9]{26})\.dsql(?:-[a-z0-9]+)?\.(?P<region>[a-z0-9-]+)\.on\.aws"
)
REGION = re.compile(r"[a-z]{2}(?:-gov|-iso[a-z]*)?-[a-z]+-\d{1,2}")
HOSTNAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?")
VERIFYING_SSLMODES = ("verify-full", "verify-ca")
SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
DEFAULT_PORT = 5432
DEFAULT_USER = "admin"
DEFAULT_DBNAME = "postgres"
#: The libpq keywords a conninfo string or URL may carry: the rest are pool arguments.
CONNINFO_KEYS = ("host", "port", "user", "dbname")
#: libpq keywords that have their own pool argument, and its name.
_POOL_ARGUMENTS = {
    "sslmode": "sslmode",
    "sslrootcert": "sslrootcert",
    "sslnegotiation": "sslnegotiation",
    "connect_timeout": "connect_timeout",
    "application_name": "application_name",
}


class InsecureTLSWarning(UserWarning):
    """A DSQL connection was configured without full server verification."""


@dataclass(frozen=True)
class DsqlEndpoint:
    """A resolved endpoint: host, Region, port, user and database.

    ``is_dsql`` is true for an Aurora DSQL cluster: its connections get IAM tokens signed for
    ``host`` (always the cluster's real name, ``<cluster-id>.dsql.<region>.on.aws``) and
    verified TLS. A cluster reached through another name (a CNAME, a PrivateLink / VPC
    endpoint name, an SSH tunnel's local end) has that name in ``connect_host``. A plain
    PostgreSQL server (no token, libpq's own TLS defaults) is only ever the result of asking
    for it with ``plain_postgresql=True``: a host that is not a DSQL endpoint is an error
    otherwise, never a silent fallback.
    """

    host: str
    region: str | None
    port: int = DEFAULT_PORT
    user: str = DEFAULT_USER
    dbname: str = DEFAULT_DBNAME
    cluster_id: str | None = None
    #: The name the client connects to when it is not ``host`` (None: ``host`` itself).
    connect_host: str | None = None
    #: The name TLS verifies (and sends as SNI) when ``connect_host`` is set: ``"cluster"``
    #: (``host``: DSQL's own certificate, as an SSH tunnel, a CNAME or a PrivateLink endpoint
    #: present it) or ``"host"`` (``connect_host``: a proxy with a certificate of its own).
    tls_name: str = "cluster"

    @property
    def is_dsql(self) -> bool:
        return self.cluster_id is not None

    @property
    def tls_host(self) -> str:
        """The host name libpq verifies the certificate against and sends as SNI."""
        if self.connect_host is not None and self.tls_name == "host":
            return self.connect_host
        return self.host

    @property
    def address_host(self) -> str | None:
        """A name to resolve for ``hostaddr`` (the TCP address), when it differs from the
        TLS name: a custom name in front of a cluster, verified as the cluster."""
        if self.connect_host is not None and self.tls_name == "cluster":
            return self.connect_host
        return None

    @classmethod
    def from_options(cls, endpoint: str, options: Mapping[str, Any]) -> DsqlEndpoint:
        """`resolve` with the ``region``, ``port``, ``user``, ``dbname``, ``cluster_id``,
        ``tls_name`` and ``plain_postgresql`` found in a pool's keyword arguments (absent
        ones: from the conninfo, else the defaults)."""
        return cls.resolve(
            endpoint,
            region=options.get("region"),
            port=options.get("port"),
            user=options.get("user"),
            dbname=options.get("dbname"),
            cluster_id=options.get("cluster_id"),
            tls_name=options.get("tls_name"),
            plain_postgresql=options.get("plain_postgresql", False),
        )

    @classmethod
    def resolve(
        cls,
        endpoint: str,
        *,
        region: str | None = None,
        port: int | None = None,
        user: str | None = None,
        dbname: str | None = None,
        cluster_id: str | None = None,
        tls_name: str | None = None,
        plain_postgresql: bool = False,
        environ: Mapping[str, str] | None = None,
    ) -> DsqlEndpoint:
        """Resolve a host name, a bare cluster id (plus Region), a libpq conninfo string or a
        ``postgresql://`` URL into an endpoint.

        A conninfo or URL supplies host, port, user and dbname (as psycopg and libpq read
        them); an argument given as well must agree with it. A password in it is refused: DSQL
        authenticates with IAM tokens, which dsqlkit mints for each connection. The Region
        comes from ``region``, else the host name, else ``AWS_REGION`` / ``AWS_DEFAULT_REGION``.

        Any other host name is accepted in two explicit ways only: with ``cluster_id`` (the
        26-character id, or the cluster's real host name) it is a custom name for that
        cluster (tokens are signed for the real endpoint); with ``plain_postgresql=True`` it
        is a plain PostgreSQL server. Without either, `ConfigurationError` says which to pass.
        """
        env = os.environ if environ is None else environ
        if not isinstance(endpoint, str) or not endpoint.strip():
            raise ConfigurationError(
                "no DSQL endpoint given: pass a host name like "
                "'<cluster-id>.dsql.us-east-1.on.aws' or a 26-character cluster id"
            )
        if not isinstance(plain_postgresql, bool):
            raise ConfigurationError(
                f"plain_postgresql must be True or False, not {plain_postgresql!r}"
            )
        if tls_name not in (None, "cluster", "host"):
            raise ConfigurationError(
                f"tls_name must be 'cluster' (verify DSQL's certificate for the cluster's real "
                f"name, the default) or 'host' (verify the name you connect to), not {tls_name!r}"
            )
        endpoint = endpoint.strip()
        if is_conninfo(endpoint):
            parts = parse_conninfo(endpoint)
            endpoint = parts.get("host", "")
            if not endpoint:
                raise ConfigurationError(
                    "the conninfo has no host: add host=<cluster-id>.dsql.<region>.on.aws "
                    "(or the host part of the postgresql:// URL)"
                )
            port = _agree("port", port, _port_of(parts.get("port")))
            user = _agree("user", user, parts.get("user"))
            dbname = _agree("dbname", dbname, parts.get("dbname"))
        port = DEFAULT_PORT if port is None else port
        user = DEFAULT_USER if user is None else user
        dbname = DEFAULT_DBNAME if dbname is None else dbname
        endpoint = endpoint.rstrip(".")
        if "://" in endpoint or "/" in endpoint or " " in endpoint:
            raise ConfigurationError(
                f"endpoint {endpoint!r} is not a host name: pass only the host, "
                "e.g. '<cluster-id>.dsql.us-east-1.on.aws' (no scheme, path or spaces)"
            )
        _check_port(port)
        if not user or not isinstance(user, str):
            raise ConfigurationError("user must be a non-empty string (DSQL's default is 'admin')")
        if plain_postgresql:
            return cls._plain(
                endpoint,
                region=region,
                port=port,
                user=user,
                dbname=dbname,
                cluster_id=cluster_id,
                tls_name=tls_name,
            )

        lowered = endpoint.lower()
        host_match = DSQL_HOST.fullmatch(lowered)
        if host_match:
            host_region = host_match["region"]
            if region is not None and region != host_region:
                raise ConfigurationError(
                    f"region {region!r} contradicts the host name, which is in {host_region!r}: "
                    "leave region out or fix the host"
                )
            if cluster_id is not None and cluster_id.lower() not in (
                host_match["cluster"],
                lowered,
            ):
                raise ConfigurationError(
                    f"cluster_id {cluster_id!r} contradicts the host name, which names cluster "
                    f"{host_match['cluster']!r}: leave cluster_id out (it is for custom host "
                    "names) or fix the host"
                )
            _check_region(host_region)
            return cls(lowered, host_region, port, user, dbname, host_match["cluster"])

        if CLUSTER_ID.fullmatch(endpoint) or _near_cluster_id(endpoint):
            # A bare cluster id (or a mistyped one: better an error than a wrong host).
            if not CLUSTER_ID.fullmatch(endpoint):
                raise ConfigurationError(
                    f"{endpoint!r} is not a DSQL cluster id: a cluster id is exactly 26 "
                    "lowercase letters and digits (see the console or `aws dsql list-clusters`)"
                )
            region = region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
            if not region:
                raise ConfigurationError(
                    f"cluster id {endpoint!r} needs a Region: pass region='us-east-1' or set "
                    "AWS_REGION, or pass the full host name"
                )
            _check_region(region)
            host = f"{endpoint}.dsql.{region}.on.aws"
            return cls(host, region, port, user, dbname, endpoint)

        if ".dsql" in lowered and lowered.endswith(".on.aws"):
            raise ConfigurationError(
                f"{endpoint!r} looks like a DSQL host but is malformed: expected "
                "'<26-character cluster id>.dsql.<region>.on.aws'"
            )
        if not (HOSTNAME.fullmatch(endpoint) or _is_ip_address(endpoint)):
            raise ConfigurationError(f"{endpoint!r} is not a valid host name or address")
        if cluster_id is None:
            raise ConfigurationError(
                f"{endpoint!r} is not an Aurora DSQL endpoint ('<cluster-id>.dsql.<region>."
                "on.aws'). To reach a cluster through another name (a CNAME, a PrivateLink / "
                "VPC endpoint, an SSH tunnel), also pass cluster_id='<26-character cluster "
                "id>' and region='<region>' (tokens are signed for the cluster's real "
                "endpoint); for a plain PostgreSQL server, pass plain_postgresql=True"
            )
        real = cls._cluster(cluster_id, region, env)
        return cls(
            real.host,
            real.region,
            port,
            user,
            dbname,
            real.cluster_id,
            connect_host=lowered,
            tls_name=tls_name or "cluster",
        )

    @classmethod
    def _cluster(cls, cluster_id: str, region: str | None, env: Mapping[str, str]) -> DsqlEndpoint:
        """The real endpoint named by ``cluster_id`` (an id, or the real host name)."""
        if not isinstance(cluster_id, str):
            raise ConfigurationError(
                f"cluster_id must be a string (26 lowercase letters and digits), not "
                f"{type(cluster_id).__name__}"
            )
        if not (CLUSTER_ID.fullmatch(cluster_id) or DSQL_HOST.fullmatch(cluster_id.lower())):
            raise ConfigurationError(
                f"cluster_id {cluster_id!r} is not a DSQL cluster id: use the 26 lowercase "
                "letters and digits of the cluster's id (or its real host name "
                "'<cluster-id>.dsql.<region>.on.aws')"
            )
        return cls.resolve(cluster_id, region=region, environ=env)

    @classmethod
    def _plain(
        cls,
        endpoint: str,
        *,
        region: str | None,
        port: int,
        user: str,
        dbname: str,
        cluster_id: str | None,
        tls_name: str | None,
    ) -> DsqlEndpoint:
        if cluster_id is not None or tls_name is not None:
            raise ConfigurationError(
                "plain_postgresql=True connects to a PostgreSQL server without IAM tokens: "
                "drop cluster_id / tls_name (they are for reaching a DSQL cluster through a "
                "custom host name), or drop plain_postgresql"
            )
        if DSQL_HOST.fullmatch(endpoint.lower()) or CLUSTER_ID.fullmatch(endpoint):
            raise ConfigurationError(
                f"{endpoint!r} is an Aurora DSQL endpoint, which needs IAM tokens and verified "
                "TLS: drop plain_postgresql=True"
            )
        if not (HOSTNAME.fullmatch(endpoint) or _is_ip_address(endpoint)):
            raise ConfigurationError(f"{endpoint!r} is not a valid host name or address")
        if region is not None:
            _check_region(region)
        return cls(endpoint, region, port, user, dbname, None)

    def __str__(self) -> str:
        via = f" via {self.connect_host}" if self.connect_host is not None else ""
        return f"{self.user}@{self.host}:{self.port}/{self.dbname}{via}"


@dataclass(frozen=True)
class TLSSettings:
    """libpq TLS parameters, defaulting to DSQL's recommended verified setup."""

    sslmode: str | None
    sslrootcert: str | None
    sslnegotiation: str | None

    @classmethod
    def for_endpoint(
        cls,
        endpoint: DsqlEndpoint,
        *,
        sslmode: str | None = None,
        sslrootcert: str | None = None,
        sslnegotiation: str | None = None,
        insecure_tls: bool = False,
    ) -> TLSSettings:
        """Verified TLS for DSQL hosts; libpq's own defaults for plain PostgreSQL hosts.

        A DSQL host accepts only ``verify-full`` unless ``insecure_tls=True`` opts into
        ``verify-ca`` or ``require`` (with an `InsecureTLSWarning`); modes that allow
        plaintext are refused outright, since DSQL only speaks TLS.
        """
        if sslmode is not None and sslmode not in SSLMODES:
            raise ConfigurationError(f"sslmode {sslmode!r} is not one of {', '.join(SSLMODES)}")
        if sslnegotiation not in (None, "postgres", "direct"):
            raise ConfigurationError("sslnegotiation must be 'postgres' or 'direct'")
        if not endpoint.is_dsql:
            if sslrootcert is not None:
                _check_file(sslrootcert)
            return cls(sslmode, sslrootcert, sslnegotiation)

        sslmode = sslmode or "verify-full"
        if sslmode in ("disable", "allow", "prefer"):
            raise ConfigurationError(
                f"sslmode={sslmode!r} cannot verify the server and DSQL requires TLS: "
                "use the default 'verify-full'"
            )
        if sslmode != "verify-full":
            if not insecure_tls:
                raise ConfigurationError(
                    f"sslmode={sslmode!r} does not verify the server's host name: use the "
                    "default 'verify-full', or pass insecure_tls=True to accept the risk"
                )
            warnings.warn(
                f"TLS to {endpoint.host} with sslmode={sslmode!r} does not fully verify the "
                "server; use sslmode='verify-full' outside of experiments",
                InsecureTLSWarning,
                stacklevel=4,
            )
        if sslmode in VERIFYING_SSLMODES:
            sslrootcert = sslrootcert or default_ca_bundle()
            _check_file(sslrootcert)
        if sslnegotiation is None:
            sslnegotiation = "direct" if _libpq_version() >= 170000 else "postgres"
        return cls(sslmode, sslrootcert, sslnegotiation)

    def params(self) -> dict[str, str]:
        return {k: v for k, v in vars(self).items() if v is not None}


_PORT_SUFFIX = re.compile(r"(?P<host>[^:/=\s]+):(?P<port>[0-9]+)")


def split_port(endpoint: str) -> tuple[str, int | None]:
    """``"host:port"`` as ``("host", port)``; anything else as ``(endpoint, None)``.

    The suffix lets a list of endpoints name endpoints on different ports (local endpoints,
    tunnels); a conninfo or URL keeps its own port syntax.
    """
    match = _PORT_SUFFIX.fullmatch(endpoint.strip())
    if match is None:
        return endpoint, None
    port = int(match["port"])
    _check_port(port)
    return match["host"], port


def is_conninfo(value: str) -> bool:
    """Whether ``value`` is a libpq conninfo string or URL rather than a bare host name."""
    return value.startswith(("postgresql://", "postgres://")) or "=" in value


def parse_conninfo(value: str) -> dict[str, str]:
    """The host, port, user and dbname of a libpq conninfo string or ``postgresql://`` URL.

    Parsed by libpq itself (through psycopg), so quoting and URL escapes mean what they mean
    to ``psql``. A password, several hosts, or a keyword that is a pool argument of its own
    (``sslmode``, ...) or none of dsqlkit's (``hostaddr``, ...) is a `ConfigurationError`
    saying where it belongs instead.
    """
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    try:
        parsed = conninfo_to_dict(value)
    except psycopg.ProgrammingError as exc:
        message = str(exc).strip()
        raise ConfigurationError(
            f"not a valid libpq conninfo string or postgresql:// URL: {message}"
        ) from None
    params = {key: str(item) for key, item in parsed.items() if item is not None}
    if "password" in params:
        raise ConfigurationError(
            "the conninfo contains a password: DSQL authenticates with IAM tokens, which "
            "dsqlkit mints for every connection; remove the password from the string (for "
            "a plain PostgreSQL server with plain_postgresql=True, pass password= as an "
            "argument)"
        )
    for key in params:
        if key in CONNINFO_KEYS:
            continue
        if key in _POOL_ARGUMENTS:
            raise ConfigurationError(
                f"pass {key!r} as the `{_POOL_ARGUMENTS[key]}=` argument, not in the conninfo "
                "(dsqlkit validates it and picks a safe default for DSQL)"
            )
        raise ConfigurationError(
            f"the conninfo keyword {key!r} is not taken from the string: a conninfo gives "
            "host, port, user and dbname only; pass other libpq parameters in kwargs={...}"
        )
    host = params.get("host", "")
    if "," in host or "," in params.get("port", ""):
        raise ConfigurationError(
            f"the conninfo names several hosts or ports ({host!r}): a DSQL pool connects to "
            "one endpoint; build one pool per regional endpoint"
        )
    return params


def endpoint_from_env(
    environ: Mapping[str, str],
) -> tuple[str | tuple[str, ...], dict[str, Any]]:
    """Endpoint(s) and pool options from the environment: dsqlkit's variables, then libpq's.

    ``DSQL_ENDPOINTS`` (comma-separated host names of one multi-Region cluster, the
    application's own Region first, each optionally ``host:port``) wins over
    ``DSQL_ENDPOINT``; both set, ``DSQL_ENDPOINT`` must be one of the list (a stale single
    endpoint is an error, not silently ignored). Else ``DSQL_ENDPOINT`` / ``DSQL_CLUSTER_ID``
    before ``PGHOST`` (both set: ``DSQL_ENDPOINT`` is a custom name for the cluster
    ``DSQL_CLUSTER_ID``); ``DSQL_PORT``, ``DSQL_USER`` and ``DSQL_DBNAME`` before ``PGPORT``,
    ``PGUSER`` and ``PGDATABASE``; the Region from ``DSQL_REGION``, ``AWS_REGION`` or
    ``AWS_DEFAULT_REGION`` (not with ``DSQL_ENDPOINTS``: each entry's Region is in its host
    name). ``DSQL_ENDPOINT`` may be a conninfo or URL; what it names wins over the libpq
    variables.
    """
    options: dict[str, Any] = {}
    endpoints = _endpoints_from_env(environ)
    endpoint: str | tuple[str, ...] | None
    if endpoints is not None:
        endpoint = endpoints
        in_conninfo: set[str] = set()
    else:
        single = environ.get("DSQL_ENDPOINT") or environ.get("DSQL_CLUSTER_ID")
        single = single or environ.get("PGHOST")
        if not single:
            raise ConfigurationError(
                "set DSQL_ENDPOINT (the cluster's host name), DSQL_ENDPOINTS (a multi-Region "
                "cluster's host names, comma-separated, your Region's first) or "
                "DSQL_CLUSTER_ID (with AWS_REGION), or libpq's PGHOST, to configure dsqlkit "
                "from the environment"
            )
        endpoint = single
        if environ.get("DSQL_ENDPOINT") and environ.get("DSQL_CLUSTER_ID"):
            # A custom name (CNAME, PrivateLink, tunnel) for the cluster DSQL_CLUSTER_ID names.
            options["cluster_id"] = environ["DSQL_CLUSTER_ID"]
        in_conninfo = set(parse_conninfo(single)) if is_conninfo(single) else set()
        region = environ.get("DSQL_REGION") or environ.get("AWS_REGION")
        region = region or environ.get("AWS_DEFAULT_REGION")
        if region:
            options["region"] = region
    for option, ours, libpq in (
        ("user", "DSQL_USER", "PGUSER"),
        ("dbname", "DSQL_DBNAME", "PGDATABASE"),
        ("port", "DSQL_PORT", "PGPORT"),
    ):
        name = ours if environ.get(ours) else libpq
        value = environ.get(name)
        if not value or (name == libpq and option in in_conninfo):
            continue
        if option == "port":
            try:
                options["port"] = int(value)
            except ValueError:
                raise ConfigurationError(f"{name}={value!r} is not a port number") from None
        else:
            options[option] = value
    return endpoint, options


def _endpoints_from_env(environ: Mapping[str, str]) -> tuple[str, ...] | None:
    """``DSQL_ENDPOINTS`` as a tuple (None when unset), checked against the variables it
    replaces."""
    text = environ.get("DSQL_ENDPOINTS", "").strip()
    if not text:
        return None
    entries = tuple(entry.strip() for entry in text.split(","))
    if any(not entry for entry in entries):
        raise ConfigurationError(
            f"DSQL_ENDPOINTS={text!r} has an empty entry: list the regional endpoints' host "
            "names separated by commas, your own Region's first"
        )
    if environ.get("DSQL_CLUSTER_ID"):
        raise ConfigurationError(
            "DSQL_CLUSTER_ID and DSQL_ENDPOINTS are both set: a list of endpoints names each "
            "regional endpoint by its host name; unset DSQL_CLUSTER_ID"
        )
    single = environ.get("DSQL_ENDPOINT", "").strip()
    if single:
        hosts = {split_port(entry)[0].lower().rstrip(".") for entry in entries}
        if split_port(single)[0].lower().rstrip(".") not in hosts:
            raise ConfigurationError(
                f"DSQL_ENDPOINT={single!r} is not one of DSQL_ENDPOINTS={text!r}: "
                "DSQL_ENDPOINTS wins when both are set, so unset DSQL_ENDPOINT (or make it "
                "the first entry of DSQL_ENDPOINTS)"
            )
    return entries


def _agree(name: str, given: Any, from_conninfo: Any) -> Any:
    if from_conninfo is None:
        return given
    if given is not None and given != from_conninfo:
        raise ConfigurationError(
            f"{name}={given!r} contradicts the conninfo, which says {from_conninfo!r}: "
            "give it in one place"
        )
    return from_conninfo


def _port_of(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigurationError(f"port {value!r} in the conninfo is not a number") from None


def default_ca_bundle() -> str:
    """A CA bundle file that contains Amazon Root CA 1 and exists on a fresh machine.

    psycopg-binary's bundled OpenSSL looks for system certificates in a directory that does
    not exist, so ``sslrootcert=system`` fails there; an explicit file always works. Order:
    ``$PGSSLROOTCERT``, ``$SSL_CERT_FILE``, certifi (if installed), botocore's bundle.
    """
    for name in ("PGSSLROOTCERT", "SSL_CERT_FILE"):
        value = os.environ.get(name)
        if value and Path(value).is_file():
            return value
    # Found without importing either package (botocore's import alone takes ~100 ms).
    import importlib.util

    for package in ("certifi", "botocore"):
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.origin is not None:
            bundle = Path(spec.origin).parent / "cacert.pem"
            if bundle.is_file():
                return str(bundle)
    raise ConfigurationError(
        "no CA bundle found for verifying DSQL's certificate: pass sslrootcert= (a PEM file "
        "with Amazon Root CA 1) or set PGSSLROOTCERT"
    )


def _libpq_version() -> int:
    import psycopg

    return int(psycopg.pq.version())


def _check_region(region: str) -> None:
    if not isinstance(region, str) or not REGION.fullmatch(region):
        raise ConfigurationError(
            f"region {region!r} is not an AWS Region name like 'us-east-1' or 'eu-west-2'"
        )


def _check_port(port: int) -> None:
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise ConfigurationError(f"port {port!r} is not a TCP port (1-65535; DSQL uses 5432)")


def _check_file(path: str) -> None:
    if path != "system" and not Path(path).is_file():
        raise ConfigurationError(
            f"sslrootcert {path!r} does not exist: pass the path of a PEM CA bundle "
            "(the default bundle contains Amazon Root CA 1)"
        )


def _near_cluster_id(value: str) -> bool:
    """A dotless alphanumeric name of about a cluster id's length."""
    return "." not in value and 20 <= len(value) <= 32 and value.isalnum()


def _is_ip_address(value: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def resolve_address(host: str, port: int) -> str:
    """The first address ``host`` resolves to (for libpq's ``hostaddr``), looked up anew for
    every connection (a CNAME or a PrivateLink endpoint may move). Blocking: the async pool
    calls it in a worker thread. ``psycopg.OperationalError`` if the name does not resolve."""
    import socket

    import psycopg

    if _is_ip_address(host):
        return host
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise psycopg.OperationalError(
            f"could not translate host name {host!r} to an address: {exc}"
        ) from None
    return str(infos[0][4][0])


#: Argument names users of other libraries pass (AWS's aurora-dsql-python-connector and
#: aurora-dsql-sqlalchemy, psycopg_pool, boto3, SQLAlchemy), and what dsqlkit calls them.
ARGUMENT_HINTS = {
    "profile": "profile_name= (the AWS profile whose credentials sign tokens)",
    "token_duration_secs": "token_expires_in= (seconds; dsqlkit's default is 300)",
    "token_duration": "token_expires_in= (seconds)",
    "expires_in": "token_expires_in= (seconds)",
    "custom_credentials_provider": (
        "boto3_session= (a boto3.Session; for a botocore credential provider, "
        "boto3.Session(botocore_session=...) with the provider inserted) or token_provider= "
        "(any callable(*, host, region, user) -> token)"
    ),
    "credentials_provider": "boto3_session= or token_provider=",
    "session": "boto3_session=",
    "region_name": "region=",
    "cluster": "the endpoint (first argument), or cluster_id= with a custom host name",
    "cluster_endpoint": "the endpoint (first argument)",
    "host": "the endpoint (first argument: host name, cluster id, conninfo or URL)",
    "hostname": "the endpoint (first argument)",
    "conninfo": "the endpoint (first argument; a conninfo string is accepted there)",
    "dsn": "the endpoint (first argument; a conninfo or postgresql:// URL is accepted there)",
    "url": "the endpoint (first argument)",
    "database": "dbname=",
    "db": "dbname=",
    "username": "user=",
    "retry": (
        "policy= (a dsqlkit.RetryPolicy) on Repository, @dsqlkit.transactional or "
        "dsqlkit.sqlalchemy.transactional: OCC retries belong to a unit of work, not a pool"
    ),
    "max_retries": "max_attempts= (attempts in total: max_retries + 1)",
    "retries": "max_attempts= (attempts in total)",
    "base_delay_ms": "base_delay= (seconds)",
    "max_delay_ms": "max_delay= (seconds)",
    "jitter_factor": "nothing: dsqlkit's backoff always uses full jitter",
    "pool_size": "max_size= (and min_size=) for dsqlkit's pools",
    "max_overflow": "max_size= for dsqlkit's pools",
    "min_connections": "min_size=",
    "max_connections": "max_size=",
    "pool_recycle": "max_lifetime= (seconds) for dsqlkit's pools",
    "ssl": "sslmode= (verify-full by default for DSQL)",
    "ssl_mode": "sslmode=",
    "ca_file": "sslrootcert=",
    "sslca": "sslrootcert=",
}


def unknown_arguments(unknown: Iterable[str], known: Iterable[str], what: str) -> str:
    """The message for unknown keyword arguments: each with what dsqlkit calls it (from
    `ARGUMENT_HINTS`) or the closest known name ("did you mean ...?")."""
    import difflib

    known = sorted(set(known))
    parts = []
    hinted = True
    for name in sorted(unknown):
        hint = ARGUMENT_HINTS.get(name)
        if hint is None:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            hint = f"{close[0]}=" if close else None
        parts.append(f"{name}= (did you mean {hint}?)" if hint else f"{name}=")
        hinted = hinted and hint is not None
    message = f"unknown {what} argument(s): {'; '.join(parts)}"
    return message if hinted else f"{message}. Accepted: {', '.join(known)}"


#: Keywords of psycopg's ``connect()`` that are not libpq parameters.
_PSYCOPG_CONNECT_KEYWORDS = frozenset(
    {"autocommit", "prepare_threshold", "row_factory", "cursor_factory", "context"}
)


@functools.lru_cache(maxsize=1)
def _libpq_keywords() -> frozenset[str]:
    from psycopg import pq

    return frozenset(
        option.keyword.decode() for option in pq.Conninfo.get_defaults() if option.keyword
    )


def check_connection_kwargs(
    params: Mapping[str, Any], own: Mapping[str, str], *, where: str, owner: str
) -> None:
    """`ConfigurationError` for a libpq parameter in ``where`` (``kwargs`` or
    ``connect_args``) that is one of ``owner``'s own arguments (``own`` maps it to that
    argument), or that libpq does not know (with what it may have meant)."""
    import difflib

    for key in params:
        if key in own:
            raise ConfigurationError(
                f"pass {key!r} as the {owner}'s `{own[key]}` argument, not in {where}"
            )
        if key in _libpq_keywords() or key in _PSYCOPG_CONNECT_KEYWORDS:
            continue
        hint = ARGUMENT_HINTS.get(key)
        if key == "region":
            hint = f"region= as the {owner}'s argument (it signs tokens; libpq has no region)"
        if hint is None:
            close = difflib.get_close_matches(key, sorted(_libpq_keywords()), n=1, cutoff=0.7)
            hint = f"the libpq parameter {close[0]!r}" if close else None
        raise ConfigurationError(
            f"{where}={{{key!r}: ...}} is not a libpq connection parameter (nor one of "
            "psycopg's connect() keywords)"
            + (f": did you mean {hint}?" if hint else "")
            + f"; {where} passes libpq parameters such as 'options' or 'keepalives' to every "
            "connection"
        )
