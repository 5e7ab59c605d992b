"""Names are bytes; the database stores text: the mapping must be exact and one-to-one."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asynchy.names import check_component, decode_name, encode_name


@given(st.binary(max_size=64))
def test_round_trip_is_exact(raw: bytes) -> None:
    assert decode_name(encode_name(raw)) == raw


@given(st.binary(max_size=24), st.binary(max_size=24))
def test_distinct_names_stay_distinct(a: bytes, b: bytes) -> None:
    if a != b:
        assert encode_name(a) != encode_name(b)


@given(
    st.text(max_size=40).filter(
        lambda t: (
            "\\" not in t and "\x00" not in t and not any(0xD800 <= ord(c) <= 0xDFFF for c in t)
        )
    )
)
def test_ordinary_unicode_is_stored_verbatim(text: str) -> None:
    assert encode_name(text.encode("utf-8")) == text


@pytest.mark.parametrize(
    ("raw", "stored"),
    [
        (b"caf\xe9.cbf", "caf\\xe9.cbf"),
        (b"back\\slash", "back\\\\slash"),
        (b"x\\x41", "x\\\\x41"),
        (b"new\nline $(rm -rf) *?[]", "new\nline $(rm -rf) *?[]"),
        ("ünï".encode(), "ünï"),
        (b"nul\x00byte", "nul\\x00byte"),
    ],
)
def test_documented_escapes(raw: bytes, stored: str) -> None:
    assert encode_name(raw) == stored
    assert decode_name(stored) == raw


@pytest.mark.parametrize("bad", ["a\\", "a\\q", "\\x4", "\\xZZ"])
def test_stray_backslash_is_not_a_stored_name(bad: str) -> None:
    with pytest.raises(ValueError, match="stray backslash"):
        decode_name(bad)


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        (b"good", True),
        (b"-rf", True),
        (b" ", True),
        (b"", False),
        (b".", False),
        (b"..", False),
        (b"a/b", False),
        (b"a\x00b", False),
        (b"...", True),
    ],
)
def test_check_component(name: bytes, ok: bool) -> None:
    assert (check_component(name) is None) == ok
