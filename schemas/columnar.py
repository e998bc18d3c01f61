"""A vectorised decoder for `metric_steps` bodies: Avro arrays straight into numpy arrays.

Metric points are most of the traffic, and a generic Avro reader builds one Python object per
number. This reads the same bytes column by column: doubles are a `frombuffer` view and
zig-zag varints are decoded for a whole array block at once. It handles every block layout the
Avro specification allows (several blocks, negative counts with byte sizes) and is checked
against fastavro on the same bytes in the tests. Other event types use fastavro.

`decode_many` (below) reads many small bodies of one flat schema at once — the consumer's
metric_steps and gpu_samples polls — field by field across all of them.
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


#: The `metric_steps` versions the columnar coder reads and writes: v2 is v1 followed by `attempt`.
COLUMNAR_METRIC_STEPS_VERSIONS = (1, 2)


def decode_metric_steps(data: bytes, offset: int, version: int) -> dict[str, Any]:
    """A `metric_steps` record of `version` (1 or 2) from `data[offset:]`, its four point columns as
    numpy arrays; a v1 body reads as attempt 1, the v2 schema's default."""
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
        record["attempt"] = reader.long() if version >= 2 else 1
        if not -(2**31) <= record["attempt"] < 2**31:
            raise ColumnarDecodeError(f"attempt {record['attempt']} is outside the Avro int range")
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


