"""CRC-64-AVRO, the 64-bit Rabin fingerprint the Avro specification defines for schemas.

It identifies a writer's schema in single-object encoded messages. Written from the
specification's description so that the header bytes do not depend on any library's
byte-order conventions.
"""

from __future__ import annotations

_EMPTY = 0xC15D213AA4D7A795


def _table() -> list[int]:
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (_EMPTY & -(fp & 1))
        table.append(fp & 0xFFFFFFFFFFFFFFFF)
    return table


_TABLE = _table()


def crc64_avro(data: bytes) -> int:
    """The fingerprint of `data` (a schema's Parsing Canonical Form, UTF-8) as an integer."""
    fp = _EMPTY
    for byte in data:
        fp = (fp >> 8) ^ _TABLE[(fp ^ byte) & 0xFF]
    return fp


def fingerprint_bytes(canonical_form: str) -> bytes:
    """The 8 little-endian bytes that follow the single-object marker."""
    return crc64_avro(canonical_form.encode("utf-8")).to_bytes(8, "little")
