"""A vectorised decoder for `metric_steps` bodies: Avro arrays straight into numpy arrays.

Metric points are most of the traffic, and a generic Avro reader builds one Python object per
number. This reads the same bytes column by column: doubles are a `frombuffer` view and
zig-zag varints are decoded for a whole array block at once. It handles every block layout the
Avro specification allows (several blocks, negative counts with byte sizes) and is checked
against fastavro on the same bytes in the tests. Other event types use fastavro.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_MAX_VARINT_BYTES = 10


class ColumnarDecodeError(ValueError):
    """The bytes do not form a valid record of the expected schema."""

    reason = "corrupt_body"


class TrailingBytesError(ColumnarDecodeError):
    """A whole record decoded, but bytes are left after it."""

    reason = "trailing_bytes"


class _Reader:
    __slots__ = ("data", "view", "pos")

    def __init__(self, data: bytes, pos: int) -> None:
        self.data = data
        self.view = np.frombuffer(data, dtype=np.uint8)
        self.pos = pos

    def long(self) -> int:
        result = shift = 0
        data = self.data
        while True:
            if self.pos >= len(data):
                raise ColumnarDecodeError("truncated varint")
            byte = data[self.pos]
            self.pos += 1
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                break
            shift += 7
            if shift >= 70:
                raise ColumnarDecodeError("varint too long")
        return (result >> 1) ^ -(result & 1)

    def string(self) -> str:
        size = self.long()
        if size < 0 or self.pos + size > len(self.data):
            raise ColumnarDecodeError("bad string length")
        text = self.data[self.pos : self.pos + size].decode("utf-8")
        self.pos += size
        return text

    def varints(self, count: int) -> np.ndarray[Any, np.dtype[np.int64]]:
        """`count` zig-zag varints from the current position, decoded together."""
        if count == 0:
            return np.empty(0, np.int64)
        window = self.view[self.pos : self.pos + count * _MAX_VARINT_BYTES]
        ends = np.flatnonzero(window < 0x80)
        if len(ends) < count:
            raise ColumnarDecodeError("truncated varint array")
        ends = ends[:count]
        length = int(ends[-1]) + 1
        if length % count == 0:
            width = length // count
            if np.array_equal(ends, np.arange(width - 1, length, width)):
                raw = self._uniform(window[:length], count, width)
                self.pos += length
                return ((raw >> np.uint64(1)).astype(np.int64)) ^ -((raw & np.uint64(1)).astype(np.int64))
        starts = np.empty(count, np.int64)
        starts[0] = 0
        starts[1:] = ends[:-1] + 1
        if int(np.max(ends - starts)) >= _MAX_VARINT_BYTES:
            raise ColumnarDecodeError("varint too long")
        positions = np.arange(length, dtype=np.int64) - np.repeat(starts, ends - starts + 1)
        parts = (window[:length] & 0x7F).astype(np.uint64) << (positions.astype(np.uint64) * np.uint64(7))
        raw = np.add.reduceat(parts, starts)
        self.pos += length
        return ((raw >> np.uint64(1)).astype(np.int64)) ^ -((raw & np.uint64(1)).astype(np.int64))

    @staticmethod
    def _uniform(window: np.ndarray[Any, Any], count: int, width: int) -> np.ndarray[Any, Any]:
        """Varints that all take `width` bytes (common: small indices, steps, timestamps of one era)."""
        if width == 1:
            return window.astype(np.uint64)
        grid = (window.reshape(count, width) & 0x7F).astype(np.uint64)
        raw = grid[:, 0].copy()
        for k in range(1, width):
            raw |= grid[:, k] << np.uint64(7 * k)
        return raw

    def doubles(self, count: int) -> np.ndarray[Any, np.dtype[np.float64]]:
        end = self.pos + 8 * count
        if end > len(self.data):
            raise ColumnarDecodeError("truncated double array")
        values = np.frombuffer(self.data, dtype="<f8", count=count, offset=self.pos)
        self.pos = end
        return values

    def array(self, read_block: Any) -> list[Any]:
        """Blocks until the zero count; a negative count is followed by the block's byte size."""
        blocks: list[Any] = []
        while True:
            count = self.long()
            if count == 0:
                return blocks
            if count < 0:
                count = -count
                self.long()  # block size in bytes: not needed to read it
            blocks.append(read_block(count))