def encode_metric_steps(record: dict[str, Any], version: int) -> bytes:
    """The Avro binary body of a `metric_steps` record of `version` (1 or 2), its columns encoded array by array.

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
        _long(int(record.get("attempt", 1))) if version >= 2 else b"",
    ))


# -- many bodies at once ------------------------------------------------------------------------
#
# A 20-point metric_steps event or an 8-GPU gpu_samples event costs fastavro 40 to 130 µs, one
# Python object per value; the consumer receives tens of thousands of them a second. Below, the
# bodies of one poll are joined into one byte array and decoded field by field for all of them at
# once: every step is a handful of numpy calls whatever the number of messages. Varints are found
# through the positions of their last bytes (< 0x80) in the joined array, so that an array of
# `count` varints starting at `p` ends at the `count`-th such byte at or after `p`.
#
# Only the common layout takes this path: flat records of primitives, ["null", primitive] unions,
# arrays of primitives and arrays of such records, each array in one block. A body that does not
# follow it (several blocks, negative block counts, a long array of records, trailing or missing
# bytes, an impossible length) is flagged in `ManyDecoded.bad`, and the caller decodes that one
# alone, which decodes it or names exactly what is wrong with it.

_VARINT = "varint"
_FIXED = {"float": ("<f4", 4), "double": ("<f8", 8)}
#: More records than this in one array and the per-element loop would cost more than fastavro.
MAX_BATCH_RECORDS_PER_ARRAY = 64
_TEN = np.arange(_MAX_VARINT_BYTES)
_SHIFTS = (np.arange(_MAX_VARINT_BYTES) * 7).astype(np.uint64)


class FieldPlan:
    """How one field is laid out: `kind` is varint, float, double, boolean, string, nullable, array or records."""

    __slots__ = ("name", "kind", "inner", "fields", "null_branch")

    def __init__(self, name: str, kind: str, inner: FieldPlan | None = None,
                 fields: tuple[FieldPlan, ...] = (), null_branch: int = 0) -> None:
        self.name = name
        self.kind = kind
        self.inner = inner
        self.fields = fields
        self.null_branch = null_branch


def _primitive(name: str, avro: Any) -> FieldPlan | None:
    if avro in ("int", "long"):
        return FieldPlan(name, _VARINT)
    if avro in ("float", "double", "boolean", "string"):
        return FieldPlan(name, avro)
    return None


def _field_plan(name: str, avro: Any, *, nested: bool) -> FieldPlan | None:
    if isinstance(avro, str):
        return _primitive(name, avro)
    if isinstance(avro, list):
        if len(avro) != 2 or "null" not in avro:
            return None
        null_branch = avro.index("null")
        inner = _primitive(name, avro[1 - null_branch])
        return None if inner is None else FieldPlan(name, "nullable", inner, null_branch=null_branch)
    if isinstance(avro, dict):
        if avro.get("type") == "array" and not nested:
            items = avro["items"]
            if isinstance(items, dict) and items.get("type") == "record":
                fields = record_plan(items, nested=True)
                return None if fields is None else FieldPlan(name, "records", fields=fields)
            inner = _primitive(name, items)
            return None if inner is None else FieldPlan(name, "array", inner)
        if avro.get("type") in ("int", "long", "float", "double", "boolean", "string") and "logicalType" not in avro:
            return _primitive(name, avro["type"])
    return None


def record_plan(schema: dict[str, Any], *, nested: bool = False) -> tuple[FieldPlan, ...] | None:
    """The plan of a parsed record schema, or None when its layout is not one `decode_many` reads."""
    if schema.get("type") != "record":
        return None
    plans = []
    for field in schema["fields"]:
        plan = _field_plan(field["name"], field["type"], nested=nested)
        if plan is None:
            return None
        plans.append(plan)
    return tuple(plans)


class Column:
    """One field's values for every row: `values` (numpy), `valid` (False where null) for a nullable
    field; a string is (`starts`, `lengths`) into `ManyDecoded.buffer`. An array field has `counts`
    per row and its items in `items` (a Column) or, for records, `fields` (Columns by name), with
    `owner`, the row each item belongs to."""

    __slots__ = ("values", "valid", "starts", "lengths", "counts", "items", "fields", "owner")

    def __init__(self) -> None:
        self.values: Any = None
        self.valid: Any = None
        self.starts: Any = None
        self.lengths: Any = None
        self.counts: Any = None
        self.items: Column | None = None
        self.fields: dict[str, Column] = {}
        self.owner: Any = None


class ManyDecoded:
    """The fields of many bodies, as columns; `bad[i]` says body i must be decoded alone."""

    def __init__(self, buffer: np.ndarray[Any, Any], bad: np.ndarray[Any, Any], fields: dict[str, Column]) -> None:
        self.buffer = buffer
        self.bad = bad
        self.fields = fields


class _Many:
    """Positions (`pos`) of the rows being read, and which body (`owner`) each row is in."""

    def __init__(self, bodies: list[bytes], offset: int) -> None:
        sizes = np.fromiter(map(len, bodies), dtype=np.int64, count=len(bodies))
        self.ends = np.cumsum(sizes)
        starts = self.ends - sizes
        # Padding: a read past a body's end (only ever for a body already flagged bad) stays in bounds.
        self.buffer = np.frombuffer(b"".join(bodies) + bytes(16), dtype=np.uint8)
        self._stops: np.ndarray[Any, Any] | None = None
        self.bad = sizes < offset
        self.start = starts + offset

    @property
    def stops(self) -> np.ndarray[Any, Any]:
        """Every byte below 0x80: the last byte of every varint (and bytes of other fields), found once,
        when an array of varints is first read."""
        if self._stops is None:
            self._stops = np.flatnonzero(self.buffer < 0x80)
        return self._stops

    def flag(self, rows: np.ndarray[Any, Any], owner: np.ndarray[Any, Any], pos: np.ndarray[Any, Any]) -> None:
        """Flag the bodies of `rows` (a boolean mask) bad, and park those rows at their own start."""
        if rows.any():
            self.bad[owner[rows]] = True
            pos[rows] = self.start[owner[rows]]

    def varints_at(self, pos: np.ndarray[Any, Any], owner: np.ndarray[Any, Any]
                   ) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        """(value, position after) of one varint starting at each of `pos`: read from the next ten
        bytes of each, no search (one-byte varints, the common case, in one step)."""
        if len(pos) == 0:
            return np.empty(0, np.int64), pos
        first = self.buffer[pos]
        if bool((first < 0x80).all()):
            raw = first.astype(np.int64)
            after = pos + 1
            wrong = after > self.ends[owner]
            values = (raw >> 1) ^ -(raw & 1)
        else:
            window = self.buffer[pos[:, None] + _TEN]
            stop = window < 0x80
            width = stop.argmax(axis=1) + 1
            wrong = ~stop.any(axis=1)
            after = pos + width
            wrong |= after > self.ends[owner]
            widest = int(width.max())
            parts = (window[:, :widest] & 0x7F).astype(np.uint64) << _SHIFTS[:widest]
            if int(width.min()) < widest:  # mixed widths (a uniform width, as of timestamps, needs no mask)
                parts[_TEN[:widest] >= width[:, None]] = 0
            raw64 = np.bitwise_or.reduce(parts, axis=1)
            values = (raw64 >> np.uint64(1)).astype(np.int64) ^ -(raw64 & np.uint64(1)).astype(np.int64)
        self.flag(wrong, owner, after)
        values[wrong] = 0
        return values, after

    def _varints(self, first: np.ndarray[Any, Any], last: np.ndarray[Any, Any]
                 ) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        """Varints at known (first, last) bytes; `wrong` where one is longer than ten bytes."""
        # A truncated last body can put `last` in the padding: keep every read inside the buffer (the
        # body is flagged by its caller either way).
        first = np.minimum(first, len(self.buffer) - _MAX_VARINT_BYTES)
        width = last - first + 1
        wrong = (width < 1) | (width > _MAX_VARINT_BYTES)
        if len(width) == 0:
            return np.empty(0, np.int64), wrong
        widest = int(width.max())
        if widest <= 1 and not wrong.any():
            raw = self.buffer[first].astype(np.int64)
            return (raw >> 1) ^ -(raw & 1), wrong
        widest = min(widest, _MAX_VARINT_BYTES)
        window = self.buffer[first[:, None] + _TEN[:widest]]
        parts = (window & 0x7F).astype(np.uint64) << _SHIFTS[:widest]
        if int(width.min()) < widest:
            parts[_TEN[:widest] >= width[:, None]] = 0
        raw64 = np.bitwise_or.reduce(parts, axis=1)
        values = (raw64 >> np.uint64(1)).astype(np.int64) ^ -(raw64 & np.uint64(1)).astype(np.int64)
        return values, wrong

    def fixed_at(self, pos: np.ndarray[Any, Any], owner: np.ndarray[Any, Any], dtype: str, size: int
                 ) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        after = pos + size
        wrong = after > self.ends[owner]
        self.flag(wrong, owner, pos)
        grid = self.buffer[np.minimum(pos, len(self.buffer) - size)[:, None] + np.arange(size)]
        return np.ascontiguousarray(grid).view(dtype).ravel().astype(dtype[1:]), np.where(wrong, pos, after)

    def counts_at(self, pos: np.ndarray[Any, Any], owner: np.ndarray[Any, Any], min_item_size: int
                  ) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        """An array's first block count (0 for a body flagged bad), and the position after it."""
        counts, after = self.varints_at(pos, owner)
        wrong = (counts < 0) | (counts * min_item_size > self.ends[owner] - after) | self.bad[owner]
        self.flag(wrong, owner, after)
        counts[wrong] = 0
        return counts, after

    def end_of_array(self, pos: np.ndarray[Any, Any], owner: np.ndarray[Any, Any], counts: np.ndarray[Any, Any]
                     ) -> np.ndarray[Any, Any]:
        """After a non-empty array's one block comes a zero count; anything else (more blocks) is flagged."""
        filled = counts > 0
        wrong = filled & ((self.buffer[np.minimum(pos, len(self.buffer) - 1)] != 0) | (pos >= self.ends[owner]))
        self.flag(wrong, owner, pos)
        return np.where(filled & ~wrong, pos + 1, pos)

    def read(self, plan: FieldPlan, pos: np.ndarray[Any, Any], owner: np.ndarray[Any, Any]
             ) -> tuple[Column, np.ndarray[Any, Any]]:
        column = Column()
        kind = plan.kind
        if kind == _VARINT:
            column.values, pos = self.varints_at(pos, owner)
        elif kind in _FIXED:
            dtype, size = _FIXED[kind]
            column.values, pos = self.fixed_at(pos, owner, dtype, size)
        elif kind == "boolean":
            values, after = self.fixed_at(pos, owner, "|u1", 1)
            wrong = values > 1
            self.flag(wrong, owner, after)
            column.values, pos = values.astype(bool), after
        elif kind == "string":
            lengths, after = self.varints_at(pos, owner)
            wrong = (lengths < 0) | (after + lengths > self.ends[owner])
            self.flag(wrong, owner, after)
            lengths[wrong] = 0
            column.starts, column.lengths, pos = after, lengths, after + lengths
        elif kind == "nullable":
            assert plan.inner is not None
            branch, pos = self.varints_at(pos, owner)
            wrong = (branch < 0) | (branch > 1)
            self.flag(wrong, owner, pos)
            valid = (branch != plan.null_branch) & ~wrong
            if valid.all():  # no null here: no subset to take
                column, pos = self.read(plan.inner, pos, owner)
                column.valid = valid
            else:
                inner, inner_pos = self.read(plan.inner, pos[valid], owner[valid])
                pos = pos.copy()
                pos[valid] = inner_pos
                column = _spread(inner, valid)
        elif kind == "array":
            column, pos = self._array(plan, pos, owner)
        else:
            column, pos = self._records(plan, pos, owner)
        return column, pos

    def _array(self, plan: FieldPlan, pos: np.ndarray[Any, Any], owner: np.ndarray[Any, Any]
               ) -> tuple[Column, np.ndarray[Any, Any]]:
        assert plan.inner is not None
        kind = plan.inner.kind
        if kind not in _FIXED and kind != _VARINT:  # strings, booleans: item by item, as records of one field
            records, pos = self._records(FieldPlan(plan.name, "records", fields=(plan.inner,)), pos, owner)
            column = Column()
            column.counts, column.owner = records.counts, records.owner
            column.items = records.fields[plan.inner.name]
            column.items.owner = records.owner
            return column, pos
        size = _FIXED[kind][1] if kind in _FIXED else 1
        counts, pos = self.counts_at(pos, owner, size)
        column = Column()
        column.counts = counts
        total = int(counts.sum())
        row_of_item = np.repeat(np.arange(len(pos)), counts)
        firsts = np.cumsum(counts) - counts
        within = np.arange(total) - np.repeat(firsts, counts)
        items = Column()
        if kind in _FIXED:
            dtype, size = _FIXED[kind]
            item_pos = np.repeat(pos, counts) + within * size
            grid = self.buffer[item_pos[:, None] + np.arange(size)]
            items.values = np.ascontiguousarray(grid).view(dtype).ravel().astype(dtype[1:])
            pos = pos + counts * size
        else:
            items.values, pos = self._varint_items(pos, owner, counts, row_of_item, within)
        items.owner = owner[row_of_item]
        column.items = items
        column.owner = items.owner
        return column, self.end_of_array(pos, owner, counts)

    def _varint_items(self, pos: np.ndarray[Any, Any], owner: np.ndarray[Any, Any], counts: np.ndarray[Any, Any],
                      row_of_item: np.ndarray[Any, Any], within: np.ndarray[Any, Any]
                      ) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        """The items of each row's array of varints, and the position after them.

        Rows whose items all take as many bytes as their first (one-byte indices, one step repeated,
        timestamps of one era: the common case) are read as (items, width) grids, checked to end each
        item where it should; the others through the varint ends of the whole buffer (`stops`).
        """
        values = np.zeros(len(row_of_item), np.int64)
        filled = counts > 0
        after = pos.copy()
        if not filled.any():
            return values, after
        window = self.buffer[pos[:, None] + _TEN]
        stop = window < 0x80
        width = np.where(stop.any(axis=1), stop.argmax(axis=1) + 1, _MAX_VARINT_BYTES + 1)
        uniform = filled & (width <= _MAX_VARINT_BYTES) & (counts * width <= self.ends[owner] - pos)
        for w in np.unique(width[uniform]).tolist():
            rows = uniform & (width == w)
            chosen = rows[row_of_item]
            grid = self.buffer[(pos[row_of_item[chosen]] + within[chosen] * w)[:, None] + _TEN[:w]]
            fits = grid[:, w - 1] < 0x80
            if w > 1:
                fits &= (grid[:, : w - 1] >= 0x80).all(axis=1)
            parts = (grid & 0x7F).astype(np.uint64) << _SHIFTS[:w]
            raw = np.bitwise_or.reduce(parts, axis=1)
            values[chosen] = (raw >> np.uint64(1)).astype(np.int64) ^ -(raw & np.uint64(1)).astype(np.int64)
            after[rows] = pos[rows] + counts[rows] * w
            uniform[row_of_item[chosen][~fits]] = False  # not one width after all: read below
        rest = filled & ~uniform
        if rest.any():
            chosen = rest[row_of_item]
            values[chosen], after[rest] = self._varint_items_by_stops(pos[rest], owner[rest], counts[rest])
        return values, after

    def _varint_items_by_stops(self, pos: np.ndarray[Any, Any], owner: np.ndarray[Any, Any],
                               counts: np.ndarray[Any, Any]) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        """Arrays of varints of any widths: the j-th item of a row ends at the j-th varint end at or
        after the row's first item (`counts` > 0 in every row)."""
        total = int(counts.sum())
        firsts = np.cumsum(counts) - counts
        within = np.arange(total) - np.repeat(firsts, counts)
        row_of_item = np.repeat(np.arange(len(pos)), counts)
        base = np.searchsorted(self.stops, pos)
        rank = np.repeat(base, counts) + within
        over = rank >= len(self.stops)
        rank[over] = len(self.stops) - 1
        last = self.stops[rank]
        first = np.empty(total, np.int64)
        first[1:] = last[:-1] + 1
        first[firsts] = pos
        values, wrong_items = self._varints(first, last)
        row_last = last[firsts + counts - 1]
        wrong = np.zeros(len(pos), bool)
        wrong[row_of_item[wrong_items | over]] = True
        wrong |= row_last >= self.ends[owner]
        after = row_last + 1
        self.flag(wrong, owner, after)
        return values, after

    def _records(self, plan: FieldPlan, pos: np.ndarray[Any, Any], owner: np.ndarray[Any, Any]
                 ) -> tuple[Column, np.ndarray[Any, Any]]:
        counts, pos = self.counts_at(pos, owner, 1)
        too_many = counts > MAX_BATCH_RECORDS_PER_ARRAY
        self.flag(too_many, owner, pos)
        counts[too_many] = 0
        pos = pos.copy()
        firsts = np.cumsum(counts) - counts
        total = int(counts.sum())
        parts: dict[str, list[tuple[np.ndarray[Any, Any], Column]]] = {field.name: [] for field in plan.fields}
        for k in range(int(counts.max()) if len(counts) else 0):
            rows = np.flatnonzero(counts > k)
            at, whose = pos[rows], owner[rows]
            for field in plan.fields:
                part, at = self.read(field, at, whose)
                parts[field.name].append((firsts[rows] + k, part))
            pos[rows] = at
        column = Column()
        column.counts = counts
        column.owner = np.repeat(owner, counts)
        column.fields = {name: _gather(pieces, total) for name, pieces in parts.items()}
        return column, self.end_of_array(pos, owner, counts)


