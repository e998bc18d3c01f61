"""Importance gives the very same answer whichever way it reads (bit for bit).

Small projects are read one row per run, large ones as per-key arrays grouped in ClickHouse, and
numeric params are ranked with numpy: this pins both reads and the arithmetic to the per-value
Python path. What importance means is tested in tests/test_analysis.py, test_finite_rules.py and
test_relogged_steps.py (projects below the row-read threshold).
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest
from databases import fresh_database_dsn

import runstream
from runstream.analysis.importance import (
    ROW_READ_RUNS,
    _numbers,
    _param_arrays,
    _pearson_np,
    _ranks_np,
    average_ranks,
    importance,
    pearson,
    spearman,
)
from runstream.consumer import ClickHouseSink, ingest_spool
from runstream.consumer.dsn import connect


@pytest.mark.parametrize("seed", range(5))
def test_numpy_ranks_and_rho_equal_the_python_ones_bit_for_bit(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.randint(2, 3000)
    # repeated values (a batch size) and spread ones (a learning rate), as sweeps log them
    xs = [rng.choice([32.0, 64.0, 128.0, 256.0]) if seed % 2 else 10 ** rng.uniform(-5, -2) for _ in range(n)]
    ys = [rng.gauss(0.5, 0.2) for _ in range(n)]
    assert _ranks_np(np.array(xs)).tolist() == average_ranks(xs)
    assert _pearson_np(_ranks_np(np.array(xs)), _ranks_np(np.array(ys))) == spearman(xs, ys)


def test_constant_and_tiny_inputs_have_no_correlation() -> None:
    assert _pearson_np(np.array([1.0, 1.0, 1.0]), np.array([1.0, 2.0, 3.0])) is None
    assert _pearson_np(np.array([1.0]), np.array([2.0])) is None
    assert pearson([1.0], [2.0]) is None


def test_keys_the_numpy_path_must_leave_to_the_per_value_path() -> None:
    numbers = np.array([1.0, 2.0])
    present = np.array([True, True])
    assert _numbers(["1", "2"], numbers, present) is numbers
    assert _numbers(["1", "x"], numbers, np.array([True, False])) is None  # a text value: categorical
    assert _numbers(["true", "false"], np.array([1.0, 0.0]), present) is None  # bools group as categories
    assert _numbers(["nan", "2"], np.array([float("nan"), 2.0]), present) is None  # NaN is not a number to rank
    big = np.array([2.0**53, 2.0**53 + 2])  # ints past 2**53: distinct as ints, maybe not as floats
    assert _numbers(["9007199254740992", "9007199254740993"], big, present) is None


def _plain(value: object) -> object:
    """NaN as text (equal to itself, as == would not have it), a flag as 0/1 (bool here, UInt8 there)."""
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return int(value) if isinstance(value, bool) else value


def _key(arrays: tuple[object, ...]) -> str:
    return repr([a if isinstance(a, str) else [_plain(v) for v in a] for a in arrays])  # type: ignore[attr-defined]


@pytest.mark.integration
def test_the_per_run_read_and_the_grouped_arrays_give_the_same_importance(clickhouse_base: str,
                                                                           tmp_path: Path) -> None:
    """Every kind of param (float, int, bool, text, None, a key that is a number in one run and text in
    another, NaN) and runs left out (only NaN logged), read both ways."""
    dsn = fresh_database_dsn(clickhouse_base, "imp")
    rng = random.Random(7)
    for i in range(40):
        params = {"lr": 10 ** rng.uniform(-5, -2), "batch": [32, 64, 128][i % 3], "amp": i % 2 == 0,
                  "opt": ["adamw", "sgd"][i % 2], "note": None if i % 5 else "x", "mixed": i if i % 4 else "auto",
                  "decay": math.nan if i % 7 == 0 else 0.1}
        run = runstream.init("imp", f"r{i:02d}", params=params, spool=str(tmp_path), sample_interval=0)
        for step in range(3):
            run.log({"acc": math.nan if i % 9 == 0 else rng.random()}, step=step)
        run.finish("ok")
    report = ingest_spool(tmp_path, ClickHouseSink(dsn))
    assert not report.rejected, report.rejected
    client, database = connect(dsn)
    for mode in ("max", "min"):
        rows, left_rows = _param_arrays(client, database, "imp", "acc", mode)
        arrays, left_arrays = _param_arrays(client, database, "imp", "acc", mode, row_read_runs=0)
        assert left_rows == left_arrays == 5  # runs 0, 9, 18, 27, 36 logged only NaN
        assert [_key(a) for a in rows] == [_key(a) for a in arrays]
        assert [len(a[1]) for a in rows] == [35] * 7  # every key, in every scored run
        by_rows = importance(client, database, "imp", "acc", mode)
        by_arrays = importance(client, database, "imp", "acc", mode, row_read_runs=0)
        assert repr(by_rows.rows) == repr(by_arrays.rows) and by_rows.left_out == by_arrays.left_out == 5
        kinds = {row[0]: row[1] for row in by_rows.rows}
        assert kinds == {"params.lr": "numeric", "params.batch": "numeric", "params.amp": "categorical",
                         "params.opt": "categorical", "params.note": "categorical", "params.mixed": "categorical",
                         "params.decay": "categorical"}
    assert ROW_READ_RUNS >= 40  # the default read above was the per-run one
