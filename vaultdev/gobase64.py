"""Go-compatible standard base64 decoding.

Vault decodes every base64 field with Go's ``base64.StdEncoding.DecodeString``. Its rules differ
from Python's in small ways that matter for byte-identical error texts:

* ``\\r`` and ``\\n`` are ignored anywhere in the input;
* padding is mandatory, but non-zero trailing bits are accepted (``"YR=="`` decodes);
* an error names the byte offset of the first bad input byte:
  ``illegal base64 data at input byte N``.

:func:`decode` tries CPython's strict C decoder first (every input it accepts, Go accepts with the
same result) and falls back to a port of Go's ``decodeQuantum`` for the rest, which either
decodes as Go does or raises :class:`CorruptInputError` with Go's offset.
"""

from __future__ import annotations

import binascii

__all__ = ["CorruptInputError", "decode", "encode"]

_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_DEC: dict[int, int] = {c: i for i, c in enumerate(_ALPHABET)}
_NEWLINES = (10, 13)
_PAD = 61


class CorruptInputError(ValueError):
    """Go's ``base64.CorruptInputError``: the offset of the first illegal input byte."""

    def __init__(self, offset: int) -> None:
        self.offset = offset
        super().__init__(f"illegal base64 data at input byte {offset}")


def encode(data: bytes) -> str:
    """Standard padded base64 without line breaks (Go's ``StdEncoding.EncodeToString``)."""
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def decode(value: str) -> bytes:
    """Decode like Go's ``base64.StdEncoding.DecodeString``; raise :class:`CorruptInputError`."""
    try:
        src = value.encode("ascii")
    except UnicodeEncodeError:
        return _go_decode(value.encode("utf-8"))
    # CPython's strict mode also accepts surplus "=" after a full quantum ("YWJj="), which Go
    # rejects: only take the fast path for whole quanta with padding at the very end.
    if len(src) % 4 == 0 and b"=" not in src[:-2]:
        try:
            return binascii.a2b_base64(src, strict_mode=True)
        except binascii.Error:
            pass
    return _go_decode(src)


def _go_decode(src: bytes) -> bytes:
    """Port of Go's ``encoding/base64`` ``decodeQuantum`` loop (slow path, exact offsets)."""
    out = bytearray()
    si = 0
    n = len(src)
    while si < n:
        dbuf = [0, 0, 0, 0]
        dlen = 4
        j = 0
        err: CorruptInputError | None = None
        while j < 4:
            if si == n:
                if j == 0:
                    return bytes(out)
                raise CorruptInputError(si - j)
            c = src[si]
            si += 1
            d = _DEC.get(c)
            if d is not None:
                dbuf[j] = d
                j += 1
                continue
            if c in _NEWLINES:
                continue
            if c != _PAD:
                raise CorruptInputError(si - 1)
            if j in (0, 1):
                raise CorruptInputError(si - 1)
            if j == 2:
                while si < n and src[si] in _NEWLINES:
                    si += 1
                if si == n:
                    raise CorruptInputError(n)
                if src[si] != _PAD:
                    raise CorruptInputError(si - 1)
                si += 1
            while si < n and src[si] in _NEWLINES:
                si += 1
            if si < n:
                err = CorruptInputError(si)
            dlen = j
            break
        v = (dbuf[0] << 18) | (dbuf[1] << 12) | (dbuf[2] << 6) | dbuf[3]
        out += bytes(((v >> 16) & 255, (v >> 8) & 255, v & 255)[: dlen - 1])
        if err is not None:
            raise err
    return bytes(out)
