"""Go-compatible base64 decoding (reference Appendix B offsets); pure unit tests."""

from __future__ import annotations

import base64
import random

import pytest

from vaultdev.gobase64 import CorruptInputError, _go_decode, decode


@pytest.mark.parametrize(
    ("text", "offset"),
    [("foobar", 4), (":;.?", 0), ("YQ", 0), ("YQ=", 3), ("YQ==x", 4), ("abc$", 3), ("Y===", 1)],
)
def test_error_offsets(text: str, offset: int) -> None:
    with pytest.raises(CorruptInputError) as info:
        decode(text)
    assert str(info.value) == f"illegal base64 data at input byte {offset}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("YWJj\nZGVm", b"abcdef"), ("YR==", b"a"), ("", b""), ("YQ==\r\n", b"a")],
)
def test_lenient_inputs(text: str, expected: bytes) -> None:
    assert decode(text) == expected


def test_fast_path_agrees_with_go_port() -> None:
    rng = random.Random(1234)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=\n$ "
    for _ in range(20000):
        n = rng.randrange(0, 14)
        text = "".join(rng.choice(alphabet) for _ in range(n))
        try:
            expected: bytes | str = _go_decode(text.encode())
        except CorruptInputError as err:
            expected = str(err)
        try:
            got: bytes | str = decode(text)
        except CorruptInputError as err:
            got = str(err)
        assert got == expected, text
    for _ in range(200):
        raw = rng.randbytes(rng.randrange(0, 40))
        assert decode(base64.b64encode(raw).decode()) == raw