def _spread(inner: Column, valid: np.ndarray[Any, Any]) -> Column:
    """A nullable field's column: the inner values placed at the valid rows (zeros elsewhere)."""
    column = Column()
    column.valid = valid
    if inner.starts is not None:
        column.starts = np.zeros(len(valid), np.int64)
        column.lengths = np.zeros(len(valid), np.int64)
        column.starts[valid], column.lengths[valid] = inner.starts, inner.lengths
    else:
        column.values = np.zeros(len(valid), inner.values.dtype)
        column.values[valid] = inner.values
    return column


def _gather(pieces: list[tuple[np.ndarray[Any, Any], Column]], total: int) -> Column:
    """Columns read element by element (item k of every row) put back in row order."""
    column = Column()
    if not pieces:
        column.values = np.empty(0, np.int64)
        return column
    sample = pieces[0][1]
    if sample.valid is not None:
        column.valid = np.zeros(total, bool)
    for index, part in pieces:
        if part.valid is not None:
            column.valid[index] = part.valid
        if part.starts is not None:
            if column.starts is None:
                column.starts, column.lengths = np.zeros(total, np.int64), np.zeros(total, np.int64)
            column.starts[index], column.lengths[index] = part.starts, part.lengths
        else:
            if column.values is None:
                column.values = np.zeros(total, part.values.dtype)
            column.values[index] = part.values
    return column


def decode_many(plan: tuple[FieldPlan, ...], bodies: list[bytes], offset: int) -> ManyDecoded:
    """Decode `bodies[i][offset:]` as records of `plan` (see `record_plan`), all at once.

    Columns hold garbage at the rows of bodies flagged in `bad`; callers drop those rows and decode
    each flagged body alone.
    """
    many = _Many(bodies, offset)
    owner = np.arange(len(bodies))
    pos = many.start.copy()
    fields = {}
    for field in plan:
        fields[field.name], pos = many.read(field, pos, owner)
    many.bad |= pos != many.ends
    return ManyDecoded(many.buffer, many.bad, fields)
