"""server/wire.py: every value type a query returns crosses the server's API as an equal value of the same type."""

from __future__ import annotations

import math
from pathlib import Path

import clickhouse_connect
import pytest

from runstream.server import wire

pytestmark = pytest.mark.integration

SQL = ("SELECT 1 AS i, -0.0 AS z, inf AS pinf, -inf AS ninf, nan AS n, 'ünï' AS s, now() AS t, "
       "toDateTime('2026-01-01 00:00:00', 'Asia/Tokyo') AS tz, toDateTime64(1.5, 3) AS t64, today() AS d, "
       "(1, 'x', [2.5]) AS tp, map('k', 1.5, 'j', inf) AS m, map(1, 'a') AS im, generateUUIDv4() AS u, "
       "toDecimal64(1.25, 3) AS dec, [1, 2] AS arr, NULL AS nothing, toLowCardinality('lc') AS lc, "
       "toIPv4('10.0.0.1') AS ip, true AS flag, {p:Array(Float64)} AS param")


def same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b and str(a) == str(b)


def test_a_query_result_and_its_parameters_cross_unchanged(tmp_path: Path) -> None:
    client = clickhouse_connect.get_client(dsn=f"chdb://{tmp_path / 'ch'}")
    parameters = {"p": [1.0, math.inf, -math.inf]}
    sent = wire.decode_parameters(wire.encode_parameters(parameters))
    assert same(sent["p"], parameters["p"])
    result = client.query(SQL, parameters=sent)
    columns, types, rows = wire.decode_result(wire.encode_result(result))
    assert columns == list(result.column_names)
    assert types == [kind.name for kind in result.column_types]
    assert len(rows) == 1
    for name, ours, theirs in zip(columns, rows[0], result.result_rows[0], strict=True):
        assert same(ours, theirs), (name, ours, theirs)


def test_malformed_bodies_are_refused_naming_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="unknown tag '\\$nope'"):
        wire.decode_parameters({"x": {"$nope": 1}})
    with pytest.raises(ValueError, match="'parameters' must be an object"):
        wire.decode_parameters([1, 2])
    with pytest.raises(TypeError, match="cannot send a object value"):
        wire.encode_value(object())
