"""Hot units' pure parts: how a unit of work is identified, and ``hot_seconds`` checked.

Hot units against the local endpoint are tested once for both flavours, in
``test_hot_async.py`` (and its generated ``test_hot_sync.py``)."""

from __future__ import annotations

import pytest

from dsqlkit import ConfigurationError, RetryPolicy
from dsqlkit._executor_sync import _hot_key


def test_units_are_identified_by_function_and_hashable_arguments() -> None:
    def fn() -> None: ...

    assert _hot_key(fn, (1, "a"), {}) == _hot_key(fn, (1, "a"), {})
    assert _hot_key(fn, (1,), {"b": 2}) == _hot_key(fn, (1,), {"b": 2})
    assert _hot_key(fn, (1,), {}) != _hot_key(fn, (2,), {})
    assert _hot_key(fn, ([1, 2],), {}) is None  # unhashable: never gated


@pytest.mark.parametrize("value", [-1, float("nan"), 301, "1"])
def test_hot_seconds_is_validated(value: object) -> None:
    with pytest.raises(ConfigurationError, match="hot_seconds"):
        RetryPolicy(hot_seconds=value)  # type: ignore[arg-type]
