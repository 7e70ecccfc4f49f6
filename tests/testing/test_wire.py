"""Framing of protocol messages (pure logic)."""

from __future__ import annotations

import pytest

from dsqlkit.testing import _wire as wire


def test_message_buffer_reassembles_split_messages() -> None:
    stream = wire.query("SELECT 1") + wire.encode(b"S") + wire.execute("p", 5)
    buffer = wire.MessageBuffer()
    seen = []
    for i in range(len(stream)):  # one byte at a time: every split point
        seen += list(buffer.feed(stream[i : i + 1]))
    assert [t for t, _ in seen] == [b"Q", b"S", b"E"]
    assert wire.read_cstring(seen[0][1], 0)[0] == "SELECT 1"


def test_message_buffer_rejects_bad_lengths() -> None:
    with pytest.raises(wire.ProtocolViolation):
        list(wire.MessageBuffer().feed(b"Q\x00\x00\x00\x01"))


def test_error_response_fields_round_trip() -> None:
    raw = wire.error_response("40001", "change conflicts", detail="why")
    assert raw[:1] == b"E"
    assert wire.parse_fields(raw[5:]) == {
        "S": "ERROR", "V": "ERROR", "C": "40001", "M": "change conflicts", "D": "why"
    }  # fmt: skip


def test_startup_message_round_trip() -> None:
    raw = wire.startup_message(196608, {"user": "admin", "database": "postgres"})
    assert int.from_bytes(raw[:4], "big") == len(raw)
    assert wire.parse_startup(raw[4:]) == (196608, {"user": "admin", "database": "postgres"})
