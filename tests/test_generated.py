"""The sync modules are generated from their asyncio sources and must not drift."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_generated_sync_modules_match_their_async_sources() -> None:
    pytest.importorskip("ruff", reason="ruff formats the generated code (it is in the test extra)")
    done = subprocess.run(
        [sys.executable, "tools/async_to_sync.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_generated_sync_code_never_names_the_async_side() -> None:
    """Docstrings, comments, messages and f-strings of the sync modules name sync classes
    only, with no asyncio wording (issue 20 item 3): ``help(Repository)`` and the API docs
    read right. The generated tests name no asyncio class either."""
    import io
    import re
    import tokenize

    sys.path.insert(0, str(ROOT / "tools"))
    try:
        from async_to_sync import PACKAGE, SOURCES, TEST_SOURCES, TESTS, target
    finally:
        sys.path.pop(0)
    async_words = re.compile(
        r"\bAsync[A-Z]\w*|\bawait\b|\basyncio\b|event loop|\b_\w+_async\b|\b_aio\b|"
        r"asynccontextmanager|__aenter__|__aexit__"
    )
    # Generated tests may say what the asyncio flavour does differently, never name its
    # classes or present the sync module as the asyncio source.
    test_words = re.compile(r"\bAsync[A-Z]\w*|asyncio source|\w+_async\.py")
    prose = {tokenize.STRING, tokenize.COMMENT, getattr(tokenize, "FSTRING_MIDDLE", -1)}
    found = []
    paths = [(target(PACKAGE / name), async_words) for name in SOURCES]
    paths += [(target(TESTS / name), test_words) for name in TEST_SOURCES]
    for path, words in paths:
        text = path.read_text()
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type in prose and tok.start[0] > 2:  # below the "generated from" header
                found += [f"{path.name}:{tok.start[0]}: {m[0]}" for m in words.finditer(tok.string)]
        code = "".join(line.split("#", 1)[0] + "\n" for line in text.splitlines()[2:])
        found += [f"{path.name}: code names {m[0]}" for m in re.finditer(r"\bAsync[A-Z]\w*", code)]
    assert not found, "\n".join(found)


def test_strings_are_rewritten_like_code() -> None:
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        from async_to_sync import convert
    finally:
        sys.path.pop(0)
    source = (
        '"""`AsyncRepository` (asyncio source; `Repository` is generated).\n\n'
        'Signs tokens (never on the event loop) over an `AsyncDsqlConnectionPool`."""\n'
        "async def f(pool: AsyncConnectionPool) -> None:\n"
        '    raise TypeError(f"{pool!r}: AsyncRepository needs an AsyncConnectionPool; await it")\n'
    )
    out = convert(source, "x_async.py")
    assert '"""`Repository`.\n\nSigns tokens over a `DsqlConnectionPool`."""' in out
    assert 'f"{pool!r}: Repository needs a ConnectionPool; await it")' not in out
    assert 'f"{pool!r}: Repository needs a ConnectionPool; call it")' in out
    assert "def f(pool: ConnectionPool)" in out
