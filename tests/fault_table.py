"""Rows of the fault matrix: each fault test records what it logged, stored and how long recovery took.

The tests assert lost = 0 and doubled = 0 themselves; `bench/faults.py` runs them with
RUNSTREAM_FAULT_TABLE=<file> set and prints the rows as one table, so the figures in the README come
from the same scenarios the suite checks (one definition of each scenario).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

ENV = "RUNSTREAM_FAULT_TABLE"


@dataclass(frozen=True)
class FaultRow:
    scenario: str
    logged: int
    stored: int
    stored_without_final: int
    recover_s: float | None = None

    @property
    def lost(self) -> int:
        return max(0, self.logged - self.stored)

    @property
    def doubled(self) -> int:
        """Rows a query with FINAL would count twice (0 when FINAL collapses every redelivery)."""
        return max(0, self.stored - self.logged)


class FaultTable:
    """Collects rows; appends each to the JSON-lines file named by RUNSTREAM_FAULT_TABLE when it is set."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.rows: list[FaultRow] = []

    def record(self, row: FaultRow) -> FaultRow:
        self.rows.append(row)
        if self.path is not None:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps({**asdict(row), "lost": row.lost, "doubled": row.doubled}) + "\n")
        return row


def from_environment() -> FaultTable:
    value = os.environ.get(ENV)
    return FaultTable(Path(value) if value else None)
