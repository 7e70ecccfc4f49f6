"""COPY scanning: where a client's ``COPY ... FROM STDIN`` data ends as DSQL reads it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .._sqlrules import ClassifiedStatement


@dataclass(slots=True)
class CsvEndOfData:
    """PostgreSQL 16's end-of-data marker in ``COPY ... FROM STDIN (FORMAT csv)``.

    DSQL (PostgreSQL 16) ends CSV data at a line holding only ``\\.`` (outside quotes) and
    ignores the rest; PostgreSQL 18 (the backend) reads that line as data. psql before 18
    sends the marker of inline ``\\copy`` data, so the endpoint cuts the stream there.
    """

    quote: int = ord('"')
    in_quote: bool = False
    line_start: bool = True
    ended: bool = False

    @classmethod
    def of(cls, statement: ClassifiedStatement | None) -> CsvEndOfData | None:
        """A scanner for a CSV ``COPY ... FROM STDIN`` statement, else ``None``."""
        stmt: Any = statement.parsed if statement is not None else None
        if type(stmt).__name__ != "CopyStmt" or not stmt.is_from or stmt.filename is not None:
            return None
        options = {o.defname: getattr(o.arg, "sval", None) for o in stmt.options or ()}
        if (options.get("format") or "").lower() != "csv":
            return None
        quote = options.get("quote") or '"'
        return cls(quote=ord(quote[:1] or '"'))

    def feed(self, chunk: bytes) -> bytes:
        """The part of one CopyData payload the backend gets (nothing after the marker)."""
        if self.ended:
            return b""
        quote = bytes((self.quote,))
        position = chunk.find(b"\\.")
        while position >= 0:
            at_line_start = chunk[position - 1 : position] in (b"\n", b"\r") or (
                position == 0 and self.line_start
            )
            quoted = self.in_quote ^ bool(chunk.count(quote, 0, position) & 1)
            alone = chunk[position + 2 : position + 3] in (b"", b"\n", b"\r")
            if at_line_start and alone and not quoted:
                self.ended = True
                return chunk[:position]
            position = chunk.find(b"\\.", position + 1)
        self.in_quote ^= bool(chunk.count(quote) & 1)
        if chunk:
            self.line_start = chunk[-1:] in (b"\n", b"\r")
        return chunk
