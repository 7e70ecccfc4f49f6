"""What reads return: `Rows` (a list that knows its columns) and `Ping` (a health check)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ._errors import UsageError

__all__ = ["Ping", "Rows"]


class Rows(list[Any]):
    """A list of rows that also knows its column names and displays as a table.

    ``to_pandas()`` returns a ``pandas.DataFrame`` when pandas is installed.
    """

    #: Column names, in order.
    columns: list[str]

    def __init__(self, rows: Iterable[Any] = (), columns: Sequence[str] = ()) -> None:
        super().__init__(rows)
        self.columns = list(columns)

    def to_pandas(self) -> Any:
        """The rows as a ``pandas.DataFrame`` (`UsageError` if pandas is not installed)."""
        try:
            import pandas as pd
        except ImportError:
            raise UsageError(
                "to_pandas() needs pandas: pip install 'dsqlkit[pandas]' (or pandas itself)"
            ) from None
        if self and isinstance(self[0], Mapping):
            records: list[Any] = list(self)
        else:
            records = [tuple(r) if not hasattr(r, "__dict__") else vars(r) for r in self]
        return _numeric_decimals(pd.DataFrame(records, columns=self.columns or None))

    def _repr_html_(self) -> str:
        from html import escape

        head = "".join(f"<th>{escape(c)}</th>" for c in self.columns)
        body = []
        for row in self[:50]:
            values = row.values() if isinstance(row, Mapping) else (
                vars(row).values() if hasattr(row, "__dict__") else row
            )  # fmt: skip
            body.append("<tr>" + "".join(f"<td>{escape(str(v))}</td>" for v in values) + "</tr>")
        more = f"<p>{len(self)} rows</p>" if len(self) > 50 else ""
        return f"<table><tr>{head}</tr>{''.join(body)}</table>{more}"


@dataclass(frozen=True)
class Ping:
    """A health check's answer.

    Attributes:
        latency_ms: round trip of a ``SELECT 1``, checkout included, in milliseconds.
        server_version: the server's version as it reports it (DSQL: 16.x).
    """

    #: Round trip of a ``SELECT 1`` (including the checkout), in milliseconds.
    latency_ms: float
    #: The server's version as it reports it (DSQL: 16.x).
    server_version: str


def _numeric_decimals(frame: Any) -> Any:
    """``numeric`` columns (``Decimal`` values) as float64 where no value loses digits, so
    sums and plots work; a column with a value float64 cannot hold exactly stays ``Decimal``."""
    from decimal import Decimal

    for name in frame.columns:
        values = [v for v in frame[name] if v is not None]
        if values and all(
            isinstance(v, Decimal) and (not v.is_finite() or Decimal(repr(float(v))) == v)
            for v in values
        ):
            frame[name] = frame[name].astype("float64")
    return frame
