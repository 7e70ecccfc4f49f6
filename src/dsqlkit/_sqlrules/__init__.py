"""DSQL's SQL rules, decided by parsing each statement with PostgreSQL's own parser (pglast).

Shared by the local endpoint (which enforces them) and migrations (which lint files before
running them). Needs the ``migrations`` (or ``local``) extra.

`classify` turns SQL text into one `Statement` per statement and states facts about it: its
kind (DDL, DML, transaction control, session setting...), whether it was DSQL's asynchronous
form (``CREATE INDEX ASYNC``, ``ALTER TABLE ASYNC ... VALIDATE CONSTRAINT``) and whether DSQL
refuses it, as a `Refusal` with DSQL's SQLSTATE, its message (a real cluster's wording where
one was recorded) and a fix. Every refusal comes from one entry of `RULES`, the rule table,
which names the source of each rule (a page of the DSQL user guide or a recorded probe) and is
rendered into ``docs/testing.md`` by `rule_table_markdown`.

Where the user guide gives a closed list (column data types, ``ALTER TABLE`` actions,
``CREATE TABLE`` clauses, sequence and identity options, index options), it is an allowlist:
what is not on it is refused. Context-dependent rules (one DDL per transaction, no DDL with
DML, the age limit) and rules that need the catalog (dropping a primary-key column) are
applied by the endpoint, which knows the transaction and has the database; this module is
pure and cached.

The package, by concept: `vocabulary` (names, types, statement nodes), `table` (the rule
table and its docs renderer), `checks` (a parsed statement's refusal), `classification`
(SQL text into statements; `strip_async` removes DSQL's ``ASYNC`` keyword).

The ``rewrite``/``tag``/``value``/``count_sql``/``rerun_sql``/``values_rows``/``plain_dml``
fields of `Statement` are the endpoint's emulation helpers; they move to ``dsqlkit.testing``.
"""

from __future__ import annotations

from .checks import primary_key_drop
from .classification import Statement, classify, strip_async
from .table import RULES, Refusal, Rule, rule_table_markdown
from .vocabulary import KINDS

__all__ = [
    "KINDS",
    "RULES",
    "Refusal",
    "Rule",
    "Statement",
    "classify",
    "primary_key_drop",
    "rule_table_markdown",
    "strip_async",
]
