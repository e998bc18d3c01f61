"""The fault matrix: every fault scenario of the suite, run for real, printed as one table.

    .venv/bin/python bench/faults.py [--out bench/results/faults.md] [-- PYTEST_ARGS...]

It runs the tests marked `fault` (real SIGKILLs of brokers, consumers and training processes,
ClickHouse's folder on a tmpfs made read-only or full, poison messages, SIGTERM inside flush) with
RUNSTREAM_FAULT_TABLE set, so each scenario records what it logged, what ClickHouse stored with and
without FINAL, and how long recovery took; then it prints

    scenario | points logged | stored (FINAL) | stored (no FINAL) | lost | doubled | seconds to recover

The scenarios are defined once, in the tests; this script only runs them and formats their rows.
It exits non-zero when a test fails or a row shows a loss or a double.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def table(rows: list[dict[str, object]]) -> str:
    lines = [
        "| scenario | points logged | stored (FINAL) | stored (no FINAL) | lost | doubled | seconds to recover |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        recover = row.get("recover_s")
        seconds = f"{recover:.1f}" if isinstance(recover, int | float) else "n/a"
        lines.append(
            f"| {row['scenario']} | {row['logged']:,} | {row['stored']:,} | {row['stored_without_final']:,} "
            f"| {row['lost']:,} | {row['doubled']:,} | {seconds} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="also write the table to this markdown file")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --), e.g. -k broker")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        rows_file = Path(scratch) / "rows.jsonl"
        env = {**os.environ, "RUNSTREAM_FAULT_TABLE": str(rows_file)}
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-m", "fault", "-q", "-p", "no:cacheprovider", *args.pytest_args],
            cwd=REPO, env=env, check=False,
        )
        rows = [json.loads(line) for line in rows_file.read_text().splitlines()] if rows_file.exists() else []
    if not rows:
        print("no fault scenario recorded a row", file=sys.stderr)
        return 1
    text = table(rows)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    bad = [row["scenario"] for row in rows if row["lost"] or row["doubled"]]
    if bad:
        print(f"loss or doubles in: {', '.join(map(str, bad))}", file=sys.stderr)
    return 1 if done.returncode or bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
