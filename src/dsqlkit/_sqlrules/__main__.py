"""``python -m dsqlkit._sqlrules``: print the rule table as ``docs/testing.md`` shows it."""

from .table import rule_table_markdown

print(rule_table_markdown(), end="")
