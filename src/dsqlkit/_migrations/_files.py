"""Migration files: naming, splitting into statements with PostgreSQL's parser, loading."""

from __future__ import annotations

import hashlib
import re
from bisect import bisect_right
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .._errors import MigrationError

__all__ = [
    "FILE_NAME",
    "Migration",
    "Statement",
    "checksum",
    "load_directory",
    "new_migration",
    "parse_file",
]

FILE_NAME = re.compile(r"(?P<version>\d+)_(?P<name>[A-Za-z0-9][A-Za-z0-9_\-]*)\.sql")
#: Scanner tokens that are not part of a statement's text.
NOT_STATEMENT_TOKENS = frozenset(("SQL_COMMENT", "C_COMMENT", "ASCII_59"))


@dataclass(frozen=True)
class Statement:
    """One unit of a migration file: a statement, or a BEGIN ... COMMIT block."""

    number: int
    line: int
    text: str
    kind: str
    checksum: str
    node: str = ""
    block: tuple[str, ...] = ()
    index_name: str | None = None
    #: The job an async statement starts ("INDEX_BUILD", "VALIDATE_CONSTRAINT"), waited for.
    job: str | None = None
    #: What the job works on, for messages: ``index i``, ``constraint c of t``.
    job_object: str | None = None


@dataclass(frozen=True)
class Migration:
    """A migration file."""

    version: int
    name: str
    path: Path
    checksum: str
    statements: tuple[Statement, ...] = field(repr=False)

    @property
    def key(self) -> str:
        return str(self.version)


def checksum(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


#: Parsed files by (path, checksum of the text): `status()` and `migrate()` load the folder
#: each time, and a large seed file takes PostgreSQL's parser about a second. `Migration` is
#: immutable, so one parse serves every load of the same text.
_parsed: OrderedDict[tuple[str, str], Migration] = OrderedDict()
_PARSED_KEPT = 256


def parse_file(path: Path) -> Migration:
    match = FILE_NAME.fullmatch(path.name)
    if match is None:
        raise MigrationError(
            f"{path.name} is not named <version>_<name>.sql (e.g. 20260101120000_items.sql)"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise MigrationError(
            f"{path}: line {line} is not UTF-8 (byte {exc.object[exc.start]:#04x} at offset "
            f"{exc.start}): save the migration file as UTF-8"
        ) from None
    key = (str(path), checksum(text))
    migration = _parsed.get(key)
    if migration is None:
        migration = _parse_text(path, text, match)
        _parsed[key] = migration
        while len(_parsed) > _PARSED_KEPT:
            _parsed.popitem(last=False)
    return migration


def _parse_text(path: Path, text: str, match: re.Match[str]) -> Migration:
    from pglast import parser

    from .._sqlrules import classify

    slices = list(parser.split(text, with_parser=False, only_slices=True))
    starts = [sl.start for sl in slices]
    for token in parser.scan(text):
        if token.name in NOT_STATEMENT_TOKENS:
            continue
        i = bisect_right(starts, token.start) - 1  # the last slice starting at or before it
        if i < 0 or token.start >= slices[i].stop:
            line = text.count("\n", 0, token.start) + 1
            snippet = text[token.start : token.end + 1]
            raise MigrationError(
                f"{path.name}:{line}: syntax error at or near {snippet!r} (not a statement)"
            )
    units: list[Statement] = []
    block: list[tuple[int, str, Any]] = []
    block_start: tuple[int, str] | None = None
    for piece in slices:
        chunk = text[piece]
        tokens = [t for t in parser.scan(chunk) if t.name not in NOT_STATEMENT_TOKENS]
        if not tokens:
            continue
        start = piece.start + tokens[0].start
        line = text.count("\n", 0, start) + 1
        body = text[start : piece.stop].strip()
        (info,) = classify(body)[:1] or (None,)
        kind = info.kind if info is not None else "other"
        node = info.node if info is not None else ""
        if kind == "begin":
            block_start = (line, body)
            block = []
            continue
        if block_start is not None:
            if kind == "rollback":
                raise MigrationError(
                    f"{path.name}:{block_start[0]}: a BEGIN ... ROLLBACK block would do nothing; "
                    "end it with COMMIT or remove it"
                )
            if kind == "commit":
                number = len(units) + 1
                texts = tuple(b for _, b, _ in block)
                units.append(
                    Statement(
                        number,
                        block_start[0],
                        block_start[1],
                        "block",
                        checksum("\n".join(texts)),
                        "Block",
                        texts,
                    )
                )
                block_start = None
                continue
            block.append((line, body, info))
            continue
        index_name = job_object = None
        job = info.async_job if info is not None else None
        if job == "INDEX_BUILD" and info is not None:
            index_name = getattr(info.parsed, "idxname", None)
            job_object = f"index {index_name or '(unnamed index)'}"
        elif job is not None and info is not None:
            table = info.parsed.relation.relname
            job_object = f"constraint {info.parsed.cmds[0].name} of {table}"
        units.append(
            Statement(
                len(units) + 1,
                line,
                body,
                kind,
                checksum(body),
                node,
                (),
                index_name,
                job,
                job_object,
            )
        )
    if block_start is not None:
        raise MigrationError(f"{path.name}:{block_start[0]}: BEGIN without COMMIT")
    return Migration(int(match["version"]), match["name"], path, checksum(text), tuple(units))


def load_directory(directory: str | Path) -> list[Migration]:
    """Every migration in ``directory``, in version order."""
    folder = Path(directory)
    if not folder.is_dir():
        raise MigrationError(f"migrations directory {folder} does not exist")
    migrations = [parse_file(p) for p in sorted(folder.glob("*.sql"))]
    migrations.sort(key=lambda m: m.version)
    seen: dict[int, Path] = {}
    for m in migrations:
        if m.version in seen:
            raise MigrationError(
                f"version {m.version} is used twice: {seen[m.version].name} and {m.path.name}"
            )
        seen[m.version] = m.path
    return migrations


def new_migration(directory: str | Path, name: str, *, now: datetime | None = None) -> Path:
    """Create ``<UTC timestamp>_<name>.sql`` in ``directory`` and return its path."""
    slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    if not slug:
        raise MigrationError(f"{name!r} gives an empty file name: use letters or digits")
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%d%H%M%S")
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stamp}_{slug}.sql"
    if path.exists():
        raise MigrationError(f"{path} already exists")
    path.write_text(
        f"-- {name}\n-- One DDL statement per transaction is automatic: write plain statements.\n"
        "-- Indexes: CREATE INDEX ASYNC name ON table (columns);\n\n"
    )
    return path