def _join(blocks: list[Any], dtype: Any) -> Any:
    if not blocks:
        return np.empty(0, dtype)
    return blocks[0] if len(blocks) == 1 else np.concatenate(blocks)


def decode_metric_steps_v1(data: bytes, offset: int) -> dict[str, Any]:
    """A `metric_steps` v1 record from `data[offset:]`, its four point columns as numpy arrays."""
    reader = _Reader(data, offset)
    try:
        record: dict[str, Any] = {
            "event_id": reader.string(),
            "run_id": reader.string(),
            "timestamp_us": reader.long(),
        }
        names: list[str] = []
        for block in reader.array(lambda n: [reader.string() for _ in range(n)]):
            names.extend(block)
        record["metric_names"] = names
        record["metric_index"] = _join(reader.array(reader.varints), np.int64)
        record["steps"] = _join(reader.array(reader.varints), np.int64)
        record["values"] = _join(reader.array(reader.doubles), np.float64)
        record["times_us"] = _join(reader.array(reader.varints), np.int64)
    except (UnicodeDecodeError, IndexError) as error:
        raise ColumnarDecodeError(str(error)) from error
    if reader.pos != len(data):
        raise TrailingBytesError(f"{len(data) - reader.pos} bytes left after the record")
    return record


def _zigzag_varints(values: Any) -> bytes:
    """Avro longs (zig-zag, base-128 varints) for a whole array at once."""
    array = np.asarray(values, dtype=np.int64)
    if array.size == 0:
        return b""
    zigzag = ((array << np.int64(1)) ^ (array >> np.int64(63))).view(np.uint64)
    low, high = int(zigzag.min()), int(zigzag.max())
    width_low, width_high = max(1, (low.bit_length() + 6) // 7), max(1, (high.bit_length() + 6) // 7)
    if width_low == width_high:  # every value takes the same number of bytes: one (n, width) grid
        grid = np.empty((array.size, width_high), dtype=np.uint8)
        for k in range(width_high):
            grid[:, k] = ((zigzag >> np.uint64(7 * k)) & np.uint64(0x7F)).astype(np.uint8)
        grid[:, :-1] |= 0x80
        return grid.tobytes()
    groups = np.empty((array.size, 10), dtype=np.uint8)
    remaining = zigzag.copy()
    lengths = np.ones(array.size, dtype=np.int64)
    for k in range(10):
        groups[:, k] = (remaining & np.uint64(0x7F)).astype(np.uint8)
        remaining >>= np.uint64(7)
        if k < 9:
            more = remaining != 0
            lengths += more
            groups[more, k] |= 0x80
            if not more.any():
                groups = groups[:, : k + 1]
                break
    keep = np.arange(groups.shape[1]) < lengths[:, None]
    return groups[keep].tobytes()


def _long(value: int) -> bytes:
    return _zigzag_varints([value])


def _string(text: str) -> bytes:
    data = text.encode("utf-8")
    return _long(len(data)) + data


def _array(count: int, body: bytes) -> bytes:
    return (_long(count) + body + b"\x00") if count else b"\x00"


def encode_metric_steps_v1(record: dict[str, Any]) -> bytes:
    """The Avro binary body of a `metric_steps` v1 record, its columns encoded array by array.

    Equivalent to fastavro's output for the same record (checked in the tests), several times
    faster on large batches, which keeps the producer's worker from competing with training.
    """
    names = record["metric_names"]
    values = np.asarray(record["values"], dtype="<f8")
    return b"".join((
        _string(record["event_id"]),
        _string(record["run_id"]),
        _long(int(record["timestamp_us"])),
        _array(len(names), b"".join(_string(name) for name in names)),
        _array(len(record["metric_index"]), _zigzag_varints(record["metric_index"])),
        _array(len(record["steps"]), _zigzag_varints(record["steps"])),
        _array(len(values), values.tobytes()),
        _array(len(record["times_us"]), _zigzag_varints(record["times_us"])),
    ))
